"""The figures read well: labels neither overlap nor leave the plot, percent as in the tables,
intervals in the heatmap, the selected set and every colour in the legend, honest axes."""

import itertools

import pytest
from matplotlib.figure import Figure

from encslim.bench.plots import place_labels, plot_accuracy_vs_latency, plot_latency_breakdown
from encslim.prune.rank_report import plot_cur_heatmap, plot_frontier

SLOTS = ["siglip", "vit", "convnext", "clip"]


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save (they are drawn to PNG as usual)."""
    saved = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _ranking():
    subsets = []
    for k in range(len(SLOTS) + 1):
        for kept in itertools.combinations(SLOTS, k):
            acc = 0.99 if "vit" in kept and len(kept) > 1 else 0.4 + 0.1 * len(kept)
            subsets.append({"kept": list(kept), "masked": [s for s in SLOTS if s not in kept],
                            "accuracy": {"overall": acc}, "cost": {"vision_flops": 1e6 * (1 + 28 * len(kept) + k)},
                            "pareto": len(kept) <= 1 or kept == ("vit", "clip")})
    cell = {"value": 0.253, "ci": [0.25, 0.26], "significant": True}
    return {"slots": SLOTS, "categories": ["OCR"], "mask_mode": "removal", "subsets": subsets,
            "bootstrap": {"confidence": 0.95, "resamples": 100},
            "cur": {s: {"OCR": dict(cell), "overall": {"value": None, "ci": None}} for s in SLOTS}}


def _texts(fig):
    return [t for ax in fig.axes for t in ax.texts]


def test_place_labels_inside_and_apart():
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    points = [(x, 1.0) for x in (1, 1.2, 1.4, 1.6, 9.8)] + [(5, 0.5), (5.1, 0.5)]
    labels = [f"set number {i} with a long name" for i in range(len(points))]
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 1.3)
    texts = place_labels(ax, points, labels)
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_text() in labels]
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 <= box.y0 and box.y1 <= frame.y1 + 1
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in texts if t.get_text() in labels]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    every = " ".join(t.get_text() for t in texts) + " ".join(t.get_text() for t in ax.texts)
    assert all(label in every for label in labels)  # placed, or numbered and listed beside the plot


def test_frontier_labels_every_set_and_shows_the_selection(figures, tmp_path):
    plot_frontier(_ranking(), tmp_path / "f.png", selected=["vit", "clip"])
    fig = figures[-1]
    ax = fig.axes[0]
    shown = " ".join(t.get_text() for t in _texts(fig))
    assert "siglip+vit+convnext+clip" in shown and "(none)" in shown
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any("Pareto" in t for t in legend) and "dominated" in legend and "selected: keep vit+clip" in legend
    assert ax.get_ylim()[0] == 0 and "%" in ax.get_ylabel()
    assert (tmp_path / "f.png").stat().st_size > 0


def test_heatmap_in_percent_with_intervals(figures, tmp_path):
    plot_cur_heatmap(_ranking(), tmp_path / "h.png")
    cells = [t.get_text() for t in figures[-1].axes[0].texts]
    assert "25.3*\n[25.0, 26.0]" in cells and "n/a" in cells
    assert "%" in figures[-1].axes[0].get_title() and "interval" in figures[-1].axes[0].get_title()


def _report(role_names=("full", "pruned")):
    def stages(scale):
        s = {f"encoder:{n}": {"mean": 3.0 * scale} for n in SLOTS[: 4 if scale == 1 else 2]}
        s.update(fusion={"mean": 0.5}, prefill={"mean": 3.0}, decode={"mean": 25.0}, end_to_end={"mean": 50.0 * scale})
        return s

    models = [{"name": role_names[0], "role": "full", "slots": SLOTS, "accuracy": {"overall": 0.988},
               "latency": {"1": {"stages": stages(1)}}},
              {"name": role_names[1], "role": "variant", "slots": SLOTS[:2], "accuracy": {"overall": 0.978},
               "latency": {"1": {"stages": stages(0.8)}}}]
    return {"models": models, "settings": {"batch_sizes": [1]}}


def test_latency_breakdown_distinct_encoders_and_the_gap_explained(figures, tmp_path):
    assert plot_latency_breakdown(_report(), tmp_path / "l.png")
    ax = figures[-1].axes[0]
    handles, labels = ax.get_legend_handles_labels()
    colours = {lab: tuple(h.patches[0].get_facecolor()) if hasattr(h, "patches") else None
               for h, lab in zip(handles, labels)}
    encoder_colours = [colours[f"encoder {s}"] for s in SLOTS]
    assert len(set(encoder_colours)) == len(SLOTS)
    assert any("overhead" in lab for lab in labels) and "measured end to end" in labels


def test_accuracy_vs_latency_axis_from_zero_and_no_full_full(figures, tmp_path):
    assert plot_accuracy_vs_latency(_report(), tmp_path / "a.png")
    ax = figures[-1].axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert not any("(full)" in t for t in texts)
    assert any(t.startswith("pruned: 97.8%, -1.0 pt") for t in texts)
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 100
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "full model (reference)" in legend
