"""Safetensors shards written tensor by tensor, without torch and without mmap.

The file format's pieces (layout, names, headers, writer, hasher) are in
:mod:`~encslim.models.shard_format` (re-exported here). The source headers (read once by
:class:`~encslim.models.folder.Checkpoint`) tell each tensor's size and place, so the executor
plans the whole output (shard boundaries included) before touching a weight.
:func:`stream_checkpoint` then writes it in one pass: each source byte is read once into a
reused buffer, hashed for the source digest and, if kept, written and hashed for the output
digest on worker threads (no second pass over either file, for the manifest); the output's
writeback starts every 64 MiB instead of at the end. Memory stays at a few buffers plus one
sliced tensor, whatever the model size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ModelLoadError
from ..files import INDEX_NAME
from ..runtime import progress_bar
from .checkpoint import TensorInfo, WeightFile
from .shard_format import (FileHasher, OutTensor, ShardWriter, header_bytes, parse_size, shard_layout,
                           shard_names)

if TYPE_CHECKING:
    from .shard_format import Buffer

T = TypeVar("T")
PathLike = str | os.PathLike[str]
# produce(tensor, writer): writes exactly ``tensor.nbytes`` bytes of ``tensor`` to ``writer``
Produce = Callable[[OutTensor, ShardWriter], None]
# produce_kept(tensor, stash): the bytes of a slice or fold output from its sources' bytes in ``stash`` (by key)
ProduceKept = Callable[[OutTensor, Mapping[str, "Buffer"]], "Buffer"]

logger = logging.getLogger(__name__)


def write_checkpoint(out_dir: PathLike, tensors: Sequence[OutTensor], produce: Produce, max_shard_size: int,
                     metadata: Mapping[str, str] | None = None, hasher: FileHasher | None = None) -> dict[str, str]:
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
    weight_map: dict[str, str] = {}
    try:
        for name, shard in zip(names, shards):
            writer = ShardWriter(out_dir / name)
            try:
                writer.write(header_bytes(shard, metadata))
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


class _Buffers:
    """A ring of reusable read buffers; a buffer is handed out again once the work queued on it ended."""

    def __init__(self, count: int, size: int) -> None:
        self._ring: list[tuple[memoryview, list[Future[Any]]]] = [
            (memoryview(bytearray(size)), []) for _ in range(count)]
        self._next = 0

    def take(self) -> tuple[memoryview, list[Future[Any]]]:
        """The next buffer, once the work queued on it ended, and the list to queue new work in."""
        view, pending = self._ring[self._next]
        self._next = (self._next + 1) % len(self._ring)
        for future in pending:
            future.result()
        pending.clear()
        return view, pending

    def drain(self) -> None:
        """Wait for the work queued on every buffer."""
        for _, pending in self._ring:
            for future in pending:
                future.result()
            pending.clear()


class StreamStats:
    """What one streaming pass did: bytes read from the source files and written to the output."""

    def __init__(self) -> None:
        self.read = 0
        self.written = 0

    def as_dict(self) -> dict[str, int]:
        """``{"bytes_read", "bytes_written"}``."""
        return {"bytes_read": self.read, "bytes_written": self.written}


class _Inline(Executor):
    """An executor that runs each submitted call at once, on the caller's thread (the sequential copy)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits on it, as a pool would
            future.set_exception(err)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


# the one-pass copy's pieces: small enough that a piece is still in the CPU cache when it is hashed and
# written (8 MiB pieces made the same copy 2-4x slower on a 2-core VM: every pass went to RAM)
STREAM_CHUNK_BYTES = 1 << 20
STREAM_BUFFERS = 8
# reading, the two digests and writing on their own threads (they overlap); False: all on one thread,
# in turn (measured by bench/perf/prune_speed.py --modes)
STREAM_THREADS = True
# start the output's writeback every this many bytes (0: leave it to the kernel's dirty-page limits)
STREAM_WRITEBACK_BYTES = 64 << 20


@dataclass(frozen=True)
class StreamOptions:
    """How :func:`stream_checkpoint` reads (each ``None``: the module default, looked up at the call).

    Attributes:
        chunk: bytes per read (default :data:`STREAM_CHUNK_BYTES`).
        buffers: read buffers in flight (memory: ``buffers * chunk``; default :data:`STREAM_BUFFERS`).
        threads: overlap reading, hashing and writing on worker threads (default :data:`STREAM_THREADS`);
            ``False`` does each piece's work in turn on the calling thread. The bytes are the same.
    """

    chunk: int | None = None
    buffers: int | None = None
    threads: bool | None = None


def stream_checkpoint(files: Sequence[WeightFile | PathLike], tensors: Sequence[OutTensor], produce_kept: ProduceKept,
                      out_dir: PathLike, max_shard_size: int, metadata: Mapping[str, str] | None = None,
                      options: StreamOptions | None = None) -> tuple[dict[str, str], dict[str, str], StreamStats]:
    """One pass over the source files, front to back: every byte is read once, hashed, and written if kept.

    Each source file is read in ``chunk``-sized pieces into a ring of buffers; one worker thread
    feeds each piece to the file's sha256 (the source digest), a second writes the kept pieces to
    their output shard and a third feeds them to the shard's sha256 (the output digest), so both
    digests come from the same buffers and neither file is read again. ``hashlib`` and ``os``
    calls release the GIL: reading, both hashes and writing overlap.

    Args:
        files: the source weight files (:class:`~encslim.models.folder.WeightFile`, headers already read;
            paths are read here), in the order their tensors appear in ``tensors``.
        tensors: the output ``OutTensor`` list in output order; ``copy`` and ``slice`` ones must
            follow their sources' storage order (as ``executor.plan_outputs`` makes them), ``fold``
            ones come last.
        produce_kept: ``produce_kept(tensor, stash) -> bytes-like`` for a ``slice`` (its ``source``
            bytes in ``stash[key]``) or ``fold`` (every part's bytes in ``stash``).
        out_dir, max_shard_size, metadata: as :func:`write_checkpoint`.
        options: chunk size, buffers in flight and threading (:class:`StreamOptions`; default: the module's).

    Returns:
        ``(written, source, stats)``: ``{file name: sha256}`` of the written files and of the source
        files, and a :class:`StreamStats`.
    """
    options = options or StreamOptions()
    threads = STREAM_THREADS if options.threads is None else options.threads
    output = _OutputShards(out_dir, metadata or {"format": "pt"}, threads)
    copy = _OnePassCopy(files, tensors, produce_kept, output,
                        _ReadSettings(options.chunk or STREAM_CHUNK_BYTES, options.buffers, threads))
    try:
        return copy.run(max_shard_size)
    finally:
        copy.close()


def _worker(threads: bool, role: str) -> Executor:
    """One worker thread per role, so each sees its pieces in order; ``_Inline`` when not threaded."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encslim-{role}") if threads else _Inline()


class _OutputShards:
    """The output side of the one-pass copy: shard files written on one worker, their sha256 on another.

    The main thread queues work (:meth:`open`, :meth:`emit`, :meth:`close`); each worker runs its own
    calls in the order they were queued, so a shard's bytes reach its file and its digest in order.
    """

    def __init__(self, out_dir: PathLike, metadata: Mapping[str, str], threads: bool) -> None:
        self.out_dir, self.metadata = Path(out_dir), metadata
        self.out_pool, self.hash_pool = _worker(threads, "write"), _worker(threads, "sha256-output")
        self.digests: dict[str, str] = {}  # {file name: sha256} of each closed shard (and the index)
        self.pending: list[Future[Any]] = []  # futures of queued work not tied to a read buffer
        self.written = 0
        self._writer: ShardWriter | None = None
        self._hash: tuple[str, hashlib._Hash] | None = None

    # -- on the main thread: queue the work
    def open(self, name: str, shard: Sequence[OutTensor]) -> None:
        """Start shard ``name`` (closing the previous one) and queue its header."""
        self.pending.append(self.out_pool.submit(self._open_file, name))
        self.pending.append(self.hash_pool.submit(self._start_digest, name))
        self.emit(header_bytes(shard, self.metadata))

    def emit(self, data: Buffer, pending: list[Future[Any]] | None = None) -> None:
        """Queue ``data`` for the current shard: written and hashed, both in order."""
        pending = self.pending if pending is None else pending
        pending.append(self.out_pool.submit(self._write, data))
        pending.append(self.hash_pool.submit(self._update_digest, data))

    def close(self) -> None:
        """Queue the end of the last shard."""
        self.pending.append(self.out_pool.submit(self._close_file))
        self.pending.append(self.hash_pool.submit(self._finish_digest))

    def wait(self) -> None:
        """Wait for every queued call not tied to a read buffer (raising the first error)."""
        for future in self.pending:
            future.result()

    def write_index(self, tensors: Sequence[OutTensor], weight_map: Mapping[str, str]) -> None:
        """Write ``model.safetensors.index.json`` (several shards) and record its digest."""
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        text = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")
        (self.out_dir / INDEX_NAME).write_bytes(text)
        self.digests[INDEX_NAME] = hashlib.sha256(text).hexdigest()
        self.written += len(text)

    def shutdown(self) -> None:
        """Stop both workers and close a shard a failure left open."""
        for pool in (self.hash_pool, self.out_pool):
            pool.shutdown(wait=True, cancel_futures=True)
        if self._writer is not None:
            self._writer.close()

    # -- on the workers
    def _open_file(self, name: str) -> None:
        self._close_file()
        self._writer = ShardWriter(self.out_dir / name, STREAM_WRITEBACK_BYTES)

    def _close_file(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            self.written += writer.written
            logger.info("wrote %s (%d bytes)", writer.path.name, writer.written)

    def _write(self, data: Buffer) -> None:
        if self._writer is None:
            raise RuntimeError("output bytes queued before their shard was opened")
        self._writer.write(data)

    def _start_digest(self, name: str) -> None:
        self._finish_digest()
        self._hash = (name, hashlib.sha256())

    def _update_digest(self, data: Buffer) -> None:
        if self._hash is None:
            raise RuntimeError("output bytes queued before their shard was opened")
        self._hash[1].update(data)  # type: ignore[arg-type]  # a numpy array is a buffer (typeshed: 3.12+ only)

    def _finish_digest(self) -> None:
        current, self._hash = self._hash, None
        if current is not None:
            self.digests[current[0]] = current[1].hexdigest()


@dataclass(frozen=True)
class _ReadSettings:
    """:class:`StreamOptions` resolved: bytes per read, buffers in flight (``None``: the default), threads."""

    chunk: int
    buffers: int | None
    threads: bool


class _OnePassCopy:
    """The input side of :func:`stream_checkpoint`: reads each source file once, front to back, into a ring
    of buffers; each piece feeds the file's sha256 (on the source worker) and, if kept, the output."""

    def __init__(self, files: Sequence[WeightFile | PathLike], tensors: Sequence[OutTensor], produce_kept: ProduceKept,
                 output: _OutputShards, settings: _ReadSettings) -> None:
        self.tensors, self.produce_kept, self.output = tensors, produce_kept, output
        self.chunk = settings.chunk
        self.src_pool = _worker(settings.threads, "sha256-source")
        self.ring = _Buffers((settings.buffers or STREAM_BUFFERS) if settings.threads else 1, settings.chunk)
        self.files = [f if isinstance(f, WeightFile) else WeightFile.open(f) for f in files]
        self.stats = StreamStats()
        self.stash: dict[str, bytearray] = {}
        self.weight_map: dict[str, str] = {}
        self.source_digests: dict[str, Future[str]] = {}
        self.fold_keys = {part.key for t in tensors if t.op == "fold" for part in t.parts
                          if not isinstance(part, tuple)}
        self.by_source = {(t.src.file, t.src.start, t.src.key): t for t in tensors if t.op in ("copy", "slice")}
        self.shard_start: dict[int, tuple[str, list[OutTensor]]] = {}
        self.shard_of: dict[int, str] = {}
        self._next_output = iter(tensors)
        self.bar = progress_bar(total=sum(f.size for f in self.files), desc="pruning", unit="B", unit_scale=True,
                                unit_divisor=1024)  # drawn on a terminal only

    def run(self, max_shard_size: int) -> tuple[dict[str, str], dict[str, str], StreamStats]:
        """Copy every file, then the folded tensors; returns ``(written, source, stats)``."""
        shards = shard_layout(self.tensors, max_shard_size)
        names = shard_names(len(shards))
        self.shard_start = {id(shard[0]): (name, shard) for name, shard in zip(names, shards) if shard}
        self.shard_of = {id(t): name for name, shard in zip(names, shards) for t in shard}
        if not shards[0]:  # no tensor at all: one empty shard
            self.output.open(names[0], shards[0])
        for weight_file in self.files:
            self._copy_file(weight_file)
        for tensor in self.tensors:
            if tensor.op == "fold":
                self._begin(tensor)
                self.output.emit(self.produce_kept(tensor, self.stash))
        self.output.close()
        self.output.wait()
        self.ring.drain()
        source = {name: future.result() for name, future in self.source_digests.items()}
        if len(shards) > 1:
            self.output.write_index(self.tensors, self.weight_map)
        self.stats.written = self.output.written
        return self.output.digests, source, self.stats

    def close(self) -> None:
        """Stop the workers (waiting for queued work) and close what is still open."""
        self.bar.close()
        self.src_pool.shutdown(wait=True, cancel_futures=True)
        self.output.shutdown()

    def _copy_file(self, weight_file: WeightFile) -> None:
        path, size, digest = weight_file.path, weight_file.size, hashlib.sha256()
        fd = weight_file.take_fd()  # the descriptor the header was read through, when kept open
        try:
            ordered = sorted(weight_file.tensors.values(), key=lambda info: info.start)
            if any(a.start + a.nbytes > b.start for a, b in zip(ordered, ordered[1:])):
                raise ModelLoadError(f"{path} stores overlapping tensors; re-save the model")
            pos = 0
            for info in ordered:
                if info.start > pos:  # the header (and any padding) is hashed, not written
                    self._stream(fd, digest, pos, info.start - pos, path, keep=False)
                self._copy_tensor(fd, digest, info, path)
                pos = info.start + info.nbytes
            if size > pos:
                self._stream(fd, digest, pos, size - pos, path, keep=False)
            # no waiting here: the next file's reads overlap this one's last hashes and writes
            self.source_digests[path.name] = self.src_pool.submit(digest.hexdigest)
        finally:
            os.close(fd)

    def _copy_tensor(self, fd: int, digest: hashlib._Hash, info: TensorInfo, path: Path) -> None:
        """One source tensor: streamed to the output (copy), read whole (slice, fold part) or only hashed."""
        out = self.by_source.get((info.file, info.start, info.key))
        if out is not None:
            self._begin(out)
        if out is not None and out.op == "copy":
            self._stream(fd, digest, info.start, info.nbytes, path, keep=True)
        elif out is not None or info.key in self.fold_keys:
            self.stash[info.key] = self._read_whole(fd, digest, info.start, info.nbytes, path)
            if out is not None:
                self.output.emit(self.produce_kept(out, self.stash))
                del self.stash[info.key]
        else:  # deleted: hashed for the source digest, never written
            self._stream(fd, digest, info.start, info.nbytes, path, keep=False)

    def _begin(self, tensor: OutTensor) -> None:
        """Check ``tensor`` is the next planned output; open its shard if it starts one."""
        planned = next(self._next_output)
        if planned is not tensor:
            raise RuntimeError(f"output order: expected '{planned.key}', reached '{tensor.key}'")
        if id(tensor) in self.shard_start:
            self.output.open(*self.shard_start[id(tensor)])
        self.weight_map[tensor.key] = self.shard_of[id(tensor)]

    def _read_whole(self, fd: int, digest: hashlib._Hash, start: int, count: int, name: Path) -> bytearray:
        data = bytearray(count)
        view, at = memoryview(data), 0
        while at < count:
            got = os.preadv(fd, [view[at: at + self.chunk]], start + at)
            if not got:
                raise ModelLoadError(f"{name} ended early (truncated while reading); re-download it")
            at += got
        self._count(count)
        self.output.pending.append(self.src_pool.submit(digest.update, view))
        return data

    def _stream(self, fd: int, digest: hashlib._Hash, start: int, count: int, name: Path, keep: bool) -> None:
        at = 0
        while at < count:
            view, pending = self.ring.take()
            got = os.preadv(fd, [view[: min(self.chunk, count - at)]], start + at)
            if not got:
                raise ModelLoadError(f"{name} ended early (truncated while reading); re-download it")
            piece = view[:got]
            pending.append(self.src_pool.submit(digest.update, piece))
            if keep:
                self.output.emit(piece, pending=pending)
            at += got
        self._count(count)

    def _count(self, count: int) -> None:
        self.stats.read += count
        self.bar.update(count)


__all__ = ["FileHasher", "OutTensor", "STREAM_BUFFERS", "STREAM_CHUNK_BYTES", "STREAM_THREADS",
           "STREAM_WRITEBACK_BYTES", "ShardWriter", "StreamOptions", "StreamStats", "parse_size", "shard_layout",
           "shard_names", "stream_checkpoint", "write_checkpoint"]
