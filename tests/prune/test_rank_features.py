"""One feature cache and one score cache per ``encslim rank`` run.

Greedy elimination and sampled Shapley call the evaluator several times; the run-wide feature
store makes every mode cost exactly N encoder passes per sample (N slots), with the same
ranking as without it. The per-sample records are the only score cache, and a rerun reuses them.
"""

import json

import pytest

from encslim.cli import main
from encslim.errors import ConfigError
from encslim.prune.rank import rank

FOUR = ("clip", "siglip", "dinov2", "convnext")


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory):
    from encslim.demo.data import write_demo_data

    out = tmp_path_factory.mktemp("rankfeat") / "demo"
    write_demo_data(out, seed=2, n_train=4, n_eval=16)
    return out / "eval.jsonl"


@pytest.fixture(scope="module")
def four_slots(tiny_model_dir):
    from encslim.models.loading import load_model

    return load_model(tiny_model_dir(encoders=FOUR))


def _without_timing(data):
    return {k: v for k, v in data.items() if k != "evaluation"}


def _counting_evaluator():
    """The project evaluator, noting the feature store of every call."""
    from encslim.bench.evaluate import evaluate

    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("features"))
        return evaluate(*args, **kwargs)

    return counted, calls


@pytest.mark.parametrize("subsets, permutations", [("greedy", None), ("single", 4)],
                         ids=["greedy", "sampled-shapley"])
def test_every_mode_costs_n_encoder_passes_per_sample(four_slots, demo_eval, subsets, permutations):
    options = dict(subsets=subsets, shapley_permutations=permutations, bootstrap=50, max_new_tokens=3)
    ranking = rank(four_slots, demo_eval, **options)
    ev = ranking["evaluation"]
    if subsets == "greedy":
        assert [len(step["kept"]) for step in ranking["greedy_path"]] == [3, 2, 1]
    else:
        assert ranking["shapley_method"] == "permutation"
    assert ev["mask_sets_evaluated"] > len(FOUR) + 1  # several evaluator calls, not one
    assert ev["encoder_passes_per_sample"] == len(FOUR)
    assert ev["feature_store"]["samples"] == 16 and ev["feature_store"]["refused"] == 0

    per_call = rank(four_slots, demo_eval, feature_memory_gb=0, **options)
    assert per_call["evaluation"]["encoder_passes_per_sample"] > len(FOUR)  # each call re-encoded
    assert per_call["evaluation"]["feature_store"] is None
    assert json.dumps(_without_timing(per_call.data), sort_keys=True) == json.dumps(
        _without_timing(ranking.data), sort_keys=True)


def test_one_store_is_shared_by_every_evaluator_call(four_slots, demo_eval):
    counted, calls = _counting_evaluator()
    ranking = rank(four_slots, demo_eval, subsets="greedy", bootstrap=0, max_new_tokens=3, evaluator=counted)
    assert len(calls) >= 4 and calls[0] is not None and all(store is calls[0] for store in calls)
    assert ranking["evaluation"]["encoder_passes_per_sample"] == len(FOUR)


def test_a_full_store_falls_back_to_encoding_again(four_slots, demo_eval):
    options = dict(subsets="greedy", bootstrap=0, max_new_tokens=3)
    full = rank(four_slots, demo_eval, **options)
    small = rank(four_slots, demo_eval, feature_memory_gb=full["evaluation"]["feature_store"]["mib"] / 2 / 1024,
                 **options)
    store = small["evaluation"]["feature_store"]
    assert store["refused"] > 0 and 0 < store["mib"] <= full["evaluation"]["feature_store"]["mib"] / 2
    assert small["evaluation"]["encoder_passes_per_sample"] > len(FOUR)
    assert _without_timing(small.data) == _without_timing(full.data)


def test_zero_mask_other_family_with_the_blind_set(demo_eval, hybrid_dir):
    # single + permutations needs the no-encoder set: a call in zero mode, features from the store
    options = dict(subsets="single", shapley_permutations=2, bootstrap=0, max_new_tokens=3)
    ranking = rank(hybrid_dir, demo_eval, **options)
    assert ranking["shapley_method"] == "exact"  # 2 slots: the permutations complete the lattice
    assert ranking["evaluation"]["encoder_passes_per_sample"] == 2
    assert _without_timing(rank(hybrid_dir, demo_eval, feature_memory_gb=0, **options).data) == _without_timing(
        ranking.data)


def test_records_are_the_one_score_cache(four_slots, demo_eval, tmp_path):
    out = tmp_path / "g"
    greedy = dict(subsets="greedy", shapley_permutations=0, bootstrap=0, max_new_tokens=3)
    first = rank(four_slots, demo_eval, out=out, **greedy)
    assert sorted(p.name for p in out.iterdir()) == ["cur_heatmap.png", "frontier.png", "ranking.json", "ranking.md",
                                                     "records.jsonl"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    n_sets = first["evaluation"]["mask_sets_evaluated"]
    assert len(records) == 16 * n_sets == len({r["key"] for r in records})  # no result stored twice
    assert n_sets == 1 + 4 + 3 + 2
    again = rank(four_slots, demo_eval, out=out, overwrite=True, **greedy)
    assert again["evaluation"]["mask_sets_evaluated"] == 0 and again["evaluation"]["mask_sets_cached"] == n_sets
    assert again["evaluation"]["encoder_passes_per_sample"] == 0
    assert _without_timing(again.data) == _without_timing(first.data)
    assert len((out / "records.jsonl").read_text().splitlines()) == len(records)
    # --cache DIR into a fresh folder: reused there too, and the new folder carries the records on
    other = rank(four_slots, demo_eval, subsets="all", bootstrap=0, max_new_tokens=3, out=tmp_path / "a", cache=out)
    assert other["evaluation"]["mask_sets_cached"] == n_sets
    assert other["evaluation"]["mask_sets_evaluated"] == 16 - n_sets
    assert other["evaluation"]["encoder_passes_per_sample"] == len(FOUR)
    assert len((tmp_path / "a" / "records.jsonl").read_text().splitlines()) == 16 * 16
    # other settings: nothing reused
    longer = rank(four_slots, demo_eval, subsets="single", bootstrap=0, max_new_tokens=4, cache=out)
    assert longer["evaluation"]["mask_sets_cached"] == 0
    (tmp_path / "scores.json").write_text("{}")
    with pytest.raises(ConfigError, match="records.jsonl"):
        rank(four_slots, demo_eval, subsets="single", bootstrap=0, cache=tmp_path / "scores.json")


def test_cli_greedy_reports_n_passes(tiny_model_dir, demo_eval, tmp_path, capsys):
    try:
        main(["rank", str(tiny_model_dir()), "--data", str(demo_eval), "--out", str(tmp_path / "r"),
              "--subsets", "greedy", "--bootstrap", "0", "--max-new-tokens", "3"])
    except SystemExit as exit_:
        assert exit_.code == 0
    stdout = capsys.readouterr().out
    assert "3 encoder passes per sample (whole run)" in stdout, stdout
    assert json.loads((tmp_path / "r" / "ranking.json").read_text())["evaluation"]["encoder_passes_per_sample"] == 3


def test_demo_model_greedy_costs_four_passes(tmp_path):
    """The acceptance check on the shipped demo model (4 slots), on a small eval split."""
    from encslim.demo.assets import demo_model_path
    from encslim.demo.data import write_demo_data

    write_demo_data(tmp_path / "d", seed=0, n_train=4, n_eval=12)
    ranking = rank(demo_model_path(), tmp_path / "d" / "eval.jsonl", subsets="greedy", bootstrap=0, batch_size=16)
    assert len(ranking.slots) == 4
    assert ranking["evaluation"]["encoder_passes_per_sample"] == 4.0
