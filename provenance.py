"""``encslim_manifest.json``: what every encslim output folder is, where it came from, how it was made.

One writer for every stage (prune, finetune, export): :func:`write_manifest`. A manifest holds
the source folder and the sha256 of its files, the removed and kept slots, the removal plan,
the ranking/selection used, the verification result, the encslim and library versions, and
the sha256 of every file written next to it, so any output can be traced and replayed.

Lineage survives every stage: when the source folder holds a manifest, the new one inherits it.
``origin`` is the original model the chain started from; ``lineage`` lists every stage (oldest
first: stage, source, removed and kept slots, ranking, verification); ``removed_slots``
accumulates over the chain (a finetune or export of a pruned model still names what prune
removed), and ``plan`` and ``ranking`` are carried over when a stage has none of its own.
"""

import json
import logging
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .files import MANIFEST_NAME, read_json, sha256_file

# largest max-abs fp32 logit difference between a model and the one it must equal (pruned vs masked,
# exported vs source): the one verification tolerance of every stage
VERIFY_TOLERANCE = 1e-4

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LIBRARIES = ("torch", "transformers", "safetensors", "tokenizers", "numpy", "peft", "deepspeed",
             "accelerate", "onnx", "onnxruntime")


def library_versions() -> dict[str, str]:
    """``{name: version}`` of encslim, Python and the installed libraries encslim uses."""
    from . import __version__

    versions = {"encslim": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hash_folder(folder: str | PathLike[str], known: Mapping[str, str] | None = None,
                skip: Iterable[str] = (MANIFEST_NAME,)) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (recursively, sorted).

    Args:
        folder: the folder to hash.
        known: already computed hashes (relative path -> sha256) to reuse instead of rereading.
        skip: relative paths to leave out.
    """
    root = Path(folder)
    known = known or {}
    skip = set(skip)
    hashes = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in skip or any(part.startswith(".") for part in Path(rel).parts):
            continue
        hashes[rel] = known.get(rel) or sha256_file(path)
    return hashes


@dataclass(frozen=True)
class StageRecord:
    """What one stage did to its source: the manifest's own fields and its entry in ``lineage``.

    Attributes:
        stage: what produced the folder: ``"prune"``, ``"finetune"``, ``"export"``...
        removed: slot names removed from the source.
        kept: slot names left.
        plan: the removal plan as a dict (``RemovalPlan.to_dict()``), if any.
        ranking: how the slots were chosen: ``{"policy": ..., "ranking": path, "ranking_sha256": ...}``.
        verification: the verification result dict, if any.
    """

    stage: str
    removed: Iterable[str] = ()
    kept: Iterable[str] = ()
    plan: Any = None
    ranking: Any = None
    verification: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "removed", tuple(self.removed))  # read twice: the manifest and its lineage entry
        object.__setattr__(self, "kept", tuple(self.kept))

    def lineage_entry(self, created: str, source: Path | None) -> dict[str, Any]:
        """This stage's entry in a manifest's ``lineage``."""
        return {"stage": self.stage, "created": created, "source": str(source) if source is not None else None,
                "removed_slots": list(self.removed), "kept_slots": list(self.kept), "ranking": self.ranking,
                "verification": self.verification}


def write_manifest(out_dir: str | PathLike[str], record: StageRecord, *, source: str | PathLike[str] | None = None,
                   extra: Mapping[str, Any] | None = None, source_hashes: Mapping[str, str] | None = None,
                   file_hashes: Mapping[str, str] | None = None,
                   lineage_from: str | PathLike[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``encslim_manifest.json`` into ``out_dir`` and return its content.

    Call it last, once every other file of the output is written (it hashes them all).

    Args:
        out_dir: the output folder (usually the temporary folder of ``atomic_output_dir``).
        record: what the stage did (:class:`StageRecord`).
        source: the input model folder (its files are hashed), or ``None``.
        extra: stage-specific details (a JSON-ready dict).
        source_hashes: source file hashes already computed (file name -> sha256), reused.
        file_hashes: output file hashes already computed (file name -> sha256), reused.
        lineage_from: the folder whose manifest this output descends from (default: ``source``),
            e.g. the adapter folder for a merge whose ``source`` is the base model; or that
            manifest itself as a dict (a stage done in memory, as export's own removal).

    Returns:
        the manifest dict.
    """
    out = Path(out_dir)
    parent = (lineage_from if isinstance(lineage_from, dict)
              else inherited_manifest(lineage_from if lineage_from is not None else source))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "stage": record.stage,
        "created": created,
        "source": None,
        "origin": None,
        "removed_slots": _unique([*(parent.get("removed_slots") or []), *record.removed]),
        "kept_slots": list(record.kept),
        "plan": record.plan if record.plan is not None else parent.get("plan"),
        "ranking": record.ranking if record.ranking is not None else parent.get("ranking"),
        "verification": record.verification,
        "versions": library_versions(),
    }
    resolved = Path(source).resolve() if source is not None else None
    if resolved is not None:
        manifest["source"] = {"path": str(resolved), "files": hash_folder(resolved, source_hashes)}
    manifest["origin"] = parent.get("origin") or _origin(parent, manifest["source"])
    manifest["lineage"] = [*(parent.get("lineage") or _legacy_lineage(parent)), record.lineage_entry(created, resolved)]
    if extra:
        manifest.update({k: v for k, v in extra.items() if k not in manifest})
    manifest["files"] = hash_folder(out, file_hashes)
    text = json.dumps(manifest, indent=2, sort_keys=True, default=_jsonable) + "\n"
    (out / MANIFEST_NAME).write_text(text, encoding="utf-8")
    logger.info("wrote %s", out / MANIFEST_NAME)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def inherited_manifest(folder: str | PathLike[str] | None) -> dict[str, Any]:
    """The manifest of ``folder`` to inherit lineage from: ``{}`` when there is none (an original model).

    A folder whose manifest cannot be read is treated as an original model, with a warning.
    """
    if folder is None or not (Path(folder) / MANIFEST_NAME).is_file():
        return {}
    try:
        manifest = read_manifest(folder)
    except ModelLoadError as err:
        logger.warning("lineage of %s not carried over: %s", folder, err)
        return {}
    return manifest if isinstance(manifest, dict) else {}


def lineage_text(manifest: Mapping[str, Any]) -> list[str]:
    """One line per stage of a manifest's lineage, oldest first: what it did and how it was checked."""
    lines = []
    for entry in manifest.get("lineage") or []:
        text = f"{entry.get('stage')}"
        if entry.get("removed_slots"):
            text += f": removed {', '.join(entry['removed_slots'])}"
        if entry.get("kept_slots"):
            text += f"{';' if entry.get('removed_slots') else ':'} kept {', '.join(entry['kept_slots'])}"
        ranking = entry.get("ranking")
        if isinstance(ranking, dict) and (ranking.get("policy") or ranking_path(ranking)):
            text += f"; chosen by policy {ranking.get('policy') or 'ranking'}"
            if ranking_path(ranking):
                text += f" from {ranking_path(ranking)}"
        status = verification_status(entry.get("verification"))
        if status:
            text += f"; verification {status}"
        lines.append(text)
    return lines


def ranking_path(ranking: Any) -> str | None:
    """The ranking file a manifest's ``ranking`` record names (``ranking`` or ``details.ranking``, as
    :class:`encslim.prune.select.Selection` records it), or ``None``."""
    if isinstance(ranking, str):
        return ranking or None
    if not isinstance(ranking, dict):
        return None
    found = ranking.get("ranking") or (ranking.get("details") or {}).get("ranking")
    return found if isinstance(found, str) and found else None


def verification_status(verification: Any) -> str | None:
    """``passed`` / ``FAILED`` / ``skipped`` / ``recorded`` for a stage's verification dict, or ``None``."""
    if not isinstance(verification, dict) or not verification:
        return None
    if verification.get("skipped"):
        return f"skipped ({verification.get('reason', 'no reason recorded')})"
    if "passed" in verification:
        status: str = {True: "passed", False: "FAILED"}.get(verification["passed"], "reported")
        if isinstance(verification.get("max_abs_diff"), (int, float)):
            status += f" (max |logit diff| {verification['max_abs_diff']:.2g}"
            if isinstance(verification.get("tolerance"), (int, float)):
                status += f", tolerance {verification['tolerance']:g}"
            status += ")"
        return status
    records = verification.get("export")
    if isinstance(records, list) and records:
        return "passed" if all(r.get("matched") for r in records) else "FAILED"
    parts = []
    if verification.get("saved_weights"):
        parts.append(f"saved weights {verification['saved_weights']}")
    record = verification.get("merge")
    merge = record if isinstance(record, dict) else verification
    if isinstance(merge.get("max_abs_logit_diff"), (int, float)):
        parts.append(f"merged logits within {merge['max_abs_logit_diff']:.2g} of base + adapter")
    return ", ".join(parts) or "recorded"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _origin(parent: Mapping[str, Any], source: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The original model of a chain: the parent's source when the parent predates ``origin``, else ``source``."""
    if parent:
        recorded = parent.get("source")
        return {"path": recorded.get("path")} if isinstance(recorded, dict) else None
    return {"path": source["path"]} if source else None


def _legacy_lineage(parent: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A one-entry lineage for a parent manifest written before ``lineage`` existed."""
    if not parent:
        return []
    source = parent.get("source")
    return [{"stage": parent.get("stage"), "created": parent.get("created"),
             "source": source.get("path") if isinstance(source, dict) else None,
             "removed_slots": list(parent.get("removed_slots") or []), "kept_slots": list(parent.get("kept_slots") or []),
             "ranking": parent.get("ranking"), "verification": parent.get("verification")}]


def read_manifest(folder: str | PathLike[str]) -> Any:
    """The manifest of an output folder.

    Raises:
        ModelLoadError: the folder has no manifest or it is not valid JSON.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ModelLoadError(f"{folder} holds no {MANIFEST_NAME}; it was not written by encslim")
    return read_json(path, "re-run the step that wrote it", ModelLoadError)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
