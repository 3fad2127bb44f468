"""Shared fixtures: tiny seeded models (built once per session) and small benchmark files with real PNG images."""

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir(fusion="A1", encoders=("clip", "siglip", "dinov2"))`` -> folder.

    Folders are cached per argument set for the whole session; treat them as read-only.
    """
    from encslim.models.families.native.tiny import create_tiny

    cache = {}

    def make(fusion="A1", encoders=("clip", "siglip", "dinov2"), text="llama", seed=0):
        key = (fusion, tuple(encoders), text, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp("tiny") / f"{fusion}-{'-'.join(encoders)}-{text}-{seed}"
            create_tiny(out, fusion=fusion, encoders=tuple(encoders), text=text, seed=seed)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_eagle_dir(tmp_path_factory):
    """Factory: ``tiny_eagle_dir(towers=(...), seed=0)`` -> a tiny Eagle folder in the original layout
    (default: the five X5 towers). Cached per argument set for the session; treat as read-only."""
    from encslim.models.families.eagle.tiny import X5, create_tiny_eagle

    cache = {}

    def make(towers=X5, seed=0):
        key = (tuple(towers), seed)
        if key not in cache:
            out = tmp_path_factory.mktemp("eagle") / f"{'-'.join(t.split('-')[0] for t in towers)}-{seed}"
            create_tiny_eagle(out, towers=tuple(towers), seed=seed)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_cambrian(tmp_path_factory):
    """``(folder, {slot: encoder folder})``: a tiny Cambrian checkpoint in the original layout (no encoders in
    it, no encoder folders named) and its four encoder folders; built once per session, read-only."""
    from encslim.models.families.cambrian.tiny import create_tiny_cambrian

    out = tmp_path_factory.mktemp("cambrian") / "cambrian"
    return out, create_tiny_cambrian(out)


def make_image(seed, size=40):
    """A seeded random RGB image."""
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8))


def png_base64(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path, header, rows):
    """Write a TSV (no quoting needed: the tests keep tabs and newlines out of cells)."""
    lines = ["\t".join(header)] + ["\t".join(str(c) for c in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


def write_mixed_jsonl(folder, size=40):
    """Write ``folder/bench.jsonl``: 12 samples in 3 categories, open questions (vqa, exact) and MCQ, with
    ``size`` x ``size`` PNG files in ``folder/images``; returns the file's path."""
    (folder / "images").mkdir()
    items = []
    for i in range(12):
        make_image(i, size).save(folder / "images" / f"{i}.png")
        item = {"id": f"q{i}", "image": f"images/{i}.png", "category": ["OCR & Chart", "General", "Knowledge"][i % 3]}
        if i % 2:
            item.update(question="Which colour is it?", options=["red", "blue", "green"], answer="B")
        else:
            item.update(question="What colour is the shape?", answer="red", metric="vqa" if i % 4 else "exact")
        items.append(item)
    return write_jsonl(folder / "bench.jsonl", items)


@pytest.fixture
def mixed_jsonl(tmp_path):
    """12 samples in 3 categories: open questions (vqa, exact) and MCQ, PNG files in images/."""
    return write_mixed_jsonl(tmp_path)


@pytest.fixture(scope="session")
def shared_mixed_jsonl(tmp_path_factory):
    """:func:`mixed_jsonl`'s 12 samples (48 px images), written once per session; read-only."""
    return write_mixed_jsonl(tmp_path_factory.mktemp("mixed"), size=48)


SPM_CORPUS = ["A chat between a curious user and an artificial intelligence assistant.",
              "The assistant gives helpful, detailed, and polite answers to the user's questions.",
              "USER: What colour is the shape? ASSISTANT: red green blue yellow 0 1 2 3 4 5 6 7 8 9"]


def sentencepiece_eagle(source, folder):
    """A copy of the Eagle folder ``source`` at ``folder`` whose tokenizer is a SentencePiece
    ``tokenizer.model`` only (no ``tokenizer.json``), as the real NVEagle folders ship their Llama tokenizer."""
    import shutil

    spm = pytest.importorskip("sentencepiece")  # in the test extra; the skip is for a bare checkout only
    shutil.copytree(source, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    corpus = folder.parent / f"{folder.name}-corpus.txt"
    corpus.write_text("\n".join(SPM_CORPUS * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=400,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, byte_fallback=True,
                                   character_coverage=1.0, minloglevel=3)
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    return folder


def run_main(capsys, *args):
    """Run ``encslim ARGS`` through the console entry point in-process: ``(exit code, stdout, stderr)``."""
    from encslim.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err
