"""`encslim eval` end to end: table, eval.json, records, resume, bad input (exit 2, nothing written)."""

import json

import pytest
from click.testing import CliRunner

from encslim.cli import cli, main

from ..conftest import make_image, png_base64, write_jsonl, write_tsv


def run_ok(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def run_fail(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar, if any
    assert err.startswith("error: ")
    return err


@pytest.fixture
def tsv_file(tmp_path):
    rows = [[i, "Which?", "x", "y", "A" if i % 2 else "B", "Vision-centric", png_base64(make_image(20 + i))]
            for i in range(4)]
    return write_tsv(tmp_path / "mcq.tsv", ["index", "question", "A", "B", "answer", "category", "image"], rows)


def test_eval_writes_table_json_and_records_then_resumes(tiny_model_dir, mixed_jsonl, tsv_file, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", str(tiny_model_dir("A1")), "--data", str(mixed_jsonl), "--data", str(tsv_file),
            "--mask", "clip", "--mask", "siglip,dinov2", "--max-new-tokens", "3", "--batch-size", "4", "--out", str(out)]
    output = run_ok(args)
    lines = output.splitlines()
    assert lines[0].split() == ["category", "n", "full", "-clip", "-dinov2-siglip"]
    assert [line.split()[0] for line in lines[1:3]] == ["overall", "OCR"]
    assert "overall is the mean over samples" in output
    report = json.loads((out / "eval.json").read_text())
    assert report["overall_is"] == "mean over samples" and report["num_samples"] == 16
    assert report["counts"] == {"OCR & Chart": 4, "General": 4, "Knowledge": 4, "Vision-centric": 4}
    assert [r["masked"] for r in report["results"]] == [[], ["clip"], ["dinov2", "siglip"]]
    assert report["encoder_passes_per_sample"] == 3.0 and report["skipped_rows"] == 0
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 16 * 3 and {r["sample_id"] for r in records} >= {"bench/q0", "mcq/3"}
    run_ok(args)  # a rerun resumes: nothing evaluated again, nothing duplicated
    again = json.loads((out / "eval.json").read_text())
    assert again["evaluated_now"] == 0 and again["results"] == report["results"]
    assert len((out / "records.jsonl").read_text().splitlines()) == 16 * 3


def test_bad_row_stops_before_writing_and_skip_bad_counts(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    make_image(0).save(tmp_path / "images" / "0.png")
    data = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "ok", "image": "images/0.png", "question": "q", "answer": "a"},
        {"id": "gone", "image": "images/missing.png", "question": "q", "answer": "a"},
    ])
    out = tmp_path / "out"
    args = ["eval", str(tiny_model_dir("A1")), "--data", str(data), "--out", str(out), "--max-new-tokens", "2"]
    err = run_fail(args, capsys)
    assert f"{data} row 2 (id gone): image file 'images/missing.png' not found" in err
    assert not out.exists()
    output = run_ok(args + ["--skip-bad"])
    assert "skipped 1 bad row(s)" in output
    report = json.loads((out / "eval.json").read_text())
    assert report["skipped_rows"] == 1 and report["num_samples"] == 1 and "row 2 (id gone)" in report["skipped"][0]


def test_bad_options_exit_2_without_output(tiny_model_dir, mixed_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    model = str(tiny_model_dir("A1"))
    err = run_fail(["eval", model, "--data", str(mixed_jsonl), "--mask", "sam", "--out", str(out)], capsys)
    assert "unknown slot(s) sam; this model's slots are clip, siglip, dinov2" in err and not out.exists()
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    assert "is empty" in run_fail(["eval", model, "--data", str(empty), "--out", str(out)], capsys)
    cols = write_tsv(tmp_path / "cols.tsv", ["index", "question", "image"], [[0, "q", "x"]])
    assert "lacks the required column(s) answer" in run_fail(["eval", model, "--data", str(cols), "--out", str(out)],
                                                             capsys)
    out.mkdir()
    (out / "other.txt").write_text("x")
    assert "holds no earlier evaluation" in run_fail(["eval", model, "--data", str(mixed_jsonl), "--out", str(out)],
                                                     capsys)
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]
