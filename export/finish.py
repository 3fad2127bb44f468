"""Finishing an export folder: the model card and the manifest, written last.

The card needs what the pipeline knows about the model: the slots removed (from the source's
manifest), the ranking that motivated it (``--ranking`` or the ranking recorded in the
manifest), the removal's verification, and benchmark figures (``--bench``). The manifest is
written by the one shared writer (:mod:`encslim.provenance`) and lists every file's sha256.
"""

import logging
from pathlib import Path

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


def finish_folder(folder, source, fmt, *, slots, verification, how_to_load, parameters=None,
                  fusion_class=None, ranking=None, bench=None, notes=(), details=None, format_title=None):
    """Write ``README.md`` then the manifest into ``folder`` (the temporary output folder).

    Args:
        folder: the folder being written.
        source: the :class:`~encslim.export.common.Source` exported.
        fmt: the export format name.
        slots: card rows of the kept slots (:func:`slot_rows`).
        verification: the export's verification records (``check_logits`` dicts).
        how_to_load: Python code shown in the card.
        parameters, fusion_class: shown in the card when known.
        ranking: ``--ranking`` path (else the manifest's ranking is used when it still exists).
        bench: ``--bench`` path.
        notes: extra lines for the card.
        details: format-specific data recorded in the manifest.
        format_title: the card's description of the format (a family's stock format says which classes load
            it); default: :data:`~encslim.export.model_card.FORMAT_TITLES`.

    Returns:
        The manifest dict.
    """
    ranking_data = load_ranking_arg(ranking) if ranking is not None else ranking_from_manifest(source)
    info = {
        "name": Path(str(folder)).name.split(".tmp-")[0].lstrip("."),
        "format": fmt, "format_title": format_title, "source": str(source.path), "model_type": source.model_type,
        "fusion_class": fusion_class, "slots": slots, "removed": removed_slots(source),
        "origin": origin_path(source), "lineage": lineage_rows(source, fmt, [s["name"] for s in slots]),
        "parameters": parameters, "ranking": ranking_data,
        "source_verification": (source.manifest.get("stage"), source.manifest.get("verification")),
        "export_verification": verification, "bench": load_bench_arg(bench),
        "how_to_load": how_to_load, "notes": list(notes), "encslim_version": __version__,
    }
    Path(folder, CARD_NAME).write_text(render_card(info), encoding="utf-8")
    export_record = {"format": fmt, **(details or {})}
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
    from ..provenance import write_manifest

    extra = {"export": export_record}
    if source.manifest:
        extra["source_stage"] = source.manifest.get("stage")
        extra["source_verification"] = source.manifest.get("verification")
    # removed slots, plan and ranking are inherited from the source's manifest (the export removes nothing)
    return write_manifest(folder, stage="export", source=source.path, kept=kept,
                          verification={"export": verification}, extra=extra, lineage_from=source.manifest or None)


__all__ = ["finish_folder", "check_card_inputs", "slot_rows", "load_ranking_arg", "load_bench_arg", "removed_slots",
           "origin_path", "lineage_rows"]
