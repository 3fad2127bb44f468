"""The planted-specialization data: deterministic, complete, in the documented formats."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from encslim.demo.data import (DEMO_CATEGORIES, GLYPHS, IMAGE_SIZE, draw_embossed_digit, generate, iter_samples,
                                     write_demo_data)
from encslim.errors import ConfigError, OutputExistsError


def _fingerprint(samples):
    return [(s["id"], s["question"], s["answer"], s["category"], s["metric"], s["options"], s["image"].tobytes())
            for s in samples]


def test_same_seed_same_samples_and_other_seed_differs():
    assert _fingerprint(generate("eval", 40, seed=3)) == _fingerprint(generate("eval", 40, seed=3))
    other = _fingerprint(generate("eval", 40, seed=4))
    assert other != _fingerprint(generate("eval", 40, seed=3))
    # train and eval of one seed are different draws
    assert [s[6] for s in _fingerprint(generate("train", 40, 3))] != [s[6] for s in other]


def test_every_category_and_task_present_with_the_stated_mix():
    samples = generate("eval", 200, seed=0)
    counts = {c: sum(s["category"] == c for s in samples) for c in DEMO_CATEGORIES}
    assert counts == {c: 50 for c in DEMO_CATEGORIES}
    train = generate("train", 100, seed=0)
    assert sum(s["category"] == "OCR & Chart" for s in train) == 30
    tasks = {s["task"] for s in samples}
    assert tasks == {"digit", "chart", "colour", "shape", "count", "position", "sum", "fact"}
    assert all(s["image"].size == (IMAGE_SIZE, IMAGE_SIZE) and s["image"].mode == "RGB" for s in samples)


def test_answers_are_short_and_mcq_answers_are_option_letters():
    assert not [s for s in generate("eval", 200, seed=1) if s["metric"] == "mcq"]  # none by default
    samples = generate("train", 400, seed=1, mcq_share=0.5)
    mcq = [s for s in samples if s["metric"] == "mcq"]
    assert mcq, "some colour questions are MCQ"
    for s in mcq:
        assert sorted(s["options"]) == ["A", "B", "C", "D"] and s["answer"] in "ABCD"
        assert len(set(s["options"].values())) == 4
    for s in samples:
        assert " " not in s["answer"] and 0 < len(s["answer"]) <= 8
        if s["task"] in ("digit", "chart"):  # a two-digit number
            assert len(s["answer"]) == 2 and set(s["answer"]) <= set(GLYPHS) and 10 <= int(s["answer"]) <= 99
        if s["task"] == "sum":
            assert 0 <= int(s["answer"]) <= 9


@pytest.mark.parametrize("task", ["digit", "chart"])
def test_each_digit_is_a_checkerboard_print_in_its_own_cell_of_one_pooling_window(task):
    """The number's two digits fill two side-by-side 16x16 cells (tokens of the 8x8 grid) in columns 2 and 3,
    which one pooling window merges at budget 0.5 (1x2) and 0.25 (2x2)."""
    for sample in [s for s in generate("eval", 80, seed=2) if s["task"] == task][:4]:
        pixels = sample["image"].load()
        background = pixels[0, 127]
        top = 0 if task == "digit" else 92  # a chart's label is printed under its axis (y 91) and bar
        marked = [(x, y) for x in range(IMAGE_SIZE) for y in range(top, IMAGE_SIZE)
                  if pixels[x, y] != background and all(abs(a - b) >= 100 for a, b in zip(pixels[x, y], background))]
        for col, digit in zip((2, 3), sample["answer"]):
            cell = [p for p in marked if p[0] // 16 == col]
            lit = sum(row.count("1") for row in GLYPHS[digit])
            assert len(cell) == lit * 4  # each glyph bit is a 2x2 checkerboard
            assert len([p for p in cell if sum(pixels[p]) < sum(background)]) == lit * 2
            xs, ys = [p[0] for p in cell], [p[1] for p in cell]
            assert max(xs) - min(xs) < 10 and max(ys) - min(ys) < 14
            assert len({y // 16 for y in ys}) == 1  # inside one 16x16 cell
        assert {p[0] // 16 for p in marked} == {2, 3}
        assert {p[1] // 16 for p in marked} == ({3} if task == "digit" else {6})


@pytest.mark.parametrize("size", [16, 32])
def test_printed_digits_vanish_in_low_resolution_views(size):
    """The planted ground truth: below full resolution every digit looks like the background."""
    views, full = {}, {}
    for digit in GLYPHS:
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (128, 126, 130))
        draw_embossed_digit(ImageDraw.Draw(img), 52, 48, digit, (128, 126, 130), 115)
        full[digit] = np.asarray(img, dtype=np.int16)
        views[digit] = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.int16)
    for digit in GLYPHS:
        if digit != "1":
            assert np.abs(full[digit] - full["1"]).max() >= 115  # the emboss depth at full resolution
            assert np.abs(views[digit] - views["1"]).max() <= 4, digit  # < 2 % of that when downscaled


def test_write_demo_data_layout_and_rows(tmp_path):
    out = tmp_path / "demo"
    summary = write_demo_data(out, seed=0, n_train=24, n_eval=12)
    assert sorted(p.name for p in out.iterdir()) == [
        "demo_data.json", "eval.jsonl", "images", "train.jsonl", "train_llava.json"]
    assert summary["counts"]["eval"] == {c: 3 for c in DEMO_CATEGORIES}
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        assert {"id", "image", "question", "answer", "category", "metric"} <= set(row)
        with Image.open(out / row["image"]) as img:
            assert img.size == (IMAGE_SIZE, IMAGE_SIZE)
    llava = json.loads((out / "train_llava.json").read_text())
    assert len(llava) == 24 and llava[0]["conversations"][0]["value"].startswith("<image>\n")
    first = (out / "images" / "eval-00000.png").read_bytes()
    again = tmp_path / "again"
    write_demo_data(again, seed=0, n_train=24, n_eval=12)
    assert (again / "images" / "eval-00000.png").read_bytes() == first
    assert (again / "eval.jsonl").read_text() == (out / "eval.jsonl").read_text()


def test_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="at least 4"):
        write_demo_data(tmp_path / "x", n_train=2)
    write_demo_data(tmp_path / "y", n_train=4, n_eval=4)
    with pytest.raises(OutputExistsError):
        write_demo_data(tmp_path / "y", n_train=4, n_eval=4)
    with pytest.raises(ConfigError, match="split"):
        generate("test", 4)
    with pytest.raises(ConfigError, match="unknown demo categories"):
        list(iter_samples("train", 4, categories=["OCR"]))


def test_a_stream_restricted_to_some_categories():
    samples = list(iter_samples("train", 30, seed=0, categories=["OCR & Chart", "Knowledge"]))
    counts = {c: sum(s["category"] == c for s in samples) for c in DEMO_CATEGORIES}
    assert counts == {"OCR & Chart": 20, "General": 0, "Vision-centric": 0, "Knowledge": 10}


def test_cli_demo_data(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from encslim.cli import cli

    args = ["demo", "data", str(tmp_path / "d"), "--n-train", "8", "--n-eval", "8", "--seed", "5"]
    monkeypatch.setattr("sys.argv", ["encslim", *args])  # the lazy group looks at argv
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d" / "demo_data.json").read_text())["seed"] == 5
