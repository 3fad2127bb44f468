"""bench under token budgets: image tokens per model, the analytic prefill FLOPs, and the prefill time saved by
each variant measured next to the FLOP-predicted ratio (bench.json and bench.md). No timed assertions: times
are only checked to be there."""

import json

import pytest

from encslim.bench.compare import prefill_block
from encslim.models.costs import language_model_shape, prefill_flops

FAST = dict(batch_sizes=[1], max_new_tokens=2, warmup=0, min_iters=2, min_seconds=0.0, memory=False)


def _entry(name, image_tokens, prompt_tokens, predicted, counted, prefill_ms):
    stage = {"mean": prefill_ms, "p50": prefill_ms, "std": 0.0}
    return {"name": name, "image_tokens": image_tokens, "prompt_tokens": prompt_tokens,
            "prefill_flops_predicted": predicted, "flops": {"prefill": counted},
            "latency": {"1": {"stages": {"prefill": stage}}}}


def test_prefill_block_sets_the_measured_ratio_beside_the_prediction():
    full = _entry("full", 16, 27, 1000.0, 900.0, 4.0)
    variant = _entry("pooled", 4, 15, 500.0, 450.0, 3.0)
    block = prefill_block(full, variant, 1)
    assert block["image_tokens"] == [16, 4] and block["prompt_tokens"] == [27, 15]
    assert block["tokens_ratio"] == 0.25 and block["predicted_ratio"] == 0.5 and block["counted_ratio"] == 0.5
    assert block["measured_ratio"] == 0.75 and block["measured_ratio_p50"] == 0.75
    assert block["predicted_saving"] == 0.5 and block["measured_saving"] == 0.25 and block["efficiency"] == 0.5
    unknown = prefill_block({**full, "prefill_flops_predicted": None}, variant, 1)
    assert unknown["predicted_ratio"] is None and unknown["efficiency"] is None


def test_bench_reports_tokens_and_prefill_of_a_budgeted_variant(tiny_model_dir, tmp_path):
    from encslim.bench.benchmark import run_bench
    from encslim.models.loading import load_model
    from encslim.prune.surgery import prune

    full = tiny_model_dir("A1")
    pooled = tmp_path / "pooled"
    prune(full, ["siglip"], pooled, token_budget=0.25, verify=False)
    report = run_bench(full, [pooled], tmp_path / "bench", FAST)
    on_disk = json.loads((tmp_path / "bench" / "bench.json").read_text())
    first, second = on_disk["models"]
    assert (first["image_tokens"], second["image_tokens"]) == (16, 4)
    assert first["token_budget"] is None and second["token_budget"] == {"method": "pool", "budget": 0.25}
    assert second["prompt_tokens"] == first["prompt_tokens"] - 12
    model, _, adapter = load_model(full)
    shape = language_model_shape(model, adapter)  # the pruned model keeps the same LLM
    assert first["prefill_flops_predicted"] == pytest.approx(prefill_flops(shape, first["prompt_tokens"]))
    assert second["prefill_flops_predicted"] == pytest.approx(prefill_flops(shape, second["prompt_tokens"]))
    block = on_disk["comparisons"][0]["prefill"]
    assert block["image_tokens"] == [16, 4]
    assert block["predicted_ratio"] == pytest.approx(second["prefill_flops_predicted"] / first["prefill_flops_predicted"])
    assert block["predicted_ratio"] < 1 and block["counted_ratio"] < 1
    assert block["measured_ratio"] > 0  # measured, not asserted on
    assert report["comparisons"][0]["prefill"] == block
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "## Prefill time saved" in md
    assert f"| pooled | pool 0.25 | 1 | 16 → 4 | {block['measured_ratio']:.3f} | {block['predicted_ratio']:.3f} |" in md
