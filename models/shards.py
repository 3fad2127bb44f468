"""Safetensors shards written tensor by tensor, without torch and without mmap.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
to its dtype, shape and byte range, then the raw bytes. The source headers (read once by
:class:`~encslim.models.folder.Checkpoint`) tell each tensor's size and place, so the executor
plans the whole output (shard boundaries included) before touching a weight. :func:`stream_checkpoint` then writes it in one pass: each source byte is read once into
a reused buffer, hashed for the source digest and, if kept, written and hashed for the output
digest on worker threads (no second pass over either file, for the manifest); the output's
writeback starts every 64 MiB instead of at the end. Memory stays at a few buffers plus one
sliced tensor, whatever the model size.
"""

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
from ..files import INDEX_NAME, WEIGHTS_NAME, sha256_file
from ..runtime import progress_bar
from .folder import DTYPE_SIZES, WeightFile

logger = logging.getLogger(__name__)

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


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
    """Writes one output file through a raw descriptor (no Python-level buffering).

    With ``writeback`` (bytes), every time that much more is written the kernel is asked to start
    writing it to disk (``posix_fadvise(DONTNEED)``: asynchronous writeback, then the page cache of
    the range is dropped once clean), so the disk works during the copy and not only at the end.
    """

    def __init__(self, path, writeback=0):
        self.path = Path(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.written = 0
        self._writeback = writeback if hasattr(os, "posix_fadvise") else 0
        self._flushed = 0

    def write(self, data):
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            view = view[os.write(self._fd, view):]
        self.written += total
        if self._writeback and self.written - self._flushed >= self._writeback:
            os.posix_fadvise(self._fd, self._flushed, self.written - self._flushed, os.POSIX_FADV_DONTNEED)
            self._flushed = self.written

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


class _Buffers:
    """A ring of reusable read buffers; a buffer is handed out again once the work queued on it ended."""

    def __init__(self, count, size):
        self._ring = [(memoryview(bytearray(size)), []) for _ in range(count)]
        self._next = 0

    def take(self):
        view, pending = self._ring[self._next]
        self._next = (self._next + 1) % len(self._ring)
        for future in pending:
            future.result()
        pending.clear()
        return view, pending

    def drain(self):
        for _, pending in self._ring:
            for future in pending:
                future.result()
            pending.clear()


class StreamStats:
    """What one streaming pass did: bytes read from the source files and written to the output."""

    def __init__(self):
        self.read = 0
        self.written = 0

    def as_dict(self):
        return {"bytes_read": self.read, "bytes_written": self.written}


class _Inline:
    """An executor that runs each submitted call at once, on the caller's thread (the sequential copy)."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits on it, as a pool would
            future.set_exception(err)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
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


def stream_checkpoint(files, tensors, produce_kept, out_dir, max_shard_size, metadata=None,
                      chunk=None, buffers=None, threads=None):
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
        chunk: bytes per read (default :data:`STREAM_CHUNK_BYTES`).
        buffers: read buffers in flight (memory: ``buffers * chunk``; default :data:`STREAM_BUFFERS`).
        threads: overlap reading, hashing and writing on worker threads (default :data:`STREAM_THREADS`);
            ``False`` does each piece's work in turn on the calling thread. The bytes are the same.

    Returns:
        ``(written, source, stats)``: ``{file name: sha256}`` of the written files and of the source
        files, and a :class:`StreamStats`.
    """
    import hashlib

    out_dir = Path(out_dir)
    metadata = metadata or {"format": "pt"}
    shards = shard_layout(tensors, max_shard_size)
    names = shard_names(len(shards))
    shard_start = {id(shard[0]): (name, shard) for name, shard in zip(names, shards) if shard}
    shard_of = {id(t): name for name, shard in zip(names, shards) for t in shard}
    fold_keys = {part.key for t in tensors if t.op == "fold" for part in t.parts if not isinstance(part, tuple)}
    by_source = {(t.source.file, t.source.start, t.source.key): t for t in tensors if t.op in ("copy", "slice")}
    stats, stash, weight_map = StreamStats(), {}, {}
    written, source_digests = {}, {}
    # one worker each, so each sees its pieces in order: source digest, output digest, output writes
    chunk = chunk or STREAM_CHUNK_BYTES
    threads = STREAM_THREADS if threads is None else threads
    if threads:
        src_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encslim-sha256-source")
        hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encslim-sha256-output")
        out_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encslim-write")
    else:
        src_pool = hash_pool = out_pool = _Inline()
    ring = _Buffers((buffers or STREAM_BUFFERS) if threads else 1, chunk)
    files = [f if isinstance(f, WeightFile) else WeightFile.open(f) for f in files]
    state = {"writer": None, "hash": None}
    bar = progress_bar(total=sum(f.size for f in files), desc="pruning", unit="B", unit_scale=True,
                       unit_divisor=1024)  # drawn on a terminal only

    def open_shard(name):  # on out_pool, ordered with the writes
        close_shard()
        state["writer"] = ShardWriter(out_dir / name, STREAM_WRITEBACK_BYTES)

    def close_shard():
        writer, state["writer"] = state["writer"], None
        if writer is not None:
            writer.close()
            stats.written += writer.written
            logger.info("wrote %s (%d bytes)", writer.path.name, writer.written)

    def write(data):
        state["writer"].write(data)

    def start_digest(name):  # on hash_pool, ordered with the updates
        finish_digest()
        state["hash"] = (name, hashlib.sha256())

    def update_digest(data):
        state["hash"][1].update(data)

    def finish_digest():
        current, state["hash"] = state["hash"], None
        if current is not None:
            written[current[0]] = current[1].hexdigest()

    pending_out = []

    def emit(data, pending=None):
        """Queue ``data`` for the current shard: written and hashed (both in order)."""
        pending = pending if pending is not None else pending_out
        pending.append(out_pool.submit(write, data))
        pending.append(hash_pool.submit(update_digest, data))

    def emit_open(name, shard):
        pending_out.append(out_pool.submit(open_shard, name))
        pending_out.append(hash_pool.submit(start_digest, name))
        emit(_header_bytes(shard, metadata))

    def emit_close():
        pending_out.append(out_pool.submit(close_shard))
        pending_out.append(hash_pool.submit(finish_digest))

    def begin(tensor):
        if id(tensor) in shard_start:
            emit_open(*shard_start[id(tensor)])
        weight_map[tensor.key] = shard_of[id(tensor)]

    next_output = iter(tensors)

    def expect(tensor):
        planned = next(next_output)
        if planned is not tensor:
            raise RuntimeError(f"output order: expected '{planned.key}', reached '{tensor.key}'")

    def read_whole(fd, digest, start, count, name):
        data = bytearray(count)
        view, at = memoryview(data), 0
        while at < count:
            got = os.preadv(fd, [view[at: at + chunk]], start + at)
            if not got:
                raise ModelLoadError(f"{name} ended early (truncated while reading); re-download it")
            at += got
        stats.read += count
        bar.update(count)
        pending_out.append(src_pool.submit(digest.update, view))
        return data

    def stream(fd, digest, start, count, name, keep):
        at = 0
        while at < count:
            view, pending = ring.take()
            got = os.preadv(fd, [view[: min(chunk, count - at)]], start + at)
            if not got:
                raise ModelLoadError(f"{name} ended early (truncated while reading); re-download it")
            piece = view[:got]
            pending.append(src_pool.submit(digest.update, piece))
            if keep:
                emit(piece, pending=pending)
            at += got
        stats.read += count
        bar.update(count)

    try:
        if not shards[0]:  # no tensor at all: one empty shard
            emit_open(names[0], shards[0])
        for weight_file in files:
            path, infos, size = weight_file.path, weight_file.tensors, weight_file.size
            digest = hashlib.sha256()
            fd = weight_file.take_fd()  # the descriptor the header was read through, when kept open
            try:
                ordered = sorted(infos.values(), key=lambda info: info.start)
                pos = 0
                if any(a.start + a.nbytes > b.start for a, b in zip(ordered, ordered[1:])):
                    raise ModelLoadError(f"{path} stores overlapping tensors; re-save the model")
                for info in ordered:
                    if info.start > pos:  # the header (and any padding) is hashed, not written
                        stream(fd, digest, pos, info.start - pos, path, keep=False)
                    out = by_source.get((info.file, info.start, info.key))
                    if out is not None:
                        expect(out)
                        begin(out)
                    if out is not None and out.op == "copy":
                        stream(fd, digest, info.start, info.nbytes, path, keep=True)
                    elif out is not None or info.key in fold_keys:
                        stash[info.key] = read_whole(fd, digest, info.start, info.nbytes, path)
                        if out is not None:
                            emit(produce_kept(out, stash))
                            del stash[info.key]
                    else:  # deleted: hashed for the source digest, never written
                        stream(fd, digest, info.start, info.nbytes, path, keep=False)
                    pos = info.start + info.nbytes
                if size > pos:
                    stream(fd, digest, pos, size - pos, path, keep=False)
                # no waiting here: the next file's reads overlap this one's last hashes and writes
                source_digests[path.name] = src_pool.submit(digest.hexdigest)
            finally:
                os.close(fd)
        for tensor in tensors:
            if tensor.op == "fold":
                expect(tensor)
                begin(tensor)
                emit(produce_kept(tensor, stash))
        emit_close()
        for future in pending_out:
            future.result()
        ring.drain()
        source_digests = {name: future.result() for name, future in source_digests.items()}
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
            text = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")
            (out_dir / INDEX_NAME).write_bytes(text)
            written[INDEX_NAME] = hashlib.sha256(text).hexdigest()
            stats.written += len(text)
        return written, source_digests, stats
    finally:
        bar.close()
        for pool in (src_pool, hash_pool, out_pool):
            pool.shutdown(wait=True, cancel_futures=True)
        if state["writer"] is not None:
            state["writer"].close()
