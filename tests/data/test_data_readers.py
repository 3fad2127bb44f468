"""Readers: VLMEvalKit TSV, JSONL, LLaVA JSON; several files; bad input, one line each."""

import base64
import json

import numpy as np
import pytest

from encslim.data.load import load_samples
from encslim.errors import DataError

from ..conftest import make_image, png_base64, write_jsonl, write_tsv

TSV_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]


def same_pixels(a, b):
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_jsonl_paths_options_metrics(mixed_jsonl):
    samples = load_samples(mixed_jsonl)
    assert len(samples) == 12 and samples.skipped == 0
    first, second = samples[0], samples[1]
    assert (first.id, first.metric, first.answers, first.options, first.category) == \
        ("q0", "exact", ["red"], {}, "OCR & Chart")
    assert samples[2].metric == "vqa"
    assert (second.metric, second.answers, second.options) == ("mcq", ["B"], {"A": "red", "B": "blue", "C": "green"})
    assert same_pixels(first.image, make_image(0)) and first.image.mode == "RGB"
    assert first.source == "bench.jsonl:1" and first.dataset == "bench"


def test_jsonl_base64_answers_list_and_text_answer_for_mcq(tmp_path):
    img = make_image(3)
    path = write_jsonl(tmp_path / "b64.jsonl", [
        {"id": 1, "image": png_base64(img), "question": "q?", "answers": ["two", "2", 2]},
        {"id": 2, "image": "data:image/png;base64," + png_base64(img), "question": "pick", "answer": "blue",
         "options": {"A": "red", "B": "blue"}, "hint": "look closely"},
        {"id": 3, "question": "text only?", "answer": "yes"},
    ])
    samples = load_samples(path)
    assert samples[0].id == "1" and samples[0].answers == ["two", "2", "2"]
    assert same_pixels(samples[0].image, img) and same_pixels(samples[1].image, img)
    assert samples[1].answers == ["B"] and samples[1].hint == "look closely"  # option text turned into its letter
    assert samples[2].image is None and samples[2].category == "b64"  # no category: the file stem


def test_vlmevalkit_tsv(tmp_path):
    images = [make_image(i) for i in range(3)]
    rows = [
        [0, "What is shown?", "a hint", "cat", "dog", "bird", "", "B", "Attribute", "Perception", "dev", png_base64(images[0])],
        [1, "Which animal?", "", "cat", "dog", "", "", "A", "", "Reasoning", "dev", "0"],  # reuses row 0's image
        [2, "Second image?", "nan", "x", "y", "z", "w", "D", "Attribute", "Perception", "dev", png_base64(images[2])],
    ]
    samples = load_samples(write_tsv(tmp_path / "MMBench_DEV_EN.tsv", TSV_HEADER, rows))
    assert [s.id for s in samples] == ["0", "1", "2"]
    assert samples[0].options == {"A": "cat", "B": "dog", "C": "bird"} and samples[0].hint == "a hint"
    assert samples[1].options == {"A": "cat", "B": "dog"}
    assert samples[1].image is samples[0].image and same_pixels(samples[1].image, images[0])
    assert samples[1].category == "Reasoning"  # l2-category when category is empty
    assert samples[2].hint == "" and samples[2].answers == ["D"] and samples[2].metric == "mcq"


def test_tsv_image_path_answer_lists_and_metric_by_name(tmp_path):
    (tmp_path / "imgs").mkdir()
    make_image(5).save(tmp_path / "imgs" / "5.png")
    rows = [[5, "What does it say?", "['hello', 'Hello!']", "imgs/5.png"]]
    samples = load_samples(write_tsv(tmp_path / "DocVQA_VAL.tsv", ["index", "question", "answer", "image_path"], rows))
    assert samples[0].metric == "anls" and samples[0].answers == ["hello", "Hello!"]
    assert same_pixels(samples[0].image, make_image(5))


def test_llava_conversation_json(tmp_path):
    (tmp_path / "images").mkdir()
    make_image(1).save(tmp_path / "images" / "a.png")
    data = [
        {"id": "a", "image": "images/a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"},
            {"from": "gpt", "value": "Red."}, {"from": "human", "value": "And?"}, {"from": "gpt", "value": "No."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Capital of France?"},
                                      {"from": "gpt", "value": "Paris"}]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(data))
    samples = load_samples(tmp_path / "train.json")
    assert samples[0].question == "What colour is the square?" and samples[0].answers == ["Red."]
    assert same_pixels(samples[0].image, make_image(1)) and samples[1].image is None
    assert {s.category for s in samples} == {"train"} and samples[0].metric == "exact"


def test_several_files_qualify_ids_and_category_default(tmp_path, mixed_jsonl):
    other = write_jsonl(tmp_path / "extra.jsonl", [{"id": "q0", "question": "q", "answer": "a"}])
    samples = load_samples([mixed_jsonl, other])
    assert samples[0].id == "bench/q0" and samples[-1].id == "extra/q0"
    assert samples[-1].category == "extra"
    assert load_samples([other], category="Knowledge")[0].category == "Knowledge"


def _error(paths, **kwargs):
    with pytest.raises(DataError) as info:
        load_samples(paths, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_rows_name_file_and_row(tmp_path):
    outside = tmp_path / "outside.png"
    make_image(0).save(outside)
    data = tmp_path / "data"
    data.mkdir()
    make_image(0).save(data / "ok.png")
    good = {"id": "g", "image": "ok.png", "question": "q", "answer": "a"}
    cases = {
        "missing": ({"id": "m", "image": "nope.png", "question": "q", "answer": "a"}, "image file 'nope.png' not found"),
        "base64": ({"id": "b", "image": "A" * 80 + "!!", "question": "q", "answer": "a"}, "broken base64"),
        "broken": ({"id": "k", "image": base64.b64encode(b"not an image" * 9).decode(), "question": "q", "answer": "a"}, "not a readable image"),
        "escape": ({"id": "e", "image": "../outside.png", "question": "q", "answer": "a"}, "escapes the data folder"),
        "absolute": ({"id": "x", "image": str(outside), "question": "q", "answer": "a"}, "escapes the data folder"),
        "noanswer": ({"id": "n", "image": "ok.png", "question": "q"}, "sample has no answer"),
        "badletter": ({"id": "l", "question": "q", "options": ["x", "y"], "answer": "C"}, "not one of the options A, B"),
    }
    for name, (row, reason) in cases.items():
        path = write_jsonl(data / f"{name}.jsonl", [good, row])
        message = _error(path)
        assert f"{path} row 2 (id {row['id']})" in message and reason in message, message
        assert "--skip-bad" in message


def test_symlink_out_of_the_data_folder_is_refused(tmp_path):
    make_image(0).save(tmp_path / "secret.png")
    data = tmp_path / "data"
    data.mkdir()
    (data / "link.png").symlink_to(tmp_path / "secret.png")
    path = write_jsonl(data / "s.jsonl", [{"id": 1, "image": "link.png", "question": "q", "answer": "a"}])
    assert "escapes the data folder" in _error(path)


def test_bad_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty.jsonl is empty" in _error(tmp_path / "empty.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    assert "holds no samples" in _error(tmp_path / "blank.jsonl")
    noanswer = write_tsv(tmp_path / "cols.tsv", ["index", "question", "image"], [[0, "q", "x" * 100]])
    assert "lacks the required column(s) answer" in _error(noanswer)
    header_only = write_tsv(tmp_path / "header.tsv", ["index", "question", "answer", "image"], [])
    assert "holds a header but no samples" in _error(header_only)
    assert "not found" in _error(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    assert "unknown data format '.csv'" in _error(tmp_path / "data.csv")
    (tmp_path / "bad.json").write_text("[{")
    assert "is not valid JSON (line 1" in _error(tmp_path / "bad.json")


def test_tsv_row_errors(tmp_path):
    img = png_base64(make_image(0))
    header = ["index", "question", "answer", "A", "B", "image"]
    rows = [[0, "q", "A", "x", "y", img], [1, "q", "", "x", "y", img], [2, "q", "A", "x", "y", "7"],
            [3, "q", "A", "x", "y", "=" * 70 + "!"], [0, "dup", "A", "x", "y", img]]
    path = write_tsv(tmp_path / "t.tsv", header, rows)
    assert f"{path} row 2 (index 1): sample has no answer" in _error(path)
    samples = load_samples(path, skip_bad=True)
    assert [s.id for s in samples] == ["0"] and samples.skipped == 4
    reasons = "\n".join(samples.skipped_rows)
    for fragment in ("row 2 (index 1): sample has no answer", "row 3 (index 2): image '7' names no row",
                     "row 4 (index 3): broken base64", "row 5 (index 0): duplicate id '0'"):
        assert fragment in reasons, reasons


def test_skip_bad_counts_and_all_bad_raises(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"id": 1, "question": "q", "answer": "a"}, {"id": 2, "question": "q"},
                                              "not an object"])
    samples = load_samples(path, skip_bad=True)
    assert len(samples) == 1 and samples.skipped == 2
    (tmp_path / "y.jsonl").write_text('{"id": 1, "question": "q"}\n{broken\n')
    assert "no usable samples" in _error(tmp_path / "y.jsonl", skip_bad=True)
