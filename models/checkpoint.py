"""The weights of a model folder, read from their headers: :class:`Checkpoint`.

The header API (standard library only; :class:`~encslim.models.folder.ModelFolder` reads it once per
folder):

* :func:`read_header` -> ``({key: TensorInfo}, metadata)`` of one safetensors file, checked against
  the file's size (a truncated or garbled shard is refused in one line naming the file and the fix);
* :class:`WeightFile` one weight file (format, tensors, metadata, size): safetensors, or transformers
  4.x's ``.bin`` (its tensors' byte ranges found by :mod:`~encslim.models.bin_header`, so both are
  read the same way, by offset);
* :class:`Checkpoint` the weights of a folder (``files``, ``tensors``, :meth:`~Checkpoint.shapes`);
  keys saved under an older transformers' spelling are listed under the current one
  (:func:`canonical_keys`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ModelLoadError
from ..files import INDEX_NAME, WEIGHTS_NAME

PathLike = str | os.PathLike[str]
LegacyKeys = Sequence[tuple[str, str]]

MAX_HEADER_BYTES = 100 << 20
BIN_WEIGHTS_NAME = "pytorch_model.bin"  # transformers 4.x's weights with safe_serialization off
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
# bytes per element of every safetensors dtype
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "C64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte offset of its data."""

    key: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _corrupt(path: PathLike, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path} is truncated or corrupt ({why}); re-download or re-save this file")


def _pread(fd: int, count: int, offset: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        piece = os.pread(fd, count - len(data), offset + len(data))
        if not piece:
            break
        data += piece
    return bytes(data)


def read_header(path: PathLike, size: int | None = None,
                fd: int | None = None) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse one safetensors file's header and check it against the file's size (the shard check).

    Args:
        path: the ``.safetensors`` file.
        size: its size in bytes, when already known (else ``stat``-ed).
        fd: an open descriptor of the file to read through (default: the file is opened and closed).

    Returns:
        ``(infos, metadata)``: ``{key: TensorInfo}`` in storage order, and the ``__metadata__`` dict.

    Raises:
        ModelLoadError: one line naming the file: shorter than its header says, header not JSON,
            a tensor whose byte range does not fit its shape, or bytes past the last tensor.
    """
    path = Path(path)
    size = path.stat().st_size if size is None else size
    if size < 8:
        raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
    own = fd is None
    handle = os.open(path, os.O_RDONLY) if fd is None else fd
    try:
        (length,) = struct.unpack("<Q", _pread(handle, 8, 0))
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise _corrupt(path, f"header length {length} does not fit in {size} bytes")
        raw = _pread(handle, length, 8)
    finally:
        if own:
            os.close(handle)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(path, f"header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    metadata: dict[str, str] = header.pop("__metadata__", None) or {}
    infos: list[TensorInfo] = []
    end = 0
    for key, entry in header.items():
        try:
            dtype, shape, (begin, stop) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            itemsize = DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad header entry for '{key}'") from None
        if stop - begin != math.prod(shape) * itemsize or begin < 0:
            raise _corrupt(path, f"'{key}' has {stop - begin} bytes for shape {list(shape)} {dtype}")
        infos.append(TensorInfo(key, path, dtype, shape, 8 + length + begin, stop - begin))
        end = max(end, stop)
    if 8 + length + end != size:
        raise _corrupt(path, f"expected {8 + length + end} bytes, found {size}")
    infos.sort(key=lambda info: info.start)
    return {info.key: info for info in infos}, metadata


# weight files whose descriptor stays open from the header read to the streaming read (so each is opened
# once); the files past this many are opened again when streamed (the descriptor limit is often 1024)
KEEP_OPEN_FILES = 256


@dataclass(frozen=True)
class WeightFile:
    """One weight file of a folder: its format, tensors (``{key: TensorInfo}``, storage order), metadata, size.

    ``fd`` is the descriptor its header was read through, kept open for the executor's one read of
    the data (``None`` once closed or when not kept): :meth:`take_fd` hands it over.
    """

    path: Path
    format: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    size: int
    _fd: list[int] = field(default_factory=list, repr=False, compare=False)
    renamed: dict[str, str] = field(default_factory=dict, compare=False)  # {stored key: current key} (legacy spellings)

    @classmethod
    def open(cls, path: PathLike, keep_open: bool = False, legacy_keys: LegacyKeys = ()) -> WeightFile:
        """Read and check one weight file's header: safetensors, or a ``.bin`` (``torch.save`` zip, read with
        ``torch.load(weights_only=True, mmap=True)``: names, shapes, dtypes and each tensor's byte range,
        :mod:`~encslim.models.bin_header`).

        Args:
            path: the file.
            keep_open: keep the descriptor open for :meth:`take_fd` (closed when the object goes).
            legacy_keys: ``(old prefix, new prefix)`` pairs: ``tensors`` lists a tensor stored under an
                old spelling under its current name (:func:`canonical_keys`; ``renamed`` says which).

        Raises:
            ModelLoadError: the file is truncated or corrupt, or of a format without a header reader,
                or it stores one tensor under both spellings.
        """
        path = Path(path)
        if path.suffix not in (".safetensors", ".bin"):
            raise ModelLoadError(f"{path}: no header reader for this format; convert it to safetensors")
        fmt = "safetensors" if path.suffix == ".safetensors" else "bin"
        fd = os.open(path, os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            size = stat.st_size
            tensors, metadata = read_header(path, size, fd) if fmt == "safetensors" else (_bin_tensors(path, stat), {})
            tensors, renamed = canonical_keys(tensors, legacy_keys, path)
        except BaseException:
            os.close(fd)
            raise
        if not keep_open:
            os.close(fd)
            return cls(path, fmt, tensors, metadata, size, renamed=renamed)
        holder = [fd]
        weight_file = cls(path, fmt, tensors, metadata, size, holder, renamed=renamed)
        weakref.finalize(weight_file, _close_all, holder)
        return weight_file

    def take_fd(self) -> int:
        """The open descriptor of the file (the caller closes it), opened now if it was not kept open."""
        return self._fd.pop() if self._fd else os.open(self.path, os.O_RDONLY)

    def close(self) -> None:
        """Close the kept descriptor, if any."""
        _close_all(self._fd)


def _close_all(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())


def _bin_tensors(path: Path, stat: os.stat_result) -> dict[str, TensorInfo]:
    """``{key: TensorInfo}`` of a ``.bin`` file (:func:`~encslim.models.bin_header.read_bin_header_once`: each
    version of a file is loaded once per process, however many steps ask for its headers)."""
    from .bin_header import read_bin_header_once

    return {key: TensorInfo(key, path, dtype, shape, start, nbytes)
            for key, dtype, shape, start, nbytes in read_bin_header_once(path, stat)}


def weight_names(folder: PathLike) -> tuple[Path | None, list[str]]:
    """``(index file, [weight file])`` of a folder's checkpoint, as transformers picks it: safetensors
    (index, else single file) first, then transformers 4.x's ``.bin`` (index, else single file);
    ``(None, [])`` when there are none. The index is ``None`` for a single file."""
    folder = Path(folder)
    for index_name, single in ((INDEX_NAME, WEIGHTS_NAME), (BIN_INDEX_NAME, BIN_WEIGHTS_NAME)):
        if (folder / index_name).is_file():
            return folder / index_name, []
        if (folder / single).is_file():
            return None, [single]
    return None, []


class Checkpoint:
    """The weights of a model folder: safetensors, or transformers 4.x's ``pytorch_model*.bin`` (single file
    or sharded with an index; :func:`weight_names`). ``format`` is ``"safetensors"`` or ``"bin"``."""

    def __init__(self, folder: PathLike, files: list[Path], tensors: dict[str, TensorInfo],
                 weight_files: Iterable[WeightFile] = (), index_digest: str | None = None,
                 index_name: str = INDEX_NAME, renamed: Mapping[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.files = files
        self.tensors = tensors
        self.weight_files = tuple(weight_files)
        self.index_digest = index_digest  # sha256 of the index file, when there is one
        self.index_name = index_name  # that index file's name
        self.renamed = dict(renamed or {})  # {stored key: current key} of the keys saved under a legacy spelling

    def current_name(self, key: str) -> str:
        """The current (transformers 5.x) name of stored key ``key`` (:func:`canonical_keys`)."""
        return self.renamed.get(key, key)

    @property
    def format(self) -> str:
        return "bin" if any(Path(f).suffix == ".bin" for f in self.files) else "safetensors"

    @property
    def file_names(self) -> list[str]:
        """Names of the weight files and of the index (when there is one): the checkpoint's own files."""
        return [Path(f).name for f in self.files] + ([self.index_name] if self.index_digest else [])

    @classmethod
    def open(cls, folder: PathLike, keep_open: bool = False, legacy_keys: LegacyKeys = ()) -> Checkpoint:
        """Read every header of the folder's weights, once.

        Args:
            folder: the model folder.
            keep_open: keep up to :data:`KEEP_OPEN_FILES` files' descriptors open for the executor
                (see :meth:`WeightFile.take_fd`).
            legacy_keys: ``(old prefix, new prefix)`` pairs (the family's ``legacy_keys``): tensors stored
                under an old spelling are listed under the current name (:func:`canonical_keys`).

        Raises:
            ModelLoadError: no safetensors weights, a file named by the index is missing, the index
                disagrees with the files, or a file is truncated or corrupt.
        """
        folder = Path(folder)
        index_file, names = weight_names(folder)
        index_digest: str | None = None
        weight_map: dict[str, str] | None = None
        if index_file is not None:
            try:
                raw = index_file.read_bytes()
                index_digest = hashlib.sha256(raw).hexdigest()
                weight_map = {_current_name(k, legacy_keys): v for k, v in json.loads(raw)["weight_map"].items()}
                names = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
                raise ModelLoadError(f"{index_file} is not a valid index ({err}); re-save the model") from None
        elif not names:
            other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
            hint = f" (found {', '.join(other)}: convert them to safetensors first)" if other else ""
            raise ModelLoadError(f"{folder} holds no {WEIGHTS_NAME}, {BIN_WEIGHTS_NAME} or index of either{hint}")
        index_name = index_file.name if index_file is not None else INDEX_NAME
        tensors: dict[str, TensorInfo] = {}
        files: list[WeightFile] = []
        renamed: dict[str, str] = {}
        for name in names:
            if not (folder / name).is_file():
                raise ModelLoadError(f"{folder / name} is listed in {index_name} but missing; re-download it")
            weight_file = WeightFile.open(folder / name, keep_open and len(files) < KEEP_OPEN_FILES, legacy_keys)
            files.append(weight_file)
            renamed.update(weight_file.renamed)
            for key, info in weight_file.tensors.items():
                if key in tensors:
                    raise ModelLoadError(f"tensor '{key}' is stored twice ({tensors[key].file.name}, {name})")
                if weight_map is not None and weight_map.get(key) != name:
                    raise ModelLoadError(f"{index_name} does not list '{key}' of {name}; re-save the model")
                tensors[key] = info
        if weight_map is not None and set(weight_map) != set(tensors):
            missing = sorted(set(weight_map) - set(tensors))
            raise ModelLoadError(f"{index_name} lists tensors no file holds (e.g. '{missing[0]}'); re-download")
        return cls(folder, [f.path for f in files], tensors, files, index_digest, index_name, renamed)

    def close(self) -> None:
        """Close the descriptors kept open (see :meth:`open`)."""
        for weight_file in self.weight_files:
            weight_file.close()

    @property
    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{key: shape}`` of every tensor."""
        return {key: info.shape for key, info in self.tensors.items()}

    def itemsizes(self) -> dict[str, int]:
        """``{key: bytes per element}`` of every tensor."""
        return {key: DTYPE_SIZES[info.dtype] for key, info in self.tensors.items()}


def _current_name(key: str, legacy_keys: LegacyKeys) -> str:
    return next((new + key[len(old):] for old, new in legacy_keys if key.startswith(old)), key)


def canonical_keys(tensors: dict[str, TensorInfo], legacy_keys: LegacyKeys,
                   where: PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """``tensors`` under their current names: a key starting with an old prefix gets the new one.

    Args:
        tensors: ``{stored key: TensorInfo}``.
        legacy_keys: ``(old prefix, new prefix)`` pairs; the first that matches a key renames it.
        where: the file, for the error message.

    Returns:
        ``({current key: TensorInfo with that key}, {stored key: current key})`` (the second holds
        the renamed keys only).

    Raises:
        ModelLoadError: a tensor is stored under both spellings.
    """
    if not legacy_keys:
        return tensors, {}
    out: dict[str, TensorInfo] = {}
    renamed: dict[str, str] = {}
    for key, info in tensors.items():
        new = _current_name(key, legacy_keys)
        if new in out or (new != key and new in tensors):
            raise ModelLoadError(f"{where}: tensor '{new}' is stored twice (also as '{key}'); re-save the model")
        if new != key:
            renamed[key] = new
            info = replace(info, key=new)
        out[new] = info
    return out, renamed
