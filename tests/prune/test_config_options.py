"""One declaration per option: `rank` and `prune` take their options from RankConfig, RecoverConfig,
SelectConfig and PruneConfig (names, types, defaults, help), the recipe's blocks are those configs, and
a bad value is one line, exit 2, from the CLI, the API and a recipe alike."""

import typing

import click
import pytest
from click.testing import CliRunner

from encslim.cli import cli
from encslim.errors import ConfigError
from encslim.options import option_name
from encslim.prune.config import PruneConfig, RankConfig, SelectConfig
from encslim.recipes.recover_config import PREFIX, RecoverConfig
from encslim.recipes.schema import RUNNER_SET, Recipe, RankSection, validate_recipe
from .test_prune_cli import run

RANK_ARGUMENTS = {"model_dir", "data", "predictions", "model_opt", "out", "as_json", "encoders"}
PRUNE_ARGUMENTS = {"model", "ranking", "out", "data", "as_json", "encoders"}


def _options(name):
    command = cli.get_command(click.Context(cli), name)
    return {p.name: p for p in command.params}


def _unwrap(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType) else annotation


def _check_option(option, field, flag):
    """The option has the field's flag, type (choices, bool, int, float, str, repeated) and default."""
    annotation = _unwrap(field.annotation)
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    assert option.opts[0] == flag
    if typing.get_origin(annotation) is list:
        assert option.multiple and option.default in ((), None, default)
        return
    assert option.default == default, (option.name, option.default, default)
    if typing.get_origin(annotation) is typing.Literal:
        assert list(option.type.choices) == [str(a) for a in typing.get_args(annotation)]
    elif annotation is bool:
        assert option.is_flag and option.is_bool_flag
    else:
        assert option.type.name == {int: "integer", float: "float", str: "text"}[annotation], option.name


def test_rank_options_are_the_rank_and_recover_configs_fields():
    options = _options("rank")
    recover = {name for name in options if name == "recover" or name.startswith(PREFIX)}
    assert set(options) - RANK_ARGUMENTS - recover == set(RankConfig.model_fields)
    for name, field in RankConfig.model_fields.items():
        _check_option(options[name], field, option_name(name, field))
    assert options["categories"].opts == ["--category"]  # the one renamed field
    # every recovery field but the seed (rank's --seed) is an option; steps is --recover STEPS (off by default)
    assert recover == {"recover"} | {PREFIX + n for n in RecoverConfig.model_fields if n not in ("steps", "seed")}
    assert options["recover"].opts == ["--recover"] and options["recover"].default is None
    for name, field in RecoverConfig.model_fields.items():
        if name not in ("steps", "seed"):
            _check_option(options[PREFIX + name], field, "--" + (PREFIX + name).replace("_", "-"))


def test_prune_options_are_the_select_and_prune_configs_fields():
    options = _options("prune")
    fields = {**SelectConfig.model_fields, **PruneConfig.model_fields}
    assert set(options) - PRUNE_ARGUMENTS == set(fields)
    for name, field in fields.items():
        _check_option(options[name], field, option_name(name, field))
    assert options["accuracy"].opts == ["--on"] and options["num_samples"].opts == ["--samples"]
    assert options["streaming"].secondary_opts == ["--in-memory"] and options["streaming"].default is None


@pytest.mark.parametrize("command,config,field", [("rank", RankConfig, "alpha"), ("rank", RankConfig, "feature_memory_gb"),
                                                  ("rank", RecoverConfig, "distill_temperature"),
                                                  ("prune", SelectConfig, "policy"), ("prune", PruneConfig, "verify_method")])
def test_a_fields_help_text_reaches_help(command, config, field):
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert " ".join(config.model_fields[field].description.split()) in " ".join(result.output.split())


@pytest.mark.parametrize("args,expected", [
    (["rank", "demo", "--data", "d.jsonl", "--out", "o", "--bootstrap", "-1"],
     "'bootstrap': Input should be greater than or equal to 0, got -1"),
    (["rank", "demo", "--data", "d.jsonl", "--out", "o", "--alpha", "1.5"], "'alpha': Input should be less than 1"),
    (["rank", "demo", "--data", "d.jsonl", "--out", "o", "--recover", "0", "--recover-data", "t.jsonl"],
     "'steps': Input should be greater than or equal to 1, got 0"),
    (["prune", "demo", "--keep", "0", "--out", "o"], "'keep': Input should be greater than or equal to 1, got 0"),
    (["prune", "demo", "--keep", "1", "--drop", "clip", "--out", "o"],
     "choose exactly one of --drop, --keep, --min-retained, --drop-negative, --budget (got --drop, --keep)"),
    (["prune", "demo", "--drop", "clip", "--max-shard-size", "2XB", "--out", "o"], "size '2XB' not understood"),
    (["prune", "demo", "--drop", "clip", "--no-verify", "--verify-method", "full", "--out", "o"],
     "--no-verify contradicts --verify-method full"),
])
def test_a_bad_value_is_one_line_exit_2(args, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "o").exists()


def test_the_api_takes_the_config_and_keyword_overrides(tmp_path):
    from encslim.prune.rank import rank, rank_config

    config = RankConfig(subsets="all", batch_size=4)
    assert rank_config(config, mask_mode="zero", bootstrap=0).model_dump() == {
        **RankConfig().model_dump(), "subsets": "all", "batch_size": 4, "mask": "zero", "bootstrap": 0}
    assert config.mask == "removal"  # overrides make a new config
    with pytest.raises(ConfigError, match=r"unknown option 'subset' \(did you mean 'subsets'\?\)"):
        rank(tmp_path / "no-model", [], subset="all")  # refused before anything is loaded
    with pytest.raises(ConfigError, match="expected a RankConfig"):
        rank(tmp_path / "no-model", [], SelectConfig(keep=1))


def test_select_takes_its_config_and_old_keywords():
    from encslim.prune.select import select

    assert select(["a", "b", "c"], None, SelectConfig(drop=["b,c"])).drop == ["b", "c"]
    assert select(["a", "b", "c"], drop=["a"]).kept == ["b", "c"]
    with pytest.raises(ConfigError, match="--on recovered .* works with --min-retained only"):
        select(["a", "b"], None, keep=1, on="recovered")
    # a named policy wins over the others' values (a recipe override switches policy)
    assert SelectConfig(policy="drop", drop=["a"], min_retained=0.9).policies() == ["drop"]
    assert SelectConfig(policy="drop_negative").drop_negative is True


def test_recipe_blocks_are_the_stage_configs():
    fields = Recipe.model_fields
    assert fields["select"].annotation is SelectConfig and fields["prune"].annotation is PruneConfig
    assert fields["rank"].annotation is RankSection and issubclass(RankSection, RankConfig)
    assert set(RankSection.model_fields) == set(RankConfig.model_fields) | {"recover"}
    assert _unwrap(RankSection.model_fields["recover"].annotation) is RecoverConfig
    recipe = validate_recipe({"name": "x", "model": "demo", "select": {"keep": 2}})
    assert recipe.rank.model_dump(exclude={"recover"}) == RankConfig().model_dump()  # one default per field
    assert recipe.prune == PruneConfig()


@pytest.mark.parametrize("block,key", [(section, key) for section, owned in RUNNER_SET.items() for key in owned])
def test_a_key_the_runner_sets_is_refused_in_the_recipe(block, key):
    value = {"device": "cuda", "dtype": "float16", "cache": "c", "overwrite": True, "dry_run": True,
             "data": ["t.jsonl"], "seed": 3}[key]
    data = {"name": "x", "model": "demo", "select": {"keep": 1}, "data": {"train": ["t.jsonl"]}}
    if block == "rank.recover":
        data["rank"] = {"recover": {"steps": 2, key: value}}
    else:
        data[block] = {key: value}
    with pytest.raises(ConfigError, match=f"{block}.{key} is set by "):
        validate_recipe(data)


@pytest.mark.parametrize("command", ["rank", "prune"])
def test_readme_command_rows_name_only_the_commands_options(command):
    """README's command table: every --option in a `encslim rank`/`prune` row is one the command has."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1] for line in readme.splitlines() if line.startswith(f"| `encslim {command} ")]
    flags = {flag for row in rows for flag in re.findall(r"(--[a-z][a-z0-9-]*)", row)}
    known = {opt for p in _options(command).values() for opt in (*p.opts, *p.secondary_opts)}
    assert rows and flags and flags <= known, sorted(flags - known)


def test_the_shard_size_default_is_the_executors():
    from encslim.models.executor import DEFAULT_MAX_SHARD_SIZE

    assert PruneConfig().max_shard_size == DEFAULT_MAX_SHARD_SIZE
