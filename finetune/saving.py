"""What a finished run must have saved, and the check that it did (complete, not placeholders); the
digests of the checkpoints a run writes, checked before it resumes from one.

Under DeepSpeed ZeRO-3 each process holds only a shard of every parameter; a save that does not
gather them writes tensors of shape ``(0,)``. The expected names and shapes are taken before
training, while the model is whole, and every saved file is compared against them.

Resuming unpickles the checkpoint (DeepSpeed's ``torch.load(..., weights_only=False)`` of its
model and optimizer states), so a checkpoint folder is only resumed from if encslim wrote it in
this output: each time the Trainer saves one, :func:`record_checkpoint` stores the sha256 of every
file in it in ``<out>.checkpoints/checkpoint_digests.json`` (beside the ``checkpoints/`` folder,
not inside the checkpoint), and :func:`check_checkpoint` compares the folder against that record
before anything is loaded.
"""

import hashlib
import json
import os
from pathlib import Path

from ..errors import ConfigError, VerificationError
from ..files import read_json, sha256_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def expected_saved(model, config):
    """What the saved weights must hold.

    Returns:
        ``{"keys": {key: shape}}`` for an adapter (its exact tensors), or ``{"numel": n}`` for a
        full model: the number of values in its state dict, shared (tied) tensors counted once.
        A full save may rename keys to the checkpoint layout (transformers' conversion mappings),
        so a model is checked by size, an adapter by name.
    """
    if config.uses_lora:
        from peft import get_peft_model_state_dict

        return {"keys": {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}}
    unique = {}
    for value in model.state_dict().values():
        unique.setdefault((value.data_ptr(), tuple(value.shape)), value.numel())
    return {"numel": sum(unique.values())}


def saved_shapes(folder):
    """``{key: shape}`` of every tensor in the safetensors weights of ``folder`` (adapter or model, sharded or not)."""
    from safetensors import safe_open

    folder = Path(folder)
    files = [folder / ADAPTER_WEIGHTS] if (folder / ADAPTER_WEIGHTS).is_file() else _model_files(folder)
    shapes = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _model_files(folder):
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted({folder / name for name in weight_map.values()})
    single = folder / "model.safetensors"
    if not single.is_file():
        raise VerificationError(f"{folder} holds no safetensors weights after training; the save failed")
    return [single]


def check_saved(folder, expected):
    """Raise ``VerificationError`` unless ``folder`` holds the expected weights, complete.

    Args:
        folder: the saved adapter or model folder.
        expected: from :func:`expected_saved`.

    Returns:
        The number of tensors checked.
    """
    shapes = saved_shapes(folder)
    empty = sorted(k for k, s in shapes.items() if 0 in s)
    if "keys" in expected:
        keys = expected["keys"]
        missing = sorted(k for k in keys if k not in shapes)
        wrong = sorted(k for k in keys if k in shapes and shapes[k] != keys[k])
        problems = [(missing, "missing"), (wrong, "with a wrong shape"), (empty, "empty")]
        if missing or wrong or empty:
            first = (missing or wrong or empty)[0]
            counts = ", ".join(f"{len(names)} {what}" for names, what in problems)
            _fail(folder, f"{counts} (first: {first}, saved {shapes.get(first)}, expected {keys.get(first)})")
    else:
        numel = sum(_prod(s) for s in shapes.values())
        if empty or numel != expected["numel"]:
            _fail(folder, f"{numel} values saved, {expected['numel']} expected, {len(empty)} empty tensors")
    return len(shapes)


def _prod(shape):
    out = 1
    for n in shape:
        out *= n
    return out


def _fail(folder, detail):
    raise VerificationError(f"saved weights in {folder} are incomplete: {detail}; under ZeRO-3 set "
                            "stage3_gather_16bit_weights_on_model_save to true")


# ---------------------------------------------------------------------------- checkpoint digests
DIGEST_FILE = "checkpoint_digests.json"
DIGEST_SCHEMA = 1


def checkpoint_hashes(folder):
    """``{relative path: sha256}`` of every file under a checkpoint folder (sub-folders included)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def folder_digest(hashes):
    """One sha256 over a folder's ``{relative path: sha256}`` (names and contents)."""
    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(f"{name}\0{hashes[name]}\n".encode("utf-8"))
    return digest.hexdigest()


def _read_record(record):
    data = read_json(record, f"delete {record.parent} to start the run over", ConfigError)
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
        raise ConfigError(f"{record} is not a checkpoint digest record written by encslim; "
                          f"delete {record.parent} to start the run over")
    return data


def record_checkpoint(folder, record):
    """Record the digest of the checkpoint ``folder`` (just written by this run) in ``record``.

    Entries of checkpoints that no longer exist (rotated away by the Trainer) are dropped. The
    record is replaced in one rename, so an interruption leaves the previous one.

    Returns:
        the folder's digest (hex sha256).
    """
    folder, record = Path(folder), Path(record)
    data = _read_record(record) if record.is_file() else {"schema_version": DIGEST_SCHEMA, "checkpoints": {}}
    entries = {name: entry for name, entry in data["checkpoints"].items() if (folder.parent / name).is_dir()}
    hashes = checkpoint_hashes(folder)
    entries[folder.name] = {"digest": folder_digest(hashes), "files": hashes}
    data = {"schema_version": DIGEST_SCHEMA, "checkpoints": entries}
    tmp = record.with_name(f".{record.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, record)
    return entries[folder.name]["digest"]


def check_checkpoint(folder, record):
    """Refuse to resume from ``folder`` unless ``record`` holds its digest and its files still match it.

    Returns:
        the folder's digest (hex sha256).

    Raises:
        ConfigError: one line naming the folder and why (no record of it: not written by encslim in
            this output, or interrupted while saving; or a file added, missing or changed since).
    """
    folder, record = Path(folder), Path(record)
    work = record.parent
    entry = _read_record(record)["checkpoints"].get(folder.name) if record.is_file() else None
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        raise ConfigError(f"refusing to resume from {folder}: encslim recorded no digest of it in {record}, so it "
                          "was not written by encslim for this output (or the run stopped while saving it) and "
                          f"resuming would unpickle files of unknown origin; delete {folder} to resume from an "
                          f"earlier checkpoint, or delete {work} to start over")
    recorded = entry["files"]
    hashes = checkpoint_hashes(folder)
    added = sorted(set(hashes) - set(recorded))
    missing = sorted(set(recorded) - set(hashes))
    changed = sorted(k for k in set(hashes) & set(recorded) if hashes[k] != recorded[k])
    if added or missing or changed or folder_digest(hashes) != entry.get("digest"):
        what = (f"{changed[0]} changed" if changed else f"{added[0]} was added" if added
                else f"{missing[0]} is missing" if missing else "its digest does not match")
        count = len(added) + len(missing) + len(changed)
        more = f", {count} files differ" if count > 1 else ""
        raise ConfigError(f"refusing to resume from {folder}: it was modified since encslim wrote it ({what}{more}; "
                          f"digest mismatch against {record.name}) and resuming would unpickle it; delete {work} "
                          "to start over")
    return entry["digest"]
