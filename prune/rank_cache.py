"""The ranking's own score table: per-sample scores under every evaluated mask set, cached.

``rank`` writes it as ``scores.json`` next to ``ranking.json``. A later run (``--overwrite``
into the same folder, or ``--cache DIR``) reuses every score whose settings match, so choosing
another subset mode, more bootstrap resamples or another selection policy never evaluates a
mask set twice. Scores are keyed by a fingerprint of the sample (its text, answers, category
and image pixels), not by its position, so editing the data invalidates exactly the edited rows.
"""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from ..errors import ConfigError

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.json"
CACHE_VERSION = 1


def mask_key(slots, masked):
    """A mask set as a stable string: masked slots in slot order joined by ``|`` (full: ``""``)."""
    return "|".join(s for s in slots if s in masked)


def sample_fingerprint(sample):
    """sha256 of everything that decides a sample's score: text, answers, options, image pixels."""
    digest = hashlib.sha256()
    fields = [sample.id, sample.question, list(sample.answers), dict(sample.options), sample.hint,
              sample.category, sample.metric]
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode("utf-8"))
    image = sample.image
    if image is not None:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


class ScoreTable:
    """Per-sample scores by mask set for one model, data selection and evaluation setting.

    Args:
        slots: slot names in slot order.
        samples: the samples, in the order arrays are returned.
        settings: everything besides the sample that decides a score (model fingerprint, mask
            mode, generation settings); a cache with other settings is ignored.
    """

    def __init__(self, slots, samples, settings):
        self.slots = list(slots)
        self.settings = dict(settings)
        self.ids = [s.id for s in samples]
        self.fingerprints = [sample_fingerprint(s) for s in samples]
        self.scores = {}  # mask key -> {fingerprint: score}

    def has(self, masked):
        """True when every sample has a score under ``masked``."""
        known = self.scores.get(mask_key(self.slots, masked), {})
        return all(fp in known for fp in self.fingerprints)

    def missing(self, mask_sets):
        """The mask sets (in the given order, deduplicated) that still need evaluating."""
        out = []
        for masked in mask_sets:
            if masked not in out and not self.has(masked):
                out.append(masked)
        return out

    def add(self, masked, scores_by_id):
        """Store an evaluator's ``{sample_id: score}`` for ``masked``."""
        bucket = self.scores.setdefault(mask_key(self.slots, masked), {})
        for sample_id, fp in zip(self.ids, self.fingerprints):
            if sample_id not in scores_by_id:
                raise KeyError(f"the evaluator returned no score for sample {sample_id!r} under mask {sorted(masked)}")
            bucket[fp] = float(scores_by_id[sample_id])

    def array(self, masked):
        """``(n,)`` scores under ``masked``, in sample order."""
        bucket = self.scores[mask_key(self.slots, masked)]
        return np.array([bucket[fp] for fp in self.fingerprints], dtype=float)

    def evaluated(self):
        """Every mask set with a score for every sample."""
        out = []
        for key in self.scores:
            masked = frozenset(key.split("|")) if key else frozenset()
            if masked <= set(self.slots) and self.has(masked):
                out.append(masked)
        return out

    def to_json(self):
        wanted = set(self.fingerprints)
        return {"cache_version": CACHE_VERSION, "slots": self.slots, "settings": self.settings,
                "scores": {k: {fp: v for fp, v in bucket.items() if fp in wanted}
                           for k, bucket in self.scores.items()}}

    def save(self, folder):
        path = Path(folder) / SCORES_FILE
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True), encoding="utf-8")
        return path

    def load_cache(self, source):
        """Merge the scores of a previous run's ``scores.json`` (folder or file) when its settings match.

        Returns:
            The number of (mask set, sample) scores taken over.

        Raises:
            ConfigError: ``source`` exists but is not a score table.
        """
        path = Path(source)
        path = path / SCORES_FILE if path.is_dir() else path
        if not path.is_file():
            return 0
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            cached, settings = data["scores"], data["settings"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is not an encslim score table ({err}); remove it or pass another --cache") from err
        if settings != self.settings:
            logger.info("not reusing %s: it was computed with other settings", path)
            return 0
        taken = 0
        for key, bucket in cached.items():
            mine = self.scores.setdefault(key, {})
            for fp, value in bucket.items():
                if fp not in mine:
                    mine[fp] = float(value)
                    taken += 1
        return taken
