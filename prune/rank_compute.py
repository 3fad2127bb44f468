"""From a table of per-sample scores by mask set to the content of ``ranking.json``. Pure."""

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .config import RankConfig
from .importance import OVERALL, RIGHT_THRESHOLD, accuracy, bootstrap_unit, category_order, cur_table, ig_table
from .shapley import Values, exact_shapley, interaction_at_full, interactions, is_complete, sampled_shapley
from .subsets import frontier, kept_of

REQUIRED_KEYS = ("schema_version", "model", "slots", "mask_mode", "categories", "overall_is", "accuracy",
                 "subsets", "cur", "ig", "shapley", "shapley_method", "interactions", "costs")

Scores = Mapping[frozenset[str], NDArray[np.float64]]  # {frozenset(masked): (n,) per-sample scores}


class Search(NamedTuple):
    """What an adaptive subset mode ran besides the fixed mask sets (recorded in the ranking)."""

    greedy_path: list[dict[str, Any]] | None = None  # the backward-elimination path (``greedy``)
    perms: list[tuple[str, ...]] | None = None  # the permutations of a sampled Shapley estimate


def compute_ranking(slots: Sequence[str], categories: ArrayLike, scores: Scores,
                    costs: Mapping[str, Mapping[str, Any]], config: RankConfig, *,
                    clusters: Sequence[str] | None = None,
                    latency_ms: Mapping[frozenset[str], float] | None = None,
                    search: Search = Search()) -> dict[str, Any]:
    """The ranking (``ranking.json`` content, less ``model``/``mask_mode``) from evaluated scores.

    Args:
        slots: slot names in slot order.
        categories: ``(n,)`` category of every sample.
        scores: ``{frozenset(masked): (n,) scores}``; must hold the full model and every single mask.
        costs: ``{slot: {"vision_flops", "params"}}``.
        config: the :class:`~encslim.prune.config.RankConfig`: its ``subsets`` (the subset mode that
            was run, recorded) and the paired bootstrap's ``bootstrap`` resamples, ``seed`` and
            ``alpha`` (1 - confidence).
        clusters: optional ``(n,)`` cluster id of every sample (:func:`image_clusters`); when some
            image carries several questions the bootstrap resamples images, not rows.
        latency_ms: optional ``{frozenset(kept): ms}`` for the frontier.
        search: the greedy path and Shapley permutations, if run.

    Returns:
        A JSON-able dict.
    """
    slots = list(slots)
    bootstrap, seed, alpha = config.bootstrap, config.seed, config.alpha
    cats = np.asarray(categories)
    groups = [OVERALL, *category_order(cats)]
    acc = {m: accuracy(s, cats) for m, s in scores.items()}
    full = scores[frozenset()]
    singles = {s: scores[frozenset({s})] for s in slots}
    curs = cur_table(full, singles, cats, n_boot=bootstrap, seed=seed, alpha=alpha, clusters=clusters)
    unit, units = bootstrap_unit(cats, clusters)
    values = {frozenset(kept_of(slots, m)): np.array([acc[m][g] for g in groups]) for m in scores}
    data: dict[str, Any] = {
        "schema_version": 1,
        "model": None,
        "slots": slots,
        "mask_mode": None,
        "categories": groups[1:],
        "n_samples": {OVERALL: int(cats.size),
                      **{c: int(np.sum(cats == c)) for c in groups[1:]}},
        "overall_is": "mean over samples",
        "subsets_mode": config.subsets,
        "bootstrap": {"resamples": bootstrap, "seed": seed, "confidence": 1 - alpha, "paired": True,
                      "stratified_by": "category", "interval": "percentile", "unit": unit, "clusters": units},
        "right_threshold": RIGHT_THRESHOLD,
        "accuracy": {"full": acc[frozenset()]},
        "subsets": frontier(slots, acc, {s: c.get("vision_flops") for s, c in costs.items()}, latency_ms),
        "cur": curs,
        "ig": ig_table(curs),
        "costs": costs,
        "greedy_path": search.greedy_path,
    }
    data.update(_shapley(slots, groups, values, search.perms))
    data.update(_interactions(slots, groups, values))
    return data


def image_clusters(samples: Iterable[Any]) -> list[str]:
    """The bootstrap cluster id of every sample: its image's identity.

    Two samples share a cluster when their images are the same pixels (mode, size and bytes).
    Readers share one image object per path, base64 string or VLMEvalKit index reference, so
    such images are hashed once. A sample without an image is its own cluster.

    Returns:
        list of strings, one per sample.
    """
    digests: dict[int, tuple[Any, str]] = {}
    out: list[str] = []
    for number, sample in enumerate(samples):
        image = getattr(sample, "image", None)
        if image is None:
            out.append(f"row:{number}")
            continue
        if id(image) not in digests:
            digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
            digest.update(image.tobytes())
            digests[id(image)] = (image, digest.hexdigest())  # holding the object keeps its id unique
        out.append(f"image:{digests[id(image)][1]}")
    return out


def _by_group(groups: Sequence[str], vector: ArrayLike) -> dict[str, float]:
    return {g: float(v) for g, v in zip(groups, np.atleast_1d(vector))}


def _shapley(slots: list[str], groups: list[str], values: Values,
             perms: list[tuple[str, ...]] | None) -> dict[str, Any]:
    if is_complete(slots, values):
        phi = exact_shapley(slots, values)
        return {"shapley": {s: _by_group(groups, phi[s]) for s in slots}, "shapley_method": "exact",
                "shapley_stderr": None, "shapley_permutations": None}
    if perms:
        phi, se = sampled_shapley(slots, values, perms)
        return {"shapley": {s: _by_group(groups, phi[s]) for s in slots}, "shapley_method": "permutation",
                "shapley_stderr": {s: _by_group(groups, se[s]) for s in slots},
                "shapley_permutations": len(perms)}
    return {"shapley": None, "shapley_method": None, "shapley_stderr": None, "shapley_permutations": None}


def _interactions(slots: list[str], groups: list[str], values: Values) -> dict[str, Any]:
    pairs = list(itertools.combinations(slots, 2))
    if is_complete(slots, values):
        table = interactions(slots, values)
        return {"interactions": {f"{i}|{j}": _by_group(groups, table[(i, j)]) for i, j in pairs},
                "interactions_method": "exact"}
    top = frozenset(slots)
    if pairs and all(top - {i, j} in values for i, j in pairs):
        return {"interactions": {f"{i}|{j}": _by_group(groups, interaction_at_full(slots, values, i, j))
                                 for i, j in pairs},
                "interactions_method": "at_full"}
    return {"interactions": None, "interactions_method": None}


def check_ranking(data: Any, version: int = 1) -> list[str]:
    """Problems of a ranking dict, as short strings (empty when it is valid)."""
    if not isinstance(data, dict):
        return ["the top level is not an object"]
    problems = [f"missing key '{k}'" for k in REQUIRED_KEYS if k not in data]
    if problems:
        return problems
    if data["schema_version"] != version:
        return [f"schema_version {data['schema_version']} is not {version}; rerun `encslim rank` with this encslim"]
    slots = data["slots"]
    if not isinstance(slots, list) or not slots or not all(isinstance(s, str) for s in slots):
        return ["'slots' must be a non-empty list of slot names"]
    order = {s: i for i, s in enumerate(slots)}
    for slot, cells in data["cur"].items():
        if slot not in order:
            problems.append(f"cur names unknown slot '{slot}'")
            continue
        for group, cell in cells.items():
            if not isinstance(cell, dict) or "value" not in cell or "ci" not in cell:
                problems.append(f"cur[{slot}][{group}] lacks value/ci")
            elif cell["value"] is None and not cell.get("note"):
                problems.append(f"cur[{slot}][{group}] is null without a note saying why")
    for k, row in enumerate(data["subsets"]):
        kept = row.get("kept") if isinstance(row, dict) else None
        if not isinstance(kept, list) or any(s not in order for s in kept):
            problems.append(f"subsets[{k}].kept names unknown slots")
        elif [order[s] for s in kept] != sorted(order[s] for s in kept):
            problems.append(f"subsets[{k}].kept is not in slot order")
        elif "accuracy" not in row or OVERALL not in row["accuracy"]:
            problems.append(f"subsets[{k}] lacks accuracy.overall")
    if "full" not in data["accuracy"]:
        problems.append("accuracy lacks 'full'")
    return problems + _budget_problems(data.get("token_budgets"), order)


def _budget_problems(section: Any, order: Mapping[str, int]) -> list[str]:
    """Problems of a ranking's ``token_budgets`` section (none when it is absent)."""
    if section is None:
        return []
    rows = section.get("rows") if isinstance(section, dict) else None
    if not isinstance(rows, list) or not isinstance(section.get("method"), str):
        return ["token_budgets needs a method and a list of rows"]
    problems = []
    for k, row in enumerate(rows):
        ok = isinstance(row, dict) and isinstance(row.get("kept"), list) and all(s in order for s in row["kept"])
        if not ok or not isinstance(row.get("budget"), (int, float)) or not 0 < row["budget"] <= 1:
            problems.append(f"token_budgets.rows[{k}] needs kept slots of the model and a budget in (0, 1]")
        elif OVERALL not in (row.get("accuracy") or {}) or "total_flops" not in (row.get("cost") or {}):
            problems.append(f"token_budgets.rows[{k}] lacks accuracy.overall or cost.total_flops")
    return problems
