"""``encslim bench`` and ``encslim eval``: their options ARE BenchConfig's / EvalConfig's fields."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from encslim.bench.config import BenchConfig, EvalConfig
from encslim.cli import cli
from encslim.errors import ConfigError
from encslim.options import option_name


def _check(name, config_class, required, extra):
    command = cli.get_command(click.Context(cli), name)
    options = {p.name: p for p in command.params if isinstance(p, click.Option)}
    for field_name, field in config_class.model_fields.items():
        assert option_name(field_name, field) in options[field_name].opts, field_name
        assert options[field_name].help == field.description, field_name
    assert set(options) - set(config_class.model_fields) == extra
    ctx = command.make_context(name, required)
    assert config_class(**{k: ctx.params[k] for k in config_class.model_fields}) == config_class()
    return command, options


def test_bench_options_equal_the_config_fields(tmp_path):
    command, options = _check("bench", BenchConfig, [str(tmp_path), "--out", "o"],
                              {"data", "out", "overwrite", "encoders"})
    assert options["max_new_tokens"].type is click.INT and options["max_new_tokens"].default == 16
    assert options["min_seconds"].type is click.FLOAT and options["min_seconds"].default == 2.0
    assert "--no-memory" in options["memory"].secondary_opts
    ctx = command.make_context("bench", [str(tmp_path), "--out", "o", "--batch-sizes", "1,4", "--batch-sizes", "8",
                                         "--mask", "sam", "--mask", "sam,clip", "--max-tiles", "2"])
    config = BenchConfig(**{k: ctx.params[k] for k in BenchConfig.model_fields})
    assert (config.batch_sizes, config.masks, config.max_tiles) == ([1, 4, 8], [["sam"], ["sam", "clip"]], 2)


def test_eval_options_equal_the_config_fields():
    _, options = _check("eval", EvalConfig, ["m", "--data", "d", "--out", "o"], {"data", "out", "overwrite",
                                                                                 "encoders"})
    assert list(options["mcq"].type.choices) == ["logits", "generate"] and "--mcq" in options["mcq"].opts
    assert options["max_tiles"].type is click.INT and options["max_tiles"].default is None


def test_help_text_of_a_field_reaches_help():
    for name, phrase in (("bench", "Minimum measured time per model and batch size."),
                         ("eval", "Multiple choice by the option letters' first-token logits")):
        result = CliRunner().invoke(cli, [name, "--help"], terminal_width=300)
        assert result.exit_code == 0 and phrase in " ".join(result.output.split())


def test_a_bad_value_is_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "encslim.cli", "bench", str(tmp_path), str(tmp_path), "--out",
                           str(tmp_path / "o"), "--batch-sizes", "1,1", "--min-iters", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: BenchConfig: 2 problem(s): 'batch_sizes': batch sizes repeat: [1, 1]; "
                                   "'min_iters': Input should be greater than or equal to 1, got 0")


def test_max_tiles_goes_through_the_adapter(tiny_model_dir):
    from encslim.models.loading import load_model

    _, processor, adapter = load_model(tiny_model_dir(fusion="A1"))
    assert adapter.configure_processor(processor) is processor
    with pytest.raises(ConfigError, match="models have no processor setting max_tiles; drop it"):
        adapter.configure_processor(processor, max_tiles=2)


def test_run_bench_keeps_the_old_keywords():
    from encslim.bench.benchmark import BenchSettings, _masks_as_lists

    assert BenchSettings is BenchConfig
    assert _masks_as_lists({"masks": ["sam", "sam,clip"]}) == {"masks": [["sam"], ["sam", "clip"]]}
