"""Ranking math with games of known answer: CUR, IG, bootstrap intervals, flips, Shapley, interactions.

The games are played by fake evaluators: per sample, a rule says whether it is answered right
given the kept slots. Pure-function tests use score arrays; ``rank`` tests pass the fake as
``evaluator=`` together with a real tiny model (for slot names and FLOPs).
"""

import math

import numpy as np
import pytest

from encslim.data.samples import Sample
from encslim.errors import ConfigError
from encslim.prune import importance as imp
from encslim.prune import shapley as sh
from encslim.prune.rank import load_ranking, rank
from encslim.prune.subsets import frontier, greedy_elimination, mask_sets, pareto_flags

SLOTS = ["clip", "siglip", "dinov2"]


class FakeResult:
    def __init__(self, scores, categories, passes):
        self.scores, self.categories, self.encoder_passes = scores, categories, passes


class FakeEvaluator:
    """Has :func:`encslim.bench.evaluate.evaluate`'s signature; scores by ``rule(sample, kept)``."""

    def __init__(self, slots, rule):
        self.slots, self.rule, self.calls = list(slots), rule, []

    def __call__(self, loaded, samples, mask_sets=(), settings=None, records_path=None, progress=False):
        self.calls.append((list(mask_sets), settings.mask_mode))
        scores = {m: {s.id: float(self.rule(s, set(self.slots) - set(m))) for s in samples} for m in mask_sets}
        return FakeResult(scores, {s.id: s.category for s in samples}, len(self.slots))


def make_samples(owners, categories):
    return [Sample(id=f"s{k}", question=f"q{k}", answers=["a"], category=c, hint=str(o))
            for k, (o, c) in enumerate(zip(owners, categories))]


def owner_rule(sample, kept):
    """Right iff the sample needs nothing (hint None), or its owner (or one of its owners) is kept."""
    owner = sample.hint
    if owner == "None":
        return 1.0
    if owner.startswith("not:"):  # detrimental: right only when that slot is masked
        return float(owner[4:] not in kept)
    if owner == "wrong":
        return 0.0
    return float(any(o in kept for o in owner.split("+")))


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir()


# ----------------------------------------------------------------------------- pure functions

def test_cur_and_ig_by_hand():
    assert imp.cur(0.8, 0.2) == pytest.approx(0.75)
    assert imp.cur(0.5, 0.75) == pytest.approx(-0.5)
    assert imp.cur(0.0, 0.3) is None  # undefined, no ZeroDivisionError
    assert imp.information_gap([0.9, None, -0.1, 0.2]) == pytest.approx(1.0)
    assert imp.information_gap([None, None]) is None


def test_undefined_cur_when_full_model_scores_zero():
    cats = np.array(["A"] * 4 + ["B"] * 4)
    full = np.array([0, 0, 0, 0, 1, 1, 1, 0], float)
    masked = np.array([1, 0, 0, 0, 1, 0, 1, 0], float)
    table = imp.cur_table(full, {"x": masked}, cats, n_boot=50, seed=1)
    cell = table["x"]["A"]
    assert cell["value"] is None and cell["ci"] is None and "undefined" in cell["note"]
    assert cell["flips"] == {"right_to_wrong": 0, "wrong_to_right": 1}
    assert table["x"]["B"]["value"] == pytest.approx(1 / 3)
    assert imp.ig_table(table)["A"] is None


def test_bootstrap_is_paired_stratified_and_seeded():
    cats = np.array(["A"] * 30 + ["B"] * 10)
    w = imp.bootstrap_weights(cats, 200, seed=3)
    assert (w[:, :30].sum(axis=1) == 30).all() and (w[:, 30:].sum(axis=1) == 10).all()
    assert np.array_equal(w, imp.bootstrap_weights(cats, 200, seed=3))
    # a mask that changes nothing has CUR exactly 0 in every paired resample: a zero-width interval
    full = (np.arange(40) % 3 != 0).astype(float)
    cell = imp.cur_table(full, {"x": full.copy()}, cats, n_boot=200)["x"]["overall"]
    assert cell["ci"] == [0.0, 0.0] and cell["significant"] is False


def test_bootstrap_interval_width_matches_binomial_theory():
    # full model always right: CUR = 1 - acc(masked), a binomial proportion with p = 0.3
    n = 400
    cats = np.array(["A"] * n)
    masked = (np.arange(n) % 10 < 7).astype(float)  # acc 0.7 -> CUR 0.3
    cell = imp.cur_table(np.ones(n), {"x": masked}, cats, n_boot=2000, seed=0)["x"]["A"]
    expected = 2 * 1.96 * math.sqrt(0.3 * 0.7 / n)
    assert cell["value"] == pytest.approx(0.3)
    assert cell["ci"][1] - cell["ci"][0] == pytest.approx(expected, rel=0.15)
    assert cell["ci"][0] < 0.3 < cell["ci"][1] and cell["significant"] is True


def test_balanced_flips_give_an_interval_around_zero():
    cats = np.array(["A"] * 40)
    full = np.array([1] * 20 + [0] * 20, float)
    masked = full.copy()
    masked[:3] = 0  # 3 right->wrong
    masked[20:23] = 1  # 3 wrong->right
    cell = imp.cur_table(full, {"x": masked}, cats, n_boot=1000)["x"]["A"]
    assert cell["value"] == pytest.approx(0.0)
    assert cell["flips"] == {"right_to_wrong": 3, "wrong_to_right": 3}
    assert cell["ci"][0] < 0 < cell["ci"][1] and cell["significant"] is False


def _game(players, rule):
    return {c: rule(c) for c in sh.all_coalitions(players)}


def test_exact_shapley_of_an_additive_game_is_the_marginal_contribution():
    weights = {"a": 0.3, "b": 0.2, "c": 0.05, "d": 0.0}
    values = _game(list(weights), lambda c: 0.1 + sum(weights[p] for p in c))
    phi = sh.exact_shapley(list(weights), values)
    top = frozenset(weights)
    for p, w in weights.items():
        assert phi[p] == pytest.approx(w)
        assert phi[p] == pytest.approx(values[top] - values[top - {p}])
    for value in sh.interactions(list(weights), values).values():
        assert value == pytest.approx(0.0, abs=1e-12)


def test_shapley_efficiency_and_substitute_pair_interaction():
    players = ["a", "b", "c"]
    values = _game(players, lambda c: 0.5 + 0.5 * bool({"a", "b"} & c) + 0.1 * ("c" in c))
    phi = sh.exact_shapley(players, values)
    assert sum(phi.values()) == pytest.approx(values[frozenset(players)] - values[frozenset()])
    assert phi["a"] == pytest.approx(0.25) and phi["b"] == pytest.approx(0.25)
    assert sh.interaction_index(players, values, "a", "b") == pytest.approx(-0.5)
    assert sh.interaction_at_full(players, values, "a", "b") == pytest.approx(-0.5)
    assert sh.interaction_index(players, values, "a", "c") == pytest.approx(0.0)


def test_sampled_shapley_with_standard_error():
    players = ["a", "b", "c", "d", "e"]
    additive = _game(players, lambda c: 0.1 * len(c) + 0.05 * ("a" in c))
    perms = sh.sample_permutations(players, 8, seed=0)
    est, se = sh.sampled_shapley(players, additive, perms)
    assert est["a"] == pytest.approx(0.15) and se["a"] == pytest.approx(0.0)
    game = _game(players, lambda c: float(len(c & {"a", "b", "c"}) >= 2) + 0.2 * ("e" in c))
    exact = sh.exact_shapley(players, game)
    perms = sh.sample_permutations(players, 200, seed=1)
    est, se = sh.sampled_shapley(players, game, perms)
    for p in players:
        assert abs(est[p] - exact[p]) <= 4 * se[p] + 1e-9
    assert se["a"] > 0
    with pytest.raises(ConfigError, match="lacks the kept sets"):
        sh.sampled_shapley(players, {frozenset(): 0.0}, perms)


def test_subset_modes_and_limits():
    assert len(mask_sets(SLOTS, "single")) == 4
    assert len(mask_sets(SLOTS, "pairs")) == 7
    assert len(mask_sets(["a", "b", "c", "d"], "all")) == 16
    assert mask_sets(SLOTS, "single")[0] == frozenset()
    with pytest.raises(ConfigError, match="greedy"):
        mask_sets([f"e{k}" for k in range(7)], "all")
    with pytest.raises(ConfigError, match="unknown"):
        mask_sets(SLOTS, "everything")


def test_greedy_drops_the_least_useful_slot_first():
    weights = {"a": 0.4, "b": 0.1, "c": 0.25}
    calls = []

    def evaluate(sets):
        calls.append(len(sets))
        return {m: sum(w for p, w in weights.items() if p not in m) for m in sets}

    path = greedy_elimination(["a", "b", "c"], evaluate)
    assert [st["dropped"] for st in path] == ["b", "c"]
    assert path[-1]["kept"] == ["a"] and path[-1]["accuracy"] == pytest.approx(0.4)
    assert calls == [3, 2]


def test_pareto_front():
    assert pareto_flags([(3, 0.9), (2, 0.9), (2, 0.8), (1, 0.5), (None, 1.0), (0, 0.5)]) == [
        False, True, False, False, False, True]
    rows = frontier(["a", "b"], {frozenset(): {"overall": 0.9}, frozenset({"a"}): {"overall": 0.9},
                                 frozenset({"b"}): {"overall": 0.4}}, {"a": 5.0, "b": 1.0})
    assert [(r["kept"], r["cost"]["vision_flops"], r["pareto"]) for r in rows] == [
        (["a", "b"], 6.0, False), (["b"], 1.0, True), (["a"], 5.0, False)]


# ----------------------------------------------------------------------------- rank() with fake evaluators

def test_additive_game_through_rank(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    owners = rng.choice(["clip", "siglip", "dinov2", "None"], size=120, p=[0.3, 0.2, 0.1, 0.4])
    samples = make_samples(owners, ["General"] * 60 + ["OCR"] * 60)
    fake = FakeEvaluator(SLOTS, owner_rule)
    ranking = rank(model_dir, samples, subsets="all", out=tmp_path / "r", bootstrap=300, evaluator=fake)
    data = ranking.data
    assert data["shapley_method"] == "exact" and data["interactions_method"] == "exact"
    full = data["accuracy"]["full"]["overall"]
    assert full == pytest.approx(1.0)
    for slot in SLOTS:
        marginal = float(np.mean(owners == slot))
        assert data["shapley"][slot]["overall"] == pytest.approx(marginal)
        assert ranking.cur(slot) == pytest.approx(marginal / full)
    assert all(abs(v["overall"]) < 1e-12 for v in data["interactions"].values())
    # the no-encoder set went through the zero mask (removal cannot remove every encoder)
    assert [c for c in fake.calls if frozenset(SLOTS) in c[0]] == [([frozenset(SLOTS)], "zero")]
    assert all(mode == "removal" for sets, mode in fake.calls if frozenset(SLOTS) not in sets)
    assert len(data["subsets"]) == 8 and sum(r["pareto"] for r in data["subsets"]) >= 2
    assert load_ranking(tmp_path / "r")["cur"] == data["cur"]
    for name in ("ranking.json", "ranking.md", "cur_heatmap.png", "frontier.png", "records.jsonl"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    assert not (tmp_path / "r" / "scores.json").exists()  # one per-sample cache: the records
    assert len((tmp_path / "r" / "records.jsonl").read_text().splitlines()) == 120 * 8
    assert (tmp_path / "r" / "cur_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_complementary_pair_through_rank(model_dir):
    owners = ["clip+siglip"] * 50 + ["None"] * 40 + ["dinov2"] * 10
    samples = make_samples(owners, ["General"] * 100)
    ranking = rank(model_dir, samples, subsets="pairs", bootstrap=500, evaluator=FakeEvaluator(SLOTS, owner_rule))
    data = ranking.data
    for slot in ("clip", "siglip"):
        assert ranking.cur(slot) == pytest.approx(0.0, abs=1e-12)
        assert data["cur"][slot]["overall"]["significant"] is False
    pair_row = next(r for r in data["subsets"] if r["kept"] == ["dinov2"])
    assert pair_row["accuracy"]["overall"] == pytest.approx(0.5)  # masking the pair loses half
    assert data["interactions_method"] == "at_full"
    assert data["interactions"]["clip|siglip"]["overall"] == pytest.approx(-0.5)
    assert abs(data["interactions"]["clip|dinov2"]["overall"]) < 1e-12
    assert ranking.cur("dinov2") == pytest.approx(0.1) and data["cur"]["dinov2"]["overall"]["significant"]
    assert data["shapley"] is None  # pairs mode: no permutations unless asked


def test_complementary_pair_exact_interaction_index(model_dir):
    samples = make_samples(["clip+siglip"] * 50 + ["None"] * 50, ["General"] * 100)
    data = rank(model_dir, samples, subsets="all", bootstrap=0, evaluator=FakeEvaluator(SLOTS, owner_rule)).data
    assert data["interactions"]["clip|siglip"]["overall"] == pytest.approx(-0.5)
    assert data["shapley"]["clip"]["overall"] == pytest.approx(0.25)
    assert data["cur"]["clip"]["overall"]["ci"] is None  # bootstrap 0: no interval


def test_detrimental_encoder_has_negative_cur_with_ci_below_zero(model_dir):
    owners = ["not:dinov2"] * 20 + ["None"] * 30 + ["wrong"] * 10 + ["clip"] * 40
    cats = ["General"] * 60 + ["OCR"] * 40
    data = rank(model_dir, make_samples(owners, cats), bootstrap=1000,
                evaluator=FakeEvaluator(SLOTS, owner_rule)).data
    cell = data["cur"]["dinov2"]["General"]
    assert cell["value"] == pytest.approx((30 / 60 - 50 / 60) / (30 / 60))
    assert cell["ci"][1] < 0 and cell["significant"] is True
    assert cell["flips"] == {"right_to_wrong": 0, "wrong_to_right": 20}
    assert data["cur"]["clip"]["OCR"]["value"] == pytest.approx(1.0)
    assert data["ig"]["OCR"] == pytest.approx(1.0)


def test_greedy_with_sampled_shapley_and_cache_reuse(model_dir, tmp_path):
    owners = ["clip"] * 30 + ["siglip"] * 20 + ["dinov2"] * 5 + ["None"] * 45
    samples = make_samples(owners, ["General"] * 100)
    fake = FakeEvaluator(SLOTS, owner_rule)
    out = tmp_path / "g"
    data = rank(model_dir, samples, subsets="greedy", out=out, bootstrap=0, evaluator=fake,
                shapley_permutations=4).data
    assert [st["dropped"] for st in data["greedy_path"]] == ["dinov2", "siglip"]
    if data["shapley_method"] == "permutation":  # 3 slots: 4 permutations may already cover all 8 sets
        assert data["shapley_stderr"]["clip"]["overall"] == pytest.approx(0.0)
    assert data["shapley"]["clip"]["overall"] == pytest.approx(0.3)
    first_calls = len(fake.calls)
    again = rank(model_dir, samples, subsets="all", out=out, overwrite=True, bootstrap=0, evaluator=fake).data
    new_sets = [m for sets, _ in fake.calls[first_calls:] for m in sets]
    evaluated_before = {m for sets, _ in fake.calls[:first_calls] for m in sets}
    assert not set(new_sets) & evaluated_before
    assert again["evaluation"]["mask_sets_evaluated"] == len(new_sets)
    assert again["shapley_method"] == "exact"
    calls = len(fake.calls)
    third = rank(model_dir, samples, subsets="pairs", out=out, overwrite=True, bootstrap=0, evaluator=fake).data
    assert len(fake.calls) == calls and third["evaluation"]["mask_sets_cached"] == 7


def test_bad_options_and_bad_rankings(model_dir, tmp_path):
    samples = make_samples(["None"] * 4, ["General"] * 4)
    fake = FakeEvaluator(SLOTS, owner_rule)
    with pytest.raises(ConfigError, match="'mask': Input should be 'removal' or 'zero', got 'mean'"):
        rank(model_dir, samples, mask_mode="mean", evaluator=fake)
    with pytest.raises(ConfigError, match="'subsets': Input should be 'single', 'pairs', 'all' or 'greedy'"):
        rank(model_dir, samples, subsets="some", evaluator=fake)
    from encslim.errors import DataError

    with pytest.raises(DataError, match="not in the data; available: General"):
        rank(model_dir, samples, categories=["OCR"], evaluator=fake)
    with pytest.raises(ConfigError, match="no ranking"):
        load_ranking(tmp_path)
    (tmp_path / "ranking.json").write_text('{"schema_version": 1}')
    with pytest.raises(ConfigError, match="missing key 'slots'"):
        load_ranking(tmp_path)
