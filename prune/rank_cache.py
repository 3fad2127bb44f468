"""The ranking's score table: per-sample scores by mask set, kept in the evaluation records.

There is one per-sample cache, the records file of :mod:`encslim.bench.records`
(``records.jsonl`` next to ``ranking.json``): one JSON line per (sample, mask set) result, keyed
by a fingerprint of the model, the sample (text, answers, image pixels, prompt), the mask set
and the evaluation settings. The table here holds no file of its own: it looks its scores up in
those records by key. With the project evaluator the keys are the evaluator's own
(:class:`encslim.bench.evaluate.RecordKeys`), so the records it writes are the table's entries
and it resumes from them; a custom ``evaluator=`` that keeps no records gets keys of the rank's
own (:class:`RankKeys`, naming the evaluator) and ``rank`` writes its results into the same file.

A later run (``--overwrite`` into the same folder, or ``--cache DIR``) therefore reuses every
score whose key matches, so choosing another subset mode, more bootstrap resamples or another
selection policy never evaluates a mask set twice, and editing the data invalidates exactly the
edited rows.
"""

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np
from numpy.typing import NDArray

from ..bench.records import RecordStore, model_fingerprint, record_key, settings_fingerprint
from ..data.samples import Sample
from ..errors import ConfigError

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"

PathArg = Union[str, "PathLike[str]"]


class Keyer(Protocol):
    """What a :class:`ScoreTable` finds its scores under (:class:`RankKeys`, or the evaluator's ``RecordKeys``)."""

    evaluator_writes: bool  # True: the evaluator files the records itself

    def keys(self, masked: frozenset[str], mask_mode: str) -> list[str]:
        """The record key of every sample under ``masked`` (in sample order)."""


def sample_fingerprint(sample: Sample) -> str:
    """sha256 of everything that decides a sample's score: text, answers, options, image pixels."""
    digest = hashlib.sha256()
    fields = [sample.id, sample.question, list(sample.answers), dict(sample.options), sample.hint,
              sample.category, sample.metric]
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode("utf-8"))
    image: Any = sample.image  # a PIL image
    if image is not None:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


class RankKeys:
    """Record keys for an evaluator that keeps no records itself (``rank`` writes them).

    Args:
        model: the model (fingerprinted).
        samples: the samples, in table order.
        settings: what besides model, sample and mask decides a score (generation settings, the
            evaluator's name); the mask mode is added per mask set.
    """

    evaluator_writes = False

    def __init__(self, model: Any, samples: Iterable[Sample], settings: Mapping[str, Any]) -> None:
        self.model_fp = model_fingerprint(model)
        self.settings = dict(settings)
        self.sample_fps = [sample_fingerprint(s)[:16] for s in samples]
        self._settings: dict[str, str] = {}

    def settings_fp(self, mask_mode: str) -> str:
        if mask_mode not in self._settings:
            self._settings[mask_mode] = settings_fingerprint({**self.settings, "mask_mode": mask_mode,
                                                              "source": "rank"})
        return self._settings[mask_mode]

    def keys(self, masked: Iterable[str], mask_mode: str) -> list[str]:
        settings_fp = self.settings_fp(mask_mode)
        return [record_key(self.model_fp, fp, frozenset(masked), settings_fp) for fp in self.sample_fps]


def records_file(source: PathArg) -> Path:
    """The records file of a cache source: a ranking folder, or a records file itself.

    Raises:
        ConfigError: ``source`` is a ``.json`` file (such as the ``scores.json`` of older versions).
    """
    path = Path(source)
    if path.is_dir():
        return path / RECORDS_FILE
    if path.suffix == ".json":
        raise ConfigError(f"{path} is not a records file; per-sample scores now live in {RECORDS_FILE}: "
                          f"pass the ranking folder (or its {RECORDS_FILE}) as --cache")
    return path


def read_records(sources: Iterable[PathArg]) -> dict[str, dict[str, Any]]:
    """``{key: record}`` from the records files of ``sources`` (first source wins on a repeated key)."""
    found: dict[str, dict[str, Any]] = {}
    for source in sources:
        for key, record in RecordStore(records_file(source)).load().items():
            found.setdefault(key, record)
    return found


class ScoreTable:
    """Per-sample scores by mask set for one model, data selection and evaluation setting.

    Args:
        slots: slot names in slot order.
        samples: the samples, in the order arrays are returned.
        keys: an object with ``keys(masked, mask_mode) -> [record key per sample]`` and
            ``evaluator_writes`` (True: the evaluator files the records itself).
        mode_of: ``f(masked) -> mask mode`` that mask set is evaluated in.
        records_path: the records file new results go to (``None``: memory only).
    """

    def __init__(self, slots: Iterable[str], samples: Sequence[Sample], keys: Keyer,
                 mode_of: Callable[[frozenset[str]], str], records_path: Path | None = None) -> None:
        self.slots = list(slots)
        self.ids = [s.id for s in samples]
        self.categories = [s.category for s in samples]
        self.keyer, self.mode_of = keys, mode_of
        self.records_path = records_path
        self.scores: dict[str, float] = {}  # record key -> score
        self.seen: set[frozenset[str]] = set()  # mask sets named by some record (candidates for :meth:`evaluated`)
        self._keys: dict[frozenset[str], list[str]] = {}

    def keys(self, masked: Iterable[str]) -> list[str]:
        """The record key of every sample under ``masked`` (in sample order)."""
        mask = frozenset(masked)
        if mask not in self._keys:
            self._keys[mask] = self.keyer.keys(mask, self.mode_of(mask))
        return self._keys[mask]

    def load(self, records: Mapping[str, Mapping[str, Any]]) -> int:
        """Take over the scores of ``{key: record}`` (records of other models or settings are simply never looked up).

        Returns:
            The number of this table's (mask set, sample) cells they fill.
        """
        slots = set(self.slots)
        for key, record in records.items():
            if key not in self.scores and "score" in record:
                self.scores[key] = float(record["score"])
                masked = frozenset(record.get("masked", ()))
                if masked <= slots:
                    self.seen.add(masked)
        return sum(k in self.scores for m in self.seen for k in self.keys(m))

    def has(self, masked: Iterable[str]) -> bool:
        """True when every sample has a score under ``masked``."""
        return all(k in self.scores for k in self.keys(masked))

    def missing(self, mask_sets: Iterable[frozenset[str]]) -> list[frozenset[str]]:
        """The mask sets (in the given order, deduplicated) that still need evaluating."""
        out: list[frozenset[str]] = []
        for masked in mask_sets:
            if masked not in out and not self.has(masked):
                out.append(masked)
        return out

    def add(self, masked: Iterable[str], scores_by_id: Mapping[str, float]) -> None:
        """Store an evaluator's ``{sample_id: score}`` for ``masked``.

        With an evaluator that keeps no records, the results are appended to ``records_path``.
        """
        mask = frozenset(masked)
        new: list[dict[str, Any]] = []
        for sample_id, category, key in zip(self.ids, self.categories, self.keys(mask)):
            if sample_id not in scores_by_id:
                raise KeyError(f"the evaluator returned no score for sample {sample_id!r} under mask {sorted(mask)}")
            value = float(scores_by_id[sample_id])
            if key not in self.scores:
                new.append({"key": key, "sample_id": sample_id, "category": category,
                            "masked": [s for s in self.slots if s in mask], "mask_mode": self.mode_of(mask),
                            "score": value, "source": "rank"})
            self.scores[key] = value
        self.seen.add(mask)
        if not self.keyer.evaluator_writes and self.records_path is not None:
            RecordStore(self.records_path).append(new)

    def array(self, masked: Iterable[str]) -> NDArray[np.float64]:
        """``(n,)`` scores under ``masked``, in sample order."""
        return np.array([self.scores[k] for k in self.keys(masked)], dtype=float)

    def evaluated(self) -> list[frozenset[str]]:
        """Every mask set with a score for every sample (fewest masked first, then slot order)."""
        order = {s: i for i, s in enumerate(self.slots)}
        done = [m for m in self.seen if self.has(m)]
        return sorted(done, key=lambda m: (len(m), sorted(order[s] for s in m)))
