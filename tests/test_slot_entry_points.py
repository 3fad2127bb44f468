"""Every entry point that takes a set of encoder slots reads it through one SlotSet (encslim/models/slots.py).

Each rejects an unknown slot with SlotSet's one-line message (the unknown name and the model's slots; exit 2
on the CLI, nothing written) and accepts each documented spelling: ``eval``/``bench --mask`` (``a,b``,
``a+b``, repeated), ``prune --drop`` (``a,b``, ``a+b``, repeated), ``rank --predictions`` keys (``full``,
``masked:a+b``, ``kept:a``), the lmms-eval model's ``masked=a+b``, a recipe's ``select.drop`` and the
``prune()`` API (a list, one string, a SlotSet).
"""

import json

import pytest
import yaml

from encslim.errors import ConfigError, PlanError
from encslim.models.slots import SlotSet

from .conftest import run_main, write_jsonl

SLOTS = ("clip", "siglip", "dinov2")
VALID = "this model's slots are clip, siglip, dinov2"


def _one_error_line(code, err):
    """The single ``error: ...`` line of a refused command (exit 2)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("A1")


@pytest.fixture
def two_rows(tmp_path, model):
    from .conftest import make_image

    (tmp_path / "images").mkdir()
    rows = []
    for i in range(2):
        make_image(60 + i).save(tmp_path / "images" / f"{i}.png")
        rows.append({"id": f"q{i}", "image": f"images/{i}.png", "question": "What colour?", "answer": "red"})
    return write_jsonl(tmp_path / "d.jsonl", rows)


# ---------------------------------------------------------------- eval --mask
def test_eval_mask_unknown_slot_is_slotsets_line(model, two_rows, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = run_main(capsys, "eval", model, "--data", two_rows, "--mask", "clip", "--mask", "sam+clip",
                            "--out", out)
    line = _one_error_line(code, err)
    assert line == f"error: --mask sam,clip: unknown slot(s) sam; {VALID}"
    assert not out.exists()


def test_eval_every_slot_masked_fails_before_the_weights_load(model, two_rows, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = run_main(capsys, "eval", model, "--data", two_rows, "--mask", "clip+siglip+dinov2", "--out", out)
    line = _one_error_line(code, err)  # one line: no weight-loading bar before it
    assert line == "error: a mask set masks every encoder; in removal mode keep at least one slot"
    assert not out.exists()


@pytest.mark.parametrize("spelling", ["siglip,dinov2", "siglip+dinov2", "dinov2 siglip"])
def test_eval_parse_mask_sets_accepts_each_spelling(model, spelling):
    from encslim.bench.commands import parse_mask_sets

    sets = parse_mask_sets(model, [spelling, ["clip"], "dinov2,siglip"])
    assert [s.key for s in sets] == ["full", "masked:siglip+dinov2", "masked:clip"]
    assert all(isinstance(s, SlotSet) and s.slots == SLOTS for s in sets)


def test_eval_runs_with_plus_and_repeated_masks(model, two_rows, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = run_main(capsys, "eval", model, "--data", two_rows, "--mask", "siglip+dinov2", "--mask", "clip",
                            "--max-new-tokens", "2", "--out", out)
    assert code == 0, err
    report = json.loads((out / "eval.json").read_text())
    assert [r["masked"] for r in report["results"]] == [[], ["dinov2", "siglip"], ["clip"]]


# ---------------------------------------------------------------- bench --mask
def test_bench_mask_unknown_slot_is_slotsets_line(model, tmp_path, capsys):
    out = tmp_path / "bench"
    code, _, err = run_main(capsys, "bench", model, "--mask", "dino", "--out", out)
    line = _one_error_line(code, err)
    assert line == f"error: --mask dino ({model}): unknown slot(s) dino; {VALID}"
    assert not out.exists()


def test_bench_specs_accept_each_spelling(model):
    from encslim.bench.benchmark import build_specs, check_masks
    from encslim.models.loading import open_folder

    full = open_folder(model)
    specs = build_specs(full, masks=["clip,siglip", "clip+dinov2", ["siglip", "dinov2"]], names=["full"])
    check_masks(full, specs)  # no error: every name is a slot
    assert [(s.name, tuple(s.masked)) for s in specs] == [
        ("full", ()), ("full[mask clip+siglip]", ("clip", "siglip")), ("full[mask clip+dinov2]", ("clip", "dinov2")),
        ("full[mask siglip+dinov2]", ("siglip", "dinov2"))]


# ---------------------------------------------------------------- prune --drop, prune()
def test_prune_drop_unknown_slot_is_slotsets_line(model, tmp_path, capsys):
    code, _, err = run_main(capsys, "prune", model, "--drop", "clip+sam", "--out", tmp_path / "p")
    assert _one_error_line(code, err) == f"error: unknown slot(s) sam; {VALID}"
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("args", [["--drop", "clip,siglip"], ["--drop", "clip+siglip"],
                                  ["--drop", "clip", "--drop", "siglip"]])
def test_prune_drop_accepts_each_spelling(model, args, capsys):
    code, out, err = run_main(capsys, "prune", model, *args, "--dry-run")
    assert code == 0, err
    assert "plan: drop clip, siglip (keep dinov2)" in out


@pytest.mark.parametrize("drop", [["clip", "siglip"], "clip,siglip", "clip+siglip",
                                  SlotSet.from_kept(SLOTS, ["dinov2"])])
def test_prune_api_accepts_each_spelling(model, drop):
    from encslim.prune.surgery import prune

    result = prune(model, drop, dry_run=True)
    assert result["plan"]["drop"] == ["clip", "siglip"] and result["plan"]["kept"] == ["dinov2"]


def test_prune_api_unknown_slot(model):
    from encslim.prune.surgery import prune

    with pytest.raises(PlanError, match=f"^unknown slot\\(s\\) sam; {VALID}$"):
        prune(model, "clip,sam", dry_run=True)


# ---------------------------------------------------------------- rank --predictions
def test_rank_predictions_key_unknown_slot_is_slotsets_line(model, tmp_path, capsys):
    pred = write_jsonl(tmp_path / "p.jsonl", [{"id": "q0", "question": "x", "answer": "a", "prediction": "a"}])
    code, _, err = run_main(capsys, "rank", model, "--predictions", f"full={pred}",
                            "--predictions", f"masked:clip+sam={pred}", "--out", tmp_path / "o")
    assert _one_error_line(code, err) == f"error: --predictions masked:clip+sam: unknown slot(s) sam; {VALID}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("key, masked", [("full", ()), ("masked:clip+siglip", ("clip", "siglip")),
                                         ("kept:dinov2", ("clip", "siglip")), ("kept:clip+dinov2", ("siglip",))])
def test_rank_predictions_keys_accept_each_spelling(key, masked):
    assert SlotSet.parse(SLOTS, key).masked_ordered == masked


# ---------------------------------------------------------------- lmms-eval model
def test_lmms_model_masked_unknown_slot_and_spellings(model):
    from encslim.bench.lmms_model import EncslimLmms, parse_masked

    with pytest.raises(ConfigError, match=f"^masked: unknown slot\\(s\\) sam; {VALID}$"):
        EncslimLmms(pretrained=str(model), masked="clip+sam")
    for spelling in ("clip+siglip", "clip;siglip", "'clip,siglip'", ["clip", "siglip"]):
        assert parse_masked(spelling) == ["clip", "siglip"]


# ---------------------------------------------------------------- recipe select.drop
def _recipe(tmp_path, model, drop):
    recipe = {"name": "r", "model": str(model), "out": str(tmp_path / "runs"), "data": {"eval": ["demo"]},
              "select": {"policy": "drop", "drop": drop}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_select_drop_unknown_slot_fails_before_any_stage(model, tmp_path, capsys):
    code, _, err = run_main(capsys, "run", _recipe(tmp_path, model, ["clip", "sam"]))
    assert _one_error_line(code, err) == f"error: select.drop: unknown slot(s) sam; {VALID}"
    assert not (tmp_path / "runs" / "r" / "data").exists()  # no stage ran


@pytest.mark.parametrize("drop", [["clip", "siglip"], "clip,siglip", "clip+siglip"])
def test_recipe_select_drop_accepts_each_spelling(model, drop):
    from encslim.prune.select import select
    from encslim.prune.surgery import model_slots
    from encslim.recipes.schema import Recipe

    recipe = Recipe.model_validate({"name": "r", "model": str(model), "data": {"eval": ["demo"]},
                                    "select": {"policy": "drop", "drop": drop}})
    assert select(model_slots(model), None, recipe.select).drop == ["clip", "siglip"]
