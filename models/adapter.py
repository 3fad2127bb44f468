"""The adapter interface and its registry.

An adapter knows one model family (keyed by ``model_type``): its encoder slots, how to split a
forward into ``encode`` and ``decode`` with some slots masked, whether removing a slot is exact,
how to build a removal plan, and which stock export targets a kept set allows. Adding a family
is one file that defines an adapter and calls :func:`register_adapter` once.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import import_module

from ..errors import ConfigError, UnsupportedModelError

MASK_MODES = ("removal", "zero", "mean")

# families shipped with encslim: model_type -> module that registers its adapter on import
BUILTIN_FAMILIES = {
    "encslim": "encslim.models.native",
    "deepseek_vl_hybrid": "encslim.models.deepseek_vl_hybrid", "deepseek_vl": "encslim.models.deepseek_vl_hybrid",
}

_REGISTRY = {}


@dataclass(frozen=True)
class Slot:
    """One named vision encoder and what exists only for it.

    Attributes:
        name: the slot's name (``sam``, ``siglip``), used everywhere instead of an index.
        backbone: the vision backbone's ``model_type``.
        image_size: side of the square input image.
        num_tokens: feature tokens the slot delivers to the fusion.
        feature_dim: channels of those features.
        removal_exact: whether physically removing the slot computes exactly the masked model.
    """

    name: str
    backbone: str
    image_size: int
    num_tokens: int
    feature_dim: int
    removal_exact: bool


class Adapter(ABC):
    """What encslim needs to know about one model family."""

    model_type: str = ""

    @abstractmethod
    def slots(self, config):
        """The model's encoder slots, in fusion order: ``list[Slot]``."""

    @abstractmethod
    def fusion_class(self, config):
        """The DESIGN §1 fusion class: ``A1``, ``A2``, ``A3``, ``B`` or ``C``."""

    @abstractmethod
    def load(self, path, device="cpu", dtype=None, device_map=None):
        """Load ``(model, processor)`` from a local folder."""

    @abstractmethod
    def encode(self, model, batch):
        """Run every slot's encoder once: ``{slot: features}``."""

    @abstractmethod
    def decode(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        """Fusion + LLM with ``masked`` slots masked; returns a ``CausalLMOutputWithPast``."""

    @abstractmethod
    def prepare_batch(self, processor, images, prompts, masked=frozenset()):
        """Model inputs (a dict of tensors) for images and prompts with ``masked`` slots removed."""

    def removal_plan(self, config, drop):
        """The removal plan for dropping slots ``drop``."""
        raise NotImplementedError(f"{type(self).__name__} cannot build removal plans yet")

    def export_targets(self, config, kept):
        """Names of the stock export formats available when only ``kept`` slots remain."""
        return ["hf"]

    def slot_names(self, config):
        return [s.name for s in self.slots(config)]

    def check_slots(self, config, names):
        """Raise ``ConfigError`` naming the valid slots if any of ``names`` is unknown."""
        valid = self.slot_names(config)
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise ConfigError(f"unknown slot(s) {', '.join(unknown)}; this model's slots are {', '.join(valid)}")


def register_adapter(adapter):
    """Register an adapter instance for its ``model_type``; duplicates and bad names are rejected."""
    if not isinstance(adapter, Adapter):
        raise TypeError(f"expected an Adapter instance, got {type(adapter).__name__}")
    name = adapter.model_type
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
        raise ValueError(f"adapter model_type must be a non-empty identifier, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"an adapter for model_type '{name}' is already registered")
    _REGISTRY[name] = adapter
    return adapter


def supported_families():
    """Every model_type encslim can handle (built-in and registered)."""
    return sorted(set(BUILTIN_FAMILIES) | set(_REGISTRY))


def get_adapter(model_type):
    """The adapter for ``model_type``; raises ``UnsupportedModelError`` listing the supported ones."""
    if model_type not in _REGISTRY and model_type in BUILTIN_FAMILIES:
        import_module(BUILTIN_FAMILIES[model_type])
    adapter = _REGISTRY.get(model_type)
    if adapter is None:
        raise UnsupportedModelError(
            f"model_type '{model_type}' is not supported; supported families: {', '.join(supported_families())}"
        )
    return adapter
