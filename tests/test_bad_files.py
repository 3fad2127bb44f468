"""Unreadable input files fail in one line naming the file (and the fix): exit 2, no traceback, the input
unchanged (sha256 before/after), no output left behind. Covers a non-JSON processor/tokenizer file under
``prune`` and ``eval``, a non-JSON ``adapter_config.json`` under ``finetune merge``, and a ``--data`` folder."""

import hashlib
import shutil
from pathlib import Path

import pytest

from .conftest import make_image, run_main, write_jsonl

BROKEN = '{"encoders": [1, 2,'  # cut short: not JSON


def tree_digest(folder):
    """sha256 over every file under ``folder`` (names and contents)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def broken_copy(src, dest, name, text=BROKEN):
    """A copy of the model folder ``src`` with ``name`` replaced by ``text``."""
    shutil.copytree(src, dest)
    (dest / name).write_text(text, encoding="utf-8")
    return dest


def error_line(code, stderr):
    """Exit code 2, no traceback, exactly one ``error:`` line (library bars may share stderr): that line."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def assert_nothing_written(out):
    """Neither ``out`` nor a temporary folder of it next to it."""
    out = Path(out)
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture
def eval_data(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    items = []
    for i in range(4):
        make_image(i).save(tmp_path / "data" / "images" / f"{i}.png")
        items.append({"id": f"q{i}", "image": f"images/{i}.png", "question": "What colour is the shape?",
                      "answer": "red", "category": "General"})
    return write_jsonl(tmp_path / "data" / "bench.jsonl", items)


# ---------------------------------------------------------------------------- (a) prune
@pytest.mark.parametrize("name", ["processor_config.json", "tokenizer.json"])
def test_prune_non_json_processor_file_names_it(tiny_model_dir, tmp_path, capsys, name):
    model = broken_copy(tiny_model_dir("A1"), tmp_path / "model", name)
    before, out = tree_digest(model), tmp_path / "pruned"
    code, _, err = run_main(capsys, "prune", model, "--drop", "dinov2", "--out", out)
    line = error_line(code, err)
    assert f"{model / name} is not valid JSON" in line and "re-save the model" in line, line
    assert tree_digest(model) == before
    assert_nothing_written(out)


def test_prune_processor_patch_that_does_not_fit_names_the_file(tiny_model_dir, tmp_path, capsys):
    model = broken_copy(tiny_model_dir("A1"), tmp_path / "model", "processor_config.json", "[1, 2]")
    before, out = tree_digest(model), tmp_path / "pruned"
    code, _, err = run_main(capsys, "prune", model, "--drop", "dinov2", "--out", out)
    line = error_line(code, err)
    assert f"{model / 'processor_config.json'}: JSON patch" in line and "no such path" in line, line
    assert tree_digest(model) == before
    assert_nothing_written(out)


# ---------------------------------------------------------------------------- (b) finetune merge
@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter of the tiny A1 model (2 steps; read-only)."""
    from encslim.finetune.train import finetune

    root = tmp_path_factory.mktemp("adapter")
    (root / "images").mkdir()
    items = []
    for i in range(4):
        make_image(i).save(root / "images" / f"{i}.png")
        items.append({"id": f"s{i}", "image": f"images/{i}.png", "question": "What colour is it?", "answer": "red"})
    data = write_jsonl(root / "train.jsonl", items)
    finetune(tiny_model_dir("A1"), data, root / "lora", max_steps=2, batch_size=2, progress=False)
    return root / "lora"


@pytest.mark.parametrize("text, phrase", [(BROKEN, "is not valid JSON"), ("[1]", "holds a JSON list")])
@pytest.mark.parametrize("with_base", [False, True])
def test_merge_non_json_adapter_config_names_it(adapter_dir, tiny_model_dir, tmp_path, capsys, text, phrase,
                                                with_base):
    adapter = broken_copy(adapter_dir, tmp_path / "adapter", "adapter_config.json", text)
    before, out = tree_digest(adapter), tmp_path / "merged"
    base = ["--base", tiny_model_dir("A1")] if with_base else []
    code, _, err = run_main(capsys, "finetune", "merge", adapter, *base, "--out", out)
    line = error_line(code, err)
    assert f"{adapter / 'adapter_config.json'} {phrase}" in line and "re-run `encslim finetune`" in line, line
    assert tree_digest(adapter) == before
    assert_nothing_written(out)


# ---------------------------------------------------------------------------- (c) --data a folder
@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_data_folder_says_it_is_a_folder(tiny_model_dir, eval_data, tmp_path, capsys, command):
    folder = eval_data.parent
    before, out = tree_digest(folder), tmp_path / "out"
    code, _, err = run_main(capsys, command, tiny_model_dir("A1"), "--data", folder, "--out", out)
    line = error_line(code, err)
    assert f"data path {folder} is a folder, not a file (it holds bench.jsonl)" in line, line
    assert ".tsv (VLMEvalKit), .jsonl or .json (LLaVA)" in line and "not found" not in line
    assert tree_digest(folder) == before
    assert_nothing_written(out)


def test_data_folder_without_data_files(tmp_path):
    from encslim.data.load import load_samples
    from encslim.errors import DataError

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"is a folder, not a file; pass a benchmark file: \.tsv"):
        load_samples(tmp_path / "empty")


# ---------------------------------------------------------------------------- (d) eval
@pytest.mark.parametrize("name, fix", [
    ("processor_config.json", "re-save the model with its processor"),
    ("tokenizer.json", "re-save the tokenizer"),
    ("tokenizer_config.json", "re-save the tokenizer"),
])
def test_eval_non_json_processor_or_tokenizer_names_it(tiny_model_dir, eval_data, tmp_path, capsys, name, fix):
    model = broken_copy(tiny_model_dir("A1"), tmp_path / "model", name, '{"a": 1, "b": x}')
    before, out = tree_digest(model), tmp_path / "eval"
    code, _, err = run_main(capsys, "eval", model, "--data", eval_data, "--out", out)
    line = error_line(code, err)
    assert f"{model / name} is not valid JSON (Expecting value: line 1 column 15" in line and fix in line, line
    assert tree_digest(model) == before
    assert_nothing_written(out)


def test_processor_config_without_encoders_names_it(tiny_model_dir, tmp_path):
    from encslim.models.families.native.processing import EncslimProcessor, ProcessorFileError

    model = broken_copy(tiny_model_dir("A1"), tmp_path / "model", "processor_config.json", "{}")
    with pytest.raises(ProcessorFileError, match="processor_config.json holds no 'encoders' list"):
        EncslimProcessor.from_pretrained(model)
    (model / "processor_config.json").unlink()
    with pytest.raises(ProcessorFileError, match="processor_config.json not found; re-save"):
        EncslimProcessor.from_pretrained(model)
