"""``encslim_manifest.json``: what every encslim output folder is, where it came from, how it was made.

One writer for every stage (prune, finetune, export): :func:`write_manifest`. A manifest holds
the source folder and the sha256 of its files, the removed and kept slots, the removal plan,
the ranking/selection used, the verification result, the encslim and library versions, and
the sha256 of every file written next to it, so any output can be traced and replayed.
"""

import json
import logging
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .errors import ModelLoadError
from .files import MANIFEST_NAME, read_json, sha256_file

# largest max-abs fp32 logit difference between a model and the one it must equal (pruned vs masked,
# exported vs source): the one verification tolerance of every stage
VERIFY_TOLERANCE = 1e-4

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LIBRARIES = ("torch", "transformers", "safetensors", "tokenizers", "numpy", "peft", "deepspeed",
             "accelerate", "onnx", "onnxruntime")


def library_versions():
    """``{name: version}`` of encslim, Python and the installed libraries encslim uses."""
    from . import __version__

    versions = {"encslim": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hash_folder(folder, known=None, skip=(MANIFEST_NAME,)):
    """``{relative path: sha256}`` of every file under ``folder`` (recursively, sorted).

    Args:
        folder: the folder to hash.
        known: already computed hashes (relative path -> sha256) to reuse instead of rereading.
        skip: relative paths to leave out.
    """
    folder = Path(folder)
    known = known or {}
    hashes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in skip or any(part.startswith(".") for part in Path(rel).parts):
            continue
        hashes[rel] = known.get(rel) or sha256_file(path)
    return hashes


def write_manifest(out_dir, *, stage, source=None, removed=(), kept=(), plan=None, ranking=None,
                   verification=None, extra=None, source_hashes=None, file_hashes=None):
    """Write ``encslim_manifest.json`` into ``out_dir`` and return its content.

    Call it last, once every other file of the output is written (it hashes them all).

    Args:
        out_dir: the output folder (usually the temporary folder of ``atomic_output_dir``).
        stage: what produced the folder: ``"prune"``, ``"finetune"``, ``"export"``...
        source: the input model folder (its files are hashed), or ``None``.
        removed: slot names removed from the source.
        kept: slot names left.
        plan: the removal plan as a dict (``RemovalPlan.to_dict()``), if any.
        ranking: how the slots were chosen: ``{"policy": ..., "ranking": path, "ranking_sha256": ...}``.
        verification: the verification result dict, if any.
        extra: stage-specific details (a JSON-ready dict).
        source_hashes: source file hashes already computed (file name -> sha256), reused.
        file_hashes: output file hashes already computed (file name -> sha256), reused.

    Returns:
        the manifest dict.
    """
    out_dir = Path(out_dir)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": None,
        "removed_slots": list(removed),
        "kept_slots": list(kept),
        "plan": plan,
        "ranking": ranking,
        "verification": verification,
        "versions": library_versions(),
    }
    if source is not None:
        source = Path(source).resolve()
        manifest["source"] = {"path": str(source), "files": hash_folder(source, source_hashes)}
    if extra:
        manifest.update({k: v for k, v in extra.items() if k not in manifest})
    manifest["files"] = hash_folder(out_dir, file_hashes)
    text = json.dumps(manifest, indent=2, sort_keys=True, default=_jsonable) + "\n"
    (out_dir / MANIFEST_NAME).write_text(text, encoding="utf-8")
    logger.info("wrote %s", out_dir / MANIFEST_NAME)
    return json.loads(text)


def read_manifest(folder):
    """The manifest of an output folder.

    Raises:
        ModelLoadError: the folder has no manifest or it is not valid JSON.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ModelLoadError(f"{folder} holds no {MANIFEST_NAME}; it was not written by encslim")
    return read_json(path, "re-run the step that wrote it", ModelLoadError)


def _jsonable(value):
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
