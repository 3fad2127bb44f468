"""The result of an evaluation: scores per mask set and sample, and their aggregation.

``overall`` is the mean over samples (every sample weighs the same, as VLMEvalKit reports a
benchmark); :meth:`EvalResult.macro` gives the mean over categories (every category weighs the
same) for data sets whose categories differ much in size.
"""

from dataclasses import dataclass, field

OVERALL_IS = "mean over samples"


def mask_label(masked):
    """``"full"`` for no mask, else ``"-a-b"`` (masked slots, sorted)."""
    return "full" if not masked else "-" + "-".join(sorted(masked))


def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


@dataclass
class EvalResult:
    """Scores of every sample under every mask set.

    Attributes:
        mask_sets: the evaluated mask sets (frozensets of masked slot names), in order.
        scores: ``{mask set: {sample id: score in [0, 1]}}``.
        predictions: ``{mask set: {sample id: predicted text or letter}}``.
        categories: ``{sample id: category}``.
        encoder_passes: vision tower forward passes run per evaluated sample with an image
            (0 when every result came from the records).
        mask_mode: ``removal``, ``zero`` or ``mean``.
        evaluated: samples evaluated in this call (the rest came from the records).
        encoder_passes_total: vision tower forward passes run in this call, all samples together
            (fewer than ``encoder_passes * evaluated`` when a feature store already held features).
        overall_is: how ``overall`` aggregates.
    """

    mask_sets: list
    scores: dict
    predictions: dict
    categories: dict
    encoder_passes: float
    mask_mode: str = "removal"
    evaluated: int = 0
    overall_is: str = field(default=OVERALL_IS)
    encoder_passes_total: int = 0

    def category_names(self):
        """Categories in order of first appearance."""
        return list(dict.fromkeys(self.categories.values()))

    def counts(self):
        """Samples per category."""
        out = {c: 0 for c in self.category_names()}
        for category in self.categories.values():
            out[category] += 1
        return out

    def accuracy(self, masked=frozenset()):
        """``{"overall": mean over samples, "<category>": mean over its samples}`` for one mask set.

        Raises:
            KeyError: the mask set was not evaluated.
        """
        scores = self.scores[frozenset(masked)]
        out = {"overall": mean(scores.values())}
        for category in self.category_names():
            out[category] = mean(v for k, v in scores.items() if self.categories[k] == category)
        return out

    def macro(self, masked=frozenset()):
        """Mean over categories of the per-category accuracy."""
        acc = self.accuracy(masked)
        return mean(acc[c] for c in self.category_names())

    def to_dict(self):
        """A JSON-able summary (no per-sample scores; those live in the records)."""
        return {
            "mask_mode": self.mask_mode,
            "overall_is": self.overall_is,
            "num_samples": len(self.categories),
            "evaluated_now": self.evaluated,
            "encoder_passes_per_sample": self.encoder_passes,
            "categories": self.category_names(),
            "counts": self.counts(),
            "results": [
                {"masked": sorted(m), "label": mask_label(m), "accuracy": self.accuracy(m),
                 "macro_over_categories": self.macro(m)}
                for m in self.mask_sets
            ],
        }

    def table(self):
        """A plain-text table: one row per category (and overall), one column per mask set."""
        labels = [mask_label(m) for m in self.mask_sets]
        counts = self.counts()
        rows = [("overall", len(self.categories))] + [(c, counts[c]) for c in self.category_names()]
        width = max(len(r[0]) for r in rows + [("category", 0)])
        cols = [max(len(lab), 6) for lab in labels]
        lines = [f"{'category':<{width}}  {'n':>5}  " + "  ".join(f"{lab:>{w}}" for lab, w in zip(labels, cols))]
        accs = [self.accuracy(m) for m in self.mask_sets]
        for name, n in rows:
            cells = "  ".join(f"{100 * a[name]:>{w}.1f}" for a, w in zip(accs, cols))
            lines.append(f"{name:<{width}}  {n:>5}  {cells}")
        lines.append(f"(accuracy in %; overall is the {self.overall_is})")
        return "\n".join(lines)
