"""The token-budget axis of ``encslim rank``: configurations (kept set x visual-token budget).

Every mask set the subset mode evaluated at every token (budget 1) is evaluated again at each
budget below 1 (``--token-budgets``), on the run's one feature store: a budget only changes what
happens after fusion and projection, so no encoder runs again. This module turns those scores
into the ranking's ``token_budgets`` section (one row per configuration with its accuracy and its
analytic cost, :mod:`encslim.models.costs`, Pareto-optimal rows over all configurations marked),
``budget_cur`` (the CUR of each budget on the full model: the budget is treated like a masked
slot, same paired bootstrap) and ``beats_encoder_only`` (reduced-budget configurations on the
frontier more accurate than any budget-1 configuration that costs no more). Pure but for
:func:`configuration_costs`, which reads the model's config and modules.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..data.prompts import build_question, style_for
from ..models.costs import configuration_cost, language_model_shape, text_tokens
from ..errors import ConfigError
from ..models.tokens import SOURCES, TokenBudget, budget_of
from .config import RankConfig
from .importance import OVERALL, accuracy, cur_table
from .subsets import kept_of, pareto_flags

Config = tuple[frozenset[str], float]  # (masked slots, budget)
Scores = Mapping[Config, NDArray[np.float64]]  # per-sample scores of each configuration
Costs = Mapping[Config, Mapping[str, Any]]  # {"image_tokens", "cost": {...}} of each configuration


def budget_label(budget: float) -> str:
    """How ``budget_cur`` names a budget: ``"0.25"``."""
    return f"{budget:g}"


def budget_axis(runner: Any, config: RankConfig, sets: Sequence[frozenset[str]],
                costs: Mapping[str, Mapping[str, Any]], clusters: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate every mask set of ``sets`` at each budget below 1 through ``runner`` (rank's runner: its
    ``ensure(sets, budget)`` and ``table_at(budget)``; the run's feature store, so no encoder runs again),
    then the ranking's ``token_budgets``, ``budget_cur`` and ``beats_encoder_only`` (:func:`budget_ranking`).

    Args:
        runner: rank's evaluation runner.
        config: the run's :class:`~encslim.prune.config.RankConfig`.
        sets: the mask sets evaluated at budget 1.
        costs: ``{slot: {"vision_flops", "params"}}`` (:func:`encslim.prune.subsets.slot_costs`).
        clusters: bootstrap clusters.
    """
    for budget in config.reduced_budgets:
        runner.ensure(sets, budget)
    scores = {(m, b): runner.table_at(b).array(m) for b in config.token_budgets for m in sets}
    cost = configuration_costs(runner.loaded, runner.samples, sets, config.token_budgets, config.token_method,
                               {s: c.get("vision_flops") for s, c in costs.items()})
    return budget_ranking(runner.table.slots, [s.category for s in runner.samples], scores, cost, config, clusters)


def check_budget_axis(adapter: Any, model_config: Any, config: RankConfig) -> None:
    """Refuse a budget axis that cannot run: a budget the method does not take (pool: 1/k), and, with the
    model (``adapter`` and ``model_config`` not ``None``), a family without token grids or a model that
    already carries a budget (its budget-1 rows would be scored under it but costed at every token).

    Raises:
        ConfigError: naming the problem and the fix.
    """
    budgets = [TokenBudget(config.token_method, b) for b in config.reduced_budgets]
    if not budgets or adapter is None:
        return
    adapter.check_token_budget(model_config, budgets[-1])
    own = budget_of(model_config)
    if own is not None:
        raise ConfigError(f"--token-budgets: the model already carries token budget {own.label} (config.json "
                          "token_budget); rank the folder it was made from, or one without it "
                          "(encslim prune MODEL --token-budget 1 --out DIR)")


def configuration_costs(loaded: tuple[Any, Any, Any], samples: Sequence[Any], mask_sets: Iterable[frozenset[str]],
                        budgets: Sequence[float], method: str,
                        slot_flops: Mapping[str, float | None]) -> dict[Config, dict[str, Any]]:
    """The analytic cost (:func:`encslim.models.costs.configuration_cost`) of every (mask set, budget).

    The prompt length is the mean text tokens of the samples' prompts (as ``evaluate`` builds them); a tiling
    family's per-tile costs are multiplied by the samples' mean tile count.
    """
    model, processor, adapter = loaded
    prompts = [adapter.build_prompt(processor, build_question(s, style_for(s)), with_image=s.image is not None)
               for s in samples]
    length = text_tokens(adapter, processor, model.config, prompts)
    shape = language_model_shape(model, adapter)
    imaged = [s.image for s in samples if s.image is not None]
    grids = sum(adapter.grids_per_image(processor, i) for i in imaged) / len(imaged) if imaged else 1.0
    out: dict[Config, dict[str, Any]] = {}
    for masked in mask_sets:
        for budget in budgets:
            spec = TokenBudget(method, budget) if budget < 1 else None
            out[(masked, budget)] = configuration_cost(model, adapter, masked, spec, length, slot_flops, shape,
                                                       grids)
    for entry in out.values():
        entry["text_tokens"] = round(length, 3)
    return out


def budget_ranking(slots: Sequence[str], categories: ArrayLike, scores: Scores, costs: Costs, config: RankConfig,
                   clusters: Sequence[str] | None = None) -> dict[str, Any]:
    """The ranking's ``token_budgets``, ``budget_cur`` and ``beats_encoder_only`` sections.

    Args:
        slots: slot names in slot order.
        categories: ``(n,)`` category of every sample.
        scores: ``{(masked, budget): (n,) scores}``; the full model at every budget is required.
        costs: ``{(masked, budget): {"image_tokens", "cost": {...}}}`` (:func:`configuration_costs`).
        config: the run's :class:`~encslim.prune.config.RankConfig` (budgets, method, bootstrap).
        clusters: bootstrap clusters (as for the slot CUR).

    Returns:
        ``{"token_budgets": {...}, "budget_cur": {...}, "beats_encoder_only": [...]}``.
    """
    cats = np.asarray(categories)
    rows = configuration_rows(slots, cats, scores, costs)
    full = scores[(frozenset(), 1.0)]
    reduced = {budget_label(b): scores[(frozenset(), b)] for b in config.reduced_budgets}
    curs = cur_table(full, reduced, cats, n_boot=config.bootstrap, seed=config.seed, alpha=config.alpha,
                     clusters=clusters)
    section = {"method": config.token_method, "budgets": list(config.token_budgets),
               "source": SOURCES[config.token_method], "text_tokens": _text_length(costs),
               "pareto_over": "all configurations: total_flops vs overall accuracy", "rows": rows}
    return {"token_budgets": section, "budget_cur": curs, "beats_encoder_only": beats_encoder_only(rows)}


def _text_length(costs: Costs) -> float | None:
    lengths = [c.get("text_tokens") for c in costs.values()]
    return next((float(v) for v in lengths if v is not None), None)


def configuration_rows(slots: Sequence[str], categories: NDArray[Any], scores: Scores,
                       costs: Costs) -> list[dict[str, Any]]:
    """One row per configuration (budget descending, then fewest masked, then slot order), Pareto flags set."""
    order = {s: i for i, s in enumerate(slots)}
    keys = sorted(scores, key=lambda c: (-c[1], len(c[0]), sorted(order[s] for s in c[0])))
    rows = []
    for masked, budget in keys:
        cost = costs[(masked, budget)]
        rows.append({"kept": kept_of(slots, masked), "masked": [s for s in slots if s in masked], "budget": budget,
                     "image_tokens": cost["image_tokens"], "accuracy": accuracy(scores[(masked, budget)], categories),
                     "cost": dict(cost["cost"])})
    flags = pareto_flags([(r["cost"]["total_flops"], r["accuracy"][OVERALL]) for r in rows])
    for row, flag in zip(rows, flags):
        row["pareto"] = flag
    return rows


def beats_encoder_only(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Reduced-budget configurations on the frontier more accurate (overall) than the most accurate
    budget-1 configuration whose total cost is at most theirs.

    Only configurations that keep an encoder take part (the no-encoder set reads no image, whatever
    its budget). A frontier row with no budget-1 configuration as cheap as it has nothing to beat and
    is not listed.

    Returns:
        ``[{"kept", "budget", "accuracy", "total_flops", "encoder_only": {"kept", "accuracy", "total_flops"}}]``.
    """
    full_budget = [r for r in rows if r["budget"] == 1 and r["kept"] and r["cost"]["total_flops"] is not None]
    out = []
    for row in rows:
        cost = row["cost"]["total_flops"]
        if row["budget"] == 1 or not row["pareto"] or not row["kept"] or cost is None:
            continue
        cheaper = [r for r in full_budget if r["cost"]["total_flops"] <= cost]
        if not cheaper:
            continue
        best = max(cheaper, key=lambda r: (r["accuracy"][OVERALL], -r["cost"]["total_flops"]))
        if row["accuracy"][OVERALL] > best["accuracy"][OVERALL]:
            out.append({"kept": list(row["kept"]), "budget": row["budget"], "accuracy": row["accuracy"][OVERALL],
                        "total_flops": cost,
                        "encoder_only": {"kept": list(best["kept"]), "accuracy": best["accuracy"][OVERALL],
                                         "total_flops": best["cost"]["total_flops"]}})
    return out


__all__ = ["beats_encoder_only", "budget_axis", "budget_label", "budget_ranking", "configuration_costs",
           "configuration_rows"]
