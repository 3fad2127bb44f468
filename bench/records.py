"""Per-sample evaluation records (JSONL) and the keys that make evaluation resumable.

A record is one (sample, mask set) result. Its ``key`` hashes the model, the sample (text,
answers, image bytes and the exact prompt), the mask set and the settings, so a rerun skips
exactly the work already done and never reuses a result computed under other conditions.

Records are appended one line at a time as batches finish; an interrupted run leaves at
worst one partial last line, which is ignored when read. Under data-parallel evaluation each
rank appends to ``<records>.rank<r>`` while running, and rank 0 folds those into the main file
at the end (or at the next run, if the last one was interrupted).
"""

import hashlib
import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SAMPLED_VALUES = 1024  # values per tensor entering the model fingerprint


def _digest(*parts):
    h = hashlib.sha1()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def model_fingerprint(model):
    """A stable id of a model's config and weights, equal on every device and rank.

    Hashes the config and, per parameter and buffer, its name, shape, dtype and up to
    1,024 evenly strided values (exact bytes, copied to the CPU). Cheap even for large models;
    any training or merge changes the sampled values.
    """
    config = model.config.to_json_string() if hasattr(model.config, "to_json_string") else repr(model.config)
    parts = [config]
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLED_VALUES)
        values = flat[::step][:SAMPLED_VALUES].to("cpu", torch.float32).numpy().tobytes()
        parts += [name, list(tensor.shape), str(tensor.dtype), values]
    return _digest(*parts)[:16]


def sample_fingerprint(sample, prompt):
    """Id of a sample's content as evaluated: text, answers, options, metric, prompt, image bytes."""
    image = sample.image
    image_part = b"" if image is None else hashlib.sha1(image.tobytes()).digest() + repr(image.size).encode()
    return _digest(sample.dataset, sample.id, sample.question, sample.answers, sample.options, sample.hint,
                   sample.metric, prompt, image_part)[:16]


def settings_fingerprint(settings):
    """Id of the evaluation settings (a JSON-able dict)."""
    return _digest(settings)[:16]


def record_key(model_fp, sample_fp, masked, settings_fp):
    """The key of one (model, sample, mask set, settings) result."""
    return _digest(model_fp, sample_fp, sorted(masked), settings_fp)[:24]


class RecordStore:
    """Reads and appends the records of one evaluation output.

    Args:
        path: the main records file (``None``: keep nothing on disk).
        rank: this process's rank.
        world: number of processes.
    """

    def __init__(self, path, rank=0, world=1):
        self.path = Path(path) if path is not None else None
        self.rank, self.world = rank, world
        self.unmerged = []

    @property
    def _own_file(self):
        if self.world == 1:
            return self.path
        return self.path.with_name(f"{self.path.name}.rank{self.rank}")

    def load(self):
        """``{key: record}`` from the main file and any per-rank files left by an interrupted run."""
        if self.path is None:
            return {}
        found = {r["key"]: r for r in _read_lines(self.path)}
        for leftover in sorted(self.path.parent.glob(f"{self.path.name}.rank*")):
            for record in _read_lines(leftover):
                if record["key"] not in found:
                    found[record["key"]] = record
                    self.unmerged.append(record)
        return found

    def append(self, records):
        """Append records to this rank's file (the main file in one process)."""
        if self.path is None or not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._own_file, "a", encoding="utf-8") as f:
            _end_partial_line(self._own_file, f)
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()

    def merge(self, new_records):
        """Rank 0 of several: fold the gathered ``new_records`` and leftovers into the main file.

        Call on every rank after all ranks finished appending; only rank 0 writes, then removes
        the per-rank files.
        """
        if self.path is None or (self.world == 1 and not self.unmerged):
            return
        if self.rank != 0:
            return
        existing = {r["key"] for r in _read_lines(self.path)}
        todo = [r for r in self.unmerged + list(new_records) if r["key"] not in existing]
        unique = list({r["key"]: r for r in todo}.values())
        if unique:
            with open(self.path, "a", encoding="utf-8") as f:
                _end_partial_line(self.path, f)
                for record in unique:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        for leftover in self.path.parent.glob(f"{self.path.name}.rank*"):
            leftover.unlink()


def _end_partial_line(path, handle):
    """Start on a fresh line if an interrupted run left the file without a final newline."""
    if handle.tell() > 0:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                handle.write("\n")


def _read_lines(path):
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s line %d is incomplete (an interrupted run?); it is ignored", path, number)
                continue
            if isinstance(record, dict) and "key" in record:
                records.append(record)
    return records
