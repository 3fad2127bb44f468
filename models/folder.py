"""A model folder, read once: ``ModelFolder.open(path)``.

Every command starts from a folder holding ``config.json``, weights and side files (tokenizer,
processor, generation config, chat template, remote code). :class:`ModelFolder` reads the config
ONCE, resolves the family ONCE from the registry's records (no adapter, no torch), reads every
weight file's header ONCE (safetensors or transformers 4.x's ``.bin``: one file or shards with an index;
keys saved under an older transformers' spelling listed under the current one) and checks each file
against its header (a truncated or garbled shard is refused here, in one line naming the file and
the fix, before any work starts). Side files are listed by one policy (:func:`carried`) and read
at most once each (:meth:`ModelFolder.side_bytes` caches the bytes, whose sha256 the manifest reuses).

The header API (standard library only):

* :func:`read_header` -> ``({key: TensorInfo}, metadata)`` of one safetensors file;
* :class:`WeightFile` one weight file (format, tensors, metadata, size): safetensors, or transformers
  4.x's ``.bin`` (its tensors' byte ranges found by :mod:`~encslim.models.bin_header`, so both are
  read the same way, by offset);
* :class:`Checkpoint` the weights of a folder (``files``, ``tensors``, :meth:`~Checkpoint.shapes`);
* :func:`key_problems` the one strict key comparison every checker uses.
"""

import hashlib
import json
import math
import os
import struct
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError, ModelLoadError, UnsupportedModelError
from ..files import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME
from . import external

MAX_HEADER_BYTES = 100 << 20
BIN_WEIGHTS_NAME = "pytorch_model.bin"  # transformers 4.x's weights with safe_serialization off
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
# bytes per element of every safetensors dtype
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "C64": 8,
}
SHOWN_KEYS = 3  # keys named per kind of problem


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


def _corrupt(path, why):
    return ModelLoadError(f"{path} is truncated or corrupt ({why}); re-download or re-save this file")


def _pread(fd, count, offset):
    data = bytearray()
    while len(data) < count:
        piece = os.pread(fd, count - len(data), offset + len(data))
        if not piece:
            break
        data += piece
    return bytes(data)


def read_header(path, size=None, fd=None):
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
    fd = os.open(path, os.O_RDONLY) if own else fd
    try:
        (length,) = struct.unpack("<Q", _pread(fd, 8, 0))
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise _corrupt(path, f"header length {length} does not fit in {size} bytes")
        raw = _pread(fd, length, 8)
    finally:
        if own:
            os.close(fd)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(path, f"header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    infos, end = [], 0
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
    tensors: dict
    metadata: dict
    size: int
    _fd: list = field(default_factory=list, repr=False, compare=False)
    renamed: dict = field(default_factory=dict, compare=False)  # {stored key: current key} (legacy spellings)

    @classmethod
    def open(cls, path, keep_open=False, legacy_keys=()):
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

    def take_fd(self):
        """The open descriptor of the file (the caller closes it), opened now if it was not kept open."""
        return self._fd.pop() if self._fd else os.open(self.path, os.O_RDONLY)

    def close(self):
        """Close the kept descriptor, if any."""
        _close_all(self._fd)


def _close_all(fds):
    while fds:
        os.close(fds.pop())


def _bin_tensors(path, stat):
    """``{key: TensorInfo}`` of a ``.bin`` file (:func:`~encslim.models.bin_header.read_bin_header_once`: each
    version of a file is loaded once per process, however many steps ask for its headers)."""
    from .bin_header import read_bin_header_once

    return {key: TensorInfo(key, path, dtype, shape, start, nbytes)
            for key, dtype, shape, start, nbytes in read_bin_header_once(path, stat)}


def weight_names(folder):
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

    def __init__(self, folder, files, tensors, weight_files=(), index_digest=None, index_name=INDEX_NAME,
                 renamed=None):
        self.folder = Path(folder)
        self.files = files
        self.tensors = tensors
        self.weight_files = tuple(weight_files)
        self.index_digest = index_digest  # sha256 of the index file, when there is one
        self.index_name = index_name  # that index file's name
        self.renamed = dict(renamed or {})  # {stored key: current key} of the keys saved under a legacy spelling

    def current_name(self, key):
        """The current (transformers 5.x) name of stored key ``key`` (:func:`canonical_keys`)."""
        return self.renamed.get(key, key)

    @property
    def format(self):
        return "bin" if any(Path(f).suffix == ".bin" for f in self.files) else "safetensors"

    @property
    def file_names(self):
        """Names of the weight files and of the index (when there is one): the checkpoint's own files."""
        return [Path(f).name for f in self.files] + ([self.index_name] if self.index_digest else [])

    @classmethod
    def open(cls, folder, keep_open=False, legacy_keys=()):
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
        index_digest, weight_map = None, None
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
        tensors, files, renamed = {}, [], {}
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

    def close(self):
        """Close the descriptors kept open (see :meth:`open`)."""
        for weight_file in self.weight_files:
            weight_file.close()

    @property
    def total_bytes(self):
        return sum(info.nbytes for info in self.tensors.values())

    def shapes(self):
        """``{key: shape}`` of every tensor."""
        return {key: info.shape for key, info in self.tensors.items()}

    def itemsizes(self):
        """``{key: bytes per element}`` of every tensor."""
        return {key: DTYPE_SIZES[info.dtype] for key, info in self.tensors.items()}


def _current_name(key, legacy_keys):
    return next((new + key[len(old):] for old, new in legacy_keys if key.startswith(old)), key)


def canonical_keys(tensors, legacy_keys, where):
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
    out, renamed = {}, {}
    for key, info in tensors.items():
        new = _current_name(key, legacy_keys)
        if new in out or (new != key and new in tensors):
            raise ModelLoadError(f"{where}: tensor '{new}' is stored twice (also as '{key}'); re-save the model")
        if new != key:
            renamed[key] = new
            info = replace(info, key=new)
        out[new] = info
    return out, renamed


# ---------------------------------------------------------------------------- the one strict key check
def _listed(keys, shown=SHOWN_KEYS):
    keys = list(keys)
    more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return f"{', '.join(keys[:shown])}{more}"


@dataclass(frozen=True)
class KeyProblems:
    """What a checkpoint's keys contradict in a model's: each list sorted.

    ``mismatched`` holds ``(key, found shape, expected shape)``; ``tolerated_missing`` the expected keys
    the checkpoint lacks that the caller tolerates (it recomputes them).
    """

    missing: tuple = ()
    unexpected: tuple = ()
    mismatched: tuple = ()
    tolerated_missing: tuple = ()

    def __bool__(self):
        return bool(self.missing or self.unexpected or self.mismatched)

    def listed(self, missing_note=""):
        """``["N missing key(s)<note>: a, b, c (+M more)", "N unexpected key(s): ...", "N mis-shaped key(s): ..."]``."""
        shaped = [f"{k} (checkpoint {list(found)}, model {list(want)})" for k, found, want in self.mismatched]
        return [f"{len(keys)} {label} key(s){note}: {_listed(keys)}"
                for label, keys, note in (("missing", self.missing, missing_note),
                                          ("unexpected", self.unexpected, ""), ("mis-shaped", shaped, ""))
                if keys]

    def examples(self):
        """``["N missing (e.g. a)", "N unexpected (e.g. b)", "N of another shape (e.g. c: [..] vs [..])"]``."""
        parts = [f"{len(keys)} {label} (e.g. {keys[0]})"
                 for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)) if keys]
        if self.mismatched:
            key, found, want = self.mismatched[0]
            parts.append(f"{len(self.mismatched)} of another shape (e.g. {key}: {list(found)} vs {list(want)})")
        return parts


def _fits(found, want):
    found, want = tuple(found), tuple(want)
    return len(found) == len(want) and all(w is None or f == w for f, w in zip(found, want))


def key_problems(expected, found, tolerated=None, optional=()):
    """Compare a checkpoint's ``{key: shape}`` with a model's: the one strict key check.

    Args:
        expected: ``{key: shape}`` the model has; a ``None`` dimension matches any size.
        found: ``{key: shape}`` the checkpoint holds.
        tolerated: a compiled pattern; keys it ``search``-es may be missing or unexpected.
        optional: keys that may be missing (tied weights, keys ignored when absent).

    Returns:
        a :class:`KeyProblems` (false when the keys fit).
    """
    def ok(key):
        return tolerated is not None and tolerated.search(key) is not None

    optional = set(optional)
    absent = sorted(k for k in expected if k not in found and k not in optional)
    return KeyProblems(
        missing=tuple(k for k in absent if not ok(k)),
        unexpected=tuple(sorted(k for k in found if k not in expected and not ok(k))),
        mismatched=tuple((k, tuple(found[k]), tuple(expected[k])) for k in sorted(found)
                         if k in expected and not _fits(found[k], expected[k])),
        tolerated_missing=tuple(k for k in absent if ok(k)),
    )


# ---------------------------------------------------------------------------- side files
# the files of a model folder that describe the model itself besides config and weights, so a model
# made from it (pruned, or re-written by export) needs them: processor, tokenizer, generation config,
# chat templates, remote code. Anything else (source weights in other formats, the source's manifest,
# model card, plots, notes) describes the source: it is left out, and named in the manifest.
CARRIED_NAMES = frozenset({
    "generation_config.json", "processor_config.json", "preprocessor_config.json", "image_processor_config.json",
    "video_preprocessor_config.json", "feature_extractor_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.json", "chat_template.jinja",
})
CARRIED_PREFIXES = ("tokenizer", "chat_template")
CARRIED_DIRS = frozenset({"additional_chat_templates"})


def carried(name, is_dir=False):
    """Whether a file (or folder) of a model folder belongs in a model made from it (besides config and
    weights): processor and tokenizer files, chat templates, remote-code ``.py`` files."""
    if is_dir:
        return name in CARRIED_DIRS
    return (name in CARRIED_NAMES or name.startswith(CARRIED_PREFIXES) or name.endswith(".py")
            or name.endswith(".tiktoken"))


def _is_weights(name, bin_format=False):
    """The weights and their index (read as :class:`Checkpoint`): safetensors, or ``.bin`` when the folder
    has no safetensors weights (``bin_format``); weights of another format than the checkpoint's describe
    the source and are left out."""
    if bin_format and (name == BIN_INDEX_NAME or name.endswith(".bin")):
        return True
    return name == INDEX_NAME or name.endswith(".safetensors")


# ---------------------------------------------------------------------------- the folder
def parse_json(path, raw, fix, error=ModelLoadError):
    """The JSON document of ``raw`` (the bytes of ``path``); ``error`` naming the file and ``fix`` if not JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}") from err


def _has_safetensors(folder):
    return (folder / INDEX_NAME).is_file() or (folder / WEIGHTS_NAME).is_file()


def _named_encoders(folder, config, family, encoders):
    """``encoders`` checked against the model's external encoder slots (the family's record says which)."""
    from .registry import resolve

    encoders = {str(k): str(v) for k, v in dict(encoders or {}).items()}
    if not encoders:
        return {}
    if family.external_encoders is None:
        raise ConfigError(f"--encoder {', '.join(sorted(encoders))}: {folder} is a {family.name} model, whose "
                          f"checkpoint holds every encoder; drop --encoder")
    slots = list(resolve(family.external_encoders)(config))
    unknown = sorted(set(encoders) - set(slots))
    if unknown:
        raise ConfigError(f"--encoder names {', '.join(unknown)}, which {folder} does not have; its encoder "
                          f"slots are {', '.join(slots)}")
    return encoders


@dataclass(frozen=True, eq=False)
class ModelFolder:
    """A model folder read once (see the module docstring); build it with :meth:`open`.

    It stands for its folder wherever a path is taken (``os.fspath``, ``Path(...)``, ``str(...)`` give
    the folder), so a command opens it once and hands it to the stages: ``load_model(folder)``,
    ``rank(folder, ...)``, ``prune(folder, ...)`` reuse it (its shard check, its encoder folders).

    Attributes:
        path: the folder.
        config: the ``config.json`` document (a dict; treat it as read-only).
        config_bytes: the bytes of ``config.json`` (for its digest).
        family: the registry's :class:`~encslim.models.registry.Family` record.
        model_type: the model_type the family handles it as (``llava`` configs may be Eagle's).
        weights: the :class:`Checkpoint` (every header read and checked), or ``None`` when opened
            without weights.
        side_files: names of the files (and folders, ending in ``/``) a model made from this one
            carries over (:func:`carried`), sorted.
        other_files: names of the files that describe the source only (left out of a derived model).
        encoders: ``{slot: folder}`` of encoders the checkpoint does not hold (Cambrian): the ones
            saved in ``config.json``, with the ones passed to :meth:`open` over them.
    """

    path: Path
    config: dict
    config_bytes: bytes
    family: object
    model_type: str
    weights: object
    side_files: tuple
    other_files: tuple
    encoders: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, path, encoders=None, weights=True):
        """Read ``config.json``, resolve the family and read every weight header, once each.

        Args:
            path: the model folder (a ``ModelFolder`` passes through when no ``encoders`` are given,
                else it is opened again with them).
            encoders: ``{slot: folder}`` of encoders the checkpoint does not hold (``--encoder``, a
                recipe's ``encoders:``), over the ones saved in ``config.json``.
            weights: read and check the weight headers, safetensors or transformers 4.x's ``.bin``
                (``False``: a folder whose weights are not needed). Tensors saved under a spelling of
                an older transformers (the family's ``legacy_keys``) are listed under the current name.

        Returns:
            the :class:`ModelFolder`.

        Raises:
            ModelLoadError: not a folder, no or broken ``config.json``, no ``model_type``, no
                safetensors weights, a truncated or garbled shard (naming it and the fix).
            UnsupportedModelError: no family handles the ``model_type``.
            ConfigError: ``encoders`` names a slot the model does not have, or the family keeps every
                encoder in its checkpoint (naming the model's slots).
        """
        from .registry import detect_family, get_adapter

        if isinstance(path, ModelFolder):
            if not encoders and (path.weights is not None or not weights):
                return path
            path = path.path
        folder = Path(path)
        if not folder.is_dir():
            raise ModelLoadError(f"{path} is not a folder; pass a model folder that holds config.json")
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise ModelLoadError(f"{path} holds no config.json, so it is not a model folder; "
                                 "pass a saved model folder")
        raw = config_file.read_bytes()
        config = parse_json(config_file, raw, "re-save the model")
        if not isinstance(config, dict) or not config.get("model_type"):
            raise ModelLoadError(f"{path}/config.json has no model_type; it is not a transformers model folder")
        found = detect_family(config)
        if found is None:
            get_adapter(str(config["model_type"]))  # raises, listing the supported families
            raise UnsupportedModelError(f"no family handles {path}/config.json")
        side, other = [], []
        bin_format = not _has_safetensors(folder)  # transformers 4.x's .bin weights are the checkpoint
        for entry in sorted(folder.iterdir()):
            name = entry.name
            if name == CONFIG_NAME or name.startswith(".") or (entry.is_file() and _is_weights(name, bin_format)):
                continue
            is_dir = entry.is_dir()
            label = name + "/" if is_dir else name
            (side if carried(name, is_dir) else other).append(label)
        paths = {**dict(config.get(external.CONFIG_KEY) or {}), **_named_encoders(folder, config, found[0], encoders)}
        checkpoint = None
        if weights:
            checkpoint = Checkpoint.open(folder, keep_open=True, legacy_keys=found[0].legacy_keys)
        return cls(path=folder, config=config, config_bytes=raw, family=found[0], model_type=found[1],
                   weights=checkpoint, side_files=tuple(side), other_files=tuple(other), encoders=paths)

    def __fspath__(self):
        return str(self.path)

    def __str__(self):
        return str(self.path)

    @property
    def adapter(self):
        """The family's adapter for this folder (imports the family's modules: torch); for a family that
        keeps encoders outside its checkpoint, bound to :attr:`encoders` (``adapter.with_encoders``)."""
        from .registry import get_adapter

        adapter = get_adapter(self.model_type)
        if self.family.external_encoders is not None and self.encoders:
            adapter = adapter.with_encoders(self.encoders)
        return adapter

    def side_bytes(self, name):
        """The bytes of side file ``name``, read once (later calls reuse them)."""
        if name not in self._cache:
            self._cache[name] = (self.path / name).read_bytes()
        return self._cache[name]

    def side_json(self, name, fix):
        """The JSON document of side file ``name`` (read once); ``ModelLoadError`` naming it and ``fix``."""
        return parse_json(self.path / name, self.side_bytes(name), fix)

    def digests(self):
        """``{file name: sha256}`` of ``config.json`` and every side file read so far (the manifest reuses them)."""
        known = {CONFIG_NAME: hashlib.sha256(self.config_bytes).hexdigest()}
        if self.weights is not None and self.weights.index_digest:
            known[getattr(self.weights, "index_name", INDEX_NAME)] = self.weights.index_digest
        known.update({name: hashlib.sha256(raw).hexdigest() for name, raw in self._cache.items()})
        return known


__all__ = ["CARRIED_DIRS", "CARRIED_NAMES", "CARRIED_PREFIXES", "Checkpoint", "DTYPE_SIZES", "KeyProblems",
           "ModelFolder", "TensorInfo", "WeightFile", "carried", "key_problems", "parse_json",
           "read_header"]
