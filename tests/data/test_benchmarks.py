"""The study's benchmarks: file names pick category and metric unless the file gives them."""

import pytest

from encslim.data.benchmarks import (BENCHMARKS, CATEGORIES, STUDY_BENCHMARKS, benchmark_for, circular_accuracy,
                                     mme_perception_score, study_category, study_score)
from encslim.data.load import load_samples

from ..conftest import make_image, png_base64, write_tsv

IMAGE = None


def _image():
    global IMAGE
    if IMAGE is None:
        IMAGE = png_base64(make_image(0, 16))
    return IMAGE


def test_fifteen_benchmarks_in_four_categories():
    assert len(STUDY_BENCHMARKS) == 15
    groups = {c: sorted(b.name for b in BENCHMARKS if b.category == c and b.name in STUDY_BENCHMARKS)
              for c in CATEGORIES}
    assert groups == {
        "General": ["GQA_TestDev_Balanced", "MMBench_DEV_EN", "MME", "SEEDBench_IMG"],
        "Knowledge": ["AI2D_TEST", "MMMU_DEV_VAL", "MathVista_MINI", "ScienceQA_TEST"],
        "OCR & Chart": ["ChartQA_TEST", "DocVQA_VAL", "OCRBench", "TextVQA_VAL"],
        "Vision-centric": ["CV-Bench", "MMVP", "RealWorldQA"],
    }
    assert study_category("cv-bench-2d") == "Vision-centric"   # case-insensitive, CV-Bench halves
    assert benchmark_for("MyData") is None and study_category("MyData") is None


@pytest.mark.parametrize("name, metric", [
    ("GQA_TestDev_Balanced", "strict"), ("MME", "yesno"), ("DocVQA_VAL", "anls"), ("ChartQA_TEST", "relaxed"),
    ("OCRBench", "ocrbench"), ("TextVQA_VAL", "vqa"), ("MathVista_MINI", "exact"),
])
def test_open_benchmarks_get_their_metric_and_category(tmp_path, name, metric):
    path = write_tsv(tmp_path / f"{name}.tsv", ["index", "image", "question", "answer"],
                     [[0, _image(), "What is it?", "Yes"]])
    (sample,) = load_samples(path)
    assert sample.metric == metric
    assert sample.category == benchmark_for(name).category


def test_mmbench_file_name_gives_general_and_multiple_choice(tmp_path):
    path = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", ["index", "image", "question", "answer", "A", "B"],
                     [[0, _image(), "Colour?", "B", "red", "blue"]])
    (sample,) = load_samples(path)
    assert (sample.category, sample.metric, sample.answers) == ("General", "mcq", ["B"])


def test_columns_in_the_file_win_over_the_benchmark(tmp_path):
    path = write_tsv(tmp_path / "OCRBench.tsv", ["index", "image", "question", "answer", "category", "metric"],
                     [[0, _image(), "Text?", "['x^2']", "Handwritten Mathematical Expression Recognition", "exact"]])
    (sample,) = load_samples(path)
    assert sample.category == "Handwritten Mathematical Expression Recognition"
    assert sample.metric == "exact"


def test_an_explicit_category_argument_wins_and_other_files_keep_their_stem(tmp_path):
    mme = write_tsv(tmp_path / "MME.tsv", ["index", "image", "question", "answer"], [[0, _image(), "Q?", "No"]])
    mine = write_tsv(tmp_path / "mine.tsv", ["index", "image", "question", "answer"], [[0, _image(), "Q?", "No"]])
    assert load_samples(mme, category="Mine")[0].category == "Mine"
    samples = load_samples([mme, mine])
    assert [s.category for s in samples] == ["General", "mine"]
    assert [s.metric for s in samples] == ["yesno", "vqa"]


def test_mme_perception_score_matches_mme_rating():
    # two perception categories, two images each, two questions per image
    # existence: image a both right, image b one right -> acc 75, acc+ 50 -> 125
    # OCR: all right -> acc 100, acc+ 100 -> 200; a cognition category is ignored
    scores = [1, 1, 1, 0, 1, 1, 1, 1, 0, 0]
    cats = ["existence"] * 4 + ["OCR"] * 4 + ["code_reasoning"] * 2
    images = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"]
    assert mme_perception_score(scores, cats, images) == pytest.approx(325.0)
    assert study_score("MME", scores, categories=cats, images=images) == pytest.approx(325.0 / 20)
    with pytest.raises(ValueError, match="category and image"):
        study_score("MME", scores)


def test_ocrbench_and_circular_and_plain_scores():
    assert study_score("OCRBench", [1, 0, 1, 1]) == pytest.approx(75.0)    # 3 hits of 4 -> as 750/1000 / 10
    # MMBench: question 7 has rotations 1000007, 2000007 (all right); question 8 one wrong
    ids = ["7", "1000007", "2000007", "8", "1000008"]
    assert circular_accuracy([1, 1, 1, 1, 0], ids) == 0.5
    assert study_score("MMBench_DEV_EN", [1, 1, 1, 1, 0], ids=ids) == pytest.approx(50.0)
    assert study_score("DocVQA_VAL", [1.0, 0.5]) == pytest.approx(75.0)
    assert study_score("MyData", []) is None
