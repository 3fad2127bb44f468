"""``encslim prune`` end to end: success paths, dry run, ranking policies, one-line errors with exit code 2."""

import json
import shutil

import pytest

from encslim.cli import main


def run(argv, capsys):
    """Run the CLI in-process; returns ``(exit code, stdout, stderr)``."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_prune_with_drop_writes_a_verified_model(tiny_model_dir, tmp_path, capsys):
    code, out, err = run(["prune", str(tiny_model_dir("A1")), "--drop", "dinov2", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "verification: passed" in out and "dinov2" in out
    manifest = json.loads((tmp_path / "o" / "encslim_manifest.json").read_text())
    assert manifest["kept_slots"] == ["clip", "siglip"] and manifest["verification"]["passed"] is True


def test_dry_run_prints_the_plan(tiny_model_dir, tmp_path, capsys):
    code, out, _ = run(["prune", str(tiny_model_dir("A1")), "--drop", "clip,siglip", "--dry-run"], capsys)
    assert code == 0
    assert "sliced: fusion.projector.0.weight [64, 96] -> [64, 32] (dim 1)" in out
    assert "- encoders[name=clip]" in out and "saved" in out
    code, out, _ = run(["prune", str(tiny_model_dir("A1")), "--drop", "clip", "--dry-run", "--json"], capsys)
    assert json.loads(out)["plan"]["drop"] == ["clip"]


def test_ranking_policy_chooses_what_to_drop(tiny_model_dir, tmp_path, capsys):
    ranking = {
        "schema_version": 1, "model": "tiny", "slots": ["clip", "siglip", "dinov2"], "mask_mode": "removal",
        "categories": [], "overall_is": "mean over samples", "accuracy": {"full": {"overall": 0.8}},
        "subsets": [{"kept": k, "masked": [], "accuracy": {"overall": a}, "cost": {"vision_flops": None}}
                    for k, a in ((["clip", "siglip"], 0.5), (["clip", "dinov2"], 0.79), (["siglip", "dinov2"], 0.7))],
        "cur": {s: {"overall": {"value": v, "ci": [v, v]}} for s, v in (("clip", 0.1), ("siglip", 0.0), ("dinov2", 0.3))},
        "ig": {}, "shapley": {}, "shapley_method": "exact", "interactions": {}, "costs": {},
    }
    (tmp_path / "rank").mkdir()
    (tmp_path / "rank" / "ranking.json").write_text(json.dumps(ranking))
    code, out, err = run(["prune", str(tiny_model_dir("C")), "--ranking", str(tmp_path / "rank"), "--keep", "2",
                          "--out", str(tmp_path / "o"), "--no-verify"], capsys)
    assert code == 0, err
    assert "selected: drop siglip" in out and "verification: skipped" in out
    manifest = json.loads((tmp_path / "o" / "encslim_manifest.json").read_text())
    assert manifest["removed_slots"] == ["siglip"]
    assert manifest["ranking"]["policy"] == "keep" and manifest["ranking"]["details"]["ranking_sha256"]


@pytest.mark.parametrize("case", ["unknown", "all", "inside", "corrupt", "mismatch", "exists", "no-policy"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tiny_model_dir, tmp_path, capsys):
    source = tiny_model_dir("A1")
    out = tmp_path / "out"
    args, expected = ["--drop", "clip"], None
    if case == "unknown":
        args, expected = ["--drop", "sam"], "unknown slot(s) sam; this model's slots are clip, siglip, dinov2"
    elif case == "all":
        args, expected = ["--drop", "clip,siglip,dinov2"], "cannot remove every encoder"
    elif case == "inside":
        out, expected = source / "pruned", "overlaps the input"
    elif case == "corrupt":
        source = shutil.copytree(source, tmp_path / "src")
        (source / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:-100])
        expected = f"{source / 'model.safetensors'} is truncated or corrupt"
    elif case == "mismatch":
        source = shutil.copytree(source, tmp_path / "src")
        config = json.loads((source / "config.json").read_text())
        config["encoders"][0]["vision_config"]["num_hidden_layers"] = 3
        (source / "config.json").write_text(json.dumps(config))
        expected = "do not match its config.json: 16 missing"
    elif case == "exists":
        out.mkdir()
        expected = "already exists; pass --overwrite"
    else:
        args, expected = [], "choose exactly one of --drop"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["prune", str(source), *args, "--out", str(out)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (source / "pruned").exists()


def test_verification_reads_samples_from_data(tiny_model_dir, tmp_path, capsys, probe_images):
    (tmp_path / "images").mkdir()
    rows = []
    for i, image in enumerate(probe_images[:3]):
        image.save(tmp_path / "images" / f"{i}.png")
        rows.append({"id": f"q{i}", "image": f"images/{i}.png", "question": "What colour is it?", "answer": "red"})
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, err = run(["prune", str(tiny_model_dir("B")), "--drop", "clip", "--data", str(tmp_path / "eval.jsonl"),
                          "--samples", "2", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    verification = json.loads((tmp_path / "o" / "encslim_manifest.json").read_text())["verification"]
    assert verification["inputs"] == "data" and verification["samples"] == 2 and verification["passed"] is True
    assert "over 2 data sample(s)" in out
