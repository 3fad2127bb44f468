"""Safetensors shard files: sizes, the output tensors' layout into shards, their names and headers,
a raw writer and a whole-file hasher.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
to its dtype, shape and byte range, then the raw bytes. :mod:`encslim.models.shards` writes them
(:func:`~encslim.models.shards.write_checkpoint`, :func:`~encslim.models.shards.stream_checkpoint`).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

from ..errors import ConfigError
from ..files import WEIGHTS_NAME, sha256_file
from .checkpoint import DTYPE_SIZES, TensorInfo

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Buffer = bytes | bytearray | memoryview | npt.NDArray[np.uint8]  # the bytes-like values written and hashed

Op = Literal["copy", "slice", "fold"]
FoldPart = Union[TensorInfo, tuple[str, tuple[int, ...]]]  # a source tensor, or ("zeros", shape)

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: int | str) -> int:
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


@dataclass(frozen=True)
class OutTensor:
    """One tensor of the output: name, dtype, shape, and how to make it (see ``surgery``)."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    op: Op
    source: TensorInfo | None = None  # for copy/slice
    dim: int = 0
    keep: tuple[tuple[int, int], ...] = ()  # ((start, stop), ...) for slice
    parts: tuple[FoldPart, ...] = ()  # for fold

    @property
    def src(self) -> TensorInfo:
        """The source tensor of a ``copy`` or ``slice`` output (``ValueError`` for a fold)."""
        if self.source is None:
            raise ValueError(f"output tensor '{self.key}' ({self.op}) has no single source tensor")
        return self.source

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def shard_layout(tensors: Iterable[OutTensor], max_shard_size: int) -> list[list[OutTensor]]:
    """Group output tensors, in order, into shards of at most ``max_shard_size`` bytes.

    A tensor larger than the limit gets a shard of its own (as transformers does).
    """
    shards: list[list[OutTensor]] = []
    current: list[OutTensor] = []
    used = 0
    for tensor in tensors:
        if current and used + tensor.nbytes > max_shard_size:
            shards.append(current)
            current, used = [], 0
        current.append(tensor)
        used += tensor.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def shard_names(count: int) -> list[str]:
    """The file names of ``count`` shards, as transformers names them."""
    if count == 1:
        return [WEIGHTS_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class FileHasher:
    """sha256 of whole files on two worker threads, beside the copying done by the main thread.

    ``hashlib`` and file reads release the GIL, so hashing the source files (read back from the
    page cache) and each output shard (hashed as soon as it is closed) overlaps the writing.
    """

    def __init__(self, workers: int = 2) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encslim-sha256")
        self._futures: dict[str, Future[str]] = {}

    def submit(self, name: str, path: str | os.PathLike[str]) -> None:
        """Start hashing file ``path``, recorded as ``name``."""
        self._futures[name] = self._executor.submit(sha256_file, path)

    def results(self, names: Sequence[str] | None = None) -> dict[str, str]:
        """``{name: sha256}`` of the submitted files (waits for them)."""
        names = list(self._futures) if names is None else names
        return {name: self._futures[name].result() for name in names}

    def close(self) -> None:
        """Stop the workers (waiting for the started hashes)."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class ShardWriter:
    """Writes one output file through a raw descriptor (no Python-level buffering).

    With ``writeback`` (bytes), every time that much more is written the kernel is asked to start
    writing it to disk (``posix_fadvise(DONTNEED)``: asynchronous writeback, then the page cache of
    the range is dropped once clean), so the disk works during the copy and not only at the end.
    """

    def __init__(self, path: str | os.PathLike[str], writeback: int = 0) -> None:
        self.path = Path(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.written = 0
        self._writeback = writeback if hasattr(os, "posix_fadvise") else 0
        self._flushed = 0

    def write(self, data: Buffer) -> None:
        """Write all of ``data``."""
        # a numpy array is a buffer, which typeshed says for Python 3.12+ only (mypy checks as 3.11)
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        total = len(view)
        while view:
            view = view[os.write(self._fd, view):]
        self.written += total
        if self._writeback and self.written - self._flushed >= self._writeback:
            os.posix_fadvise(self._fd, self._flushed, self.written - self._flushed, os.POSIX_FADV_DONTNEED)
            self._flushed = self.written

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def header_bytes(tensors: Iterable[OutTensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors header of a shard holding ``tensors`` in order: length, JSON, padding to 8 bytes."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for tensor in tensors:
        header[tensor.key] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                              "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as safetensors does
    return struct.pack("<Q", len(raw)) + raw
