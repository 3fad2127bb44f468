"""Optional capabilities of a family's adapter, as typed Protocols with ``supports_*`` checks.

A stage that needs more than the :class:`~encslim.models.adapter.Adapter` interface asks
``supports_llava(adapter)`` (like vLLM's ``supports_multimodal(model)``) instead of probing attributes
with ``getattr``; a family opts in by defining the methods. Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class LlavaConvertible(Protocol):
    """A family in its own layout that converts a kept set to a stock ``LlavaForConditionalGeneration``."""

    def llava_blockers(self, config: Any, kept: Sequence[str]) -> list[str]:
        """Why ``kept`` cannot become a stock LLaVA model: one-line reasons, empty when it can."""

    def to_llava(self, model: Any, processor: Any) -> tuple[Any, dict[str, Any], Any]:
        """``(LlavaConfig, state_dict, LlavaProcessor)`` computing what ``model`` computes."""


@dataclass(frozen=True)
class RemoteCode:
    """The code files a family ships for ``trust_remote_code`` loading, and their ``auto_map`` entries.

    Attributes:
        files: ``{shipped file name: source file}``; relative imports between the sources are
            rewritten to the shipped names, so the folder is flat.
        model_auto_map: ``config.json``'s ``auto_map`` (``{"AutoConfig": "configuration_x.XConfig"}``).
        processor_auto_map: ``processor_config.json``'s ``auto_map``.
    """

    files: Mapping[str, Path]
    model_auto_map: Mapping[str, str] = field(default_factory=dict)
    processor_auto_map: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class ShipsRemoteCode(Protocol):
    """A family whose modeling code can ship inside a model folder (torch and transformers only)."""

    def remote_code(self) -> RemoteCode:
        """The files and ``auto_map`` entries of a remote-code export."""


@dataclass(frozen=True)
class StockExport:
    """A stock transformers format a family reaches by removing slots, then loading with the stock classes.

    The export stage does the generic work (the family's removal plan, in memory, including its
    config and processor patches; writing; verification against the masked source); this record
    and :meth:`StockConvertible.stock_notes` carry what only the family knows.

    Attributes:
        format: the ``--format`` name (one of the family's ``Family.exports``).
        title: the model card's description of the format (``stock transformers XForConditionalGeneration``).
        needs: what a model must be for the format, for refusals (``a x_hybrid model (its 'y' slot is removed)``).
    """

    format: str
    title: str
    needs: str


@runtime_checkable
class StockConvertible(Protocol):
    """A family whose kept sets (``export_targets``) reach a stock format by its exact removal plan.

    The kept sets that reach ``format`` and the reasons others do not are the adapter's
    ``export_targets`` / ``export_blockers``; the conversion of weights, config and processor files
    is its ``removal_plan`` (``target_model_type``, ``config_patch``, ``processor_patch``).
    """

    def stock_export(self, fmt: str) -> StockExport | None:
        """The description of stock format ``fmt``, or ``None`` when this family does not reach it."""

    def stock_notes(self, fmt: str, drop: Sequence[str], gap: Mapping[str, float]) -> list[str]:
        """Model card lines for a ``fmt`` folder made by removing ``drop`` from this family's model.

        ``gap`` holds ``pixel_max_abs_diff`` and ``logits_max_abs_diff``: how far the stock
        processor's pixels (and the logits they give) are from the source processor's on the same
        raw images; the lines say why they differ, when they do.
        """


def supports_llava(adapter: object) -> bool:
    """Whether ``adapter`` converts its own layout to a stock LLaVA model (:class:`LlavaConvertible`)."""
    return isinstance(adapter, LlavaConvertible)


def supports_stock_export(adapter: object) -> bool:
    """Whether ``adapter`` reaches a stock format by removing slots (:class:`StockConvertible`)."""
    return isinstance(adapter, StockConvertible)


def supports_remote_code(adapter: object) -> bool:
    """Whether ``adapter`` ships its modeling code as remote code (:class:`ShipsRemoteCode`)."""
    return isinstance(adapter, ShipsRemoteCode)
