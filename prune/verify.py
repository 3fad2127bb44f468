"""Checking a pruned model: its weights fit its config, and it computes what the masked model did.

* :func:`check_structure`: the checkpoint's keys and shapes are exactly those of the model its
  config describes (built on the meta device: no memory, no weights).
* :func:`verify_pruned` (``"full"``): run the source model with the dropped slots masked (removal mask) and
  the pruned model on the same K inputs; compare logits. Exact plans must agree within 1e-4
  (fp32); inexact ones (none of the shipped families today) report the difference and recommend fine-tuning.
* :func:`verify_module_local` (``"module-local"``, for a model that does not fit in memory): built on the
  plan's operations, loading only the tensors they touch, without torch. Every tensor the plan keeps
  unchanged is compared with the source byte for byte (streamed in pieces); every module owning a
  :class:`~encslim.models.plan.Slice` computes, on random fp32 inputs, with the removed slots' input
  zeroed, what its pruned form computes on the kept input (the module is linear along the sliced
  dim); a weight/bias :class:`~encslim.models.plan.Fold` pair computes what the source branches did,
  the removed branch run on a zero input (the constant the fold replaces); another fold equals its
  parts concatenated. Deleted tensors need no check beyond the output holding exactly the planned keys.
"""

import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, ModelLoadError, VerificationError
from ..models.folder import Checkpoint, key_problems
from ..models.tokens import budget_of
from ..provenance import VERIFY_TOLERANCE as TOLERANCE

if TYPE_CHECKING:
    from ..models.adapter import Adapter, Batch, Config, Processor
    from ..models.folder import TensorInfo
    from ..models.plan import Fold, FoldPart, RemovalPlan, Slice
    from ..models.shard_format import OutTensor

PathArg = Union[str, "os.PathLike[str]"]
DataArg = Union[PathArg, Iterable[PathArg]]
Shape = Sequence[int]
Layout = tuple[dict[str, tuple[int, ...]], set[str]]  # (expected shapes, keys a checkpoint may omit)
Array = NDArray[np.float32]
Infos = Mapping[str, "TensorInfo"]  # {key: TensorInfo} of a checkpoint

logger = logging.getLogger(__name__)

SYNTHETIC_PROMPT = "Describe the image in one word."


def expected_layouts(adapter: "Adapter", config: "Config") -> list[Layout]:
    """The checkpoint layouts a model built from ``config`` accepts, as ``[(shapes, optional)]``.

    First the layout ``save_pretrained`` writes (transformers 5 renames some keys on save, e.g.
    DINOv2's ``attention.k_proj`` back to ``attention.attention.key``), then the module layout.
    ``optional`` holds keys a checkpoint may omit (tied weights, keys ignored when missing).
    """
    model = adapter.empty_model(config)
    native = model.state_dict(keep_vars=True)
    layouts = [native]
    try:
        from transformers.core_model_loading import revert_weight_conversion

        layouts.insert(0, revert_weight_conversion(model, dict(native)))
    except Exception as err:  # noqa: BLE001 - an internal transformers API; the module layout still checks
        logger.debug("no saved-layout check: %s", err)
    patterns = list(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
    result: list[Layout] = []
    for state in layouts:
        first_key: dict[int, str] = {}
        optional: set[str] = set()
        for key, tensor in state.items():
            if id(tensor) in first_key:
                optional.update({key, first_key[id(tensor)]})
            first_key.setdefault(id(tensor), key)
        optional.update(k for k in state if any(re.search(p, k) for p in patterns))
        result.append(({k: tuple(v.shape) for k, v in state.items()}, optional))
    return result


def _layout_problems(expected: Mapping[str, Shape], optional: set[str], shapes: Mapping[str, Shape],
                     tolerated: "re.Pattern[str] | None" = None) -> list[str]:
    return key_problems(expected, shapes, tolerated, optional=optional).examples()


def _ignored_unexpected(adapter: "Adapter") -> "re.Pattern[str] | None":
    """One pattern of the keys the model class ignores when a checkpoint has them
    (``_keys_to_ignore_on_load_unexpected``: e.g. transformers 4.3x's ``rotary_emb.inv_freq``), or ``None``."""
    patterns = getattr(getattr(adapter, "model_class", None), "_keys_to_ignore_on_load_unexpected", None) or ()
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def check_structure(adapter: "Adapter", config: "Config", shapes: Mapping[str, Shape], where: str) -> None:
    """Raise ``ModelLoadError`` if checkpoint ``shapes`` do not fit the model ``config`` describes.

    Args:
        adapter: the model family's adapter.
        config: the model's config (``adapter.read_config``).
        shapes: ``{key: shape}`` of its checkpoint.
        where: how to name the checkpoint in the message.
    """
    ignored = _ignored_unexpected(adapter)
    problems = [_layout_problems(expected, optional, shapes, ignored)
                for expected, optional in expected_layouts(adapter, config)]
    if any(not p for p in problems):
        return
    raise ModelLoadError(f"checkpoint keys of {where} do not match its config.json: {', '.join(problems[0])}; "
                         "the weights belong to another model or config")


def _synthetic_inputs(adapter: "Adapter", config: "Config", count: int, seed: int) -> tuple[list[Any], list[str]]:
    from PIL import Image

    side = max(slot.image_size for slot in adapter.slots(config))
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]
    return images, [SYNTHETIC_PROMPT] * count


def _data_inputs(data: DataArg, count: int) -> tuple[list[Any], list[str]]:
    try:
        from ..data.load import load_samples
    except ImportError:
        raise DataError("--data needs encslim.data.load, which this installation lacks; "
                        "verify on synthetic inputs (leave out --data)") from None
    paths: list[PathArg] = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    samples = [s for s in load_samples(paths) if s.image is not None][:count]
    if not samples:
        raise DataError(f"no sample with an image in {', '.join(map(str, paths))}; pass other --data")
    return [s.image for s in samples], [s.question for s in samples]


def _batches(full_adapter: "Adapter", full_proc: "Processor", pruned_adapter: "Adapter", pruned_proc: "Processor",
             images: list[Any], questions: list[str], drop: Iterable[str]) -> tuple["Batch", "Batch", float]:
    prompts_full = [full_adapter.build_prompt(full_proc, q) for q in questions]
    prompts_pruned = [pruned_adapter.build_prompt(pruned_proc, q) for q in questions]
    full = full_adapter.prepare_batch(full_proc, images, prompts_full, masked=frozenset(drop))
    pruned = pruned_adapter.prepare_batch(pruned_proc, images, prompts_pruned)
    if full["input_ids"].shape != pruned["input_ids"].shape or not bool((full["input_ids"] == pruned["input_ids"]).all()):
        raise VerificationError("the pruned processor builds other token sequences than the masked model's; "
                                "its processor files were not patched consistently with the weights")
    pixel_diff = 0.0
    for key in [k for k in pruned if "pixel_values" in k and k in full]:
        a, b = full[key], pruned[key]
        if a.shape == b.shape:
            pixel_diff = max(pixel_diff, float((a - b).abs().max()))
        pruned[key] = a  # compare the models on identical pixels
    return full, pruned, pixel_diff


def verify_pruned(source_dir: PathArg, pruned_dir: PathArg, plan: "RemovalPlan", data: DataArg | None = None,
                  num_samples: int = 4, tolerance: float = TOLERANCE, seed: int = 0) -> dict[str, Any]:
    """Compare masked-full and pruned logits on ``num_samples`` inputs, in fp32.

    Args:
        source_dir: the source model folder.
        pruned_dir: the pruned model folder.
        plan: the ``RemovalPlan`` that made it (``drop``, ``exact``).
        data: benchmark file(s) to draw samples from (default: random images + a fixed prompt).
        num_samples: K.
        tolerance: largest max-abs logit difference accepted for exact plans.
        seed: seed of the synthetic images.

    The masked source runs under the pruned model's token budget (``adapter.token_budget``; none: every
    token), its placeholders and its reducer alike, so a budget shipped in the pruned config.json is
    checked against the same budget applied to the masked source.

    Returns:
        ``{"method": "full", "samples", "inputs", "max_abs_diff", "tolerance", "exact", "passed",
        "pixel_max_abs_diff", "recommendation", "token_budget"}`` (the budget both ran under, or ``None``).

    Raises:
        VerificationError: an exact plan whose logits differ by more than ``tolerance``.
    """
    import torch

    from ..models.loading import load_model

    try:
        full, full_proc, full_adapter = load_model(source_dir)
        pruned, pruned_proc, pruned_adapter = load_model(pruned_dir)
    except ModelLoadError as err:
        raise VerificationError(f"verification could not load a model: {err}") from err
    if data:
        images, questions = _data_inputs(data, num_samples)
    else:
        images, questions = _synthetic_inputs(full_adapter, full.config, num_samples, seed)
    budget = budget_of(pruned.config)  # the source runs under the pruned model's budget (None: every token)
    with full_adapter.token_budget(full, full_proc, budget), torch.no_grad():
        full_batch, pruned_batch, pixel_diff = _batches(full_adapter, full_proc, pruned_adapter, pruned_proc,
                                                        images, questions, plan.drop)
        ref = full_adapter.decode(full, full_adapter.encode(full, full_batch), full_batch,
                                  masked=frozenset(plan.drop), mask_mode="removal").logits
        got = pruned_adapter.decode(pruned, pruned_adapter.encode(pruned, pruned_batch), pruned_batch).logits
    keep = full_batch["attention_mask"].bool()
    diff = float((ref - got).abs()[keep].max())
    scale = float(ref[keep].abs().max())
    result: dict[str, Any] = {
        "method": "full", "samples": len(images), "inputs": "data" if data else "synthetic", "max_abs_diff": diff,
        "max_abs_logit": scale, "tolerance": tolerance, "exact": plan.exact,
        "passed": (diff <= tolerance) if plan.exact else None, "pixel_max_abs_diff": pixel_diff,
        "recommendation": None, "token_budget": budget.to_dict() if budget is not None else None,
    }
    if pixel_diff > 0:
        result["note"] = ("the pruned model's image processor gives slightly different pixels; the logits were "
                          "compared on identical pixels")
    if not math.isfinite(diff) or (plan.exact and diff > tolerance):
        raise VerificationError(f"pruned logits differ from the masked model's by {diff:.3g} > {tolerance:g} "
                                f"although the plan is exact; nothing was written (this is a bug: report it)")
    if not plan.exact:
        result["recommendation"] = (f"inexact plan ({plan.fusion_class}): logits differ by up to {diff:.3g}; "
                                    "fine-tune the pruned model (encslim finetune) to recover accuracy")
    logger.info("verification: max |logit diff| = %.3g over %d samples", diff, len(images))
    return result


# ---------------------------------------------------------------------------- module-local verification
LOCAL_SAMPLES = 8  # random input rows per changed module
COMPARE_CHUNK = 8 << 20  # bytes per piece of the byte-equality comparison
_FLOATS = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1"}
_BUG = "nothing was written (this is a bug in the removal plan or its executor: report it)"


class _TensorReader:
    """Reads tensors' bytes from their files (one descriptor per file, closed by :meth:`close`)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, info: "TensorInfo", offset: int = 0, count: int | None = None) -> bytes:
        """``count`` bytes (default: to the end) of ``info``'s data from ``offset`` on."""
        count = info.nbytes - offset if count is None else count
        fd = self._fds.get(str(info.file))
        if fd is None:
            fd = self._fds[str(info.file)] = os.open(info.file, os.O_RDONLY)
        data, where = bytearray(), info.start + offset
        while len(data) < count:
            piece = os.pread(fd, count - len(data), where + len(data))
            if not piece:
                raise VerificationError(f"{info.file} ends inside tensor '{info.key}'; {_BUG}")
            data += piece
        return bytes(data)

    def array(self, info: "TensorInfo") -> Array:
        """The tensor as an fp32 numpy array (bf16 widened exactly)."""
        raw = self.read(info)
        if info.dtype == "BF16":
            words = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
            widened: Array = words.view("<f4").reshape(info.shape)
            return widened
        if info.dtype not in _FLOATS:
            raise VerificationError(f"module-local verification cannot compute on '{info.key}' ({info.dtype}); "
                                    "verify with --verify-method full on a machine where the model fits")
        return np.frombuffer(raw, dtype=_FLOATS[info.dtype]).astype(np.float32).reshape(info.shape)

    def close(self) -> None:
        """Close every file it opened."""
        while self._fds:
            os.close(self._fds.popitem()[1])


def _check_kept(outputs: Sequence["OutTensor"], written: Infos, reader: _TensorReader) -> tuple[int, int]:
    """The output holds exactly the planned tensors, and every copied one equals its source byte for byte.

    Returns:
        ``(tensors compared, bytes compared)``.
    """
    planned = {t.key: t for t in outputs}
    extra, missing = sorted(set(written) - set(planned)), sorted(set(planned) - set(written))
    if extra or missing:
        what = [f"{len(k)} {label} (e.g. '{k[0]}')" for label, k in (("unplanned", extra), ("missing", missing)) if k]
        raise VerificationError(f"module-local verification failed: the output's tensors are not the planned ones: "
                                f"{', '.join(what)}; {_BUG}")
    count = nbytes = 0
    for tensor in outputs:
        got = written[tensor.key]
        if (got.dtype, tuple(got.shape)) != (tensor.dtype, tuple(tensor.shape)):
            raise VerificationError(f"module-local verification failed: tensor '{tensor.key}' is {got.dtype} "
                                    f"{list(got.shape)}, planned {tensor.dtype} {list(tensor.shape)}; {_BUG}")
        if tensor.op != "copy" or tensor.source is None:
            continue
        source = tensor.source
        for offset in range(0, source.nbytes, COMPARE_CHUNK):
            size = min(COMPARE_CHUNK, source.nbytes - offset)
            if reader.read(source, offset, size) != reader.read(got, offset, size):
                raise VerificationError(
                    f"module-local verification failed: tensor '{tensor.key}' (kept unchanged from "
                    f"'{source.key}') differs from the source's bytes in [{offset}, {offset + size}); {_BUG}")
        count, nbytes = count + 1, nbytes + source.nbytes
    return count, nbytes


def _max_diff(ref: NDArray[Any], got: NDArray[Any]) -> float:
    a, b = np.asarray(ref), np.asarray(got)
    if a.shape != b.shape:
        return math.inf
    return float(np.abs(a - b).max()) if a.size else 0.0


def _slice_diff(sl: "Slice", plan: "RemovalPlan", source: Infos, written: Infos, reader: _TensorReader,
                rng: np.random.Generator, samples: int) -> float:
    """Max |difference| of a sliced tensor's module, the removed slots' input zeroed vs the kept input.

    The module is linear in its input along ``sl.dim``: ``x_zeroed . W_full == x_kept . W_pruned``
    (contracted along that dim), plus the module's kept bias for a Linear weight sliced on its input.
    """
    full, pruned = reader.array(source[sl.key]), reader.array(written[plan.output_name(sl.key)])
    x = rng.standard_normal((samples, sl.size), dtype=np.float32)
    removed = list(sl.removed.values()) or _complement(sl.keep, sl.size)
    for start, stop in removed:
        x[:, start:stop] = 0.0
    kept = np.concatenate([x[:, start:stop] for start, stop in sl.keep], axis=1)
    if pruned.shape[sl.dim] != kept.shape[1]:
        return math.inf
    ref = np.tensordot(x, full, axes=([1], [sl.dim]))
    got = np.tensordot(kept, pruned, axes=([1], [sl.dim]))
    bias = sl.key.rpartition(".")[0] + ".bias"
    if full.ndim == 2 and sl.dim == 1 and bias in source and not plan.is_deleted(bias):
        out_bias = written.get(plan.output_name(bias))
        if out_bias is not None and tuple(source[bias].shape) == (full.shape[0],):
            ref, got = ref + reader.array(source[bias]), got + reader.array(out_bias)
    return _max_diff(ref, got)


def _complement(keep: Iterable[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    start = 0
    for begin, stop in sorted(keep):
        if begin > start:
            ranges.append((start, begin))
        start = max(start, stop)
    return ranges + ([(start, size)] if start < size else [])


def _part_array(part: "FoldPart", source: Infos, reader: _TensorReader) -> Array:
    return reader.array(source[part["key"]]) if "key" in part else np.zeros(part["zeros"], dtype=np.float32)


def _linear_pair(weight: "Fold", bias: "Fold", source: Infos) -> bool:
    """Whether folds ``weight`` and ``bias`` build one Linear, row block by row block (dim 0)."""
    if weight.dim != 0 or bias.dim != 0 or len(weight.parts) != len(bias.parts):
        return False
    for wpart, bpart in zip(weight.parts, bias.parts):
        wshape = tuple(source[wpart["key"]].shape) if "key" in wpart else tuple(wpart["zeros"])
        bshape = tuple(source[bpart["key"]].shape) if "key" in bpart else tuple(bpart["zeros"])
        if len(wshape) != 2 or bshape != (wshape[0],):
            return False
    return True


def _fold_linear_diff(weight: "Fold", bias: "Fold", source: Infos, written: Infos, reader: _TensorReader,
                      rng: np.random.Generator, samples: int) -> float:
    """Max |difference| of a folded Linear vs the source branches it replaces, the removed ones on zero input.

    Each row block is a branch: a source weight part is a kept branch (its own Linear, on the pruned
    module's input); a zero weight part is a removed branch, run on a zero input of its own width (its
    source weight, found beside its bias part), i.e. the constant the fold puts into the bias.
    """
    w_out, b_out = reader.array(written[weight.key]), reader.array(written[bias.key])
    x = rng.standard_normal((samples, w_out.shape[1]), dtype=np.float32)
    pieces: list[NDArray[Any]] = []
    try:
        for wpart, bpart in zip(weight.parts, bias.parts):
            b = _part_array(bpart, source, reader)
            if "key" in wpart:
                pieces.append(x @ reader.array(source[wpart["key"]]).T + b)
                continue
            owner = source.get(bpart.get("key", "").rpartition(".")[0] + ".weight")
            if owner is not None:
                zero = np.zeros((samples, owner.shape[1]), dtype=np.float32)
                pieces.append(zero @ reader.array(owner).T + b)
            else:
                pieces.append(np.broadcast_to(b, (samples, b.shape[0])))
        return _max_diff(np.concatenate(pieces, axis=1), x @ w_out.T + b_out)
    except ValueError:  # a block that does not fit its neighbours: not the Linear the plan says
        return math.inf


def _fold_diff(fold: "Fold", source: Infos, written: Infos, reader: _TensorReader) -> float:
    """Max |difference| of a fold's output vs its parts concatenated (from the source)."""
    try:
        ref = np.concatenate([_part_array(p, source, reader) for p in fold.parts], axis=fold.dim)
    except ValueError:
        return math.inf
    return _max_diff(ref, reader.array(written[fold.key]))


def _module_checks(plan: "RemovalPlan", source: Infos, written: Infos, reader: _TensorReader,
                   rng: np.random.Generator, samples: int) -> dict[str, dict[str, Any]]:
    """``{module: {"tensors", "check", "max_abs_diff"}}`` of every module the plan slices or folds."""
    modules: dict[str, dict[str, Any]] = {}

    def record(module: str, keys: list[str], check: str, diff: float) -> None:
        entry = modules.setdefault(module, {"tensors": [], "checks": [], "max_abs_diff": 0.0})
        entry["tensors"] += keys
        entry["checks"] = sorted(set(entry["checks"]) | {check})
        entry["max_abs_diff"] = max(entry["max_abs_diff"], diff)

    for sl in plan.slices:
        diff = _slice_diff(sl, plan, source, written, reader, rng, samples)
        record(sl.key.rpartition(".")[0], [sl.key], "slice: zeroed input vs kept input", diff)
    folds = {fold.key: fold for fold in plan.folds}
    for fold in plan.folds:
        module, _, leaf = fold.key.rpartition(".")
        weight, bias = folds.get(f"{module}.weight"), folds.get(f"{module}.bias")
        if weight is not None and bias is not None and _linear_pair(weight, bias, source):
            if leaf == "weight":
                diff = _fold_linear_diff(weight, bias, source, written, reader, rng, samples)
                record(module, [weight.key, bias.key], "fold: removed branch on zero input vs folded Linear", diff)
            continue
        record(module, [fold.key], "fold: parts concatenated", _fold_diff(fold, source, written, reader))
    return modules


def verify_module_local(source: "Checkpoint | PathArg", pruned_dir: PathArg, plan: "RemovalPlan",
                        tolerance: float = TOLERANCE, seed: int = 0, samples: int = LOCAL_SAMPLES,
                        reason: str | None = None) -> dict[str, Any]:
    """Verify a pruned folder module by module, without building either model (see the module docstring).

    Args:
        source: the source's :class:`~encslim.models.folder.Checkpoint` (or its folder).
        pruned_dir: the pruned model folder.
        plan: the ``RemovalPlan`` that made it.
        tolerance: largest max-abs difference accepted per module (fp32).
        seed: seed of the random module inputs.
        samples: random input rows per module.
        reason: why this method ran (recorded).

    Returns:
        ``{"method": "module-local", "reason", "passed", "exact", "tolerance", "samples", "inputs",
        "tensors_byte_equal", "bytes_compared", "modules": {module: {"tensors", "checks", "max_abs_diff"}},
        "max_module_diff", "seconds"}``.

    Raises:
        VerificationError: a kept tensor that is not byte-equal to its source, an output that does
            not hold exactly the planned tensors, or (exact plans) a module off by more than ``tolerance``,
            naming it.
    """
    from ..models.executor import plan_outputs

    started = time.perf_counter()
    checkpoint = source if isinstance(source, Checkpoint) else Checkpoint.open(source)
    written = Checkpoint.open(pruned_dir).tensors
    reader = _TensorReader()
    try:
        equal, nbytes = _check_kept(plan_outputs(plan, checkpoint), written, reader)
        modules = _module_checks(plan, checkpoint.tensors, written, reader, np.random.default_rng(seed), samples)
    finally:
        reader.close()
    worst = max((m["max_abs_diff"] for m in modules.values()), default=0.0)
    result: dict[str, Any] = {
        "method": "module-local", "reason": reason, "exact": plan.exact, "tolerance": tolerance,
        "samples": samples, "inputs": "random", "tensors_byte_equal": equal, "bytes_compared": nbytes,
        "modules": modules, "max_module_diff": worst, "passed": worst <= tolerance if plan.exact else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if not modules:
        result["note"] = ("the plan slices and folds nothing: the pruned model is the source without the deleted "
                          "tensors, every kept one byte-equal")
    for name, entry in modules.items():
        diff = entry["max_abs_diff"]
        if not math.isfinite(diff) or (plan.exact and diff > tolerance):
            raise VerificationError(f"module-local verification failed: module '{name}' ({', '.join(entry['tensors'])}) "
                                    f"differs from the masked source by {diff:.3g} > {tolerance:g} although the plan "
                                    f"is exact; {_BUG}")
    logger.info("module-local verification: %d tensors byte-equal, %d changed module(s), max |diff| %.3g",
                equal, len(modules), worst)
    return result
