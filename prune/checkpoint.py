"""Safetensors checkpoints read and written tensor by tensor, without torch and without mmap.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
to its dtype, shape and byte range, then the raw bytes. Reading the header alone tells a
tensor's size and place, so surgery can plan the whole output (shard boundaries included)
before touching a weight, write every output header first, then let the kernel copy the kept
byte ranges (``copy_file_range``, as ``cp`` does). Memory stays at one sliced tensor, whatever
the model size; sha256 of every file (for the manifest) is computed on worker threads.
"""

import errno
import json
import logging
import math
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelLoadError
from ..files import CHUNK_BYTES, INDEX_NAME, WEIGHTS_NAME, sha256_file

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 100 << 20

# bytes per element of every safetensors dtype
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "C64": 8,
}

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte offset of its data."""

    key: str
    file: Path
    dtype: str
    shape: tuple
    start: int
    nbytes: int

    @property
    def numel(self):
        return math.prod(self.shape)


def parse_size(text):
    """``"2GB"`` -> 2_000_000_000, ``"500MiB"`` -> 524_288_000; ints pass through.

    Raises:
        ConfigError: the text is not a positive size.
    """
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        unit = match.group(2).upper() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ConfigError(f"size '{text}' not understood; write e.g. 2GB, 500MB or 1GiB")
        value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise ConfigError(f"size '{text}' must be positive")
    return value


def read_header(path):
    """Parse and check one safetensors file's header.

    Returns:
        ``(infos, metadata)``: ``{key: TensorInfo}`` in storage order, and the ``__metadata__`` dict.

    Raises:
        ModelLoadError: the file is truncated or corrupt (named in the message).
    """
    path = Path(path)
    size = path.stat().st_size

    def corrupt(why):
        return ModelLoadError(f"{path} is truncated or corrupt ({why}); re-download or re-save this file")

    if size < 8:
        raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise corrupt(f"header length {length} does not fit in {size} bytes")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise corrupt(f"header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    infos, end = [], 0
    for key, entry in header.items():
        try:
            dtype, shape, (begin, stop) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            itemsize = DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"bad header entry for '{key}'") from None
        if stop - begin != math.prod(shape) * itemsize or begin < 0:
            raise corrupt(f"'{key}' has {stop - begin} bytes for shape {list(shape)} {dtype}")
        infos.append(TensorInfo(key, path, dtype, shape, 8 + length + begin, stop - begin))
        end = max(end, stop)
    if 8 + length + end != size:
        raise corrupt(f"expected {8 + length + end} bytes, found {size}")
    infos.sort(key=lambda info: info.start)
    return {info.key: info for info in infos}, metadata


class Checkpoint:
    """The safetensors weights of a model folder (single file or sharded with an index)."""

    def __init__(self, folder, files, tensors):
        self.folder = Path(folder)
        self.files = files
        self.tensors = tensors

    @classmethod
    def open(cls, folder):
        """Read every header of the folder's weights.

        Raises:
            ModelLoadError: no safetensors weights, a file named by the index is missing, the index
                disagrees with the files, or a file is truncated or corrupt.
        """
        folder = Path(folder)
        index_file = folder / INDEX_NAME
        if index_file.is_file():
            try:
                weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ModelLoadError(f"{index_file} is not a valid index ({err}); re-save the model") from None
            names = sorted(set(weight_map.values()))
        elif (folder / WEIGHTS_NAME).is_file():
            weight_map, names = None, [WEIGHTS_NAME]
        else:
            other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
            hint = f" (found {', '.join(other)}: convert them to safetensors first)" if other else ""
            raise ModelLoadError(f"{folder} holds no safetensors weights{hint}")
        tensors = {}
        for name in names:
            if not (folder / name).is_file():
                raise ModelLoadError(f"{folder / name} is listed in {INDEX_NAME} but missing; re-download it")
            infos, _ = read_header(folder / name)
            for key, info in infos.items():
                if key in tensors:
                    raise ModelLoadError(f"tensor '{key}' is stored twice ({tensors[key].file.name}, {name})")
                if weight_map is not None and weight_map.get(key) != name:
                    raise ModelLoadError(f"{INDEX_NAME} does not list '{key}' of {name}; re-save the model")
                tensors[key] = info
        if weight_map is not None and set(weight_map) != set(tensors):
            missing = sorted(set(weight_map) - set(tensors))
            raise ModelLoadError(f"{INDEX_NAME} lists tensors no file holds (e.g. '{missing[0]}'); re-download")
        return cls(folder, [folder / n for n in names], tensors)

    @property
    def total_bytes(self):
        return sum(info.nbytes for info in self.tensors.values())

    def shapes(self):
        return {key: info.shape for key, info in self.tensors.items()}


@dataclass(frozen=True)
class OutTensor:
    """One tensor of the output: name, dtype, shape, and how to make it (see ``surgery``)."""

    key: str
    dtype: str
    shape: tuple
    op: str  # "copy" | "slice" | "fold"
    source: object = None  # TensorInfo for copy/slice
    dim: int = 0
    keep: tuple = ()  # ((start, stop), ...) for slice
    parts: tuple = ()  # (TensorInfo | ("zeros", shape), ...) for fold

    @property
    def nbytes(self):
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def shard_layout(tensors, max_shard_size):
    """Group output tensors, in order, into shards of at most ``max_shard_size`` bytes.

    A tensor larger than the limit gets a shard of its own (as transformers does).
    """
    shards, current, used = [], [], 0
    for tensor in tensors:
        if current and used + tensor.nbytes > max_shard_size:
            shards.append(current)
            current, used = [], 0
        current.append(tensor)
        used += tensor.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def shard_names(count):
    if count == 1:
        return [WEIGHTS_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class FileHasher:
    """sha256 of whole files on two worker threads, beside the copying done by the main thread.

    ``hashlib`` and file reads release the GIL, so hashing the source files (read back from the
    page cache) and each output shard (hashed as soon as it is closed) overlaps the writing.
    """

    def __init__(self, workers=2):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encslim-sha256")
        self._futures = {}

    def submit(self, name, path):
        self._futures[name] = self._executor.submit(sha256_file, path)

    def results(self, names=None):
        """``{name: sha256}`` of the submitted files (waits for them)."""
        names = list(self._futures) if names is None else names
        return {name: self._futures[name].result() for name in names}

    def close(self):
        self._executor.shutdown(wait=True, cancel_futures=True)


class ShardWriter:
    """Writes one output file through a raw descriptor: bytes from memory, or ranges copied by the
    kernel (``copy_file_range``) straight from a source file, never passing through Python."""

    def __init__(self, path):
        self.path = Path(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.written = 0

    def write(self, data):
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            view = view[os.write(self._fd, view):]
        self.written += total

    def copy_range(self, source_fd, offset, count, name):
        """Append ``count`` bytes of ``source_fd`` from ``offset`` (``name`` for error messages)."""
        done = 0
        try:
            while done < count:
                got = os.copy_file_range(source_fd, self._fd, min(count - done, 1 << 30), offset + done)
                if not got:
                    raise ModelLoadError(f"{name} ended early (truncated while reading); re-download it")
                done += got
        except OSError as err:
            if done or err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            self._copy_buffered(source_fd, offset, count, name)  # no kernel copy between these file systems
        self.written += count

    def _copy_buffered(self, source_fd, offset, count, name):
        buffer = memoryview(bytearray(min(count, CHUNK_BYTES)))
        done = 0
        while done < count:
            got = os.preadv(source_fd, [buffer[: min(count - done, len(buffer))]], offset + done)
            if not got:
                raise ModelLoadError(f"{name} ended early (truncated while reading); re-download it")
            view = buffer[:got]
            while view:
                view = view[os.write(self._fd, view):]
            done += got

    def close(self):
        os.close(self._fd)


def _header_bytes(tensors, metadata):
    header, offset = {"__metadata__": dict(metadata)}, 0
    for tensor in tensors:
        header[tensor.key] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                              "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def write_checkpoint(out_dir, tensors, produce, max_shard_size, metadata=None, hasher=None):
    """Write output tensors as safetensors shards (plus an index when there are several).

    Args:
        out_dir: the folder to write into.
        tensors: ``OutTensor`` list, in output order.
        produce: ``produce(tensor, writer)`` writes exactly ``tensor.nbytes`` bytes to the
            :class:`ShardWriter` ``writer``.
        max_shard_size: bytes per shard at most (a larger single tensor gets its own shard).
        metadata: the safetensors ``__metadata__`` (default ``{"format": "pt"}``).
        hasher: a :class:`FileHasher` to hash the shards with (default: a private one).

    Returns:
        ``{file name: sha256}`` of every file written.
    """
    out_dir = Path(out_dir)
    metadata = metadata or {"format": "pt"}
    shards = shard_layout(tensors, max_shard_size)
    names = shard_names(len(shards))
    own = hasher is None
    hasher = hasher or FileHasher()
    weight_map = {}
    try:
        for name, shard in zip(names, shards):
            writer = ShardWriter(out_dir / name)
            try:
                writer.write(_header_bytes(shard, metadata))
                for tensor in shard:
                    before = writer.written
                    produce(tensor, writer)
                    if writer.written - before != tensor.nbytes:
                        raise RuntimeError(f"wrote {writer.written - before} bytes for '{tensor.key}', "
                                           f"expected {tensor.nbytes}")
                    weight_map[tensor.key] = name
            finally:
                writer.close()
            hasher.submit(name, out_dir / name)
            logger.info("wrote %s (%d tensors, %d bytes)", name, len(shard), writer.written)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
            (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            hasher.submit(INDEX_NAME, out_dir / INDEX_NAME)
        return hasher.results(names + ([INDEX_NAME] if len(shards) > 1 else []))
    finally:
        if own:
            hasher.close()


def read_tensor_bytes(info):
    """The raw bytes of one tensor, read with a positioned read."""
    out = bytearray(info.nbytes)
    view, at = memoryview(out), 0
    with open(info.file, "rb", buffering=0) as f:
        while at < info.nbytes:
            got = os.preadv(f.fileno(), [view[at: at + CHUNK_BYTES]], info.start + at)
            if not got:
                raise ModelLoadError(f"{info.file} ended early reading '{info.key}'; re-download it")
            at += got
    return out
