"""The shipped demo recipe with its recovery stage (rank.recover, select.accuracy: recovered), on smaller
demo data: the summary shows the kept set masked vs recovered with and without distillation."""

import json
from pathlib import Path

from ..conftest import run_main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"
SMALL = ["data.demo_n_eval=48", "data.demo_n_train=64", "rank.bootstrap=50", "rank.recover.steps=3",
         "rank.recover.top=2", "select.min_retained=0.5", "finetune.enabled=false", "export.formats=[]",
         "bench.enabled=false"]


def test_demo_recipe_recovers_candidates_and_selects_on_recovered_accuracy(tmp_path, capsys):
    code, out, err = run_main(capsys, "run", RECIPE, f"out={tmp_path}", *SMALL)
    assert code == 0, err
    run = tmp_path / "demo"
    ranking = json.loads((run / "rank" / "ranking" / "ranking.json").read_text())
    block = ranking["recovery"]
    assert block["distill"] == "both" and len(block["candidates"]) == 2
    manifest = json.loads((run / "prune" / "model" / "encslim_manifest.json").read_text())
    selection = manifest["ranking"]
    assert selection["basis"] == "recovered" and selection["details"]["on"] == "recovered"
    assert selection["kept"] in [c["kept"] for c in block["candidates"]]
    summary = json.loads((run / "summary.json").read_text())
    chosen = next(c for c in block["candidates"] if c["kept"] == selection["kept"])
    assert summary["recovery"] == {"masked": chosen["accuracy_masked"], **chosen["accuracy_recovered"]}
    assert "kept set before/after recovery" in out
    header = out.split("kept set before/after recovery")[1].splitlines()[1].split()
    assert header == ["masked", "lora", "distill"]
    # a changed selection re-prunes without re-ranking (or re-recovering)
    code, out, err = run_main(capsys, "run", RECIPE, f"out={tmp_path}", *SMALL[:-4], "select.min_retained=0.4",
                              *SMALL[-3:])
    assert code == 0, err
    assert "rank] unchanged, skipped" in out and "prune] running" in out


def test_recovery_settings_errors_are_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nmodel: demo\ndata: {eval: [demo]}\nselect: {min_retained: 0.9, accuracy: recovered}\n")
    code, _, err = run_main(capsys, "run", recipe)
    assert code == 2 and "select.accuracy 'recovered' needs rank.recover" in err and len(err.strip().splitlines()) == 1
    recipe.write_text("name: t\nmodel: demo\ndata: {eval: [demo]}\nrank: {recover: {steps: 2}}\nselect: {keep: 1}\n")
    code, _, err = run_main(capsys, "run", recipe)
    assert code == 2 and "rank.recover needs data.train" in err and len(err.strip().splitlines()) == 1
