"""``encslim export``: its options ARE ExportConfig's fields (names, types, defaults, help)."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from encslim.cli import cli
from encslim.errors import ConfigError
from encslim.export.config import ExportConfig
from encslim.options import option_name


def _options():
    command = cli.get_command(click.Context(cli), "export")
    return command, {p.name: p for p in command.params if isinstance(p, click.Option)}


def test_export_options_equal_the_config_fields():
    command, options = _options()
    for name, field in ExportConfig.model_fields.items():
        assert option_name(name, field) in options[name].opts and options[name].help == field.description
    assert set(options) - set(ExportConfig.model_fields) == {"out", "overwrite", "ranking", "bench", "as_json",
                                                             "encoders"}
    ctx = command.make_context("export", ["m", "--out", "o"])
    assert ExportConfig(**{k: ctx.params[k] for k in ExportConfig.model_fields}) == ExportConfig()
    assert ctx.params["formats"] == ["hf"] and ctx.params["max_shard_size"] == "5GB"
    assert list(options["dtype"].type.choices) == ["auto", "float32", "bfloat16", "float16"]
    assert options["atol"].type is click.FLOAT and options["atol"].default is None
    ctx = command.make_context("export", ["m", "--out", "o", "--format", "hf,onnx", "--format", "llava"])
    assert ctx.params["formats"] == ["hf", "onnx", "llava"]


def test_help_text_of_a_field_reaches_help():
    result = CliRunner().invoke(cli, ["export", "--help"], terminal_width=300)
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "Largest safetensors shard (hf, remote-code, llava and the stock formats)" in text
    assert "--format FORMAT[,FORMAT]" in text


def test_a_bad_value_is_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "encslim.cli", "export", "demo", "--out", str(tmp_path / "o"),
                           "--format", "hff", "--max-shard-size", "5 gigs"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: ExportConfig: 2 problem(s): 'formats': unknown export format(s) 'hff' (did you mean 'hf'?); use "
        "hf, remote-code, onnx, llava, deepseek_vl; 'max_shard_size': size '5 gigs' not understood; write e.g. "
        "2GB, 500MB or 1GiB")


def test_export_model_api_takes_a_config_a_name_or_overrides(tiny_model_dir, tmp_path):
    from encslim.export import export_model, format_options

    config = ExportConfig(formats=["hf"], max_shard_size="100KB", atol=1e-4)
    assert format_options(config, "hf") == {"overwrite": False, "ranking": None, "bench": None,
                                            "max_shard_size": "100KB", "dtype": "auto", "atol": 1e-4}
    assert format_options(config, "onnx", overwrite=True) == {"overwrite": True, "ranking": None, "bench": None,
                                                              "atol": 1e-4}
    with pytest.raises(ConfigError, match=r"unknown option 'max_shard' \(did you mean 'max_shard_size'\?\)"):
        export_model(tiny_model_dir(fusion="A1"), tmp_path / "o", "hf", max_shard="1GB")
    src = tiny_model_dir(fusion="B", encoders=("clip", "sam"))
    manifests = export_model(src, tmp_path / "two", formats=["hf", "remote-code"], max_shard_size="100KB")
    assert sorted(manifests) == ["hf", "remote-code"]
    assert (tmp_path / "two" / "hf" / "encslim_manifest.json").is_file()
    assert manifests["remote-code"]["export"]["format"] == "remote-code"
