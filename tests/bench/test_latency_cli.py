"""``encslim bench`` end to end on two tiny models (3 encoders and 2), with data, masks and memory."""

import json

import numpy as np
import pytest
from PIL import Image

from encslim.bench import stats
from encslim.cli import main

ARGS = ["--batch-sizes", "1,2", "--max-new-tokens", "3", "--min-iters", "2", "--min-seconds", "0", "--warmup", "1"]
CATEGORIES = ["OCR & Chart", "General"]


def _write_data(folder):
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(4):
        rng = np.random.RandomState(i)
        Image.fromarray(rng.randint(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps({"id": f"q{i}", "image": f"images/{i}.png", "question": "What colour is it?",
                                 "answer": "red", "category": CATEGORIES[i % 2], "metric": "exact"}))
    (folder / "eval.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "eval.jsonl"


@pytest.fixture(scope="module")
def bench_run(tiny_model_dir, tmp_path_factory):
    full = tiny_model_dir("A1", ("clip", "siglip", "sam"))
    variant = tiny_model_dir("A1", ("clip", "siglip"))
    tmp = tmp_path_factory.mktemp("bench")
    data = _write_data(tmp / "data")
    out = tmp / "out"
    main(["bench", str(full), str(variant), "--data", str(data), "--out", str(out), *ARGS,
          "--mask", "sam", "--mask-skip"])
    return out, json.loads((out / "bench.json").read_text()), full, variant


def test_outputs_written(bench_run):
    out, report, _, _ = bench_run
    files = sorted(p.name for p in out.iterdir())
    assert files == ["accuracy_vs_latency.png", "bench.json", "bench.md", "latency_breakdown.png"]
    for png in ("accuracy_vs_latency.png", "latency_breakdown.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and (out / png).stat().st_size > 5000
    assert sorted(report["outputs"]) == files
    md = (out / "bench.md").read_text()
    assert "## Latency, batch size 2" in md and "## Accuracy" in md and "GPU max allocated" in md


def test_every_report_field_present(bench_run):
    _, report, full, _ = bench_run
    assert set(report) == {"schema_version", "environment", "engines", "settings", "full", "models", "order",
                           "comparisons", "outputs"}
    env = report["environment"]
    for key in ("device", "device_name", "torch", "transformers", "encslim", "python", "dtype", "torch_threads",
                "attn_implementation", "timer"):
        assert env[key] not in (None, ""), key
    assert env["timer"] == "perf_counter" and env["attn_implementation"] == ["sdpa"]
    assert report["settings"]["batch_sizes"] == [1, 2] and report["settings"]["max_new_tokens"] == 3
    names = [m["name"] for m in report["models"]]
    assert names == [full.name, "A1-clip-siglip-llama-0", f"{full.name}[mask sam]", f"{full.name}[skip sam]"]
    for m in report["models"]:
        assert {"name", "path", "role", "masked", "mask_mode", "slots", "encoders_run", "fusion_class", "image_tokens",
                "prompt_tokens", "attn_implementation", "params", "weight_bytes", "flops",
                "stage_tokens_match_generate", "latency", "memory", "accuracy", "comparison", "prefill_flops_predicted",
                "token_budget"} <= set(m)
        assert m["stage_tokens_match_generate"] is True
        for batch in ("1", "2"):
            lat = m["latency"][batch]
            assert lat["iterations"] == 2
            encoders = {f"encoder:{s}" for s in m["encoders_run"]}
            assert set(lat["stages"]) == encoders | {"vision", "fusion", "prefill", "ttft", "decode", "stage_sum",
                                                     "end_to_end"}
            for summary in lat["stages"].values():
                assert set(summary) == {"n", "mean", "std", "min", "max", "p50", "p90", "p95", "p99"}
                assert summary["n"] == 2 and 0 < summary["min"] <= summary["p50"] <= summary["max"]
            assert lat["decode_tokens_per_s"]["mean"] > 0 and lat["end_to_end_tokens_per_s"]["mean"] > 0
        assert set(m["flops"]) == {f"encoder:{s}" for s in m["encoders_run"]} | {
            "vision", "fusion", "prefill", "decode", "end_to_end", "total"}
        mem = m["memory"]
        assert mem["rss_baseline_bytes"] > 0 and set(mem["per_batch_size"]) == {"1", "2"}
        assert all(row["peak_rss_bytes"] >= mem["rss_loaded_bytes"] for row in mem["per_batch_size"].values())
        assert set(m["accuracy"]) == {"overall", *CATEGORIES}
        assert all(0.0 <= v <= 1.0 for v in m["accuracy"].values())
    for c in report["comparisons"]:
        assert set(c) == {"model", "batch_size", "speedup", "vision", "end_to_end", "prefill", "flagged", "reasons",
                          "notes"}
        for block in (c["vision"], c["end_to_end"]):
            assert set(block) == {"predicted_saving", "measured_saving", "efficiency", "measured_saving_p50",
                                  "efficiency_p50", "flagged"}
    assert len(report["comparisons"]) == 3 * 2


def test_models_measured_interleaved(bench_run):
    _, report, _, _ = bench_run
    names = [m["name"] for m in report["models"]]
    for batch in ("1", "2"):
        assert report["order"][batch] == stats.interleaved_order(names, 2)


def test_savings_predicted_from_flops(bench_run):
    _, report, _, _ = bench_run
    full, small, masked, skipped = report["models"]
    sam = full["flops"]["encoder:sam"]
    assert skipped["flops"]["vision"] == full["flops"]["vision"] - sam
    assert masked["flops"] == full["flops"] and masked["encoders_run"] == full["encoders_run"]
    assert skipped["encoders_run"] == ["clip", "siglip"] and skipped["image_tokens"] == full["image_tokens"]
    assert small["params"]["total"] < full["params"]["total"] == masked["params"]["total"]
    by = {(c["model"], c["batch_size"]): c for c in report["comparisons"]}
    skip = by[(skipped["name"], 1)]
    assert skip["vision"]["predicted_saving"] == pytest.approx(sam / full["flops"]["vision"])
    mask = by[(masked["name"], 2)]
    assert mask["vision"]["predicted_saving"] == 0.0 and mask["vision"]["efficiency"] is None
    assert "masking alone saves nothing" in mask["notes"][0]
    assert small["comparison"] == by[(small["name"], 1)] and full["comparison"] is None


def test_accuracy_of_masked_model_uses_its_mask(bench_run):
    _, report, _, _ = bench_run
    full, _, masked, skipped = report["models"]
    assert masked["mask_mode"] == "zero" and skipped["mask_mode"] == "removal"
    assert masked["masked"] == skipped["masked"] == ["sam"]
    # class A1: zeroing sam's channel slice is removing it, so both masked copies answer alike
    assert masked["accuracy"] == skipped["accuracy"]


def _fails(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_user_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    full = str(tiny_model_dir("A1", ("clip", "siglip", "sam")))
    out = str(tmp_path / "o")
    assert "'batch_sizes.1': Input should be a valid integer, unable to parse string as an integer, got 'x'" in _fails(
        ["bench", full, full, "--out", out, "--batch-sizes", "1,x"], capsys)
    assert "nothing to compare" in _fails(["bench", full, "--out", out], capsys)
    assert "'min_iters': Input should be greater than or equal to 1, got 0" in _fails(["bench", full, "--mask", "sam", "--out", out, "--min-iters", "0"],
                                                capsys)
    assert "overlaps the input" in _fails(["bench", full, "--mask", "sam", "--out", f"{full}/x"], capsys)
    (tmp_path / "exists").mkdir()
    assert "already exists" in _fails(["bench", full, "--mask", "sam", "--out", str(tmp_path / "exists")], capsys)
    message = _fails(["bench", full, "--mask", "dino", "--out", out], capsys)
    assert "--mask dino (" in message and "unknown slot(s) dino" in message
    assert "masks every encoder" in _fails(["bench", full, "--mask", "clip,siglip,sam", "--out", out], capsys)
    assert not (tmp_path / "o").exists()
