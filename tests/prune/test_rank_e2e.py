"""``encslim rank`` end to end on tiny random models through the real evaluator and data readers."""

import json

import numpy as np
import pytest

from encslim.cli import main
from encslim.prune.rank import load_ranking, rank


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory):
    from encslim.demo.data import write_demo_data

    out = tmp_path_factory.mktemp("rankdata") / "demo"
    write_demo_data(out, seed=1, n_train=4, n_eval=16)
    return out / "eval.jsonl"


def _cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_all_subsets_then_cached_rerun(tiny_model_dir, demo_eval, tmp_path, capsys):
    model = tiny_model_dir()
    out = tmp_path / "rank"
    code, stdout, err = _cli(["rank", str(model), "--data", str(demo_eval), "--out", str(out),
                              "--subsets", "all", "--bootstrap", "200"], capsys)
    assert code == 0, err
    assert "8 mask sets evaluated, 0 from cache, 3 encoder passes per sample" in stdout
    data = load_ranking(out)
    assert data["slots"] == ["clip", "siglip", "dinov2"] and data["mask_mode"] == "removal"
    assert sorted(data["categories"]) == ["General", "Knowledge", "OCR & Chart", "Vision-centric"]
    assert len(data["subsets"]) == 8 and data["shapley_method"] == "exact"
    assert data["n_samples"]["overall"] == 16
    assert data["costs"]["clip"]["vision_flops"] > 0 and data["costs"]["clip"]["params"] > 0
    full_row = next(r for r in data["subsets"] if not r["masked"])
    assert full_row["cost"]["vision_flops"] == sum(c["vision_flops"] for c in data["costs"].values())
    for cells in data["cur"].values():  # a random model: undefined cells say why, defined ones are numbers
        for cell in cells.values():
            assert (cell["value"] is None) == ("note" in cell and cell["ci"] is None)
    records = (out / "records.jsonl").read_text().splitlines()
    assert len(records) == 16 * 8
    assert "| full | clip+siglip+dinov2 |" in (out / "ranking.md").read_text()

    code, stdout, err = _cli(["rank", str(model), "--data", str(demo_eval), "--out", str(out),
                              "--subsets", "pairs", "--overwrite", "--json"], capsys)
    assert code == 0, err
    again = json.loads(stdout)
    assert again["evaluation"]["mask_sets_evaluated"] == 0
    assert again["evaluation"]["encoder_passes_per_sample"] == 0
    assert again["accuracy"] == data["accuracy"]


def test_scores_match_a_direct_evaluation_class_b(tiny_model_dir, demo_eval):
    from encslim.data.load import load_samples
    from encslim.bench.evaluate import EvalSettings, evaluate
    from encslim.models.loading import load_model

    loaded = load_model(tiny_model_dir(fusion="B"))
    ranking = rank(loaded, demo_eval, subsets="single", bootstrap=0, max_new_tokens=4)
    samples = load_samples(demo_eval)
    direct = evaluate(loaded, samples, mask_sets=[frozenset({"siglip"})], settings=EvalSettings(max_new_tokens=4))
    scores = direct.scores[frozenset({"siglip"})]
    row = next(r for r in ranking["subsets"] if r["masked"] == ["siglip"])
    assert row["accuracy"]["overall"] == pytest.approx(np.mean([scores[s.id] for s in samples]))
    assert ranking["model"] == "<in-memory model>"
    assert ranking["evaluation"]["encoder_passes_per_sample"] == 3


def test_zero_mask_and_category_filter(tiny_model_dir, demo_eval, tmp_path):
    ranking = rank(tiny_model_dir(), [demo_eval], subsets="single", mask_mode="zero", categories=["Knowledge"],
                   bootstrap=50, out=tmp_path / "z")
    assert ranking.categories == ["Knowledge"] and ranking["mask_mode"] == "zero"
    assert ranking["n_samples"]["overall"] == ranking["n_samples"]["Knowledge"] > 0
    assert (tmp_path / "z" / "cur_heatmap.png").is_file()


def test_cli_user_errors_are_one_line(tiny_model_dir, demo_eval, tmp_path, capsys):
    model = str(tiny_model_dir())
    out = tmp_path / "exists"
    out.mkdir()
    code, _, err = _cli(["rank", model, "--data", str(demo_eval), "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and "already exists; pass --overwrite" in err
    assert len(err.strip().splitlines()) == 1  # refused before the model is even loaded
    code, _, err = _cli(["rank", model, "--data", str(demo_eval), "--out", str(tmp_path / "n"),
                         "--category", "Maths"], capsys)
    assert code == 2 and "not in the data; available:" in err
    assert not (tmp_path / "n").exists()
    code, _, err = _cli(["rank", model, "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "m")],
                        capsys)
    assert code == 2 and "missing.jsonl" in err


def test_other_family_deepseek_vl_hybrid(demo_eval, tmp_path):
    from encslim.models.families.deepseek_vl_hybrid.tiny import create_tiny_hybrid

    model = tmp_path / "hybrid"
    create_tiny_hybrid(model)
    ranking = rank(model, demo_eval, subsets="all", bootstrap=0, max_new_tokens=4)
    assert ranking.slots == ["siglip", "sam"]
    assert len(ranking["subsets"]) == 4 and ranking["shapley_method"] == "exact"
    flops = {s: c["vision_flops"] for s, c in ranking["costs"].items()}
    assert flops["sam"] > flops["siglip"] > 0  # counted per slot through the adapter's encode
    assert ranking["evaluation"]["encoder_passes_per_sample"] == 2
