"""``encslim export`` end to end: every cheap format through the real CLI, errors as one line with exit 2."""

import json
import subprocess
import sys

import pytest


def _run(*args):
    """The real console entry point in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "encslim.cli", "export", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _main(capsys, *args):
    """``encslim export ...`` in this process: ``(exit code, stdout, stderr)``."""
    from encslim.cli import main

    capsys.readouterr()  # drop what fixtures printed
    try:
        main(["export", *map(str, args)])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_console_entry_point(tiny_model_dir, tmp_path):
    src = tiny_model_dir(fusion="B", encoders=("clip", "sam"))
    done = _run(src, "--format", "remote-code", "--out", tmp_path / "rc", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads(done.stdout)  # stdout holds only the manifest
    assert manifest["export"]["format"] == "remote-code" and "modeling_encslim.py" in manifest["files"]


def test_export_formats_through_cli(tiny_model_dir, custom_native, tmp_path, capsys):
    src = tiny_model_dir(fusion="B", encoders=("clip", "sam"))
    code, out, err = _main(capsys, src, "--format", "hf", "--out", tmp_path / "hf", "--max-shard-size", "100KB")
    assert code == 0, err[-2000:]
    assert out.startswith(f"exported {src.resolve()} -> {tmp_path / 'hf'} (format hf)")
    assert "logits" in out and "matched" in out
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()

    one = custom_native("cli-llava", fusion="A1", encoders=("siglip",))
    code, _, err = _main(capsys, one, "--format", "llava", "--out", tmp_path / "llava")
    assert code == 0, err[-2000:]
    assert json.loads((tmp_path / "llava" / "config.json").read_text())["model_type"] == "llava"


@pytest.mark.parametrize("fmt,message", [
    ("llava", "cannot be exported as LLaVA: LLaVA holds one vision encoder but this model has 2"),
    ("deepseek_vl", "--format deepseek_vl needs a deepseek_vl_hybrid model"),
])
def test_format_the_model_cannot_take(tiny_model_dir, tmp_path, capsys, fmt, message):
    code, _, err = _main(capsys, tiny_model_dir(fusion="B", encoders=("clip", "sam")), "--format", fmt,
                         "--out", tmp_path / "x")
    assert code == 2
    assert err.strip().startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_existing_output_needs_overwrite(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    code, _, err = _main(capsys, tiny_model_dir(fusion="A1"), "--out", tmp_path / "out")
    assert code == 2 and "already exists; pass --overwrite" in err
    code, _, _ = _main(capsys, tiny_model_dir(fusion="A1"), "--out", tmp_path / "out", "--overwrite")
    assert code == 0 and (tmp_path / "out" / "README.md").is_file()
