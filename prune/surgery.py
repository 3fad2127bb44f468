"""Apply a removal plan to a checkpoint: ``prune(model_dir, drop, out)``.

Two executors produce the same tensors:

* **in memory**: load the state dict, :func:`apply_plan` with torch, write;
* **streaming**: plan every output shard (headers included) from the source headers alone, then
  read each source file once, front to back, into reused buffers: every piece is hashed (source
  digest), and the kept ones written and hashed (output digest) on worker threads; the few
  tensors that need it are sliced/folded with numpy on their raw bytes (any dtype, bf16 as raw
  16-bit words). One read and one write per byte, no second pass for the manifest; memory
  stays at a few buffers plus one sliced tensor.

The output goes to a temporary folder renamed at the end; the source is never modified.

Streaming without verification never builds the model: for a family of the registry's torch-free plans (``Family.plan``)
(the native one) the plan comes from ``config.json`` alone and the weights are checked by their
headers, so neither torch nor transformers is imported (start-up: numpy and the standard library).
"""

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelLoadError, PlanError, VerificationError
from ..files import atomic_output_dir, check_output_path
from .checkpoint import (
    DTYPE_SIZES, INDEX_NAME, Checkpoint, OutTensor, parse_size, stream_checkpoint, write_checkpoint,
)
from ..files import CONFIG_NAME, read_json, sha256_file
from ..models.adapter import Adapter
from ..models.plan import apply_json_ops, apply_plan, check_plan, describe_plan, fold_shape, json_diff
from ..provenance import write_manifest

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = "2GB"
TORCH_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64", "complex64": "C64",
}


# ---------------------------------------------------------------------------- planning the output
def plan_outputs(plan, checkpoint):
    """The output tensors of applying ``plan`` to ``checkpoint``, in output (= storage) order.

    Raises:
        PlanError: a fold mixes dtypes, or two outputs get the same name.
    """
    consumed = {k for fold in plan.folds for k in fold.sources}
    slices = {sl.key: sl for sl in plan.slices}
    order = {path: i for i, path in enumerate(checkpoint.files)}
    infos = sorted(checkpoint.tensors.values(), key=lambda t: (order[t.file], t.start))
    outputs = []
    for info in infos:
        if info.key in consumed or plan.is_deleted(info.key):
            continue
        name = plan.output_name(info.key)
        sl = slices.get(info.key)
        if sl is None:
            outputs.append(OutTensor(name, info.dtype, info.shape, "copy", info))
        else:
            shape = list(info.shape)
            shape[sl.dim] = sl.kept_size
            outputs.append(OutTensor(name, info.dtype, tuple(shape), "slice", info, sl.dim, tuple(sl.keep)))
    shapes = checkpoint.shapes()
    for fold in plan.folds:
        dtypes = {checkpoint.tensors[k].dtype for k in fold.sources}
        if len(dtypes) != 1:
            raise PlanError(f"fold '{fold.key}' needs sources of one dtype, got {sorted(dtypes)}")
        parts = tuple(checkpoint.tensors[p["key"]] if "key" in p else ("zeros", tuple(p["zeros"]))
                      for p in fold.parts)
        outputs.append(OutTensor(fold.key, dtypes.pop(), fold_shape(fold, shapes), "fold", dim=fold.dim,
                                 parts=parts))
    names = [t.key for t in outputs]
    if len(set(names)) != len(names):
        raise PlanError("the plan gives two output tensors the same name; check its renames and folds")
    return outputs


# ---------------------------------------------------------------------------- in-memory executor
def _in_memory(checkpoint, plan, outputs, out_dir, max_shard_size):
    import torch
    from safetensors.torch import load_file

    state = {}
    for path in checkpoint.files:
        state.update(load_file(str(path)))
    pruned = apply_plan(state, plan)
    del state

    def produce(tensor, writer):
        value = pruned[tensor.key]
        dtype = TORCH_DTYPES.get(str(value.dtype).replace("torch.", ""))
        if dtype != tensor.dtype or tuple(value.shape) != tensor.shape:
            raise RuntimeError(f"'{tensor.key}': got {dtype} {tuple(value.shape)}, planned {tensor.dtype} {tensor.shape}")
        writer.write(value.contiguous().reshape(-1).view(torch.uint8).numpy())

    hashes = write_checkpoint(out_dir, outputs, produce, max_shard_size)
    size = sum(p.stat().st_size for p in checkpoint.files)
    stats = {"bytes_read": 2 * size, "bytes_written": sum((out_dir / n).stat().st_size for n in hashes)}
    return hashes, {p.name: sha256_file(p) for p in checkpoint.files}, stats


# ---------------------------------------------------------------------------- streaming executor
def _as_array(raw, shape, dtype):
    """Raw tensor bytes as a uint8 array of shape ``(*shape, itemsize)`` (works for every dtype)."""
    return np.frombuffer(raw, dtype=np.uint8).reshape(*shape, DTYPE_SIZES[dtype])


def _slice_raw(raw, info, dim, keep):
    array = _as_array(raw, info.shape, info.dtype)
    index = [slice(None)] * array.ndim
    pieces = []
    for start, stop in keep:
        index[dim] = slice(start, stop)
        pieces.append(array[tuple(index)])
    return np.ascontiguousarray(np.concatenate(pieces, axis=dim))


def _fold_raw(tensor, stash):
    pieces = []
    for part in tensor.parts:
        if isinstance(part, tuple):
            pieces.append(np.zeros((*part[1], DTYPE_SIZES[tensor.dtype]), dtype=np.uint8))
        else:
            pieces.append(_as_array(stash[part.key], part.shape, part.dtype))
    return np.ascontiguousarray(np.concatenate(pieces, axis=tensor.dim))


def _produce_raw(tensor, stash):
    """The bytes of a sliced or folded output tensor, from its sources' raw bytes in ``stash``."""
    if tensor.op == "slice":
        return _slice_raw(stash[tensor.source.key], tensor.source, tensor.dim, tensor.keep)
    return _fold_raw(tensor, stash)


def _streaming(checkpoint, outputs, out_dir, max_shard_size):
    written, source, stats = stream_checkpoint(checkpoint.files, outputs, _produce_raw, out_dir, max_shard_size)
    return written, source, stats.as_dict()


def execute_plan(plan, checkpoint, out_dir, streaming=True, max_shard_size=DEFAULT_MAX_SHARD_SIZE):
    """Write the pruned weights of ``checkpoint`` into ``out_dir``.

    Returns:
        ``(written, source, io)``: ``{file: sha256}`` of the written weight files and of the source
        ones, and ``{"bytes_read", "bytes_written", "seconds"}`` of the weight files (in-memory:
        bytes read counts the load and the hashing pass).
    """
    outputs = plan_outputs(plan, checkpoint)
    limit = parse_size(max_shard_size)
    start = time.perf_counter()
    if streaming:
        written, source, io = _streaming(checkpoint, outputs, out_dir, limit)
    else:
        written, source, io = _in_memory(checkpoint, plan, outputs, out_dir, limit)
    io["seconds"] = round(time.perf_counter() - start, 3)
    return written, source, io


# ---------------------------------------------------------------------------- the whole operation
def _adapter_and_config(model_dir):
    from ..models.loading import adapter_for

    adapter = adapter_for(model_dir)
    return adapter, adapter.read_config(model_dir)


def _torch_free(model_dir):
    """``(family module, config)`` of the torch-free plan of the model in ``model_dir``, or ``None``.

    Raises:
        ModelLoadError: no folder, no ``config.json`` or not JSON (as the adapter's path would).
    """
    from ..models.loading import read_config
    from ..models.registry import torch_free_plan

    data = read_config(model_dir)
    module = torch_free_plan(data)
    if module is None:
        return None
    config = module.plan_config(data)
    return None if config is None else (module, config)


def model_slots(model_dir):
    """The slot names of the model in ``model_dir`` (reads config.json only)."""
    found = _torch_free(Path(model_dir))
    if found is not None:
        return list(found[1].slot_names)
    adapter, config = _adapter_and_config(Path(model_dir))
    return adapter.slot_names(config)


def _check_structure(model_dir, shapes, where):
    """The meta-model structure check of ``model_dir``'s weights (builds the empty model: torch)."""
    from .verify import check_structure

    adapter, config = _adapter_and_config(Path(model_dir))
    check_structure(adapter, config, shapes, where)


def prepare(model_dir, drop, torch_free=False):
    """Read a model folder and build its removal plan, checking weights against config.

    Args:
        model_dir: the model folder.
        drop: slot names to remove.
        torch_free: for a family of the registry's torch-free plans (``Family.plan``) whose config it can read, build the plan
            from config.json and check the weights by their header (:func:`check_header` of the
            family) instead of against an empty model: neither torch nor transformers is imported.

    Returns:
        ``(adapter, config, plan, checkpoint, summary)``; ``summary`` is :func:`describe_plan`'s dict
        plus ``config_diff`` and ``processor_diff`` lines. On the torch-free path ``adapter`` is the
        family module and ``config`` its light config (see the registry's torch-free plans (``Family.plan``)).

    Raises:
        ModelLoadError, PlanError, ConfigError: see :func:`prune`.
    """
    model_dir = Path(model_dir)
    found = _torch_free(model_dir) if torch_free else None
    if found is not None:
        adapter, config = found
    else:
        adapter, config = _adapter_and_config(model_dir)
    plan = adapter.removal_plan(config, list(drop))
    checkpoint = Checkpoint.open(model_dir)
    shapes = checkpoint.shapes()
    check_plan(plan, shapes)
    if found is not None:
        adapter.check_header(config, shapes, f"{model_dir}")
    else:
        from .verify import check_structure

        check_structure(adapter, config, shapes, f"{model_dir}")
    summary = describe_plan(plan, shapes, {k: DTYPE_SIZES[t.dtype] for k, t in checkpoint.tensors.items()})
    old = read_json(model_dir / CONFIG_NAME, "re-save the model", ModelLoadError)
    summary["config_diff"] = json_diff(old, apply_json_ops(old, plan.config_patch))
    summary["processor_diff"] = {}
    for name, ops in plan.processor_patch.items():
        if (model_dir / name).is_file():
            data, patched = _patched_json(model_dir / name, ops)
            summary["processor_diff"][name] = json_diff(data, patched)
    _check_carried_json(model_dir, plan)
    return adapter, config, plan, checkpoint, summary


def _check_output(tmp, torch_free):
    """Check the pruned folder's weights against its config.json (header check on the torch-free path).

    Raises:
        VerificationError: they do not fit (a bug in the removal plan).
    """
    try:
        shapes = Checkpoint.open(tmp).shapes()
        found = _torch_free(tmp) if torch_free else None
        if found is not None:
            found[0].check_header(found[1], shapes, "the pruned output")
        else:
            _check_structure(tmp, shapes, "the pruned output")
    except ModelLoadError as err:
        raise VerificationError(f"{err} (a bug in the removal plan: report it); nothing was written") from err


PROCESSOR_FIX = "re-save the model with its processor and tokenizer, or copy the file from the original model"


def _patched_json(path, ops):
    """``(document, patched document)`` of the JSON file ``path`` under the plan's ``ops``.

    Raises:
        ModelLoadError: the file is not JSON; PlanError: the patch does not fit it (both name the file).
    """
    data = read_json(path, PROCESSOR_FIX, ModelLoadError)
    try:
        return data, apply_json_ops(data, ops)
    except PlanError as err:
        raise PlanError(f"{path}: {err}") from err


def _check_carried_json(model_dir, plan):
    """Every JSON file the pruned folder carries over unpatched (processor, tokenizer, generation config)
    must parse, so that a broken one fails here, naming it, and not in verification or at the user's.

    Raises:
        ModelLoadError: naming the first file that is not JSON.
    """
    for path in sorted(model_dir.iterdir()):
        name = path.name
        if (name.endswith(".json") and path.is_file() and name not in plan.processor_patch
                and name not in plan.drop_files and carried(name)):
            read_json(path, PROCESSOR_FIX, ModelLoadError)


# files of a model folder that describe the model itself, so the pruned one needs them (patched by
# the plan where it says so); anything else (source weights in other formats, the source's manifest,
# model card, plots, notes) describes the source and is left out, named in the manifest
CARRIED_NAMES = frozenset({
    "generation_config.json", "processor_config.json", "preprocessor_config.json", "image_processor_config.json",
    "video_preprocessor_config.json", "feature_extractor_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.json", "chat_template.jinja",
})
CARRIED_PREFIXES = ("tokenizer", "chat_template")
CARRIED_DIRS = frozenset({"additional_chat_templates"})


def carried(name, is_dir=False):
    """Whether a file (or folder) of a source model folder belongs in the pruned one (besides config
    and weights): config, processor and tokenizer files, chat templates, remote-code ``.py`` files."""
    if is_dir:
        return name in CARRIED_DIRS
    return (name in CARRIED_NAMES or name.startswith(CARRIED_PREFIXES) or name.endswith(".py")
            or name.endswith(".tiktoken"))


def _write_side_files(model_dir, out_dir, plan):
    """Patched config/processor files and a copy of every other file the output model needs.

    Returns:
        the sorted names of the source's files left out (folders end with ``/``); the weights,
        their index and the files the plan drops are replaced, not left out.
    """
    replaced = {CONFIG_NAME, INDEX_NAME, *plan.processor_patch}
    data = read_json(model_dir / CONFIG_NAME, "re-save the model", ModelLoadError)
    _dump_json(out_dir / CONFIG_NAME, apply_json_ops(data, plan.config_patch))
    for name, ops in plan.processor_patch.items():
        if (model_dir / name).is_file():
            _dump_json(out_dir / name, _patched_json(model_dir / name, ops)[1])
    left_out = []
    for path in sorted(model_dir.iterdir()):
        name = path.name
        if name in replaced or name.startswith(".") or name.endswith(".safetensors"):
            continue
        if name in plan.drop_files or not carried(name, path.is_dir()):
            left_out.append(name + "/" if path.is_dir() else name)
        elif path.is_dir():
            shutil.copytree(path, out_dir / name)
        else:
            shutil.copy2(path, out_dir / name)
    if left_out:
        logger.info("left out of the output (they describe the source): %s", ", ".join(left_out))
    return left_out


def _dump_json(path, data):
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _fits_in_memory(checkpoint):
    """Whether the masked-full and the pruned model fit in memory together, in fp32."""
    import psutil

    fp32 = sum(t.numel * 4 for t in checkpoint.tensors.values())
    return 2.5 * fp32 < psutil.virtual_memory().available


def prune(model_dir, drop, out=None, *, verify=None, streaming=None, max_shard_size=DEFAULT_MAX_SHARD_SIZE,
          overwrite=False, dry_run=False, data=None, num_samples=4, selection=None):
    """Remove encoder slots ``drop`` from the model in ``model_dir`` and write the result to ``out``.

    Args:
        model_dir: a model folder (config.json + safetensors weights) of a supported family.
        drop: slot names to remove.
        out: the output folder (not needed with ``dry_run``); must not exist unless ``overwrite``.
        verify: compare masked-full and pruned logits (default: when both fit in memory).
        streaming: stream over shards (default: when the model does not fit in memory).
        max_shard_size: largest output shard, e.g. ``"2GB"``.
        overwrite: replace an existing ``out``.
        dry_run: only build and describe the plan; write nothing.
        data: benchmark file(s) for verification samples (default: synthetic inputs).
        num_samples: verification samples K.
        selection: how ``drop`` was chosen (policy, ranking path...), recorded in the manifest.

    Returns:
        the manifest dict (``dry_run``: ``{"dry_run": True, "plan": ..., "summary": ...}``).

    Raises:
        PlanError: unknown slot, every slot, keys that do not match the config.
        ModelLoadError: not a model folder, unsupported family, corrupt safetensors.
        ConfigError / OutputExistsError: bad output path.
        VerificationError: an exact plan whose pruned logits differ from the masked model's.
    """
    model_dir = Path(model_dir)
    if not dry_run:
        if out is None:
            raise ConfigError("no output folder; pass --out DIR (or --dry-run to only see the plan)")
        check_output_path(out, overwrite, inputs=[model_dir])
    parse_size(max_shard_size)
    # torch-free start-up when the model may never be built: streaming without verification
    torch_free = not dry_run and verify is not True and streaming is not False
    adapter, config, plan, checkpoint, summary = prepare(model_dir, drop, torch_free=torch_free)
    if dry_run:
        return {"dry_run": True, "plan": plan.to_dict(), "summary": summary}
    fits = _fits_in_memory(checkpoint)
    streaming = (not fits) if streaming is None else streaming
    verify = fits if verify is None else verify
    torch_free = not isinstance(adapter, Adapter)  # the plan came from config.json alone
    if torch_free and (verify or not streaming):  # the model is built after all: the full structure check
        torch_free = False
        _check_structure(model_dir, checkpoint.shapes(), f"{model_dir}")
    with atomic_output_dir(out, overwrite=overwrite, inputs=[model_dir]) as tmp:
        logger.info("pruning %s from %s (%s executor)", ", ".join(plan.drop), model_dir,
                    "streaming" if streaming else "in-memory")
        written, source, io = execute_plan(plan, checkpoint, tmp, streaming, max_shard_size)
        left_out = _write_side_files(model_dir, tmp, plan)
        _check_output(tmp, torch_free)
        if verify:
            from .verify import verify_pruned

            verification = verify_pruned(model_dir, tmp, plan, data=data, num_samples=num_samples)
        else:
            verification = {"skipped": True, "reason": "--no-verify" if fits else "the model does not fit in memory"}
        manifest = write_manifest(
            tmp, stage="prune", source=model_dir, removed=plan.drop, kept=plan.kept,
            plan=plan.to_dict(), ranking=selection, verification=verification,
            extra={"summary": summary, "executor": "streaming" if streaming else "in-memory", "io": io,
                   "left_out": left_out},
            source_hashes=source, file_hashes=written,
        )
    manifest["output"] = str(Path(out).resolve())
    return manifest
