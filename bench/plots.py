"""The benchmark's two figures, drawn with matplotlib's Agg backend (no display needed), and
:func:`place_labels`, the point labelling the figures (and the ranking's frontier) share."""

from .stats import pareto_front

STAGE_COLOURS = {"fusion": "#8c8c8c", "prefill": "#4c72b0", "decode": "#dd8452"}
# one clearly different colour per encoder, none close to the stage colours above
ENCODER_COLOURS = ("#55a868", "#8172b3", "#937860", "#da8bc3", "#ccb974", "#64b5cd", "#2f4f4f", "#b5bd61")
GAP_COLOUR = "#e8e8e8"
FULL_COLOUR, FRONT_COLOUR, DOMINATED_COLOUR = "#c44e52", "#4c72b0", "#999999"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def encoder_colours(slots):
    """``{"encoder:<slot>": colour}``, distinct colours in slot order."""
    return {f"encoder:{s}": ENCODER_COLOURS[i % len(ENCODER_COLOURS)] for i, s in enumerate(slots)}


def plot_latency_breakdown(report, path):
    """Stacked horizontal bars per model (one panel per batch size): each encoder, fusion,
    prefill and decode, then the rest of the measured end-to-end time (``generate()``'s own
    overhead: sampling loop, logits processing, cache bookkeeping), hatched, up to the black tick.
    Returns ``True`` when written."""
    plt = _pyplot()
    models = report["models"]
    slots = list(dict.fromkeys(s for m in models for s in m["slots"]))
    batch_sizes = report["settings"]["batch_sizes"]
    colours = {**encoder_colours(slots), **STAGE_COLOURS}
    fig, axes = plt.subplots(len(batch_sizes), 1, figsize=(10, 1.5 + 0.7 * len(models) * len(batch_sizes)),
                             squeeze=False)
    for ax, batch_size in zip(axes[:, 0], batch_sizes):
        labelled = set()
        for row, m in enumerate(models):
            stages = m["latency"][str(batch_size)]["stages"]
            left = 0.0
            for stage, colour in colours.items():
                if stage not in stages:
                    continue
                width = stages[stage]["mean"]
                label = None if stage in labelled else stage.replace("encoder:", "encoder ")
                labelled.add(stage)
                ax.barh(row, width, left=left, color=colour, edgecolor="white", label=label)
                left += width
            end = stages["end_to_end"]["mean"]
            if end > left:  # what a real generate() adds to the separately timed stages
                label = None if "gap" in labelled else "generate() overhead (end to end - sum of stages)"
                labelled.add("gap")
                ax.barh(row, end - left, left=left, color=GAP_COLOUR, edgecolor="#b0b0b0", hatch="///", label=label)
            ax.plot([end] * 2, [row - 0.42, row + 0.42], color="black", lw=2,
                    label=None if "tick" in labelled else "measured end to end")
            labelled.add("tick")
            ax.annotate(f"{end:.1f} ms", (end, row), xytext=(4, 0), textcoords="offset points", va="center",
                        fontsize="small")
        ax.set_yticks(range(len(models)), [m["name"] + (" (full)" if m.get("role") == "full" and m["name"] != "full"
                                                          else "") for m in models])
        ax.invert_yaxis()
        ax.set_xlim(0, ax.get_xlim()[1] * 1.08)  # room for the end-to-end figures
        ax.set_xlabel("ms (mean over timed iterations)")
        ax.set_title(f"latency per stage, batch size {batch_size}")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_accuracy_vs_latency(report, path):
    """Overall accuracy (percent, axis from 0 to 100) against end-to-end latency (smallest batch
    size); the full model a star, Pareto-optimal variants blue, dominated ones grey (all in the
    legend), each point labelled with its accuracy and its difference to the full model.
    Returns ``False`` (nothing written) without accuracy."""
    models = [m for m in report["models"] if m.get("accuracy") and "overall" in m["accuracy"]]
    if not models:
        return False
    plt = _pyplot()
    batch_size = str(min(report["settings"]["batch_sizes"]))
    points = {m["name"]: (m["latency"][batch_size]["stages"]["end_to_end"]["mean"], 100 * m["accuracy"]["overall"])
              for m in models}
    front = pareto_front(points)
    full_acc = next((points[m["name"]][1] for m in models if m["role"] == "full"), None)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    shown = set()
    for m in models:
        lat, acc = points[m["name"]]
        kind = "full" if m["role"] == "full" else ("front" if m["name"] in front else "dominated")
        style = {"full": ("*", 260, FULL_COLOUR, "full model (reference)"),
                 "front": ("o", 70, FRONT_COLOUR, "variant, Pareto-optimal"),
                 "dominated": ("o", 70, DOMINATED_COLOUR, "variant, dominated")}[kind]
        ax.scatter([lat], [acc], marker=style[0], s=style[1], color=style[2], zorder=3,
                   label=None if kind in shown else style[3])
        shown.add(kind)
    if len(front) > 1:
        xs, ys = zip(*sorted(points[n] for n in front))
        ax.plot(xs, ys, color=FRONT_COLOUR, lw=1, ls="--", label="Pareto front", zorder=2)
    labels = []
    for m in models:
        acc = points[m["name"]][1]
        delta = "" if m["role"] == "full" or full_acc is None else f", {acc - full_acc:+.1f} pt"
        labels.append(f"{m['name']}: {acc:.1f}%{delta}")
    xmax = max(p[0] for p in points.values())
    ax.set_xlim(0, xmax * 1.25)
    ax.set_ylim(0, 108)  # from 0: a 1-point drop looks like one
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel(f"end-to-end latency, batch size {batch_size} (ms)")
    ax.set_ylabel("overall accuracy (%)")
    ax.set_title("accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    place_labels(ax, [points[m["name"]] for m in models], labels, fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


_OFFSETS = [(6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"), (-6, -4, "right", "top"),
            (0, 8, "center", "bottom"), (0, -8, "center", "top")]


def place_labels(ax, points, labels, fontsize=7, fallback=True, priority=None):
    """Label each ``(x, y)`` of ``points`` with ``labels`` without overlaps and inside the axes.

    Tries positions around each point, then further away with a leader line; a label that fits
    nowhere becomes a number, explained in a list to the right of the axes (``fallback``).
    Labels with a lower ``priority`` (default: all equal) get the first choice of place; among
    equals, left to right. Call it after the figure's layout is final (it fixes the layout).
    Returns the texts.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    if hasattr(fig, "set_layout_engine"):
        fig.set_layout_engine("none")  # the positions measured below must stay valid
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    marks = [ax.transData.transform(p) for p in points]
    radius = 5 * fig.dpi / 72
    dots = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius) for x, y in marks]
    taken = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() is not None else []
    candidates = [(dx * k, dy * k, ha, va) for k in (1, 2.5, 4.5) for dx, dy, ha, va in _OFFSETS]
    texts, unplaced = [], []
    priority = [0] * len(points) if priority is None else list(priority)
    for i in sorted(range(len(points)), key=lambda i: (priority[i], points[i][0], -points[i][1])):
        placed = None
        for dx, dy, ha, va in candidates:
            far = abs(dx) > 10 or abs(dy) > 10
            text = ax.annotate(labels[i], points[i], xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=fontsize, zorder=4,
                               arrowprops=dict(arrowstyle="-", color="0.6", lw=0.6) if far else None)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer).padded(1)  # the text alone, not its leader line
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
            if inside and not any(box.overlaps(b) for b in taken) and not any(
                    box.overlaps(d) for j, d in enumerate(dots) if j != i):
                placed = text
                taken.append(box)
                break
            text.remove()
        if placed is None:
            unplaced.append(i)
        else:
            texts.append(placed)
    if unplaced and fallback:
        for n, i in enumerate(unplaced, start=1):
            texts.append(ax.annotate(str(n), points[i], xytext=(4, 4), textcoords="offset points", fontsize=fontsize,
                                     fontweight="bold", zorder=4))
        ax.text(1.02, 0.0, "\n".join(f"{n}: {labels[i]}" for n, i in enumerate(unplaced, start=1)),
                transform=ax.transAxes, fontsize=fontsize, va="bottom", ha="left")
    elif unplaced:
        texts += [ax.annotate(labels[i], points[i], xytext=(4, 4), textcoords="offset points", fontsize=fontsize)
                  for i in unplaced]
    return texts
