"""Acceptance: ranking the shipped demo model recovers the structure planted in its data.

By construction (demo/data.py, demo/training.py) only the high-resolution encoder
can read the 10x14 px digits of OCR & Chart, the low-resolution ones see them as blobs, and
Knowledge questions are answerable from the text alone. So: the high-resolution slot's OCR &
Chart CUR is large with an interval excluding 0, the low-resolution slots' OCR & Chart CURs are
small, and every Knowledge CUR is near 0.
"""

import json

import pytest

from encslim.demo.assets import DEMO_MODEL_DIR

OCR, KNOWLEDGE = "OCR & Chart", "Knowledge"


@pytest.fixture(scope="module")
def demo_ranking(tmp_path_factory):
    from encslim.demo.data import write_demo_data
    from encslim.prune.rank import rank

    meta_file = DEMO_MODEL_DIR / "demo_meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    train = meta.get("config", meta)
    data = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(data, seed=train.get("seed", 0), n_train=4, n_eval=train.get("n_eval", 400))
    # the two categories the assertions need: a category's CUR depends on its own samples only
    return rank(DEMO_MODEL_DIR, data / "eval.jsonl", subsets="single", categories=[OCR, KNOWLEDGE],
                bootstrap=1000, seed=0, batch_size=32)


def _image_sizes():
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    return {e["name"]: e["image_size"] for e in config["encoders"]}


def test_high_resolution_encoder_carries_ocr_and_chart(demo_ranking):
    sizes = _image_sizes()
    hires = max(sizes, key=sizes.get)
    cell = demo_ranking["cur"][hires][OCR]
    assert cell["value"] >= 0.5, demo_ranking.to_markdown()
    assert cell["ci"][0] > 0 and cell["significant"] is True
    assert demo_ranking["ig"][OCR] >= 0.4


def test_blind_encoders_have_small_cur_where_they_cannot_see(demo_ranking):
    sizes = _image_sizes()
    hires = max(sizes.values())
    for slot, size in sizes.items():
        if size * 2 <= hires:  # at a quarter of the image side or less the digits are blobs
            assert abs(demo_ranking.cur(slot, OCR)) <= 0.15, (slot, demo_ranking.to_markdown())


def test_knowledge_needs_no_encoder(demo_ranking):
    for slot in demo_ranking.slots:
        assert abs(demo_ranking.cur(slot, KNOWLEDGE)) <= 0.1, (slot, demo_ranking.to_markdown())
    assert demo_ranking["accuracy"]["full"][KNOWLEDGE] >= 0.9
