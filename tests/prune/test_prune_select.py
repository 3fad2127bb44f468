"""Selection policies on hand-made rankings where the answer is known."""

import copy
import json

import pytest

from encslim.errors import ConfigError, PlanError
from encslim.prune.select import read_ranking, select

SLOTS = ["clip", "siglip", "dinov2"]


def _cur(value):
    return {"value": value, "ci": [value - 0.01, value + 0.01], "significant": False,
            "flips": {"right_to_wrong": 0, "wrong_to_right": 0}}


def _row(kept, overall, ocr=None):
    acc = {"overall": overall, "OCR": overall if ocr is None else ocr}
    flops = float(sum({"clip": 4, "siglip": 2, "dinov2": 3}[s] for s in kept))
    return {"kept": kept, "masked": [s for s in SLOTS if s not in kept], "accuracy": acc,
            "cost": {"vision_flops": flops, "latency_ms": None}, "pareto": False}


def make_ranking(with_subsets=True):
    """siglip and dinov2 are each redundant alone (CUR ~ 0) but dropping both costs 40 points."""
    return {
        "schema_version": 1, "model": "tiny", "slots": list(SLOTS), "mask_mode": "removal",
        "categories": ["OCR"], "overall_is": "mean over samples",
        "accuracy": {"full": {"overall": 0.90, "OCR": 0.80}},
        "subsets": [_row(SLOTS, 0.90, 0.80), _row(["clip", "siglip"], 0.90, 0.40), _row(["clip", "dinov2"], 0.89, 0.79),
                    _row(["siglip", "dinov2"], 0.60), _row(["clip"], 0.50), _row(["siglip"], 0.30),
                    _row(["dinov2"], 0.30)] if with_subsets else [],
        "cur": {"clip": {"overall": _cur(0.30), "OCR": _cur(0.2)}, "siglip": {"overall": _cur(0.0), "OCR": _cur(0.01)},
                "dinov2": {"overall": _cur(0.01), "OCR": _cur(0.4)}},
        "ig": {"overall": 0.4}, "shapley": {}, "shapley_method": "exact", "interactions": {},
        "costs": {"clip": {"vision_flops": 4.0, "params": 40}, "siglip": {"vision_flops": 2.0, "params": 20},
                  "dinov2": {"vision_flops": 3.0, "params": 30}},
    }


def test_keep_k_uses_the_subset_table_and_categories():
    ranking = make_ranking()
    best2 = select(SLOTS, ranking=ranking, keep=2)
    assert best2.kept == ["clip", "siglip"] and best2.basis == "subsets" and best2.expected_accuracy == 0.90
    assert select(SLOTS, ranking=ranking, keep=2, category="OCR").kept == ["clip", "dinov2"]
    assert select(SLOTS, ranking=ranking, keep=1).drop == ["siglip", "dinov2"]
    by_cur = select(SLOTS, ranking=make_ranking(with_subsets=False), keep=1, category="OCR")
    assert by_cur.kept == ["dinov2"] and by_cur.basis == "cur"


def test_min_retained_never_drops_a_pair_that_matters_together():
    chosen = select(SLOTS, ranking=make_ranking(), min_retained=0.95)
    # both siglip and dinov2 are 'redundant' one at a time, yet kept=[clip] keeps only 56 %
    assert chosen.kept == ["clip", "siglip"] and chosen.drop == ["dinov2"]
    assert select(SLOTS, ranking=make_ranking(), min_retained=0.5).kept == ["clip"]
    with pytest.raises(PlanError, match="needs the subset table"):
        select(SLOTS, ranking=make_ranking(with_subsets=False), min_retained=0.95)
    with pytest.raises(PlanError, match="lower --min-retained"):
        select(SLOTS, ranking=make_ranking(), min_retained=1.0, category="OCR")


def test_min_retained_in_each_category_keeps_the_encoder_one_category_needs():
    ranking = make_ranking()
    # overall alone keeps clip+siglip, which keeps only half of OCR; 'each' asks it of OCR too
    chosen = select(SLOTS, ranking=ranking, min_retained=0.95, category="each")
    assert chosen.kept == ["clip", "dinov2"] and chosen.drop == ["siglip"]
    assert chosen.details["retained"] == pytest.approx(0.9875) and chosen.expected_accuracy == 0.89
    assert "every category" in chosen.reason
    # the categories decide, not the overall mean: clip alone retains 0.50/0.80 = 62.5 % of OCR
    assert select(SLOTS, ranking=ranking, min_retained=0.6, category="each").kept == ["clip"]
    assert select(SLOTS, ranking=ranking, min_retained=0.65, category="each").kept == ["clip", "dinov2"]
    with pytest.raises(PlanError, match="in every category; lower --min-retained"):
        select(SLOTS, ranking=ranking, min_retained=1.0, category="each")
    with pytest.raises(ConfigError, match="--category each works with --min-retained only"):
        select(SLOTS, ranking=ranking, keep=1, category="each")


def test_drop_negative_checks_the_joint_removal():
    ranking = make_ranking()
    ranking["cur"]["siglip"]["overall"] = _cur(-0.01)
    ranking["cur"]["dinov2"]["overall"] = _cur(-0.02)
    ranking["subsets"][1]["accuracy"]["overall"] = 0.91  # kept clip+siglip: better without dinov2
    chosen = select(SLOTS, ranking=ranking, drop_negative=True)
    assert chosen.drop == ["dinov2"] and chosen.basis == "subsets"
    naive = copy.deepcopy(ranking)
    naive["subsets"] = []
    assert select(SLOTS, ranking=naive, drop_negative=True).drop == ["siglip", "dinov2"]
    with pytest.raises(PlanError, match="no slot has a negative CUR"):
        select(SLOTS, ranking=make_ranking(), drop_negative=True)


def test_budget_picks_the_most_accurate_affordable_set():
    ranking = make_ranking()
    assert select(SLOTS, ranking=ranking, budget=6).kept == ["clip", "siglip"]
    assert select(SLOTS, ranking=ranking, budget=3.5).kept == ["siglip"]  # tie on accuracy: cheaper wins
    assert select(SLOTS, ranking=ranking, budget=60, cost="params").kept == ["clip", "siglip"]
    with pytest.raises(PlanError, match="already fits the budget"):
        select(SLOTS, ranking=ranking, budget=10)
    with pytest.raises(PlanError, match="raise --budget"):
        select(SLOTS, ranking=ranking, budget=1)


def test_bad_policy_arguments_are_refused():
    ranking = make_ranking()
    with pytest.raises(ConfigError, match="exactly one"):
        select(SLOTS, drop=["clip"], ranking=ranking, keep=1)
    with pytest.raises(ConfigError, match="needs --ranking"):
        select(SLOTS, keep=1)
    with pytest.raises(PlanError, match="between 1 and 2"):
        select(SLOTS, ranking=ranking, keep=3)
    with pytest.raises(PlanError, match="category 'Maths' is not in the ranking; use one of overall, OCR"):
        select(SLOTS, ranking=ranking, keep=1, category="Maths")
    with pytest.raises(PlanError, match="every encoder"):
        select(SLOTS, drop=SLOTS)
    with pytest.raises(PlanError, match="unknown slot.*sam"):
        select(SLOTS, drop=["sam"])
    with pytest.raises(PlanError, match="ranking is for slots"):
        select(["clip", "sam"], ranking=ranking, keep=1)


def test_read_ranking_checks_the_file_and_records_its_hash(tmp_path):
    (tmp_path / "ranking.json").write_text(json.dumps(make_ranking()))
    ranking = read_ranking(tmp_path)
    assert len(ranking["_sha256"]) == 64 and ranking["_path"].endswith("ranking.json")
    chosen = select(SLOTS, ranking=ranking, keep=2)
    assert chosen.details["ranking_sha256"] == ranking["_sha256"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_ranking(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="no ranking"):
        read_ranking(tmp_path / "missing")
