"""Predicted vs measured savings, flags and reasons, markdown and plots on hand-built reports."""

import json

import pytest

from encslim.bench import stats
from encslim.bench.compare import compare
from encslim.bench.plots import plot_accuracy_vs_latency, plot_latency_breakdown
from encslim.bench.report import render_markdown, write_report


def entry(name, encoders, enc_flops, enc_ms, image_tokens=16, other_ms=None, spread=0.0, role="variant",
          masked=(), mask_mode=None, accuracy=None, slots=("a", "b")):
    """A report entry with the given per-encoder FLOPs and times (ms) at batch size 1.

    Non-vision FLOPs are fixed (fusion 0, prefill 4e9, decode 2e9); ``other_ms`` sets fusion,
    prefill and decode times; ``spread`` makes every stage vary by +-spread (three iterations).
    """
    other = {"fusion": 1.0, "prefill": 40.0, "decode": 20.0, **(other_ms or {})}
    flops = {f"encoder:{s}": enc_flops[s] for s in encoders}
    flops.update(vision=sum(enc_flops[s] for s in encoders), fusion=0, prefill=4e9, decode=2e9)
    flops["total"] = flops["vision"] + 6e9
    means = {f"encoder:{s}": enc_ms[s] for s in encoders}
    means["vision"] = sum(enc_ms[s] for s in encoders)
    means.update(other)
    means["ttft"] = means["vision"] + other["fusion"] + other["prefill"]
    means["stage_sum"] = means["ttft"] + other["decode"]
    means["end_to_end"] = means["stage_sum"]
    stages = {k: stats.summarize([v - spread * v, v, v + spread * v]) for k, v in means.items()}
    return {"name": name, "path": f"/m/{name}", "role": role, "masked": list(masked), "mask_mode": mask_mode,
            "slots": list(slots), "encoders_run": list(encoders), "fusion_class": "A1",
            "image_tokens": image_tokens, "prompt_tokens": 30, "attn_implementation": "sdpa",
            "params": {"total": 1000, "vision": 400}, "weight_bytes": 4000, "flops": flops,
            "stage_tokens_match_generate": True,
            "latency": {"1": {"iterations": 3, "stages": stages,
                              "decode_tokens_per_s": stats.summarize([750.0, 750.0, 750.0]),
                              "end_to_end_tokens_per_s": stats.summarize([100.0, 100.0, 100.0])}},
            "memory": None, "accuracy": accuracy}


FLOPS = {"a": 3e9, "b": 1e9}


def test_saving_matches_prediction_not_flagged():
    full = entry("full", ["a", "b"], FLOPS, {"a": 30.0, "b": 10.0}, role="full")
    pruned = entry("pruned", ["b"], FLOPS, {"b": 10.0})
    c = compare(full, pruned, 1)
    assert c["vision"]["predicted_saving"] == pytest.approx(0.75)        # 1 - 1 / 4
    assert c["vision"]["measured_saving"] == pytest.approx(0.75)         # 1 - 10 / 40
    assert c["vision"]["efficiency"] == pytest.approx(1.0)
    assert c["end_to_end"]["predicted_saving"] == pytest.approx(0.3)     # 1 - 7 / 10
    assert c["end_to_end"]["measured_saving"] == pytest.approx(30 / 101)  # 1 - 71 / 101
    assert c["speedup"]["vision"] == pytest.approx(4.0)
    assert c["speedup"]["end_to_end"] == pytest.approx(101 / 71)
    assert not c["flagged"] and c["reasons"] == []


def test_saving_above_prediction_gets_a_note_with_the_measured_shares():
    # removing b saves 25 % of FLOPs but 50 % of the time: a fixed cost per encoder
    full = entry("full", ["a", "b"], FLOPS, {"a": 20.0, "b": 20.0}, role="full")
    pruned = entry("pruned", ["a"], FLOPS, {"a": 20.0})
    c = compare(full, pruned, 1)
    assert c["vision"]["efficiency"] == pytest.approx(2.0) and not c["flagged"]
    assert c["notes"] == [
        "vision saving 2.00x its FLOP prediction: the removed encoder(s) b took 50 % of the full model's vision "
        "time for 25 % of its vision FLOPs; fixed per-encoder costs (dispatch, small kernels) weigh more than "
        "FLOPs at this size and batch; a larger batch brings the ratio toward 1"]
    exact = compare(full, entry("pruned", ["a"], FLOPS, {"a": 29.6}), 1)  # saves 26 %: ratio 1.04, no note
    assert exact["notes"] == []


def test_unsaturated_device_flagged_with_reason():
    # a: 3 GFLOP in 10 ms, b: 1 GFLOP in 30 ms -> removing a saves 75 % of FLOPs, 25 % of time
    full = entry("full", ["a", "b"], FLOPS, {"a": 10.0, "b": 30.0}, role="full")
    pruned = entry("pruned", ["b"], FLOPS, {"b": 30.0})
    c = compare(full, pruned, 1)
    assert c["vision"]["measured_saving"] == pytest.approx(0.25)
    assert c["vision"]["efficiency"] == pytest.approx(1 / 3)
    assert c["vision"]["flagged"] and c["flagged"]
    assert any("device not saturated" in r and "33.3 GFLOP/s against 300 for the removed" in r for r in c["reasons"])


def test_slower_kept_encoders_and_noise_reasons():
    full = entry("full", ["a", "b"], FLOPS, {"a": 30.0, "b": 10.0}, role="full")
    pruned = entry("pruned", ["b"], FLOPS, {"b": 35.0}, spread=0.5)
    c = compare(full, pruned, 1)
    assert c["vision"]["flagged"]
    text = "\n".join(c["reasons"])
    assert "kept encoders take 35.000 ms in the variant against 10.000 ms" in text
    assert "noisy timings: vision varies by" in text


def test_end_to_end_reasons():
    # vision is 40 % of FLOPs but a small share of time; decode dominates time; tokens unchanged
    full = entry("full", ["a", "b"], FLOPS, {"a": 3.0, "b": 1.0}, other_ms={"decode": 200.0}, role="full")
    pruned = entry("pruned", ["b"], FLOPS, {"b": 1.0}, other_ms={"decode": 200.0})
    c = compare(full, pruned, 1)
    assert c["end_to_end"]["flagged"]
    text = "\n".join(c["reasons"])
    assert "image token count unchanged (16)" in text
    assert "decode is" in text and "memory- or overhead-bound" in text
    assert "vision is 40 % of the FLOPs" in text


def test_masked_without_skip_predicts_no_saving():
    full = entry("full", ["a", "b"], FLOPS, {"a": 30.0, "b": 10.0}, role="full")
    masked = entry("full[mask a]", ["a", "b"], FLOPS, {"a": 30.0, "b": 10.0}, masked=("a",), mask_mode="zero")
    c = compare(full, masked, 1)
    assert c["vision"]["predicted_saving"] == 0.0 and c["vision"]["efficiency"] is None
    assert not c["flagged"]
    assert "masking alone saves nothing" in c["notes"][0]


def synthetic_report(with_accuracy=True):
    acc = (lambda o: {"overall": o, "OCR": o - 0.1}) if with_accuracy else (lambda o: None)
    models = [entry("full", ["a", "b"], FLOPS, {"a": 30.0, "b": 10.0}, role="full", accuracy=acc(0.9)),
              entry("pruned", ["b"], FLOPS, {"b": 10.0}, accuracy=acc(0.8)),
              entry("bad", ["b"], FLOPS, {"b": 30.0}, accuracy=acc(0.7))]
    return {"schema_version": 1, "environment": {"device": "cpu", "dtype": "float32", "torch_threads": 1},
            "settings": {"batch_sizes": [1], "max_new_tokens": 4, "warmup": 1, "min_iters": 3, "min_seconds": 0},
            "full": "full", "models": models, "order": {"1": ["full", "pruned", "bad"] * 3},
            "comparisons": [compare(models[0], m, 1) for m in models[1:]]}


def _png_ok(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 200 and width > 400


def test_plots_written_and_non_empty(tmp_path):
    report = synthetic_report()
    assert plot_latency_breakdown(report, tmp_path / "b.png")
    assert plot_accuracy_vs_latency(report, tmp_path / "a.png")
    _png_ok(tmp_path / "b.png")
    _png_ok(tmp_path / "a.png")


def test_no_accuracy_no_pareto_plot(tmp_path):
    report = synthetic_report(with_accuracy=False)
    assert not plot_accuracy_vs_latency(report, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()
    written = write_report(report, tmp_path)
    assert written == ["latency_breakdown.png", "bench.json", "bench.md"]
    assert "accuracy_vs_latency.png not written: accuracy needs --data" in (tmp_path / "bench.md").read_text()


def test_write_report_files_and_markdown(tmp_path):
    report = synthetic_report()
    written = write_report(report, tmp_path)
    assert sorted(written) == ["accuracy_vs_latency.png", "bench.json", "bench.md", "latency_breakdown.png"]
    assert json.loads((tmp_path / "bench.json").read_text())["outputs"] == written
    md = render_markdown(report)
    for heading in ("## Latency, batch size 1", "## Predicted (FLOPs) vs measured (time) savings",
                    "## Parameters and FLOPs per sample", "## Peak memory", "## Accuracy", "## Environment"):
        assert heading in md
    assert "| bad | 1 | 75.0 % | 25.0 % | 0.33× |" in md and "**FLAGGED**" in md
    assert "| pruned | 0.800 | -0.100 |" in md


def test_model_names_default_to_folders_and_can_be_given(tmp_path):
    from encslim.bench.benchmark import build_specs
    from encslim.errors import ConfigError

    full, a, b = tmp_path / "demo", tmp_path / "p" / "model", tmp_path / "f" / "model"
    assert [s.name for s in build_specs(full, [a, b])] == ["demo", "model", "model-2"]
    specs = build_specs(full, [a, b], names=["full", "pruned", "pruned"])
    assert [(s.name, s.path, s.role) for s in specs] == [
        ("full", str(full), "full"), ("pruned", str(a), "variant"), ("pruned-2", str(b), "variant")]
    with pytest.raises(ConfigError, match="2 name\\(s\\) for 3 model\\(s\\)"):
        build_specs(full, [a, b], names=["full", "pruned"])
