"""Human views of a ranking: ``ranking.md`` tables and the CUR heatmap / cost frontier plots."""

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Any, Union

from .importance import OVERALL

PathArg = Union[str, "PathLike[str]"]
RankingData = Mapping[str, Any]  # the content of ranking.json (JSON)
Cell = Union[Mapping[str, Any], None]  # one CUR cell: value, ci, significant, flips, note


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def _flops_unit(values: Iterable[float | None]) -> tuple[float, str]:
    """``(divisor, prefix)`` that shows the largest of ``values`` FLOPs as a number below 1000."""
    top = max([v for v in values if v is not None], default=0)
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if top >= div:
            return div, prefix
    return 1.0, ""


def _mask_label(row: Mapping[str, Any]) -> str:
    return "full" if not row["masked"] else " ".join(f"-{s}" for s in row["masked"])


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def ranking_markdown(data: RankingData) -> str:
    """The ranking as Markdown: accuracy under each mask, CUR with intervals, IG, flips, Shapley,
    interactions and the cost frontier. Accuracies and CURs are shown in percent."""
    groups = [*data["categories"], OVERALL]
    boot = data.get("bootstrap") or {}
    lines = [
        f"# Encoder ranking: {data['model']}", "",
        f"Slots: {', '.join(data['slots'])}. Mask: `{data['mask_mode']}` "
        f"(no-encoder set: `{data.get('empty_set_mask')}`). Subsets: `{data.get('subsets_mode')}`. "
        f"Overall = {data['overall_is']}. Samples: "
        + ", ".join(f"{g} {data.get('n_samples', {}).get(g, '?')}" for g in groups) + ".", "",
        "## Accuracy (%) per category under each mask", "",
    ]
    lines += _table(["mask", "kept", *groups],
                    [[_mask_label(r), "+".join(r["kept"]) or "(none)", *(_pct(r["accuracy"].get(g)) for g in groups)]
                     for r in data["subsets"]])
    conf = boot.get("confidence")
    lines += ["", "## CUR (%) per slot and category"
              + (f", {conf:.0%} paired bootstrap interval ({boot.get('resamples')} resamples); "
                 "* = interval excludes 0" if boot.get("resamples") else ""), ""]
    lines += _table(["slot", *groups], [[s, *(_cur_cell(data["cur"][s].get(g)) for g in groups)] for s in data["slots"]])
    lines += ["", "## IG (%) per category (max CUR - min CUR)", ""]
    lines += _table(groups, [[_pct(data["ig"].get(g)) for g in groups]])
    lines += ["", f"## Flips when masking one slot (right = score >= {data.get('right_threshold', 0.5)})", ""]
    lines += _table(["slot", *groups], [[s, *(_flip_cell(data["cur"][s].get(g)) for g in groups)] for s in data["slots"]])
    lines += _shapley_lines(data, groups)
    lines += _frontier_lines(data)
    lines += _budget_lines(data, groups)
    lines += _recovery_lines(data, groups)
    notes = sorted({c["note"] for cells in data["cur"].values() for c in cells.values() if c.get("note")})
    if data.get("costs_note"):
        notes.append(data["costs_note"])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _recovery_lines(data: RankingData, groups: Sequence[str]) -> list[str]:
    """Masked vs recovered accuracy (and CUR of the removed set) of each recovered candidate."""
    block = data.get("recovery")
    if not block:
        return []
    distill = {"off": "plain LoRA", "on": "distilled from the full model", "both": "plain LoRA and distilled"}
    lines = ["", f"## Accuracy (%) after recovery ({block['steps']} LoRA steps, {distill[block['distill']]}; "
             f"prune --on recovered uses `{block['primary']}`)", ""]
    rows: list[list[str]] = []
    for entry in block["candidates"]:
        kept = "+".join(entry["kept"])
        if entry.get("token_budget"):  # a configuration recovered under its token budget
            kept += f" @ {entry['token_budget']['method']} {entry['token_budget']['budget']:g}"
        if "skipped" in entry:
            rows.append([kept, f"skipped: {entry['skipped']}", *("" for _ in groups), ""])
            continue
        rows.append([kept, "masked", *(_pct(entry["accuracy_masked"].get(g)) for g in groups),
                     _pct(entry["cur_masked"].get(OVERALL))])
        for variant, acc in entry["accuracy_recovered"].items():
            rows.append([kept, f"recovered ({variant})", *(_pct(acc.get(g)) for g in groups),
                         _pct(entry["cur_recovered"][variant].get(OVERALL))])
    lines += _table(["kept", "accuracy", *groups, "CUR of removed (overall)"], rows)
    if data.get("recovered_cur"):
        lines += ["", "Recovered CUR (%) of single slots:", ""]
        lines += _table(["slot", *groups], [[s, *(_pct(cells.get(g)) for g in groups)]
                                            for s, cells in data["recovered_cur"].items()])
    return lines


def _cur_cell(cell: Cell) -> str:
    if cell is None:
        return ""
    if cell["value"] is None:
        return "undefined"
    text = _pct(cell["value"])
    if cell.get("ci"):
        text += f" [{_pct(cell['ci'][0])}, {_pct(cell['ci'][1])}]" + ("*" if cell.get("significant") else "")
    return text


def _flip_cell(cell: Cell) -> str:
    if cell is None:
        return ""
    return f"{cell['flips']['right_to_wrong']} / {cell['flips']['wrong_to_right']}"


def _shapley_lines(data: RankingData, groups: Sequence[str]) -> list[str]:
    lines: list[str] = []
    if data.get("shapley"):
        se = data.get("shapley_stderr")
        lines += ["", f"## Shapley values (accuracy points, %; {data['shapley_method']}"
                  + (f", {data['shapley_permutations']} permutations, ± standard error" if se else "") + ")", ""]
        lines += _table(["slot", *groups], [
            [s, *(_pct(data["shapley"][s][g]) + (f" ± {_pct(se[s][g])}" if se else "") for g in groups)]
            for s in data["slots"]])
    if data.get("interactions"):
        what = ("Shapley interaction index" if data.get("interactions_method") == "exact"
                else "second difference at the full model")
        lines += ["", f"## Pair interactions (%; {what}; < 0: substitutes, > 0: synergy)", ""]
        lines += _table(["pair", *groups], [[p.replace("|", " & "), *(_pct(v[g]) for g in groups)]
                                            for p, v in data["interactions"].items()])
    if data.get("greedy_path"):
        lines += ["", "## Greedy backward elimination", ""]
        lines += _table(["step", "dropped", "kept", "overall (%)"],
                        [[k + 1, st["dropped"], "+".join(st["kept"]), _pct(st["accuracy"])]
                         for k, st in enumerate(data["greedy_path"])])
    return lines


def _frontier_lines(data: RankingData) -> list[str]:
    rows = sorted(data["subsets"], key=lambda r: (r["cost"]["vision_flops"] is None, r["cost"]["vision_flops"] or 0))
    div, prefix = _flops_unit([r["cost"]["vision_flops"] for r in rows])
    lines = ["", f"## Cost frontier (vision {prefix}FLOPs per image vs overall accuracy; P = Pareto-optimal)", ""]
    lines += _table(["kept", f"vision {prefix}FLOPs", "latency ms", "overall (%)", "Pareto"], [
        ["+".join(r["kept"]) or "(none)",
         "?" if r["cost"]["vision_flops"] is None else f"{r['cost']['vision_flops'] / div:.4g}",
         "" if r["cost"].get("latency_ms") is None else f"{r['cost']['latency_ms']:.3g}",
         _pct(r["accuracy"][OVERALL]), "P" if r.get("pareto") else ""] for r in rows])
    return lines


def _budget_lines(data: RankingData, groups: Sequence[str]) -> list[str]:
    """The token-budget axis: CUR of each budget, every configuration with its costs, the wins over encoder-only sets."""
    section = data.get("token_budgets")
    if not section:
        return []
    rows = section["rows"]
    div, prefix = _flops_unit([r["cost"]["total_flops"] for r in rows])
    lines = ["", f"## Token budgets ({section['method']}: {section['source']})", "",
             f"Every kept set at budgets {', '.join(f'{b:g}' for b in section['budgets'])} of its image tokens, on the "
             f"same encoder features. Costs per image and prompt ({section.get('text_tokens')} text tokens on average): "
             "vision + fusion + LLM prefill FLOPs (encslim.models.costs); P = Pareto-optimal over all configurations "
             "(total FLOPs vs overall accuracy).", "",
             "CUR (%) of each budget on the full model (the accuracy share lost by reducing the tokens):", ""]
    lines += _table(["budget", *groups], [[label, *(_cur_cell(cells.get(g)) for g in groups)]
                                          for label, cells in (data.get("budget_cur") or {}).items()])
    lines += ["", f"Configurations ({prefix}FLOPs):", ""]
    lines += _table(["kept", "budget", "image tokens", f"vision {prefix}FLOPs", f"fusion {prefix}FLOPs",
                     f"prefill {prefix}FLOPs", f"total {prefix}FLOPs", *(f"{g} (%)" for g in groups), "Pareto"], [
        [_kept_label(r["kept"]), f"{r['budget']:g}", r["image_tokens"],
         *(_flops(r["cost"][k], div) for k in ("vision_flops", "fusion_flops", "prefill_flops", "total_flops")),
         *(_pct(r["accuracy"].get(g)) for g in groups), "P" if r["pareto"] else ""] for r in rows])
    wins = data.get("beats_encoder_only") or []
    lines += ["", "Reduced budgets on the frontier that beat every encoder-only configuration costing no more: "
              + ("none." if not wins else ""), ""]
    lines += [f"- {_kept_label(w['kept'])} at budget {w['budget']:g}: {_pct(w['accuracy'])} % vs "
              f"{_kept_label(w['encoder_only']['kept'])} at every token: {_pct(w['encoder_only']['accuracy'])} % "
              f"({w['total_flops'] / div:.4g} vs {w['encoder_only']['total_flops'] / div:.4g} {prefix}FLOPs)"
              for w in wins]
    return lines


def _flops(value: float | None, div: float) -> str:
    return "?" if value is None else f"{value / div:.4g}"


def plot_cur_heatmap(data: RankingData, path: PathArg) -> None:
    """Slots x categories heatmap of CUR in percent (as in the tables), diverging colours centred
    at 0 (negative CUR in red); each cell shows the value and, with bootstrap, its interval.

    Undefined cells are grey; significant cells carry a ``*``.
    """
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    groups = [*data["categories"], OVERALL]
    slots = data["slots"]
    grid = np.array([[np.nan if data["cur"][s][g]["value"] is None else 100 * data["cur"][s][g]["value"]
                      for g in groups] for s in slots], dtype=float)
    bound = max(100.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 100.0)
    with_ci = any(data["cur"][s][g].get("ci") for s in slots for g in groups)
    fig = Figure(figsize=(1.8 + 1.45 * len(groups), 1.4 + (0.8 if with_ci else 0.6) * len(slots)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_facecolor("0.8")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", norm=TwoSlopeNorm(0.0, -bound, bound), aspect="auto")
    for i, s in enumerate(slots):
        for j, g in enumerate(groups):
            cell = data["cur"][s][g]
            if cell["value"] is None:
                text = "n/a"
            else:
                text = _pct(cell["value"]) + ("*" if cell.get("significant") else "")
                if cell.get("ci"):
                    text += f"\n[{_pct(cell['ci'][0])}, {_pct(cell['ci'][1])}]"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, linespacing=1.3,
                    color="white" if cell["value"] is not None and abs(100 * cell["value"]) > 0.6 * bound else "black")
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_yticks(range(len(slots)), slots)
    boot = data.get("bootstrap") or {}
    cell = (f"cell: CUR [{boot['confidence']:.0%} paired bootstrap interval]; * = interval excludes 0"
            if with_ci and boot.get("confidence") else "cell: CUR; * = interval excludes 0")
    ax.set_title(f"CUR (%) per slot and category, {data['mask_mode']} mask\n{cell}", fontsize=10)
    fig.colorbar(image, ax=ax, label="CUR (%)")
    fig.savefig(path, dpi=120)


def _kept_label(kept: Iterable[str]) -> str:
    return "+".join(kept) or "(none)"


def plot_frontier(data: RankingData, path: PathArg, selected: Iterable[str] | None = None) -> None:
    """Overall accuracy (%) vs vision FLOPs of every evaluated kept set; the Pareto front joined.

    Pareto-optimal sets are red, dominated ones grey, the full model is a star and ``selected``
    (the kept slots a prune policy chose, if given) is ringed; all of these are in the legend.
    Labels are placed so they neither overlap nor leave the plot. A ranking with a token-budget axis
    is drawn by :func:`plot_budget_frontier` instead (total FLOPs on x, every configuration).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from ..bench.plots import place_labels

    if data.get("token_budgets"):
        plot_budget_frontier(data, path, selected)
        return
    rows = [r for r in data["subsets"] if r["cost"]["vision_flops"] is not None]
    div, prefix = _flops_unit([r["cost"]["vision_flops"] for r in rows])
    chosen_set = None if selected is None else frozenset(selected)
    fig = Figure(figsize=(8.6, 5.0))
    fig.subplots_adjust(left=0.08, right=0.66, bottom=0.11, top=0.92)
    ax = fig.add_subplot()
    points: list[tuple[float, float]] = []
    labels: list[str] = []
    priority: list[int] = []
    for r in rows:
        x, y = r["cost"]["vision_flops"] / div, 100 * r["accuracy"][OVERALL]
        full = not r["masked"]
        ax.scatter([x], [y], marker="*" if full else "o", s=150 if full else 36, zorder=3,
                   color="tab:red" if r["pareto"] else "tab:gray")
        if chosen_set is not None and frozenset(r["kept"]) == chosen_set:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="black", linewidths=1.6, zorder=4)
        points.append((x, y))
        labels.append(_kept_label(r["kept"]))
        chosen = chosen_set is not None and frozenset(r["kept"]) == chosen_set
        priority.append(0 if full or chosen else (1 if r["pareto"] else 2))
    front = sorted((r["cost"]["vision_flops"] / div, 100 * r["accuracy"][OVERALL]) for r in rows if r["pareto"])
    if front:
        ax.step(*zip(*front), where="post", color="tab:red", lw=1, zorder=2)
    handles = [Line2D([], [], color="tab:red", marker="o", lw=1, label="Pareto-optimal (front joined)"),
               Line2D([], [], color="tab:gray", marker="o", lw=0, label="dominated")]
    if any(not r["masked"] for r in rows):
        handles.append(Line2D([], [], color="0.35", marker="*", markersize=11, lw=0, label="full model (all slots)"))
    if chosen_set is not None:
        kept = _kept_label(sorted(chosen_set, key=data["slots"].index))
        handles.append(Line2D([], [], marker="o", markersize=13, lw=0, markerfacecolor="none", markeredgecolor="black",
                              markeredgewidth=1.6, label=f"selected: keep {kept}"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.67, 0.92), fontsize=8, frameon=False)
    xmax = max([p[0] for p in points], default=0.0) or 1.0  # no known costs (predictions without a model)
    ax.set_xlim(-0.04 * xmax, 1.08 * xmax)
    ax.set_ylim(0, 116)  # room above 100 % for labels
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel(f"vision {prefix}FLOPs per image")
    ax.set_ylabel("overall accuracy (%)")
    ax.set_title("Accuracy vs cost per kept set" + (" (costs unknown: no model)" if data.get("costs_note") else ""))
    ax.grid(alpha=0.3)
    place_labels(ax, points, labels, fontsize=7, priority=priority)
    fig.savefig(path, dpi=120)


BUDGET_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def plot_budget_frontier(data: RankingData, path: PathArg, selected: Iterable[str] | None = None,
                         selected_budget: float = 1.0) -> None:
    """Overall accuracy (%) vs total FLOPs (vision + fusion + prefill) of every configuration (kept set x
    token budget): one marker and colour per budget, the Pareto front over all configurations joined,
    frontier points labelled with their kept set (``@budget`` below 1); ``selected`` (kept slots, at
    ``selected_budget``) is ringed. Dominated points are faded.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from ..bench.plots import place_labels

    section = data["token_budgets"]
    rows = [r for r in section["rows"] if r["cost"]["total_flops"] is not None]
    div, prefix = _flops_unit([r["cost"]["total_flops"] for r in rows])
    budgets = list(section["budgets"])
    style = {b: (BUDGET_MARKERS[i % len(BUDGET_MARKERS)], f"C{i}") for i, b in enumerate(budgets)}
    chosen = None if selected is None else (frozenset(selected), selected_budget)
    fig = Figure(figsize=(9.0, 5.2))
    fig.subplots_adjust(left=0.08, right=0.66, bottom=0.11, top=0.9)
    ax = fig.add_subplot()
    points, labels = [], []
    for r in rows:
        x, y = r["cost"]["total_flops"] / div, 100 * r["accuracy"][OVERALL]
        marker, colour = style[r["budget"]]
        ax.scatter([x], [y], marker=marker, s=46 if r["pareto"] else 30, color=colour, zorder=3,
                   alpha=1.0 if r["pareto"] else 0.35, edgecolors="black" if r["pareto"] else "none", linewidths=0.6)
        if chosen is not None and (frozenset(r["kept"]), r["budget"]) == chosen:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="black", linewidths=1.6, zorder=4)
        if r["pareto"]:
            points.append((x, y))
            labels.append(_kept_label(r["kept"]) + ("" if r["budget"] == 1 else f" @{r['budget']:g}"))
    front = sorted(points)
    if front:
        ax.step(*zip(*front), where="post", color="black", lw=1, zorder=2)
    handles = [Line2D([], [], color=style[b][1], marker=style[b][0], lw=0,
                      label="every token (budget 1)" if b == 1 else f"budget {b:g} ({section['method']})")
               for b in budgets]
    handles += [Line2D([], [], color="black", lw=1, label="Pareto front (all configurations)"),
                Line2D([], [], color="0.6", marker="o", lw=0, alpha=0.35, label="dominated (faded)")]
    if chosen is not None:
        kept = _kept_label(sorted(chosen[0], key=data["slots"].index))
        handles.append(Line2D([], [], marker="o", markersize=13, lw=0, markerfacecolor="none", markeredgecolor="black",
                              markeredgewidth=1.6, label=f"selected: keep {kept} at budget {selected_budget:g}"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.67, 0.9), fontsize=8, frameon=False)
    xmax = max([r["cost"]["total_flops"] / div for r in rows], default=0.0) or 1.0
    ax.set_xlim(-0.04 * xmax, 1.1 * xmax)
    ax.set_ylim(0, 116)  # room above 100 % for labels
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel(f"total {prefix}FLOPs per image and prompt (vision + fusion + LLM prefill)")
    ax.set_ylabel("overall accuracy (%)")
    ax.set_title("Accuracy vs cost per configuration (kept set x token budget)\nlabels: Pareto-optimal kept sets "
                 "(@budget below 1)", fontsize=10)
    ax.grid(alpha=0.3)
    place_labels(ax, points, labels, fontsize=7)
    fig.savefig(path, dpi=120)
