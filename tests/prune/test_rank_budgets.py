"""rank over configurations (kept set x visual-token budget): every mask set at every budget on one feature
store, the analytic costs, budget CUR, the frontier over all configurations, the cache, the errors, and the
selection policies choosing (kept set, budget)."""

import itertools
import json
import shutil

import numpy as np
import pytest
from encslim.bench.evaluate import EvalSettings, evaluate
from encslim.data.load import load_samples
from encslim.errors import ConfigError
from encslim.models.costs import language_model_shape
from encslim.models.loading import load_model
from encslim.models.tokens import TokenBudget
from encslim.prune.importance import accuracy, cur
from encslim.prune.rank import load_ranking, rank
from encslim.prune.rank_budgets import beats_encoder_only
from encslim.prune.rank_commands import budget_summary
from encslim.prune.select import select
from ..conftest import run_main

SLOTS = ("clip", "siglip", "dinov2")
BUDGETS = (1.0, 0.5, 0.25)


@pytest.fixture(scope="module")
def planted_jsonl(tiny_model_dir, shared_mixed_jsonl, tmp_path_factory):
    """The 12 mixed samples with the tiny model's own answers planted: each open question's answer is the full
    model's prediction at every token (so the full model scores them right and a token budget can cost
    accuracy), every other MCQ answer is the letter it picks."""
    items = [json.loads(line) for line in shared_mixed_jsonl.read_text().splitlines()]
    result = evaluate(load_model(tiny_model_dir()), load_samples([shared_mixed_jsonl]),
                      settings=EvalSettings(max_new_tokens=2))
    predicted = result.predictions[frozenset()]
    folder = tmp_path_factory.mktemp("planted")
    shutil.copytree(shared_mixed_jsonl.parent / "images", folder / "images")
    for n, item in enumerate(items):
        if "options" not in item:
            item.update(answer=predicted[item["id"]], metric="exact")
        elif n % 4 == 1:
            item["answer"] = predicted[item["id"]]
    path = folder / "bench.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def budget_run(tiny_model_dir, planted_jsonl, tmp_path_factory):
    """``(ranking, out folder, model folder)``: the tiny native A1 model ranked with --subsets all at 1, 0.5, 0.25."""
    model = tiny_model_dir()
    out = tmp_path_factory.mktemp("budgets") / "rank"
    ranking = rank(model, planted_jsonl, subsets="all", token_budgets="1,0.5,0.25", bootstrap=50,
                   max_new_tokens=2, out=out)
    return ranking, out, model


def _rows(ranking):
    return {(frozenset(r["kept"]), r["budget"]): r for r in ranking["token_budgets"]["rows"]}


def test_every_configuration_once_with_one_encoder_pass_per_slot(budget_run):
    ranking, out, _ = budget_run
    ev = ranking["evaluation"]
    assert ev["configurations_evaluated"] == 8 * 3 and ev["configurations_cached"] == 0
    assert ev["mask_sets_evaluated"] == 8 and ev["token_budgets"] == list(BUDGETS)
    assert ev["encoder_passes_per_sample"] == len(SLOTS)
    kept_sets = {frozenset(c) for k in range(len(SLOTS) + 1) for c in itertools.combinations(SLOTS, k)}
    assert set(_rows(ranking)) == {(k, b) for k in kept_sets for b in BUDGETS}
    section = ranking["token_budgets"]
    assert section["method"] == "pool" and section["budgets"] == list(BUDGETS) and "Matryoshka" in section["source"]
    written = json.loads((out / "ranking.json").read_text())
    assert written["token_budgets"] == json.loads(json.dumps(section))
    assert load_ranking(out)["token_budgets"] == written["token_budgets"]
    written["token_budgets"]["rows"][3]["budget"] = 2
    (out.parent / "bad.json").write_text(json.dumps(written))
    with pytest.raises(ConfigError, match=r"token_budgets.rows\[3\] needs kept slots of the model and a budget"):
        load_ranking(out.parent / "bad.json")
    # the encoder axis stays at budget 1: its subset rows are the budget-1 configurations
    assert len(ranking["subsets"]) == 8
    for row in ranking["subsets"]:
        assert row["accuracy"] == _rows(ranking)[(frozenset(row["kept"]), 1.0)]["accuracy"]


def test_budgeted_accuracies_equal_evaluate_at_that_budget(budget_run, planted_jsonl):
    ranking, _, model = budget_run
    loaded = load_model(model)
    samples = load_samples([planted_jsonl])
    masks = [frozenset(), frozenset({"clip"}), frozenset({"siglip", "dinov2"})]
    for budget in (0.5, 0.25):
        settings = EvalSettings(max_new_tokens=2, token_budget=TokenBudget("pool", budget))
        result = evaluate(loaded, samples, mask_sets=masks, settings=settings)
        for masked in masks:
            scores = [result.scores[masked][s.id] for s in samples]
            expected = accuracy(scores, [s.category for s in samples])
            row = _rows(ranking)[(frozenset(SLOTS) - masked, budget)]
            assert row["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_costs_per_configuration(budget_run):
    ranking, _, model = budget_run
    loaded_model, _, adapter = load_model(model)
    shape = language_model_shape(loaded_model, adapter)
    text = ranking["token_budgets"]["text_tokens"]
    rows = _rows(ranking)
    for kept in {k for k, _ in rows if k}:
        at = [rows[(kept, b)] for b in BUDGETS]
        assert [r["image_tokens"] for r in at] == [16, 8, 4]  # the 4x4 grid, pooled 1x2 and 2x2
        assert len({r["cost"]["vision_flops"] for r in at}) == 1 and len({r["cost"]["fusion_flops"] for r in at}) == 1
        prefill = [r["cost"]["prefill_flops"] for r in at]
        assert prefill[0] > prefill[1] > prefill[2]
        for r in at:
            length = text + r["image_tokens"]
            assert r["cost"]["prefill_flops"] == pytest.approx(
                2 * shape.params * length + 2 * shape.layers * length ** 2 * shape.width)
            assert r["cost"]["total_flops"] == pytest.approx(
                r["cost"]["vision_flops"] + r["cost"]["fusion_flops"] + r["cost"]["prefill_flops"])
            assert r["cost"]["vision_flops"] == sum(ranking["costs"][s]["vision_flops"] for s in kept)
    full, one = rows[(frozenset(SLOTS), 1.0)]["cost"], rows[(frozenset({"clip"}), 1.0)]["cost"]
    assert full["fusion_flops"] > one["fusion_flops"] > 0  # a removed slot's projector columns are gone


def test_pareto_over_every_configuration(budget_run):
    ranking, _, _ = budget_run
    rows = ranking["token_budgets"]["rows"]
    for row in rows:
        cost, acc = row["cost"]["total_flops"], row["accuracy"]["overall"]
        dominated = any(o["cost"]["total_flops"] <= cost and o["accuracy"]["overall"] >= acc
                        and (o["cost"]["total_flops"] < cost or o["accuracy"]["overall"] > acc) for o in rows)
        assert row["pareto"] is (not dominated)
    assert any(r["pareto"] for r in rows)


def test_budget_cur_is_the_share_of_full_accuracy_lost(budget_run):
    ranking, _, _ = budget_run
    rows = _rows(ranking)
    full = rows[(frozenset(SLOTS), 1.0)]["accuracy"]
    assert full["overall"] == pytest.approx(9 / 12)  # the planted answers: 6 open + 3 MCQ
    assert set(ranking["budget_cur"]) == {"0.5", "0.25"}
    assert ranking["budget_cur"]["0.25"]["overall"]["value"] > 0 and ranking["budget_cur"]["0.25"]["overall"]["ci"]
    for label, budget in (("0.5", 0.5), ("0.25", 0.25)):
        reduced = rows[(frozenset(SLOTS), budget)]["accuracy"]
        for group, cell in ranking["budget_cur"][label].items():
            expected = None if full[group] == 0 else (full[group] - reduced[group]) / full[group]
            assert cell["value"] == (None if expected is None else pytest.approx(expected))
            assert cell["value"] == cur(full[group], reduced[group])
            assert cell["acc_full"] == pytest.approx(full[group]) and cell["acc_masked"] == pytest.approx(reduced[group])
    lines = budget_summary(ranking.data).splitlines()
    assert lines[0].startswith("budget 0.5 (pool): CUR % ") and lines[1].startswith("budget 0.25 (pool): CUR % ")
    markdown = (budget_run[1] / "ranking.md").read_text()
    assert "## Token budgets (pool:" in markdown and "| clip+siglip+dinov2 | 0.25 | 4 |" in markdown


def test_beats_encoder_only_compares_with_the_best_budget_one_set_costing_no_more():
    def row(kept, budget, acc, flops, pareto=True):
        return {"kept": kept, "budget": budget, "accuracy": {"overall": acc}, "cost": {"total_flops": flops},
                "pareto": pareto}

    rows = [row(["a", "b"], 1.0, 0.9, 100), row(["a"], 1.0, 0.6, 60), row(["b"], 1.0, 0.5, 40, False),
            row([], 1.0, 0.3, 10), row(["a", "b"], 0.5, 0.8, 70), row(["a"], 0.5, 0.55, 50),
            row(["b"], 0.25, 0.2, 20), row([], 0.25, 0.35, 10)]
    wins = beats_encoder_only(rows)
    assert wins == [
        {"kept": ["a", "b"], "budget": 0.5, "accuracy": 0.8, "total_flops": 70,
         "encoder_only": {"kept": ["a"], "accuracy": 0.6, "total_flops": 60}},
        {"kept": ["a"], "budget": 0.5, "accuracy": 0.55, "total_flops": 50,
         "encoder_only": {"kept": ["b"], "accuracy": 0.5, "total_flops": 40}},
    ]  # ["b"] at 0.25 has no encoder-only set as cheap; the no-encoder set never counts
    assert beats_encoder_only(rows[:4]) == []


def test_a_rerun_with_the_cache_evaluates_nothing(budget_run, planted_jsonl, tmp_path):
    ranking, out, model = budget_run
    again = rank(model, planted_jsonl, subsets="all", token_budgets=[1, 0.5, 0.25], bootstrap=50,
                 max_new_tokens=2, cache=out, out=tmp_path / "again")
    ev = again["evaluation"]
    assert ev["configurations_evaluated"] == 0 and ev["configurations_cached"] == 24
    assert ev["encoder_passes_per_sample"] == 0
    assert again["token_budgets"]["rows"] == ranking["token_budgets"]["rows"]
    # a budget the cache lacks: only its configurations are evaluated (every cached mask set, as the encoder axis
    # ranks on every cached set); the cached budgets are reused
    more = rank(model, planted_jsonl, subsets="single", token_budgets="0.5,0.125", bootstrap=0,
                max_new_tokens=2, cache=out, out=tmp_path / "more")
    assert more["evaluation"]["configurations_evaluated"] == 8  # the 8 mask sets at 0.125
    assert more["evaluation"]["configurations_cached"] == 4 + 8  # single's 4 at budget 1, all 8 at 0.5
    assert {r["image_tokens"] for r in more["token_budgets"]["rows"] if r["budget"] == 0.125 and r["kept"]} == {2}


@pytest.mark.parametrize("value, message", [
    ("2", "token budget 2.0 must be a fraction in (0, 1]"),
    ("x", "--token-budgets: 'x' is not a number"),
    ("1,0.7", "pool budget 0.7 is not 1/k"),
])
def test_a_bad_budget_is_one_line_exit_2(value, message, tiny_model_dir, shared_mixed_jsonl, tmp_path, capsys):
    model = tiny_model_dir()  # built before the run: its shard-writing progress is not the command's output
    capsys.readouterr()
    code, _, err = run_main(capsys, "rank", model, "--data", shared_mixed_jsonl, "--token-budgets", value,
                            "--out", tmp_path / "r")
    assert code == 2 and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "r").exists()


def test_a_model_without_token_grids_is_refused_before_evaluating(tiny_cambrian, shared_mixed_jsonl, tmp_path,
                                                                   capsys):
    folder, encoders = tiny_cambrian
    args = ["rank", folder, "--data", shared_mixed_jsonl, "--token-budgets", "1,0.5", "--out", tmp_path / "r"]
    for slot, path in encoders.items():
        args += ["--encoder", f"{slot}={path}"]
    code, out, err = run_main(capsys, *args)
    assert code == 2 and "Traceback" not in err
    error = [line for line in err.splitlines() if "token budget" in line]
    assert len(error) == 1 and "token budget pool 0.5" in error[0] and "sampler layers" in error[0]
    assert "CUR" not in out and not (tmp_path / "r").exists()


def test_a_model_carrying_a_budget_is_refused(tiny_model_dir, shared_mixed_jsonl, tmp_path, capsys):
    """Its budget-1 rows would be scored under its own budget but costed at every token."""
    folder = tmp_path / "budgeted"
    shutil.copytree(tiny_model_dir(), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "token_budget": {"method": "pool", "budget": 0.25}}))
    code, _, err = run_main(capsys, "rank", folder, "--data", shared_mixed_jsonl, "--token-budgets", "1,0.5",
                            "--out", tmp_path / "r")
    assert code == 2 and "Traceback" not in err and not (tmp_path / "r").exists()
    assert "the model already carries token budget pool 0.25" in err and "--token-budget 1" in err


def test_predictions_refuse_the_budget_options(tmp_path, capsys):
    code, _, err = run_main(capsys, "rank", "--predictions", f"full={tmp_path}", "--token-budgets", "0.5",
                            "--token-method", "attention", "--out", tmp_path / "r")
    assert code == 2
    assert "--token-budgets, --token-method only apply when rank runs the model" in err


# ---------------------------------------------------------------------------- selection over configurations
def _budget_ranking():
    """A ranking with a budget axis: slots a, b; accuracy by (kept, budget); cost = 10 per slot + 20 x budget."""
    acc = {("a", "b"): {1.0: 0.90, 0.5: 0.88, 0.25: 0.70}, ("a",): {1.0: 0.80, 0.5: 0.79, 0.25: 0.60},
           ("b",): {1.0: 0.50, 0.5: 0.45, 0.25: 0.40}, (): {1.0: 0.3, 0.5: 0.3, 0.25: 0.3}}
    rows = [{"kept": list(k), "masked": [s for s in "ab" if s not in k], "budget": b, "image_tokens": int(16 * b),
             "accuracy": {"overall": a, "X": a}, "cost": {"total_flops": 10.0 * len(k) + 20 * b}, "pareto": False}
            for k, by in acc.items() for b, a in by.items()]
    subsets = [{"kept": list(k), "masked": [s for s in "ab" if s not in k], "accuracy": {"overall": by[1.0], "X": by[1.0]},
                "cost": {"vision_flops": 10.0 * len(k)}} for k, by in acc.items()]
    cell = {"value": 0.1, "ci": None}
    return {"slots": ["a", "b"], "categories": ["X"], "accuracy": {"full": {"overall": 0.9, "X": 0.9}},
            "subsets": subsets, "cur": {s: {"overall": cell, "X": cell} for s in "ab"},
            "costs": {s: {"vision_flops": 10.0} for s in "ab"},
            "token_budgets": {"method": "pool", "budgets": [1.0, 0.5, 0.25], "rows": rows}}


def test_select_budget_picks_a_configuration_and_carries_its_token_budget():
    ranking = _budget_ranking()
    chosen = select(["a", "b"], ranking, budget=25)  # cost defaults to total_flops with a budget axis
    assert (chosen.kept, chosen.token_budget) == (["a"], {"method": "pool", "budget": 0.5})
    assert chosen.to_dict()["token_budget"] == {"method": "pool", "budget": 0.5} and chosen.details["kept_cost"] == 20
    full = select(["a", "b"], ranking, budget=35)  # the full kept set at half the tokens: only tokens removed
    assert (full.kept, full.drop, full.token_budget) == (["a", "b"], [], {"method": "pool", "budget": 0.5})


def test_select_min_retained_and_keep_over_configurations():
    ranking = _budget_ranking()
    chosen = select(["a", "b"], ranking, min_retained=0.85)  # a at 0.5 retains 0.79/0.9 = 0.878 for less than a at 1
    assert (chosen.kept, chosen.token_budget) == (["a"], {"method": "pool", "budget": 0.5})
    kept = select(["a", "b"], ranking, keep=1)
    assert (kept.kept, kept.token_budget) == (["a"], None)  # the most accurate single slot is at every token
    each = select(["a", "b"], ranking, min_retained=0.95, category="each")
    assert (each.kept, each.token_budget) == (["a", "b"], {"method": "pool", "budget": 0.5})
    ranking["token_budgets"]["rows"] = [r for r in ranking["token_budgets"]["rows"] if len(r["kept"]) != 1]
    ranking["subsets"] = [r for r in ranking["subsets"] if len(r["kept"]) != 1]
    by_cur = select(["a", "b"], ranking, keep=1)  # no single slot measured: CUR decides, at every token
    assert (by_cur.basis, by_cur.token_budget) == ("cur", None)


def test_older_rankings_select_as_before():
    ranking = _budget_ranking()
    del ranking["token_budgets"]
    chosen = select(["a", "b"], ranking, budget=15)
    assert (chosen.kept, chosen.token_budget, chosen.details["cost"]) == (["a"], None, "vision_flops")
    assert select(["a", "b"], ranking, min_retained=0.85).token_budget is None


def test_the_frontier_plot_shows_every_budget(budget_run, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from encslim.prune.rank_report import plot_frontier

    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    ranking = budget_run[0]
    plot_frontier(ranking.data, tmp_path / "f.png", selected=["clip"])
    fig = saved[-1]
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert {"every token (budget 1)", "budget 0.5 (pool)", "budget 0.25 (pool)"} <= set(legend)
    assert "Pareto front (all configurations)" in legend
    ax = fig.axes[0]
    assert "total" in ax.get_xlabel() and ax.get_ylim()[0] == 0
    shown = " ".join(t.get_text() for t in ax.texts)
    for row in ranking["token_budgets"]["rows"]:
        if row["pareto"]:
            label = "+".join(row["kept"]) or "(none)"
            assert label in shown
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert len(points) >= len(ranking["token_budgets"]["rows"])
    assert np.isfinite(np.asarray([c.get_offsets() for c in points[:1]])).all()


# The demo acceptance (16 x 3 configurations on 4 encoder passes, a reduced budget beating every encoder-only
# configuration costing no more) is tests/demo/test_demo_budget_frontier.py.
