"""Importance scores of encoder slots: CUR, IG, paired bootstrap intervals, flip counts.

Pure functions on per-sample score arrays: inputs in, numbers out, no model, no I/O.

Definitions (the study's, arXiv 2507.03262):

* **CUR** (conditional utilization rate) of slot ``i`` on a sample set:
  ``CUR_i = (acc(full) - acc(full without i)) / acc(full)``, the share of the full model's
  accuracy that is lost when ``i`` alone is masked while all the others stay. 1 means the slot
  carries everything, 0 that the others make up for it, a negative value that the model is
  better without it. Undefined when ``acc(full) = 0`` (there is nothing to lose a share of):
  the value is ``None`` with a note, never a division by zero.
* **IG** (information gap) of a sample set: ``max_i CUR_i - min_i CUR_i`` over the slots, how
  unequal the slots' utilities are. Near 0: interchangeable slots (redundancy); near 1: one
  slot carries the category.

Why a *paired* bootstrap: every mask set is scored on the same samples, so the accuracy
with and without a slot are strongly correlated. Resampling samples (not mask sets) and using
the same resample for every mask set keeps that pairing, which gives far tighter and honest
intervals than treating the two accuracies as independent. Resampling is stratified by
category, because a benchmark's category mix is fixed by design, not drawn at random.

Why a *clustered* bootstrap: benchmarks often ask several questions about one image (MMBench's
circular variants, GQA, TextVQA); those answers are not independent, so resampling rows treats
them as more evidence than they are and the intervals come out too narrow. When clusters (here:
questions sharing an image) exist, whole clusters are resampled within each category, every
question of a drawn cluster entering as often as the cluster is drawn. With one question per
cluster this is exactly the row bootstrap (same draws for the same seed).
"""

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

OVERALL = "overall"
RIGHT_THRESHOLD = 0.5  # a sample counts as answered right when its score is at least this


def accuracy(scores: ArrayLike, categories: ArrayLike) -> dict[str, float]:
    """Mean score per category and over all samples.

    Args:
        scores: per-sample scores in [0, 1], shape ``(n,)``.
        categories: per-sample category names, shape ``(n,)``.

    Returns:
        ``{"overall": mean over samples, "<category>": mean over its samples}``.
    """
    values = np.asarray(scores, dtype=float)
    labels = np.asarray(categories)
    out = {OVERALL: float(values.mean()) if values.size else float("nan")}
    for cat in category_order(labels):
        out[cat] = float(values[labels == cat].mean())
    return out


def category_order(categories: ArrayLike) -> list[Any]:
    """Distinct categories in order of first appearance."""
    seen: dict[Any, None] = {}
    for cat in np.asarray(categories).tolist():
        seen.setdefault(cat, None)
    return list(seen)


def cur(acc_full: float | None, acc_masked: float | None) -> float | None:
    """CUR from two accuracies; ``None`` when ``acc_full`` is 0 (undefined, see module doc)."""
    if acc_full is None or acc_masked is None or not acc_full > 0:
        return None
    return (acc_full - acc_masked) / acc_full


def information_gap(curs: Iterable[float | None]) -> float | None:
    """IG = max CUR - min CUR over the slots whose CUR is defined; ``None`` if none is."""
    values = [v for v in curs if v is not None]
    if not values:
        return None
    return float(max(values) - min(values))


def flips(full_scores: ArrayLike, masked_scores: ArrayLike, threshold: float = RIGHT_THRESHOLD) -> dict[str, int]:
    """How many samples masking turns right->wrong and wrong->right.

    A sample is right when its score is at least ``threshold`` (0.5: exact for 0/1 scorers, and
    the usual pass mark for graded ones such as ANLS or VQA accuracy).
    """
    full_right = np.asarray(full_scores, dtype=float) >= threshold
    masked_right = np.asarray(masked_scores, dtype=float) >= threshold
    return {
        "right_to_wrong": int(np.sum(full_right & ~masked_right)),
        "wrong_to_right": int(np.sum(~full_right & masked_right)),
    }


def bootstrap_weights(categories: ArrayLike, n_boot: int, seed: int = 0,
                      clusters: Sequence[Hashable] | None = None) -> NDArray[np.int32]:
    """Stratified bootstrap resamples as per-sample multiplicities.

    Args:
        categories: per-sample category names, shape ``(n,)``.
        n_boot: number of resamples.
        seed: seed of the generator, so intervals are reproducible.
        clusters: optional per-sample cluster ids, shape ``(n,)`` (hashable; e.g. an image id).
            Within each category the clusters are resampled, not the samples: a cluster drawn
            ``k`` times gives each of its samples weight ``k``. ``None``, or one sample per
            cluster, is the row bootstrap (bit for bit the same draws).

    Returns:
        ``(n_boot, n)`` integer array: how often each sample is drawn in each resample. Within
        every category the counts sum to the category's size (with clusters: the draws of its
        clusters sum to its number of clusters). Use the same array for every mask set: that is
        what pairs the samples across mask sets.
    """
    labels = np.asarray(categories)
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_boot, labels.size), dtype=np.int32)
    members = None if clusters is None else np.asarray(_cluster_index(clusters, labels))
    for cat in category_order(labels):
        idx = np.flatnonzero(labels == cat)
        if members is None:
            weights[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=n_boot)
            continue
        # the category's clusters in order of first appearance (singletons: the samples' own order)
        local: dict[Any, int] = {}
        which = np.array([local.setdefault(c, len(local)) for c in members[idx].tolist()])
        draws = rng.multinomial(len(local), np.full(len(local), 1.0 / len(local)), size=n_boot)
        weights[:, idx] = draws[:, which]
    return weights


def _cluster_index(clusters: Iterable[Hashable], categories: ArrayLike) -> list[int]:
    """Clusters as small integers; a cluster is split by category (the strata are resampled apart)."""
    index: dict[tuple[Any, Hashable], int] = {}
    return [index.setdefault((cat, c), len(index)) for cat, c in zip(np.asarray(categories).tolist(), clusters)]


def bootstrap_unit(categories: ArrayLike, clusters: Sequence[Hashable] | None = None) -> tuple[str, int]:
    """``(unit, clusters)``: ``"image"`` when some cluster holds several samples of a category, else
    ``"sample"``; and the number of resampling units (clusters within categories, or samples)."""
    labels = np.asarray(categories)
    if clusters is None:
        return "sample", int(labels.size)
    k = len(set(_cluster_index(clusters, labels)))
    return ("image" if k < labels.size else "sample"), k


def resampled_accuracy(scores: ArrayLike, weights: NDArray[Any], select: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Accuracy of each bootstrap resample restricted to the samples in ``select``.

    Args:
        scores: ``(n,)`` per-sample scores.
        weights: ``(n_boot, n)`` from :func:`bootstrap_weights`.
        select: boolean ``(n,)`` mask of the samples that form the group (a category or all).

    Returns:
        ``(n_boot,)`` accuracies.
    """
    w = weights[:, select].astype(float)
    s = np.asarray(scores, dtype=float)[select]
    out: NDArray[np.float64] = (w @ s) / w.sum(axis=1)
    return out


def cur_interval(full_boot: ArrayLike, masked_boot: ArrayLike,
                 alpha: float = 0.05) -> tuple[list[float] | None, float]:
    """Percentile interval of CUR over paired resamples.

    Resamples whose full accuracy is 0 have no CUR and are left out; if more than half are,
    the interval is ``None`` (too little information to bound it).

    Returns:
        ``([low, high] or None, fraction of resamples left out)``.
    """
    full = np.asarray(full_boot, dtype=float)
    masked = np.asarray(masked_boot, dtype=float)
    ok = full > 0
    left_out = float(1.0 - ok.mean()) if ok.size else 1.0
    if ok.sum() == 0 or left_out > 0.5:
        return None, left_out
    values = (full[ok] - masked[ok]) / full[ok]
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(low), float(high)], left_out


def significant(interval: Sequence[float] | None) -> bool | None:
    """True when the interval excludes 0; ``None`` without an interval."""
    if interval is None:
        return None
    return bool(interval[0] > 0 or interval[1] < 0)


def cur_entry(full: ArrayLike, masked: ArrayLike, select: NDArray[np.bool_], weights: NDArray[Any] | None,
              alpha: float = 0.05) -> dict[str, Any]:
    """One CUR cell of ranking.json: value, interval, significance, flips (and a note if undefined).

    Args:
        full: ``(n,)`` scores of the full model.
        masked: ``(n,)`` scores with the slot masked.
        select: boolean ``(n,)``: the samples of the cell's category (all for overall).
        weights: bootstrap weights, or ``None`` to skip the interval.
        alpha: 1 - confidence level of the interval.

    Returns:
        ``{"value", "ci", "significant", "flips", "acc_full", "acc_masked"}`` plus ``"note"`` when
        the value or interval is undefined.
    """
    full_scores = np.asarray(full, dtype=float)
    masked_scores = np.asarray(masked, dtype=float)
    acc_full, acc_masked = float(full_scores[select].mean()), float(masked_scores[select].mean())
    entry: dict[str, Any] = {"value": cur(acc_full, acc_masked), "ci": None, "significant": None,
                             "flips": flips(full_scores[select], masked_scores[select]), "acc_full": acc_full,
                             "acc_masked": acc_masked}
    if entry["value"] is None:
        entry["note"] = "undefined: the full model scores 0 on these samples, so no share of its accuracy can be lost"
        return entry
    if weights is not None:
        entry["ci"], left_out = cur_interval(resampled_accuracy(full_scores, weights, select),
                                             resampled_accuracy(masked_scores, weights, select), alpha)
        entry["significant"] = significant(entry["ci"])
        if entry["ci"] is None:
            entry["note"] = f"no interval: the full model scores 0 in {left_out:.0%} of the resamples"
    return entry


def cur_table(full: ArrayLike, masked_by_slot: Mapping[str, ArrayLike], categories: ArrayLike, n_boot: int = 1000,
              seed: int = 0, alpha: float = 0.05,
              clusters: Sequence[Hashable] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """CUR of every slot, per category and overall, with paired bootstrap intervals.

    Args:
        full: ``(n,)`` scores of the full model.
        masked_by_slot: ``{slot: (n,) scores with that slot alone masked}``.
        categories: ``(n,)`` category of every sample.
        n_boot: bootstrap resamples (0: no intervals).
        seed: bootstrap seed.
        alpha: 1 - confidence level.
        clusters: per-sample cluster ids for a clustered bootstrap (see :func:`bootstrap_weights`);
            used only when some cluster holds several samples (:func:`bootstrap_unit`).

    Returns:
        ``{slot: {"overall" | category: entry}}`` (see :func:`cur_entry`).
    """
    labels = np.asarray(categories)
    if clusters is not None and bootstrap_unit(labels, clusters)[0] == "sample":
        clusters = None  # one sample per cluster: the row bootstrap
    weights = bootstrap_weights(labels, n_boot, seed, clusters) if n_boot > 0 else None
    groups: dict[str, NDArray[np.bool_]] = {OVERALL: np.ones(labels.size, dtype=bool)}
    groups.update({cat: labels == cat for cat in category_order(labels)})
    return {
        slot: {name: cur_entry(full, masked, select, weights, alpha) for name, select in groups.items()}
        for slot, masked in masked_by_slot.items()
    }


def ig_table(curs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, float | None]:
    """IG per category (and overall) from a :func:`cur_table` result: ``{group: IG or None}``."""
    groups: list[str] = []
    for per_slot in curs.values():
        groups.extend(g for g in per_slot if g not in groups)
    return {g: information_gap([curs[s][g]["value"] for s in curs if g in curs[s]]) for g in groups}
