"""`encslim inspect`, `encslim create-tiny`, the CLI's error handling and start-up cost."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from encslim.cli import cli
from encslim.models.inspect import inspect_model
from encslim.models.loading import load_model


def _run(*args):
    return subprocess.run([sys.executable, "-m", "encslim.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("fusion", ["A1", "A2", "B", "C"])
def test_inspect_lists_slots_and_parameters_that_add_up(tiny_model_dir, fusion):
    folder = tiny_model_dir(fusion, ("clip", "siglip", "convnext"))
    info = inspect_model(folder)
    model, _, _ = load_model(folder)
    assert [s["name"] for s in info["slots"]] == ["clip", "siglip", "convnext"]
    assert info["fusion"]["class"] == fusion
    total = sum(p.numel() for p in model.parameters())
    parts = sum(s["params"] for s in info["slots"]) + info["fusion"]["shared_params"] + info["llm"]["params"]
    assert info["params_total"] == total == parts
    vision = sum(p.numel() for p in model.vision_towers["clip"].parameters())
    assert info["slots"][0]["params_vision"] == vision
    assert abs(sum(s["vision_flops_share"] for s in info["slots"]) - 1) < 1e-9
    assert all(s["vision_flops"] > 0 for s in info["slots"])
    assert [s["removal_exact"] for s in info["slots"]] == [True] * 3  # A2 too (the removed block stays zeros)


def test_inspect_cli_prints_table_and_json(tiny_model_dir):
    folder = str(tiny_model_dir("A1"))
    result = CliRunner().invoke(cli, ["inspect", folder])
    assert result.exit_code == 0, result.output
    assert "clip" in result.output and "class A1" in result.output
    result = CliRunner().invoke(cli, ["inspect", folder, "--json"])
    assert json.loads(result.stdout)["fusion"]["type"] == "channel_concat"


def test_inspect_on_a_folder_that_is_not_a_model(tmp_path):
    proc = _run("inspect", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "holds no config.json" in proc.stderr


def test_inspect_on_an_unknown_model_type_lists_supported_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next"}))
    proc = _run("inspect", str(tmp_path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "'llava_next' is not supported" in proc.stderr and "encslim" in proc.stderr.split("families:")[1]


def test_create_tiny_writes_a_loadable_folder_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "tiny"
    proc = _run("create-tiny", str(out), "--fusion", "B", "--encoders", "siglip,sam")
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= names
    model, _, _ = load_model(out)
    assert model.slot_names == ["siglip", "sam"]
    again = _run("create-tiny", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr


def test_create_tiny_rejects_an_unknown_encoder(tmp_path):
    proc = _run("create-tiny", str(tmp_path / "x"), "--encoders", "clip,vit_huge")
    assert proc.returncode == 2 and "vit_huge" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_help_does_not_import_torch():
    code = "import sys; from encslim.cli import main; sys.argv=['encslim','--help']\n" \
           "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "inspect" in proc.stdout
