"""Fine-tuning fixtures: small colour-square data sets written as JSONL / LLaVA JSON with PNG images."""

import json
import random

import pytest

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def square_image(colour, size=64):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).rectangle([size // 6, size // 6, size - size // 6, size - size // 6], fill=COLOURS[colour])
    return image


def write_jsonl(folder, n=24, seed=0, answers=True, name="train.jsonl"):
    """Write ``n`` colour questions with PNG images to ``folder``; return the JSONL path."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            colour = rng.choice(sorted(COLOURS))
            square_image(colour).save(folder / "images" / f"{i}.png")
            row = {"id": f"s{i}", "image": f"images/{i}.png", "question": "What colour is the square?",
                   "category": "General"}
            if answers:
                row["answer"] = colour
            f.write(json.dumps(row) + "\n")
    return path


def make_samples(n=8, seed=0):
    """``Sample`` objects built directly (no reader)."""
    from encslim.data.samples import Sample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        out.append(Sample(id=f"s{i}", question="What colour is the square?", answers=[colour],
                          image=square_image(colour), category="General", source=f"mem:{i}"))
    return out


@pytest.fixture(scope="session")
def ft_data(tmp_path_factory):
    """A JSONL training file of 24 colour questions (read-only)."""
    return write_jsonl(tmp_path_factory.mktemp("ftdata"))


@pytest.fixture
def samples():
    return make_samples()


@pytest.fixture
def sample_factory():
    """``sample_factory(n=8, seed=0)`` -> list of ``Sample`` with PIL images."""
    return make_samples


@pytest.fixture
def jsonl_writer():
    """``jsonl_writer(folder, n=24, seed=0, answers=True)`` -> path of a JSONL file with images."""
    return write_jsonl
