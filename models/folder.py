"""A model folder, read once: ``ModelFolder.open(path)``.

Every command starts from a folder holding ``config.json``, weights and side files (tokenizer,
processor, generation config, chat template, remote code). :class:`ModelFolder` reads the config
ONCE, resolves the family ONCE from the registry's records (no adapter, no torch), reads every
weight file's header ONCE (:class:`~encslim.models.checkpoint.Checkpoint`: safetensors or
transformers 4.x's ``.bin``, one file or shards with an index; keys saved under an older
transformers' spelling listed under the current one) and checks each file against its header (a
truncated or garbled shard is refused here, in one line naming the file and the fix, before any
work starts). Side files are listed by one policy (:func:`~encslim.models.side_files.carried`) and
read at most once each (:meth:`ModelFolder.side_bytes` caches the bytes, whose sha256 the manifest
reuses).

The pieces live in their own modules and are re-exported here:

* :mod:`~encslim.models.checkpoint`: :func:`read_header`, :class:`TensorInfo`, :class:`WeightFile`,
  :class:`Checkpoint` (the header API, standard library only);
* :mod:`~encslim.models.keys`: :func:`key_problems`, the one strict key comparison every checker uses;
* :mod:`~encslim.models.side_files`: :func:`carried`, the side-file policy.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..errors import ConfigError, EncslimError, ModelLoadError, UnsupportedModelError
from ..files import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME
from . import external
from .checkpoint import (BIN_INDEX_NAME, BIN_WEIGHTS_NAME, DTYPE_SIZES, KEEP_OPEN_FILES, MAX_HEADER_BYTES,
                         Checkpoint, TensorInfo, WeightFile, canonical_keys, read_header, weight_names)
from .keys import SHOWN_KEYS, KeyProblems, key_problems
from .side_files import CARRIED_DIRS, CARRIED_NAMES, CARRIED_PREFIXES, carried, is_weights

if TYPE_CHECKING:
    from .adapter import Adapter
    from .registry import Family


class _BindsEncoders(Protocol):
    """An adapter of a family that keeps encoders outside its checkpoint (the family's ``external_encoders``)."""

    def with_encoders(self, encoders: Mapping[str, str]) -> Adapter: ...


def parse_json(path: str | os.PathLike[str], raw: bytes, fix: str,
               error: type[EncslimError] = ModelLoadError) -> Any:
    """The JSON document of ``raw`` (the bytes of ``path``); ``error`` naming the file and ``fix`` if not JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}") from err


def _has_safetensors(folder: Path) -> bool:
    return (folder / INDEX_NAME).is_file() or (folder / WEIGHTS_NAME).is_file()


def _named_encoders(folder: Path, config: Mapping[str, Any], family: Family,
                    encoders: Mapping[str, Any] | None) -> dict[str, str]:
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


def _list_files(folder: Path) -> tuple[list[str], list[str]]:
    """``(side files, other files)`` of a folder (folders end with ``/``), sorted: config.json, hidden files
    and the weights (:func:`~encslim.models.side_files.is_weights`) are neither."""
    side: list[str] = []
    other: list[str] = []
    bin_format = not _has_safetensors(folder)  # transformers 4.x's .bin weights are the checkpoint
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name == CONFIG_NAME or name.startswith(".") or (entry.is_file() and is_weights(name, bin_format)):
            continue
        is_dir = entry.is_dir()
        label = name + "/" if is_dir else name
        (side if carried(name, is_dir) else other).append(label)
    return side, other


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
    config: dict[str, Any]
    config_bytes: bytes
    family: Family
    model_type: str
    weights: Checkpoint | None
    side_files: tuple[str, ...]
    other_files: tuple[str, ...]
    encoders: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | ModelFolder, encoders: Mapping[str, Any] | None = None,
             weights: bool = True) -> ModelFolder:
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
        side, other = _list_files(folder)
        paths = {**dict(config.get(external.CONFIG_KEY) or {}), **_named_encoders(folder, config, found[0], encoders)}
        checkpoint = None
        if weights:
            checkpoint = Checkpoint.open(folder, keep_open=True, legacy_keys=found[0].legacy_keys)
        return cls(path=folder, config=config, config_bytes=raw, family=found[0], model_type=found[1],
                   weights=checkpoint, side_files=tuple(side), other_files=tuple(other), encoders=paths)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def adapter(self) -> Adapter:
        """The family's adapter for this folder (imports the family's modules: torch); for a family that
        keeps encoders outside its checkpoint, bound to :attr:`encoders` (``adapter.with_encoders``)."""
        from .registry import get_adapter

        adapter = get_adapter(self.model_type)
        if self.family.external_encoders is not None and self.encoders:
            adapter = cast(_BindsEncoders, adapter).with_encoders(self.encoders)
        return adapter

    def side_bytes(self, name: str) -> bytes:
        """The bytes of side file ``name``, read once (later calls reuse them)."""
        if name not in self._cache:
            self._cache[name] = (self.path / name).read_bytes()
        return self._cache[name]

    def side_json(self, name: str, fix: str) -> Any:
        """The JSON document of side file ``name`` (read once); ``ModelLoadError`` naming it and ``fix``."""
        return parse_json(self.path / name, self.side_bytes(name), fix)

    def digests(self) -> dict[str, str]:
        """``{file name: sha256}`` of ``config.json`` and every side file read so far (the manifest reuses them)."""
        known = {CONFIG_NAME: hashlib.sha256(self.config_bytes).hexdigest()}
        if self.weights is not None and self.weights.index_digest:
            known[self.weights.index_name] = self.weights.index_digest
        known.update({name: hashlib.sha256(raw).hexdigest() for name, raw in self._cache.items()})
        return known


__all__ = ["BIN_INDEX_NAME", "BIN_WEIGHTS_NAME", "CARRIED_DIRS", "CARRIED_NAMES", "CARRIED_PREFIXES", "Checkpoint",
           "DTYPE_SIZES", "KEEP_OPEN_FILES", "KeyProblems", "MAX_HEADER_BYTES", "ModelFolder", "SHOWN_KEYS",
           "TensorInfo", "WeightFile", "canonical_keys", "carried", "is_weights", "key_problems", "parse_json",
           "read_header", "weight_names"]
