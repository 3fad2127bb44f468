"""Finishing an export folder: the model card and the manifest, written last.

The card needs what the pipeline knows about the model: the slots removed (from the source's
manifest), the ranking that motivated it (``--ranking`` or the ranking recorded in the
manifest), the removal's verification, and benchmark figures (``--bench``). The manifest is
written by the one shared writer (:mod:`encslim.provenance`) and lists every file's sha256.
"""

import logging
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Optional, Union

from .. import __version__
from ..errors import ConfigError
from ..files import BENCH_NAME as BENCH_FILE, CARD_NAME, RANKING_NAME, read_json
from .model_card import render_card

logger = logging.getLogger(__name__)


def load_ranking_arg(ranking):
    """The ranking dict from ``--ranking`` (a folder with ranking.json, or the file), or None.

    Read as plain JSON (the card shows it; ``encslim rank`` owns its schema): it must be an object
    with a ``slots`` list and a ``cur`` object, which the card's table reads.

    Raises:
        ConfigError: the file is missing, not JSON, or not a ranking.
    """
    if ranking is None:
        return None
    path = Path(ranking)
    path = path / RANKING_NAME if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"no ranking at {ranking}; pass a folder written by `encslim rank` or its {RANKING_NAME}")
    data = read_json(path, fix="rerun `encslim rank`")
    if not isinstance(data, dict) or not isinstance(data.get("slots"), list) or not isinstance(data.get("cur"), dict):
        raise ConfigError(f"{path} is not a ranking (no 'slots' list and 'cur' object); pass a {RANKING_NAME} "
                          "written by `encslim rank`")
    return data


def ranking_from_manifest(source):
    """The ranking the source's manifest records (``{"ranking": path, ...}``) if that file still exists."""
    from ..provenance import ranking_path

    recorded = ranking_path(source.manifest.get("ranking"))
    if isinstance(recorded, str) and recorded:
        path = Path(recorded)
        if not path.is_absolute():
            path = source.path / path
        if path.exists():
            return load_ranking_arg(path)
        logger.info("ranking %s recorded in the manifest is gone; the card has no CUR/IG table", recorded)
    return None


def load_bench_arg(bench):
    """The ``bench.json`` dict from ``--bench`` (its folder or the file), or None."""
    if bench is None:
        return None
    path = Path(bench)
    path = path / BENCH_FILE if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"no {BENCH_FILE} at {bench}; pass a folder written by `encslim bench`")
    return read_json(path, fix="rerun `encslim bench`")


def check_card_inputs(ranking, bench):
    """Read ``--ranking`` and ``--bench`` once up front, so a bad path fails before any work."""
    load_ranking_arg(ranking)
    load_bench_arg(bench)


def removed_slots(source):
    """Slots removed over the source's whole lineage (its manifest accumulates them; empty for an
    unpruned model)."""
    return list(source.manifest.get("removed_slots") or [])


def origin_path(source):
    """The original model the source descends from (its manifest's ``origin``), else the source itself."""
    origin = source.manifest.get("origin")
    if isinstance(origin, dict) and origin.get("path"):
        return origin["path"]
    recorded = source.manifest.get("source")
    if isinstance(recorded, dict) and recorded.get("path"):  # a manifest written before ``origin`` existed
        return recorded["path"]
    return str(Path(source.path).resolve())


def lineage_rows(source, fmt, kept):
    """One line per stage from the original model to this export (the card's "Lineage" section)."""
    from ..provenance import lineage_text

    rows = lineage_text(source.manifest)
    if not rows and source.manifest.get("stage"):  # a manifest written before ``lineage`` existed
        rows = lineage_text({"lineage": [{"stage": source.manifest.get("stage"),
                                          "removed_slots": removed_slots(source),
                                          "kept_slots": source.manifest.get("kept_slots"),
                                          "ranking": source.manifest.get("ranking"),
                                          "verification": source.manifest.get("verification")}]})
    return rows + [f"export ({fmt}): kept {', '.join(kept)}; verified against {source.path} (below)"]


def slot_rows(adapter, config):
    """Card rows for the slots of a (native or adapted) config."""
    return [{"name": s.name, "backbone": s.backbone, "image_size": s.image_size, "num_tokens": s.num_tokens}
            for s in adapter.slots(config)]


@dataclass(frozen=True)
class CardInputs:
    """What the model card shows beyond the model: ``--ranking`` and ``--bench`` (paths, each optional).

    Attributes:
        ranking: a ranking folder or ranking.json (default: the ranking the source's manifest records).
        bench: a folder with bench.json (or the file).
    """

    ranking: Optional[Union[str, PathLike]] = None
    bench: Optional[Union[str, PathLike]] = None

    def check(self):
        """Read both once up front, so a bad path fails before any work (:func:`check_card_inputs`)."""
        check_card_inputs(self.ranking, self.bench)


@dataclass(frozen=True)
class FormatInfo:
    """What a format adds to its folder's card and manifest.

    Attributes:
        name: the format name recorded in the card and manifest (``--format``).
        title: the card's description of the format (a family's stock format says which classes load it);
            default: :data:`~encslim.export.model_card.FORMAT_TITLES`.
        notes: extra lines for the card.
        details: format-specific data recorded in the manifest's ``export`` record.
        same_tokenizer: the folder holds the source's tokenizer unchanged, so the source's slow-tokenizer files
            (``tokenizer.model``) are carried byte for byte (:func:`~encslim.export.compat.carry_slow_tokenizer`).
    """

    name: str
    title: Optional[str] = None
    notes: tuple = ()
    details: dict = field(default_factory=dict)
    same_tokenizer: bool = False


@dataclass(frozen=True)
class LoadedSource:
    """A :class:`~encslim.export.common.Source` with the model and processor loaded (or converted) from it."""

    source: object
    model: object
    processor: object

    @property
    def adapter(self):
        """The source's family adapter."""
        return self.source.adapter


def token_budget_entry(adapter, config):
    """The card's and manifest's ``token_budget``: ``{"method", "budget", "source", "image_tokens"}`` (the method's
    source paper, the image tokens per image the LLM reads), or ``None`` when the model reads every token."""
    from ..models.tokens import SOURCES, budget_of

    budget = budget_of(config)
    if budget is None:
        return None
    return {**budget.to_dict(), "source": SOURCES[budget.method], "image_tokens": adapter.image_tokens(config)}


def finish_folder(folder, loaded, fmt, *, verification, how_to_load, parameters=None, card=CardInputs()):
    """Write ``README.md`` then the manifest into ``folder`` (the temporary output folder).

    Args:
        folder: the folder being written.
        loaded: the :class:`LoadedSource` exported (its model's config gives the card's slots and fusion class).
        fmt: the :class:`FormatInfo` of the export.
        verification: the export's verification records (``check_logits`` dicts).
        how_to_load: Python code shown in the card.
        parameters: the written model's parameter count, shown in the card when known.
        card: the card's ``--ranking`` (else the manifest's ranking is used when it still exists) and ``--bench``.

    Returns:
        The manifest dict.
    """
    source, config = loaded.source, loaded.model.config
    slots = slot_rows(source.adapter, config)
    ranking, bench = card.ranking, card.bench
    ranking_data = load_ranking_arg(ranking) if ranking is not None else ranking_from_manifest(source)
    info = {
        "name": Path(str(folder)).name.split(".tmp-")[0].lstrip("."),
        "format": fmt.name, "format_title": fmt.title, "source": str(source.path), "model_type": source.model_type,
        "fusion_class": source.adapter.fusion_class(config), "slots": slots, "removed": removed_slots(source),
        "origin": origin_path(source), "lineage": lineage_rows(source, fmt.name, [s["name"] for s in slots]),
        "parameters": parameters, "ranking": ranking_data,
        "source_verification": (source.manifest.get("stage"), source.manifest.get("verification")),
        "export_verification": verification, "bench": load_bench_arg(bench),
        "how_to_load": how_to_load, "notes": list(fmt.notes), "encslim_version": __version__,
        "token_budget": token_budget_entry(source.adapter, config),
    }
    Path(folder, CARD_NAME).write_text(render_card(info), encoding="utf-8")
    export_record = {"format": fmt.name, **fmt.details}
    if info["token_budget"] is not None:
        export_record["token_budget"] = info["token_budget"]
    if ranking is not None:
        export_record["ranking"] = str(Path(ranking).resolve())
    if bench is not None:
        export_record["bench"] = str(Path(bench).resolve())
    return write_export_manifest(folder, source, [s["name"] for s in slots], verification, export_record)


def write_export_manifest(folder, source, kept, verification, export_record):
    """Write ``encslim_manifest.json`` with the shared writer (:func:`encslim.provenance.write_manifest`).

    The lineage of the source (origin, every stage, removed slots, plan, ranking) is carried over
    by the writer, so the chain source -> prune -> finetune -> export stays traceable; the source's own verification is kept next to the
    export's.
    """
    from ..provenance import StageRecord, write_manifest

    extra = {"export": export_record}
    if source.manifest:
        extra["source_stage"] = source.manifest.get("stage")
        extra["source_verification"] = source.manifest.get("verification")
    # removed slots, plan and ranking are inherited from the source's manifest (the export removes nothing)
    return write_manifest(folder, StageRecord("export", kept=kept, verification={"export": verification}),
                          source=source.path, extra=extra, lineage_from=source.manifest or None)


__all__ = ["CardInputs", "FormatInfo", "LoadedSource", "finish_folder", "token_budget_entry", "check_card_inputs", "slot_rows",
           "load_ranking_arg", "load_bench_arg", "removed_slots", "origin_path", "lineage_rows"]
