"""Export of a model that carries a token budget: --format hf keeps it (config.json, card, manifest); stock classes
that cannot express it refuse it in one line with the reason, before anything is written."""

import json

import pytest

from encslim.errors import ConfigError

from ..conftest import run_main

POOL_QUARTER = {"method": "pool", "budget": 0.25}


@pytest.fixture(scope="module")
def budgeted(tiny_model_dir, tmp_path_factory):
    """``{"two": 2-slot A1 at pool 0.25, "one": 1-slot A1 at pool 0.25}`` (pruned with the budget)."""
    from encslim.prune.surgery import prune

    root = tmp_path_factory.mktemp("budgeted")
    prune(tiny_model_dir("A1"), ["siglip"], root / "two", token_budget=0.25, verify=False)
    prune(tiny_model_dir("A1"), ["siglip", "dinov2"], root / "one", token_budget=0.25, verify=False)
    return {"two": root / "two", "one": root / "one"}


def test_hf_keeps_the_budget_and_the_card_states_it(budgeted, tmp_path):
    from encslim.export import export_model
    from encslim.models.tokens import SOURCES

    out = tmp_path / "hf"
    manifest = export_model(budgeted["two"], out, "hf")
    assert json.loads((out / "config.json").read_text())["token_budget"] == POOL_QUARTER
    assert manifest["export"]["token_budget"] == {**POOL_QUARTER, "source": SOURCES["pool"], "image_tokens": 4}
    card = (out / "README.md").read_text()
    assert (f"- token budget: pool 0.25: the LLM reads 4 image tokens per image (config.json `token_budget`); "
            f"method: {SOURCES['pool']}") in card


def test_stock_llava_refuses_the_budget_with_the_reason(budgeted, tmp_path, capsys):
    out = tmp_path / "llava"
    code, _, err = run_main(capsys, "export", budgeted["one"], "--format", "llava", "--out", out)
    assert code == 2 and not out.exists() and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert f"--format llava cannot carry the token budget of {budgeted['one']} (pool 0.25)" in line
    assert "no token reducer" in line


def test_stock_deepseek_vl_refuses_a_budgeted_hybrid(tiny_hybrid_dir, tmp_path):
    from encslim.export import export_model
    from encslim.prune.surgery import prune

    budgeted = tmp_path / "hybrid-budget"
    prune(tiny_hybrid_dir, [], budgeted, token_budget=0.25, verify=False)
    with pytest.raises(ConfigError, match=r"--format deepseek_vl cannot carry the token budget of .* \(pool 0\.25\)"):
        export_model(budgeted, tmp_path / "stock", "deepseek_vl")
    assert not (tmp_path / "stock").exists()


def test_the_generic_reason_when_the_family_gives_none(budgeted):
    from encslim.export.common import read_source, refuse_token_budget

    source = read_source(budgeted["two"])
    with pytest.raises(ConfigError) as err:
        refuse_token_budget(source, "some_stock_format", "StockClass")
    assert str(err.value) == (
        f"--format some_stock_format cannot carry the token budget of {budgeted['two']} (pool 0.25): StockClass has "
        "no token reducer: its processor writes every image token and its model reads every one; export --format hf "
        "or remote-code keeps the budget, or prune with --token-budget 1 to ship every token")
    for fmt in ("hf", "remote-code", "onnx"):
        refuse_token_budget(source, fmt, fmt)  # these carry it (or their family decides)
