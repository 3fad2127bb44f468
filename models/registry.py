"""The family registry: one :class:`Family` record per model family, resolved lazily.

A family is one package under ``encslim/models/families/<name>/`` whose ``__init__`` makes one
call, ``register_family(Family(...))``. The record names everything else by ``"module:attribute"``
strings (like vLLM's model registry), so reading it imports neither torch nor transformers:
``encslim --help`` lists every family and its ``create-tiny`` options from the records alone, and a
family's heavy modules load only when one of its models is opened.

This module is the only place that names the built-in family packages (:data:`BUILTIN_PACKAGES`);
stages ask the registry (:func:`families`, :func:`get_adapter`, :func:`adapter_for_config`,
:func:`torch_free_plan`, :func:`export_formats`) and never import a family package themselves.

Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..errors import UnsupportedModelError

if TYPE_CHECKING:
    from .adapter import Adapter

# family name -> package that registers it on import (the only place that names the built-in ones)
BUILTIN_PACKAGES: dict[str, str] = {
    "native": "encslim.models.families.native",
    "deepseek_vl_hybrid": "encslim.models.families.deepseek_vl_hybrid",
    "eagle": "encslim.models.families.eagle",
    "eagle2": "encslim.models.families.eagle2",
    "imof": "encslim.models.families.imof",
    "cambrian": "encslim.models.families.cambrian",
}
# export formats every family has (the stage's own writers); families declare stock formats beyond these
GENERIC_EXPORTS: tuple[str, ...] = ("hf", "remote-code", "onnx")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_FAMILIES: dict[str, Family] = {}
_LOADED: dict[str, Any] = {}  # "module:attribute" -> the object (adapters are built once)


@dataclass(frozen=True)
class TinyOption:
    """One ``create-tiny`` option a family's tiny builder takes (passed to it as a keyword).

    Attributes:
        name: the keyword (``towers``); the CLI option is ``--towers``.
        default: the default, as the user would type it.
        help: one line for ``create-tiny --help``.
    """

    name: str
    default: str
    help: str


@dataclass(frozen=True)
class Family:
    """Everything encslim knows about one model family, by reference.

    Attributes:
        name: the family's name (its package name; ``create-tiny --family NAME``).
        description: one line for help texts (``Eagle v1 (X2/X4/X5) in NVlabs/EAGLE's layout``).
        adapters: ``{model_type: "module:attribute"}`` of the :class:`~encslim.models.adapter.Adapter`
            instance for each ``model_type`` the family owns (an ``Adapter`` instance also works,
            for families defined in a test or a notebook).
        detect: ``"module:function"`` taking a ``config.json`` dict and returning whether it is this
            family's, for checkpoints whose ``model_type`` is another family's name (Cambrian-8B says
            ``llava_llama``); ``None``: by ``model_type`` alone.
        plan: the module of a torch-free removal plan (a :class:`TorchFreePlan`: built from
            ``config.json`` alone, weights checked by their headers), which lets a streaming prune
            without verification (and ``--dry-run``) run without importing torch or transformers.
            ``None``: the adapter's ``removal_plan`` on the loaded config.
        tiny: ``"module:function"`` writing a tiny random model: ``tiny(out, *, seed, overwrite,
            **options)``; returns a one-line note for the user or ``None``.
        tiny_options: the options ``tiny`` takes beyond ``seed``/``overwrite``.
        exports: the stock export formats the family can be converted to (``llava``), beyond the
            generic ones (:data:`GENERIC_EXPORTS`); which kept sets allow each is the adapter's
            ``export_targets``.
        transformers: ``"module:function"`` registering the family's classes with transformers'
            Auto classes (:func:`encslim.register_transformers`); ``None``: stock classes.
        serving: ``"module:Class"`` of the family's vLLM model, for the vLLM plugin (``None``: not
            served, or served by a stock vLLM class after export).
        external_encoders: ``"module:function"`` taking a ``config.json`` dict and returning the slots
            whose encoders the checkpoint does not hold (named by ``--encoder SLOT=PATH``; standard
            library only); the family's adapter then has ``with_encoders({slot: folder})``, the
            adapter reading its configs with those folders. ``None``: the checkpoint holds every encoder.
        legacy_keys: ``(old prefix, new prefix)`` pairs: key spellings older transformers releases saved
            that the current one renames on load (4.54's ``model.vision_model.vision_model.`` ->
            ``model.vision_model.``). :class:`~encslim.models.folder.ModelFolder` applies them when it
            reads the headers, so every later step sees the current names.
    """

    name: str
    description: str
    adapters: Mapping[str, Any]
    detect: str | None = None
    plan: str | None = None
    tiny: str | None = None
    tiny_options: tuple[TinyOption, ...] = ()
    exports: tuple[str, ...] = ()
    transformers: str | None = None
    serving: str | None = None
    external_encoders: str | None = None
    legacy_keys: tuple[tuple[str, str], ...] = ()
    model_types: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"family name must be a lower-case identifier, got {self.name!r}")
        if not self.adapters:
            raise ValueError(f"family '{self.name}' names no adapter")
        for model_type in self.adapters:
            if not isinstance(model_type, str) or not model_type.replace("_", "").isalnum():
                raise ValueError(f"family '{self.name}': model_type must be an identifier, got {model_type!r}")
        if self.plan is not None and (not isinstance(self.plan, str) or ":" in self.plan):
            raise ValueError(f"family '{self.name}': plan must name a module, got {self.plan!r}")
        for ref in (self.detect, self.tiny, self.transformers, self.serving, self.external_encoders,
                    *(a for a in self.adapters.values() if isinstance(a, str))):
            if ref is not None and (not isinstance(ref, str) or ref.count(":") != 1):
                raise ValueError(f"family '{self.name}': {ref!r} is not a 'module:attribute' reference")
        for pair in self.legacy_keys:
            if (not isinstance(pair, tuple) or len(pair) != 2 or not all(isinstance(p, str) and p for p in pair)
                    or pair[0] == pair[1]):
                raise ValueError(f"family '{self.name}': legacy_keys holds {pair!r}, not an (old, new) prefix pair")
        overlap = set(self.exports) & set(GENERIC_EXPORTS)
        if overlap:
            raise ValueError(f"family '{self.name}' declares generic export format(s) {sorted(overlap)}")
        object.__setattr__(self, "model_types", tuple(self.adapters))


def resolve(ref: Any) -> Any:
    """The object a ``"module:attribute"`` reference names (imported once); other values as they are."""
    if not isinstance(ref, str):
        return ref
    if ref not in _LOADED:
        module, attr = ref.split(":")
        _LOADED[ref] = getattr(import_module(module), attr)
    return _LOADED[ref]


def register_family(family: Family) -> Family:
    """Register ``family``; a second family of the same name, or one claiming a taken model_type, is refused."""
    if not isinstance(family, Family):
        raise TypeError(f"expected a Family record, got {type(family).__name__}")
    if family.name in _FAMILIES:
        raise ValueError(f"a family named '{family.name}' is already registered")
    taken = {mt: f.name for f in _FAMILIES.values() for mt in f.model_types}
    clash = [f"{mt} ({taken[mt]})" for mt in family.model_types if mt in taken]
    if clash:
        raise ValueError(f"family '{family.name}': model_type(s) already registered: {', '.join(clash)}")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget a registered family (tests that define one of their own clean up with it)."""
    _FAMILIES.pop(name, None)


def _load_builtins() -> None:
    for name, package in BUILTIN_PACKAGES.items():
        if name not in _FAMILIES:
            import_module(package)


def families() -> dict[str, Family]:
    """Every registered family, built-in ones first: ``{name: Family}``."""
    _load_builtins()
    order = {name: i for i, name in enumerate(BUILTIN_PACKAGES)}  # a stable order, whatever was imported first
    return {name: _FAMILIES[name] for name in sorted(_FAMILIES, key=lambda n: (order.get(n, len(order)), n))}


def get_family(name: str) -> Family:
    """The family called ``name``; ``UnsupportedModelError`` listing the registered ones."""
    found = families().get(name)
    if found is None:
        raise UnsupportedModelError(f"no model family '{name}'; families: {', '.join(families())}")
    return found


def family_of(model_type: str) -> Family | None:
    """The family that owns ``model_type``, or ``None``."""
    return next((f for f in families().values() if model_type in f.model_types), None)


def supported_families() -> list[str]:
    """Every model_type encslim can handle, sorted."""
    return sorted(mt for f in families().values() for mt in f.model_types)


def get_adapter(model_type: str) -> Adapter:
    """The adapter for ``model_type``; raises ``UnsupportedModelError`` listing the supported ones."""
    family = family_of(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"model_type '{model_type}' is not supported; supported families: {', '.join(supported_families())}")
    adapter: Adapter = resolve(family.adapters[model_type])
    return adapter


def detect_family(config_dict: Mapping[str, Any]) -> tuple[Family, str] | None:
    """``(family, model_type)`` of a ``config.json`` dict, or ``None`` when no family claims it.

    The family owning the config's ``model_type`` wins unless its ``detect`` refuses the config;
    otherwise the families whose ``detect`` accepts it (Eagle, I-MoF and Cambrian all ship configs
    that say ``llava``/``llava_llama``), in registration order.
    """
    model_type = config_dict.get("model_type")
    owner = family_of(model_type) if isinstance(model_type, str) else None
    if owner is not None and isinstance(model_type, str) and (
            owner.detect is None or resolve(owner.detect)(config_dict)):
        return owner, model_type
    for family in families().values():
        if family.detect is not None and resolve(family.detect)(config_dict):
            return family, family.model_types[0]
    return None


def adapter_for_config(config_dict: Mapping[str, Any]) -> Adapter:
    """The adapter whose family a ``config.json`` belongs to (see :func:`detect_family`)."""
    found = detect_family(config_dict)
    if found is None:
        return get_adapter(str(config_dict.get("model_type")))  # raises, listing the supported ones
    return get_adapter(found[1])


class TorchFreePlan(Protocol):
    """What a family's torch-free plan module provides (standard library only)."""

    def plan_config(self, config_dict: Mapping[str, Any]) -> Any:
        """A light config object of ``config.json``, or ``None`` when only the family's full config can tell."""

    def removal_plan(self, config: Any, drop: Any) -> Any:
        """The :class:`~encslim.models.plan.RemovalPlan` dropping ``drop`` (as the adapter's would be)."""

    def check_header(self, config: Any, shapes: Mapping[str, Any], where: str) -> None:
        """Raise ``ModelLoadError`` when the weights' header shapes do not fit ``config``."""


def torch_free_plan(config_dict: Mapping[str, Any]) -> TorchFreePlan | None:
    """The family's torch-free plan module for this config (see :attr:`Family.plan`), or ``None``."""
    found = detect_family(config_dict)
    if found is None or found[0].plan is None:
        return None
    return cast("TorchFreePlan", import_module(found[0].plan))


def export_formats() -> tuple[str, ...]:
    """Every export format: the generic ones, then each family's stock formats (once each)."""
    stock = [fmt for f in families().values() for fmt in f.exports]
    return GENERIC_EXPORTS + tuple(dict.fromkeys(stock))


def register_transformers() -> None:
    """Make transformers' Auto classes load every family's folders: the one line before plain transformers.

    ``encslim.register_transformers()`` registers each family's config, model and processor classes
    (``model_type: encslim``, ``eagle_llama`` ...) with ``AutoConfig`` and the Auto model classes;
    call it once per process (again is harmless), before or after importing transformers. It is a
    call rather than a side effect of ``import encslim`` so that the import stays light (no torch, no
    transformers) and does not depend on the order of imports; families of stock transformers
    classes (DeepSeek-VL) need nothing.
    """
    for family in families().values():
        if family.transformers is not None:
            resolve(family.transformers)()


__all__ = ["BUILTIN_PACKAGES", "GENERIC_EXPORTS", "Family", "TinyOption", "TorchFreePlan", "adapter_for_config", "detect_family",
           "export_formats", "families", "family_of", "get_adapter", "get_family", "register_family",
           "register_transformers", "resolve", "supported_families", "torch_free_plan", "unregister_family"]
