"""The one executor of removal plans: ``execute(plan, folder, out_dir)``, used by prune and export alike.

What each plan operation means is defined once, on a tensor's raw bytes viewed as a ``uint8``
array of shape ``(*shape, itemsize)`` (any dtype; bf16 is two bytes like any 16-bit word):

* **copy** (a kept tensor, possibly renamed): the bytes as they are;
* **slice** (:class:`~encslim.models.plan.Slice`): the kept index ranges along ``dim``, concatenated;
* **fold** (:class:`~encslim.models.plan.Fold`): the parts (source tensors or zero blocks) concatenated
  along ``dim``;
* **delete**: not written; ``config_patch``/``processor_patch``: :func:`~encslim.models.plan.apply_json_ops`.

Two modes run those definitions:

* **streaming** over shards: plan every output shard (headers included) from the source headers,
  then read each source file once, front to back (:func:`~encslim.models.shards.stream_checkpoint`):
  every byte is hashed and the kept ones written; memory stays at a few buffers plus one sliced tensor;
* **in memory**: the state dict as torch tensors (:func:`apply_plan`; safetensors' own reader loads it).

The side-file policy is one too (:func:`~encslim.models.folder.carried`): config.json and the
processor files the plan patches are written patched, the other known side files (tokenizer,
processor, generation config, chat templates, remote code) are copied, the files the plan drops and
everything else (the source's manifest, model card, notes, weights of other formats) are left out
and named. Each source file is read once: a side file's bytes are read once, checked, written and
hashed for the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import numpy.typing as npt

from ..errors import PlanError
from ..files import CONFIG_NAME
from .checkpoint import DTYPE_SIZES, Checkpoint, TensorInfo
from .plan import JsonOp, RemovalPlan, apply_json_ops, fold_shape, json_diff
from .shards import OutTensor, ShardWriter, parse_size, stream_checkpoint, write_checkpoint

if TYPE_CHECKING:
    import torch
    from .shard_format import Buffer

    from .folder import ModelFolder

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = "2GB"
PROCESSOR_FIX = "re-save the model with its processor and tokenizer, or copy the file from the original model"
TORCH_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64", "complex64": "C64",
}
Bytes = npt.NDArray[np.uint8]
IoStats = dict[str, float]  # {"bytes_read", "bytes_written", "seconds"} of a weights pass


class SideFileDiffs(TypedDict):
    """What :func:`check_side_files` reports: the diff lines of ``config.json`` and of each patched processor file."""

    config_diff: list[str]
    processor_diff: dict[str, list[str]]


# ---------------------------------------------------------------------------- the operations
def plan_outputs(plan: RemovalPlan, infos: Mapping[str, TensorInfo] | Checkpoint,
                 order: Mapping[Path, int] | None = None) -> list[OutTensor]:
    """The output tensors of applying ``plan`` to tensors ``infos``, in output (= storage) order.

    Args:
        plan: a :class:`~encslim.models.plan.RemovalPlan`.
        infos: ``{key: TensorInfo}`` of the source, or a :class:`~encslim.models.folder.Checkpoint`.
        order: ``{file: rank}`` of the source files (default: a checkpoint's file order).

    Raises:
        PlanError: a fold mixes dtypes, or two outputs get the same name.
    """
    if isinstance(infos, Checkpoint):
        order = {path: i for i, path in enumerate(infos.files)}
        infos = infos.tensors
    order = order or {}
    consumed = {k for fold in plan.folds for k in fold.sources}
    slices = {sl.key: sl for sl in plan.slices}
    outputs: list[OutTensor] = []
    for info in sorted(infos.values(), key=lambda t: (order.get(t.file, 0), t.start)):
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
    shapes = {k: t.shape for k, t in infos.items()}
    for fold in plan.folds:
        dtypes = {infos[k].dtype for k in fold.sources}
        if len(dtypes) != 1:
            raise PlanError(f"fold '{fold.key}' needs sources of one dtype, got {sorted(dtypes)}")
        parts = tuple(infos[p["key"]] if "key" in p else ("zeros", tuple(p["zeros"])) for p in fold.parts)
        outputs.append(OutTensor(fold.key, dtypes.pop(), fold_shape(fold, shapes), "fold", dim=fold.dim,
                                 parts=parts))
    names = [t.key for t in outputs]
    if len(set(names)) != len(names):
        raise PlanError("the plan gives two output tensors the same name; check its renames and folds")
    return outputs


def _as_array(raw: Buffer, shape: Sequence[int], dtype: str) -> Bytes:
    """Raw tensor bytes as a uint8 array of shape ``(*shape, itemsize)`` (works for every dtype)."""
    return np.frombuffer(raw, dtype=np.uint8).reshape(*shape, DTYPE_SIZES[dtype])


def produce(tensor: OutTensor, stash: Mapping[str, Buffer]) -> Buffer:
    """The bytes of output ``tensor`` (an ``OutTensor``) from its sources' raw bytes in ``stash`` (by key):
    the one definition of copy, slice and fold (see the module docstring)."""
    if tensor.op == "copy":
        return stash[tensor.src.key]
    if tensor.op == "slice":
        array = _as_array(stash[tensor.src.key], tensor.src.shape, tensor.src.dtype)
        index = [slice(None)] * array.ndim
        pieces = []
        for start, stop in tensor.keep:
            index[tensor.dim] = slice(start, stop)
            pieces.append(array[tuple(index)])
        return np.ascontiguousarray(np.concatenate(pieces, axis=tensor.dim))
    pieces = [np.zeros((*part[1], DTYPE_SIZES[tensor.dtype]), dtype=np.uint8) if isinstance(part, tuple)
              else _as_array(stash[part.key], part.shape, part.dtype) for part in tensor.parts]
    return np.ascontiguousarray(np.concatenate(pieces, axis=tensor.dim))


# ---------------------------------------------------------------------------- in memory
def _torch_raw(tensor: torch.Tensor) -> tuple[str, Bytes]:
    """``(dtype name, raw bytes as a uint8 numpy array)`` of a torch tensor."""
    dtype = TORCH_DTYPES.get(str(tensor.dtype).replace("torch.", ""))
    if dtype is None:
        raise PlanError(f"tensor dtype {tensor.dtype} has no safetensors name")
    import torch

    return dtype, tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def apply_plan(state_dict: Mapping[str, torch.Tensor], plan: RemovalPlan) -> dict[str, torch.Tensor]:
    """Apply a removal plan to a state dict in memory; returns a new ``{key: tensor}``.

    Each output is made by :func:`produce` on the tensors' bytes (the streaming mode's definition).

    Args:
        state_dict: ``{key: tensor}`` of the source model (checkpoint key names).
        plan: a :class:`~encslim.models.plan.RemovalPlan`.

    Returns:
        the pruned state dict (source order, folds last), keys as ``plan.output_name`` names them.
    """
    import torch

    infos: dict[str, TensorInfo] = {}
    stash: dict[str, Bytes] = {}
    dtypes: dict[str, torch.dtype] = {}
    for i, (key, tensor) in enumerate(state_dict.items()):
        dtype, raw = _torch_raw(tensor)
        infos[key] = TensorInfo(key, Path(), dtype, tuple(tensor.shape), i, raw.nbytes)
        stash[key], dtypes[dtype] = raw, tensor.dtype
    out: dict[str, torch.Tensor] = {}
    for output in plan_outputs(plan, infos):
        if output.op == "copy":  # the bytes as they are: the tensor itself
            out[output.key] = state_dict[output.src.key].contiguous()
            continue
        raw = np.ascontiguousarray(produce(output, stash)).reshape(-1)
        torch_dtype = dtypes[output.dtype]
        out[output.key] = (torch.from_numpy(raw.copy()).view(torch_dtype).reshape(output.shape) if raw.size
                           else torch.empty(output.shape, dtype=torch_dtype))
    return out


def _in_memory(checkpoint: Checkpoint, plan: RemovalPlan, outputs: Sequence[OutTensor], out_dir: str | os.PathLike[str],
               max_shard_size: int) -> tuple[dict[str, str], dict[str, str], IoStats]:
    import torch
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in checkpoint.files:  # safetensors, or transformers 4.x's .bin (weights only, mapped)
        loaded = (load_file(str(path)) if Path(path).suffix != ".bin"
                  else torch.load(str(path), weights_only=True, mmap=True, map_location="cpu"))
        state.update((checkpoint.current_name(key), value) for key, value in loaded.items())  # current names
    pruned = apply_plan(state, plan)
    del state

    def write(tensor: OutTensor, writer: ShardWriter) -> None:
        value = pruned[tensor.key]
        dtype = TORCH_DTYPES.get(str(value.dtype).replace("torch.", ""))
        if dtype != tensor.dtype or tuple(value.shape) != tensor.shape:
            raise RuntimeError(f"'{tensor.key}': got {dtype} {tuple(value.shape)}, planned {tensor.dtype} {tensor.shape}")
        writer.write(value.contiguous().reshape(-1).view(torch.uint8).numpy())

    hashes = write_checkpoint(out_dir, outputs, write, max_shard_size)
    from ..files import sha256_file

    size = sum(p.stat().st_size for p in checkpoint.files)
    stats: IoStats = {"bytes_read": 2 * size,
                      "bytes_written": sum((Path(out_dir) / n).stat().st_size for n in hashes)}
    return hashes, {p.name: sha256_file(p) for p in checkpoint.files}, stats


def execute_plan(plan: RemovalPlan, checkpoint: Checkpoint, out_dir: str | os.PathLike[str], streaming: bool = True,
                 max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> tuple[dict[str, str], dict[str, str], IoStats]:
    """Write the weights ``plan`` makes of ``checkpoint`` (a :class:`~encslim.models.checkpoint.Checkpoint`) into
    ``out_dir``.

    Returns:
        ``(written, source, io)``: ``{file: sha256}`` of the written weight files and of the source
        ones, and ``{"bytes_read", "bytes_written", "seconds"}`` of the weight files (in memory:
        bytes read counts the load and the hashing pass).
    """
    outputs = plan_outputs(plan, checkpoint)
    limit = parse_size(max_shard_size)
    start = time.perf_counter()
    io: IoStats
    if streaming:
        files = checkpoint.weight_files or checkpoint.files
        written, source, stats = stream_checkpoint(files, outputs, produce, out_dir, limit)
        io = {**stats.as_dict()}
    else:
        written, source, io = _in_memory(checkpoint, plan, outputs, out_dir, limit)
    io["seconds"] = round(time.perf_counter() - start, 3)
    return written, source, io


# ---------------------------------------------------------------------------- side files
def patched_json(folder: ModelFolder, name: str, ops: Sequence[JsonOp]) -> tuple[Any, Any]:
    """``(document, patched document)`` of side file ``name`` of ``folder`` (a ``ModelFolder``) under ``ops``.

    Raises:
        ModelLoadError: the file is not JSON; PlanError: the patch does not fit it (both name the file).
    """
    data = folder.config if name == CONFIG_NAME else folder.side_json(name, PROCESSOR_FIX)
    try:
        return data, apply_json_ops(data, ops)
    except PlanError as err:
        raise PlanError(f"{folder.path / name}: {err}") from err


def _patches(plan: RemovalPlan) -> dict[str, list[JsonOp]]:
    return {CONFIG_NAME: plan.config_patch, **plan.processor_patch}


def check_side_files(folder: ModelFolder, plan: RemovalPlan) -> SideFileDiffs:
    """Check the side files a model made by ``plan`` carries, before anything is written.

    Every patched file must take its patch and every carried JSON file (processor, tokenizer,
    generation config) must parse, so that a broken one fails here, naming it.

    Returns:
        ``{"config_diff": lines, "processor_diff": {file: lines}}`` (the ``--dry-run`` view).

    Raises:
        ModelLoadError: a file that is not JSON; PlanError: a patch that does not fit its file.
    """
    diffs: SideFileDiffs = {"config_diff": json_diff(*patched_json(folder, CONFIG_NAME, plan.config_patch)),
                            "processor_diff": {}}
    for name, ops in plan.processor_patch.items():
        if (folder.path / name).is_file():
            diffs["processor_diff"][name] = json_diff(*patched_json(folder, name, ops))
    for name in folder.side_files:
        if name.endswith(".json") and name not in plan.processor_patch and name not in plan.drop_files:
            folder.side_json(name, PROCESSOR_FIX)
    return diffs


def write_side_files(folder: ModelFolder, out_dir: str | os.PathLike[str],
                     plan: RemovalPlan) -> tuple[dict[str, Any] | None, list[str]]:
    """``config.json`` and the processor files patched, the other side files copied (the policy above).

    Returns:
        ``(config, left_out)``: the written ``config.json`` document, and the sorted names of the
        source's files left out (folders end with ``/``); the weights, their index and the files
        the plan drops are replaced, not left out.
    """
    out = Path(out_dir)
    patches = _patches(plan)
    config = None
    for name, ops in patches.items():
        if name == CONFIG_NAME or (folder.path / name).is_file():
            patched = patched_json(folder, name, ops)[1]
            config = patched if name == CONFIG_NAME else config
            (out / name).write_text(json.dumps(patched, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    left_out: list[str] = []
    for name in folder.side_files:
        if name in patches:
            continue
        if name.rstrip("/") in plan.drop_files:
            left_out.append(name)
        elif name.endswith("/"):
            shutil.copytree(folder.path / name, out / name)
        else:
            (out / name).write_bytes(folder.side_bytes(name))
    replaced = set(folder.weights.file_names) if folder.weights is not None else set()  # e.g. a .bin source's
    left_out = sorted(left_out + [n for n in folder.other_files if n not in patches and n not in replaced])
    if left_out:
        logger.info("left out of the output (they describe the source): %s", ", ".join(left_out))
    return config, left_out


def execute(plan: RemovalPlan, folder: ModelFolder, out_dir: str | os.PathLike[str], streaming: bool = True,
            max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> dict[str, Any]:
    """Write the model folder ``plan`` makes of ``folder`` (a ``ModelFolder``) into the existing ``out_dir``.

    Weights through :func:`execute_plan` (streaming or in memory), side files through
    :func:`write_side_files`; every source file is read once.

    Returns:
        a dict: ``written`` and ``source`` (``{file: sha256}`` of the written weights and of every
        source file read: weights, config and side files), ``io``, ``config`` (the written
        ``config.json`` document), ``left_out`` and, when the source spelt keys as an older transformers did
        (the family's ``legacy_keys``), ``legacy_keys``: ``{"renamed", "prefixes", "note"}``.

    Raises:
        PlanError: the checkpoint or a side file does not fit the plan. ModelLoadError: a side file
        is not JSON, or a weight file ended early.
    """
    weights = folder.weights
    if weights is None:
        raise ValueError(f"{folder.path} was opened without its weights (ModelFolder.open(weights=False))")
    try:
        written, source, io = execute_plan(plan, weights, out_dir, streaming, max_shard_size)
    finally:
        weights.close()
    config, left_out = write_side_files(folder, out_dir, plan)
    source.update(folder.digests())
    result: dict[str, Any] = {"written": written, "source": source, "io": io, "config": config, "left_out": left_out}
    renamed = weights.renamed
    if renamed:  # the source spelt some keys as an older transformers did: the output has the current names
        pairs = [list(pair) for pair in folder.family.legacy_keys if any(k.startswith(pair[0]) for k in renamed)]
        result["legacy_keys"] = {
            "renamed": len(renamed), "prefixes": pairs,
            "note": f"the source stores {len(renamed)} tensor(s) under an older transformers' key spelling; the "
                    "output is written in transformers 5.x's layout (current key names)"}
    return result


__all__ = ["DEFAULT_MAX_SHARD_SIZE", "apply_plan", "check_side_files", "execute", "execute_plan", "patched_json",
           "plan_outputs", "produce", "write_side_files"]
