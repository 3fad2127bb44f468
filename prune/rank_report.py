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
    Labels are placed so they neither overlap nor leave the plot.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from ..bench.plots import place_labels

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
