"""Masking an encoder slot: the one vocabulary of mask modes and fusion classes, one check, one mask.

Mask modes (DESIGN §1):

* ``removal`` (default): the mask that equals physically removing the slot. Channel concat
  (A1/A2) and per-encoder branches (A3) zero the slot's features; sequence concat (B) drops its
  tokens; cross attention (C) drops its keys. Which of these applies is the fusion's business;
  for the first two :func:`mask_feature` gives the zeros.
* ``zero``: the slot's features are replaced by zeros (the study's setting), in every class.
* ``mean``: its features are replaced by one constant vector per slot (``mask_values``), e.g.
  the data-set mean; exact after removal for A1/A3, where a constant folds into a bias.

This module imports nothing but the standard library (encslim's error class only when present),
so ``export --format remote-code`` ships it beside the native modeling code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: shipped as remote code, this module imports no torch
    import torch

try:  # inside encslim, a bad mask set is a user error (one line, exit 2)
    from encslim.errors import ConfigError as MaskError
except ImportError:  # shipped as remote code, without encslim
    class MaskError(ValueError):  # type: ignore[no-redef]
        """A mask set names an unknown slot, an unknown mode, or masks every slot in removal mode."""


class _Named(str, Enum):
    """A string enum that prints (and formats, and serialises) as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class MaskMode(_Named):
    """How a masked slot's contribution is replaced (see the module docstring)."""

    REMOVAL = "removal"
    ZERO = "zero"
    MEAN = "mean"


class FusionClass(_Named):
    """How encoders enter the LLM (DESIGN §1); decides what masking and removal do."""

    A1 = "A1"  # channel concat, Linear-first projector (Eagle): removal drops weight columns, exact
    A2 = "A2"  # channel concat, LayerNorm-first projector (Eagle2): exact when the removed block stays zeros
    A3 = "A3"  # per-encoder Linear, concat, act, Linear (DeepSeek-VL hybrid): fold the constant branch
    B = "B"  # sequence concat, per-encoder projector: removal drops the slot's tokens
    C = "C"  # cross-attention aggregation (Cambrian SVA): removal drops the slot's keys
    SINGLE = "single"  # one encoder: nothing is fused, nothing can be masked


MASK_MODES = tuple(m.value for m in MaskMode)
# classes whose removal plan computes exactly what the removal mask computes
EXACT_REMOVAL = frozenset({FusionClass.A1, FusionClass.A2, FusionClass.A3, FusionClass.B, FusionClass.C})


def check_slot_names(slot_names: Sequence[str], names: Iterable[str], error: type[Exception] = MaskError,
                     what: str = "") -> list[str]:
    """Raise ``error`` naming the valid slots if any of ``names`` is not one of ``slot_names``.

    The one slot-name check of encslim (masks, drops, selections, CLI options); ``what`` prefixes
    the message (e.g. ``"--mask sam: "``).
    """
    names = list(names)
    unknown = sorted(set(names) - set(slot_names), key=str)
    if unknown:
        raise error(f"{what}unknown slot(s) {', '.join(unknown)}; this model's slots are {', '.join(slot_names)}")
    return list(names)


def check_mask_set(slot_names: Sequence[str], masked: str | Iterable[str] | None, mode: str = "removal",
                   mask_values: Mapping[str, Any] | None = None, values_required: bool = True) -> frozenset[str]:
    """Validate one mask set against a model's slots; return it as a frozenset.

    Args:
        slot_names: the model's slot names.
        masked: slot names to mask (a string is one slot).
        mode: a :class:`MaskMode` value.
        mask_values: ``{slot: (D,) tensor}``, required for every masked slot in ``mean`` mode.
        values_required: check ``mask_values`` (off where they are computed later).

    Raises:
        MaskError: an unknown slot (naming the valid ones), an unknown mode, every slot masked in
            removal mode, or missing mean values.
    """
    masked_set = frozenset([masked] if isinstance(masked, str) else (masked or ()))
    if mode not in MASK_MODES:
        raise MaskError(f"mask mode '{mode}' unknown; use one of {', '.join(MASK_MODES)}")
    check_slot_names(slot_names, masked_set)
    if mode == MaskMode.REMOVAL and slot_names and masked_set >= set(slot_names):
        raise MaskError("a mask set masks every encoder; in removal mode keep at least one slot")
    if mode == MaskMode.MEAN and values_required:
        missing = sorted(masked_set - set(mask_values or {}))
        if missing:
            raise MaskError(f"mask mode 'mean' needs mask_values for {', '.join(missing)}; "
                            "compute them with encslim.bench.features.mean_features")
    return masked_set


def mask_feature(reference: torch.Tensor, dim: int, mode: str, value: torch.Tensor | None = None) -> torch.Tensor:
    """What a masked slot contributes: zeros, or its constant, shaped like ``reference`` with ``dim`` channels.

    Args:
        reference: any feature tensor ``(B, N, D')`` of the batch (gives batch, tokens, dtype, device).
        dim: channels of the masked slot.
        mode: ``removal`` or ``zero`` (zeros) or ``mean`` (``value`` broadcast over batch and tokens).
        value: the slot's ``(dim,)`` constant for ``mean``.
    """
    shape = (*reference.shape[:-1], dim)
    if mode in (MaskMode.REMOVAL, MaskMode.ZERO):
        return reference.new_zeros(shape)
    if value is None:
        raise MaskError("mask mode 'mean' needs mask_values for every masked slot")
    return value.to(reference).expand(shape)


__all__ = ["EXACT_REMOVAL", "FusionClass", "MASK_MODES", "MaskError", "MaskMode", "check_mask_set", "check_slot_names", "mask_feature"]
