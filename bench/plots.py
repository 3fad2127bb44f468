"""The benchmark's two figures, drawn with matplotlib's Agg backend (no display needed)."""

from .stats import pareto_front

STAGE_COLOURS = {"fusion": "#8c8c8c", "prefill": "#4c72b0", "decode": "#dd8452"}
ENCODER_CMAP = "Greens"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_breakdown(report, path):
    """Stacked horizontal bars per model (one panel per batch size): each encoder, fusion,
    prefill and decode, with the measured end-to-end time as a tick. Returns ``True`` when written."""
    plt = _pyplot()
    models = report["models"]
    slots = models[0]["slots"]
    batch_sizes = report["settings"]["batch_sizes"]
    cmap = plt.get_cmap(ENCODER_CMAP)
    colours = {f"encoder:{s}": cmap(0.35 + 0.55 * i / max(1, len(slots) - 1)) for i, s in enumerate(slots)}
    colours.update(STAGE_COLOURS)
    fig, axes = plt.subplots(len(batch_sizes), 1, figsize=(10, 1.2 + 0.6 * len(models) * len(batch_sizes)),
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
                label = None if stage in labelled else stage.replace("encoder:", "")
                labelled.add(stage)
                ax.barh(row, width, left=left, color=colour, edgecolor="white", label=label)
                left += width
            ax.plot([stages["end_to_end"]["mean"]] * 2, [row - 0.4, row + 0.4], color="black", lw=1.5)
        ax.set_yticks(range(len(models)), [m["name"] for m in models])
        ax.invert_yaxis()
        ax.set_xlabel("ms (mean); black tick: measured end to end")
        ax.set_title(f"latency per stage, batch size {batch_size}")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_accuracy_vs_latency(report, path):
    """Overall accuracy against end-to-end latency (smallest batch size), the Pareto front
    joined, the full model marked with a star. Returns ``False`` (nothing written) without accuracy."""
    models = [m for m in report["models"] if m.get("accuracy") and "overall" in m["accuracy"]]
    if not models:
        return False
    plt = _pyplot()
    batch_size = str(min(report["settings"]["batch_sizes"]))
    points = {m["name"]: (m["latency"][batch_size]["stages"]["end_to_end"]["mean"], m["accuracy"]["overall"])
              for m in models}
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 5))
    for m in models:
        lat, acc = points[m["name"]]
        full = m["role"] == "full"
        ax.scatter([lat], [acc], marker="*" if full else "o", s=220 if full else 60,
                   color="#c44e52" if full else ("#4c72b0" if m["name"] in front else "#999999"), zorder=3)
        ax.annotate(m["name"] + (" (full)" if full else ""), (lat, acc), textcoords="offset points",
                    xytext=(6, 4), fontsize="small")
    ax.plot([points[n][0] for n in front], [points[n][1] for n in front], color="#4c72b0", lw=1, ls="--",
            label="Pareto front")
    ax.set_xlabel(f"end-to-end latency, batch size {batch_size} (ms)")
    ax.set_ylabel("accuracy (overall)")
    ax.set_title("accuracy vs latency")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
