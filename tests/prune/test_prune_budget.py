"""``encslim prune --token-budget``: the pruned folder carries the budget in config.json, verification runs the
masked source under the same budget, the manifest records budget and image tokens; families without a budget
are refused before anything is written. The acceptance runs (tiny Eagle-X5 and Eagle2 pruned to 2 towers at
budget 0.25, then benched against the full model) are at the end."""

import json

import pytest

from encslim.errors import ConfigError
from encslim.models.tokens import TokenBudget

from ..conftest import run_main

POOL_QUARTER = {"method": "pool", "budget": 0.25}


def _read(folder, name):
    return json.loads((folder / name).read_text())


def test_prune_carries_the_budget_and_verifies_under_it(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, stdout, err = run_main(capsys, "prune", tiny_model_dir("A1"), "--drop", "siglip", "--token-budget", "0.25",
                                 "--token-method", "pool", "--out", out)
    assert code == 0, err
    assert _read(out, "config.json")["token_budget"] == POOL_QUARTER
    manifest = _read(out, "encslim_manifest.json")
    assert manifest["token_budget"] == {**POOL_QUARTER, "from": "--token-budget", "source_budget": None,
                                        "image_tokens": {"before": 16, "after": 4}}
    verification = manifest["verification"]
    assert verification["passed"] is True and verification["max_abs_diff"] <= 1e-4
    assert verification["token_budget"] == POOL_QUARTER
    assert "token budget: pool 0.25 (from --token-budget); image tokens per image 16 -> 4" in stdout
    assert "+ token_budget: {'method': 'pool', 'budget': 0.25}" in stdout  # the config.json diff


def test_verification_runs_the_source_under_the_pruned_budget(tiny_model_dir, tmp_path):
    """The pruned model reads 4 image tokens: the check only passes when the masked source reads the same 4
    (its processor writes 4 placeholders and its model pools to them), so run its logits here too."""
    import torch

    from encslim.models.loading import load_model
    from encslim.prune.surgery import prune

    out = tmp_path / "pruned"
    prune(tiny_model_dir("A1"), ["siglip"], out, token_budget=0.25)
    pruned, processor, adapter = load_model(out)
    full, full_processor, full_adapter = load_model(tiny_model_dir("A1"))
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    batch = adapter.prepare_batch(processor, [image], [adapter.build_prompt(processor, "What colour?")])
    assert int((batch["input_ids"] == adapter.image_token_id(pruned.config)).sum()) == 4
    with full_adapter.token_budget(full, full_processor, TokenBudget("pool", 0.25)), torch.no_grad():
        full_batch = full_adapter.prepare_batch(full_processor, [image], [adapter.build_prompt(processor, "What colour?")])
        assert torch.equal(full_batch["input_ids"], batch["input_ids"])
        ref = full_adapter.decode(full, full_adapter.encode(full, full_batch), full_batch, masked=frozenset({"siglip"}))
    with torch.no_grad():
        got = adapter.decode(pruned, adapter.encode(pruned, batch), batch)
    assert float((ref.logits - got.logits).abs().max()) <= 1e-4


def test_budget_alone_and_budget_one(tiny_model_dir, tmp_path, capsys):
    budgeted = tmp_path / "budget-only"
    code, stdout, err = run_main(capsys, "prune", tiny_model_dir("A1"), "--token-budget", "0.5", "--token-method",
                                 "attention", "--out", budgeted)
    assert code == 0, err
    assert "plan: drop nothing (keep clip, siglip, dinov2)" in stdout
    manifest = _read(budgeted, "encslim_manifest.json")
    assert manifest["removed_slots"] == [] and manifest["verification"]["passed"] is True
    assert _read(budgeted, "config.json")["token_budget"] == {"method": "attention", "budget": 0.5}
    assert manifest["token_budget"]["image_tokens"] == {"before": 16, "after": 8}

    every = tmp_path / "every-token"  # --token-budget 1 on a budgeted source: the key goes, every token is back
    code, stdout, err = run_main(capsys, "prune", budgeted, "--drop", "dinov2", "--token-budget", "1", "--out", every)
    assert code == 0, err
    assert "token_budget" not in _read(every, "config.json")
    manifest = _read(every, "encslim_manifest.json")
    assert manifest["token_budget"]["image_tokens"] == {"before": 8, "after": 16}
    assert manifest["token_budget"]["method"] is None and manifest["verification"]["token_budget"] is None

    kept = tmp_path / "kept"  # no --token-budget: the source's budget rides along
    prune_api(budgeted, ["clip"], kept)
    assert _read(kept, "config.json")["token_budget"] == {"method": "attention", "budget": 0.5}
    assert _read(kept, "encslim_manifest.json")["token_budget"]["from"] == "source"


def prune_api(*args, **kwargs):
    from encslim.prune.surgery import prune

    return prune(*args, **kwargs)


def test_the_selection_budget_applies_unless_given(tiny_model_dir, tmp_path):
    selection = {"policy": "keep", "basis": "subsets", "token_budget": POOL_QUARTER}
    manifest = prune_api(tiny_model_dir("A1"), ["clip"], tmp_path / "a", selection=selection)
    assert _read(tmp_path / "a", "config.json")["token_budget"] == POOL_QUARTER
    assert manifest["token_budget"]["from"] == "selection" and manifest["ranking"] == selection
    prune_api(tiny_model_dir("A1"), ["clip"], tmp_path / "b", selection=selection, token_budget=0.5)
    assert _read(tmp_path / "b", "config.json")["token_budget"] == {"method": "pool", "budget": 0.5}
    prune_api(tiny_model_dir("A1"), ["clip"], tmp_path / "c", selection={**selection, "token_budget": None})
    assert "token_budget" not in _read(tmp_path / "c", "config.json")


def test_refusals_are_one_line_and_write_nothing(tiny_model_dir, tmp_path, capsys):
    """The family's own check (adapter.check_token_budget) decides: the tiny native C model's 8 cross-attention
    queries are one row, which pooling cannot shorten."""
    out = tmp_path / "o"
    code, _, err = run_main(capsys, "prune", tiny_model_dir("C"), "--drop", "clip", "--token-budget", "0.25",
                            "--out", out)
    assert code == 2 and not out.exists()
    assert "Traceback" not in err and "queries are no square grid" in err.strip().splitlines()[-1]
    code, _, err = run_main(capsys, "prune", tiny_model_dir("A1"), "--drop", "clip", "--token-method", "attention",
                            "--out", out)
    assert code == 2 and not out.exists() and "--token-method needs --token-budget" in err
    code, _, err = run_main(capsys, "prune", tiny_model_dir("A1"), "--drop", "clip", "--token-budget", "1.5",
                            "--out", out)
    assert code == 2 and not out.exists() and "token_budget" in err
    with pytest.raises(ConfigError, match="use --token-method attention"):
        prune_api(tiny_model_dir("C"), ["clip"], out, token_budget=0.5)
    assert not out.exists()


def test_dry_run_shows_the_budget_patch(tiny_model_dir, capsys):
    code, stdout, err = run_main(capsys, "prune", tiny_model_dir("A1"), "--drop", "clip", "--token-budget", "0.25",
                                 "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(stdout)["plan"]
    assert {"op": "set", "path": "token_budget", "value": POOL_QUARTER} in plan["config_patch"]


# ---------------------------------------------------------------------------- acceptance: tiny Eagle-X5 and Eagle2
FAST_BENCH = dict(batch_sizes=[1], max_new_tokens=2, warmup=1, min_iters=3, min_seconds=0.0, memory=False)


def _prune_and_bench(full, drop, tmp_path):
    """Prune ``full`` to its kept towers at pool 0.25 (verified), bench full vs pruned; ``(manifest, bench.json)``."""
    from encslim.bench.benchmark import run_bench

    pruned = tmp_path / "pruned"
    manifest = prune_api(full, drop, pruned, token_budget=0.25, verify_method="full")
    run_bench(full, [pruned], tmp_path / "bench", FAST_BENCH)
    assert _read(pruned, "config.json")["token_budget"] == POOL_QUARTER
    return manifest, _read(tmp_path / "bench", "bench.json")


def _check_prefill(report, tokens):
    full, pruned = report["models"]
    assert (full["image_tokens"], pruned["image_tokens"]) == tokens
    assert full["token_budget"] is None and pruned["token_budget"] == POOL_QUARTER
    block = report["comparisons"][0]["prefill"]
    assert block["image_tokens"] == list(tokens)
    assert block["predicted_ratio"] == pytest.approx(pruned["prefill_flops_predicted"] / full["prefill_flops_predicted"])
    assert block["predicted_ratio"] < 0.6 and block["counted_ratio"] < 0.6  # prefill FLOPs fall with the tokens
    assert block["measured_ratio"] > 0  # measured (reported beside the prediction), not asserted on
    return block


def test_eagle_x5_pruned_to_two_towers_at_a_quarter_of_the_tokens(tiny_eagle_dir, tmp_path):
    """Tiny Eagle-X5 (five towers, one 32x32 fused grid): keep clip-448 + convnext-1024 at pool 0.25 (2x2)."""
    full = tiny_eagle_dir()
    manifest, report = _prune_and_bench(full, ["sam-1024", "det-1024", "pix2struct-1024"], tmp_path)
    assert manifest["kept_slots"] == ["clip-448", "convnext-1024"]
    assert manifest["token_budget"]["image_tokens"] == {"before": 1024, "after": 256}
    verification = manifest["verification"]
    assert verification["method"] == "full" and verification["passed"] is True
    assert verification["max_abs_diff"] <= 1e-4 and verification["token_budget"] == POOL_QUARTER
    _check_prefill(report, (1024, 256))


def test_eagle2_at_a_quarter_of_the_tokens(tmp_path):
    """Tiny Eagle2 (SigLIP + ConvNeXt, the two towers kept; tiles of a 4x4 grid each): pool 0.25 on every tile,
    nothing removed (the budget-only plan)."""
    from encslim.models.families.eagle2.tiny import create_tiny_eagle2

    full = tmp_path / "eagle2"
    create_tiny_eagle2(full)
    manifest, report = _prune_and_bench(full, [], tmp_path)
    assert manifest["kept_slots"] == ["siglip", "convnext"] and manifest["removed_slots"] == []
    assert manifest["token_budget"]["image_tokens"] == {"before": 16, "after": 4}  # per tile
    verification = manifest["verification"]
    assert verification["method"] == "full" and verification["passed"] is True
    assert verification["max_abs_diff"] <= 1e-4 and verification["token_budget"] == POOL_QUARTER
    full_entry, pruned_entry = report["models"]
    tiles = (full_entry["prompt_tokens"] - pruned_entry["prompt_tokens"]) // 12  # 12 fewer tokens per tile
    assert tiles >= 1 and full_entry["prompt_tokens"] - pruned_entry["prompt_tokens"] == 12 * tiles
    _check_prefill(report, (16, 4))
