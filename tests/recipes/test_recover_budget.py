"""rank --recover with a token-budget axis: the candidates are configurations (kept set x budget), and a candidate
with a budget is pruned with it, so its recovery trains and its evaluation scores under the budget."""

import json

from encslim.recipes.recover import budget_candidates, candidate_name

from ..conftest import make_image, write_jsonl

SLOTS = ["clip", "siglip", "dinov2"]
ACC = {"overall": 0.5, "General": 0.5}


def _row(kept, budget, overall, pareto):
    return {"kept": kept, "budget": budget, "accuracy": {"overall": overall, "General": overall}, "pareto": pareto,
            "image_tokens": 16, "cost": {"total_flops": 1.0}}


def _ranking(rows):
    subsets = [{"kept": r["kept"], "masked": [s for s in SLOTS if s not in r["kept"]], "accuracy": r["accuracy"],
                "pareto": r["pareto"]} for r in rows if r["budget"] == 1]
    return {"slots": SLOTS, "categories": ["General"], "accuracy": {"full": ACC}, "subsets": subsets, "cur": {},
            "token_budgets": {"method": "pool", "rows": rows}}


def test_budget_candidates_are_configurations():
    rows = [_row(SLOTS, 1, 0.9, True), _row(SLOTS, 0.25, 0.88, True), _row(["clip", "dinov2"], 1, 0.86, True),
            _row(["clip", "dinov2"], 0.25, 0.8, True), _row(["clip"], 0.25, 0.5, False), _row([], 1, 0.1, True)]
    ranking = _ranking(rows)
    # the full model at every token and the empty set are never candidates; non-Pareto rows neither
    assert budget_candidates(ranking, 5) == [(SLOTS, {"method": "pool", "budget": 0.25}), (["clip", "dinov2"], None),
                                             (["clip", "dinov2"], {"method": "pool", "budget": 0.25})]
    without = {k: v for k, v in ranking.items() if k != "token_budgets"}
    assert budget_candidates(without, 5) == [(["clip", "dinov2"], None)]
    assert candidate_name(["clip", "dinov2"], {"method": "pool", "budget": 0.25}) == "clip+dinov2@pool0.25"
    assert candidate_name(["clip", "dinov2"]) == "clip+dinov2"


def test_a_budgeted_candidate_is_pruned_trained_and_scored_under_its_budget(tiny_model_dir, tmp_path):
    from encslim.data.load import load_samples
    from encslim.recipes.recover import RecoverConfig, recover

    (tmp_path / "images").mkdir()
    rows = []
    for i in range(6):
        make_image(i, 64).save(tmp_path / "images" / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"images/{i}.png", "question": "What colour is the shape?",
                     "answer": "red", "category": "General", "metric": "exact"})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    ranking = _ranking([_row(SLOTS, 1, 0.9, True), _row(SLOTS, 0.25, 0.88, True),
                        _row(["clip", "dinov2"], 0.25, 0.8, True)])
    out = tmp_path / "ranking"
    out.mkdir()
    block = recover(ranking, tiny_model_dir("A1"), load_samples([train]), out,
                    RecoverConfig(steps=1, data=[train], top=2, batch_size=2), {"batch_size": 4, "max_new_tokens": 2})
    quarter = {"method": "pool", "budget": 0.25}
    assert [(c["kept"], c["masked"], c["token_budget"]) for c in block["candidates"]] == [
        (SLOTS, [], quarter), (["clip", "dinov2"], ["siglip"], quarter)]
    for entry, name in zip(block["candidates"], ["clip+siglip+dinov2@pool0.25", "clip+dinov2@pool0.25"]):
        model = out / entry["models"]["lora"]
        assert entry["models"]["lora"] == f"recover/{name}/lora"
        assert json.loads((model / "config.json").read_text())["token_budget"] == quarter
        assert json.loads((model / "finetune.json").read_text())["token_budget"]["image_tokens"] == 4
    budget_rows = ranking["token_budgets"]["rows"]
    assert "recovered" not in budget_rows[0] and "recovered" in budget_rows[1] and "recovered" in budget_rows[2]
    assert ranking["recovered_cur"] == {}  # a single removal recovered at a reduced budget is no slot's CUR
    from encslim.prune.rank_report import _recovery_lines

    lines = _recovery_lines(ranking, ["General", "overall"])
    assert any(line.startswith("| clip+dinov2 @ pool 0.25 | recovered (lora) |") for line in lines)
