"""The "header" of a ``.bin`` weight file (``torch.save``'s zip format): each tensor's dtype, shape and byte range.

transformers 4.3x writes ``pytorch_model*.bin`` (``save_pretrained(safe_serialization=False)``; MMVP's
I-MoF checkpoints, for one). A ``torch.save`` zip stores every storage uncompressed as its own record
(``<archive>/data/<n>``), so a contiguous tensor's bytes lie in the file at one byte range, exactly as a
safetensors tensor's do. :func:`read_bin_header` finds those ranges: the file is loaded with
``torch.load(weights_only=True, mmap=True)`` (nothing is read but the pickle; every storage is a view of
one mapping of the whole file), and each tensor's address minus the mapping's start is its offset in the
file, checked against the storage records' offsets. With those ranges, the executor streams a ``.bin``
as it streams safetensors (byte reads at offsets) and the verifier reads its tensors the same way.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

from ..errors import ModelLoadError

# torch dtype name -> safetensors dtype name
TORCH_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64", "complex64": "C64",
}
BinEntry = tuple[str, str, tuple[int, ...], int, int]  # (key, safetensors dtype, shape, byte offset, byte count)
RESAVE = "re-save the model as safetensors (save_pretrained) from a source you trust"
# the entries of the .bin files read in this process, by file identity (path, inode, size, times): the
# folder, the family's configuration and inspect each ask for the headers, one torch.load answers them all
_READ: OrderedDict[tuple[str, int, int, int, int, int], tuple[BinEntry, ...]] = OrderedDict()
MEMO_FILES = 64


def _refused(path: str | os.PathLike[str], err: BaseException) -> ModelLoadError:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text, re.DOTALL)
    reason = found.group(1).strip() if found else next((x.strip() for x in text.splitlines() if x.strip()), "")
    return ModelLoadError(f"{path} is not a plain weights file: torch.load(weights_only=True) refuses it "
                          f"({reason[:160] or type(err).__name__}); {RESAVE}, or remove the file")


def _records(path: Path) -> tuple[set[int], str]:
    """``(offsets of the storage records, byte order)`` of a ``torch.save`` zip file."""
    import torch

    reader = torch._C.PyTorchFileReader(str(path))
    names = reader.get_all_records()
    # torch's stubs omit get_record_offset (a method of the reader since torch 2.1)
    offsets: set[int] = {reader.get_record_offset(n)  # type: ignore[attr-defined]
                         for n in names if re.fullmatch(r"(.*/)?data/\d+", n)}
    order = next((reader.get_record(n).decode() for n in names if n.split("/")[-1] == "byteorder"), "little")
    return offsets, order


def read_bin_header(path: str | os.PathLike[str], size: int) -> list[BinEntry]:
    """Each tensor of one ``.bin`` weight file: ``[(key, dtype, shape, start, nbytes)]`` in storage order.

    Args:
        path: the ``.bin`` file (``torch.save`` zip format, as transformers >= 4.x writes it).
        size: its size in bytes.

    Returns:
        the list of ``(key, safetensors dtype name, shape, absolute byte offset, byte count)``, sorted
        by offset.

    Raises:
        ModelLoadError: one line naming the file: ``torch.load(weights_only=True)`` refuses it, it is
            truncated or not a zip, it holds something other than a flat ``{name: tensor}`` dict, a
            tensor that is not one contiguous byte range of the file, or big-endian data.
    """
    import torch

    path = Path(path)
    try:
        state = torch.load(str(path), weights_only=True, mmap=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise _refused(path, err) from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise ModelLoadError(f"{path} is truncated or corrupt ({str(err).splitlines()[0][:160]}); "
                             "re-download or re-save this file") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} is not a {{name: tensor}} weights file; {RESAVE}")
    offsets, order = _records(path)
    if order != "little":
        raise ModelLoadError(f"{path} stores {order}-endian tensors; {RESAVE}")
    stored = [t for t in state.values() if t.numel()]
    base = min(t.untyped_storage().data_ptr() for t in stored) - min(offsets) if stored else 0
    entries: list[BinEntry] = []
    for key, tensor in state.items():
        dtype = TORCH_DTYPES.get(str(tensor.dtype).replace("torch.", ""))
        nbytes = tensor.numel() * tensor.element_size()
        start = tensor.data_ptr() - base if nbytes else 0
        in_record = not nbytes or tensor.untyped_storage().data_ptr() - base in offsets
        if dtype is None or not tensor.is_contiguous() or not in_record or start + nbytes > size:
            raise ModelLoadError(f"{path}: tensor '{key}' ({tensor.dtype}) is not one contiguous byte range of "
                                 f"the file; {RESAVE}")
        entries.append((str(key), dtype, tuple(tensor.shape), start, nbytes))
    del state
    return sorted(entries, key=lambda entry: entry[3])


def read_bin_header_once(path: str | os.PathLike[str], stat: os.stat_result) -> tuple[BinEntry, ...]:
    """:func:`read_bin_header`, read once per version of the file in this process.

    Args:
        path: the ``.bin`` file.
        stat: its ``os.stat_result`` (``os.fstat`` of the descriptor being read); a file rewritten since
            (another inode, size, modification or change time) is read again.

    Returns:
        the entries :func:`read_bin_header` returns, as a tuple.

    Raises:
        ModelLoadError: as :func:`read_bin_header` (a refused file is not remembered).
    """
    key = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key in _READ:
        _READ.move_to_end(key)
        return _READ[key]
    entries = tuple(read_bin_header(path, stat.st_size))
    _READ[key] = entries
    while len(_READ) > MEMO_FILES:
        _READ.popitem(last=False)
    return entries
