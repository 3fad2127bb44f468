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


def supports_llava(adapter: object) -> bool:
    """Whether ``adapter`` converts its own layout to a stock LLaVA model (:class:`LlavaConvertible`)."""
    return isinstance(adapter, LlavaConvertible)


def supports_remote_code(adapter: object) -> bool:
    """Whether ``adapter`` ships its modeling code as remote code (:class:`ShipsRemoteCode`)."""
    return isinstance(adapter, ShipsRemoteCode)
