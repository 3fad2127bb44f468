"""``encslim finetune train``: its options ARE FinetuneConfig's fields (names, types, defaults, help)."""

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from encslim.cli import cli
from encslim.errors import ConfigError
from encslim.finetune.config import FinetuneConfig
from encslim.options import option_name

REPO = Path(__file__).resolve().parents[2]
CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


def command_options(path):
    """``{param name: click.Option}`` of ``encslim <path...>``."""
    command = cli
    for name in path:
        command = command.get_command(click.Context(command), name)
    return command, {p.name: p for p in command.params if isinstance(p, click.Option)}


def check_options_equal_fields(command, options, config_class, required_args):
    """Every field is an option of the same name and type, whose parsed default is the field's default."""
    for name, field in config_class.model_fields.items():
        option = options[name]
        assert option_name(name, field) in option.opts, name
        assert option.help == field.description, name
    ctx = command.make_context("cmd", list(required_args))
    parsed = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ctx.params.items() if k in config_class.model_fields}
    assert config_class(**parsed) == config_class()
    return ctx


def test_train_options_equal_the_config_fields():
    command, options = command_options(["finetune", "train"])
    check_options_equal_fields(command, options, FinetuneConfig, ["m", "--data", "d", "--out", "o"])
    assert set(options) - set(FinetuneConfig.model_fields) == {"data", "out", "overwrite", "encoders"}
    assert options["lora_r"].type is click.INT and options["lora_r"].default == 8
    assert options["lr"].type is click.FLOAT and options["lr"].default is None
    assert list(options["train_encoders"].type.choices) == ["none", "lora", "full"]
    assert options["merge"].is_flag and options["merge"].default is False
    assert "--no-cache-features" in options["cache_features"].secondary_opts
    assert options["lora_targets"].multiple


def test_defaults_are_the_single_declaration():
    config = FinetuneConfig()
    assert (config.merge, config.lr, config.max_steps, config.learning_rate, config.alpha) == (False, None, None,
                                                                                                 2e-4, 16)
    hits = subprocess.run(["grep", "-rnE", r"^\s*class FinetuneConfig\b", "--include=*.py", "--exclude-dir=.venv*",
                           "."], cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    assert [h.split(":")[0] for h in hits] == ["./finetune/config.py"]


def test_help_text_of_a_field_reaches_help():
    result = CliRunner().invoke(cli, ["finetune", "train", "--help"], terminal_width=300)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Probability of masking each encoder during training (removal-consistent mask)" in text
    assert "--lora-targets" in text and "[default: 8]" in text


def test_parsed_options_reach_the_config():
    command, _ = command_options(["finetune", "train"])
    ctx = command.make_context("cmd", ["m", "--data", "d", "--out", "o", "--lora-r", "4", "--lora-targets",
                                       "q_proj,k_proj", "--no-cache-features", "--merge", "--lr", "1e-3"])
    from encslim.options import config_from_options

    config, rest = config_from_options(FinetuneConfig, ctx.params)
    assert (config.lora_r, config.lora_targets, config.cache_features, config.merge, config.lr) == (
        4, ("q_proj", "k_proj"), False, True, 1e-3)
    assert rest["data"] == ("d",) and rest["out"] == "o"


@pytest.mark.parametrize("args, message", [
    (["--lora-r", "0"], "error: 'lora_r': Input should be greater than or equal to 1, got 0"),
    (["--encoder-dropout", "1.5"], "error: 'encoder_dropout': Input should be less than 1, got 1.5"),
    (["--full", "--merge"], "error: --merge folds a LoRA adapter, but --full trains no adapter"),
])
def test_a_bad_value_is_one_line_exit_2(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "encslim.cli", "finetune", "train", "demo", "--data", "x.jsonl",
                           "--out", str(tmp_path / "o"), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr


def test_api_overrides_and_errors():
    config = FinetuneConfig.build(FinetuneConfig(lora_r=4), merge=True)
    assert (config.lora_r, config.merge) == (4, True)
    assert FinetuneConfig.build({"lr": 1e-3}).lr == 1e-3
    with pytest.raises(ConfigError, match=r"unknown option 'lora_rank' \(did you mean 'lora_r'\?\)"):
        FinetuneConfig(lora_rank=8)
    with pytest.raises(ConfigError, match="unknown finetune option"):
        FinetuneConfig.from_dict({"lora_rank": 8})
