"""README's command tables for finetune, export, bench and eval match the commands and their typed configs.

Two kinds of rows: the one-line rows of the "Commands" table (``| `encslim export MODEL ...` | ...``), whose
every ``--option`` must be one the command has and whose ``[--option NUMBER]`` shows the default; and the
settings tables (``| `--lora-r` | `8` | help |``), one per command, that list every field of the command's
config with its default and help text, and nothing else. (The rank and prune rows are checked in
tests/prune/test_config_options.py.)
"""

import re
from pathlib import Path

import click
import pytest

from encslim.bench.config import BenchConfig, EvalConfig
from encslim.cli import cli
from encslim.export.config import ExportConfig
from encslim.finetune.config import FinetuneConfig
from encslim.options import option_name

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIGS = {"finetune": FinetuneConfig, "export": ExportConfig, "bench": BenchConfig, "eval": EvalConfig}


def shown(value):
    """A default as the settings tables write it: ``—`` for none, ``on``/``off``, lists comma-separated
    (mask sets ``;``-separated), floats in ``%g``."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        if isinstance(value[0], (list, tuple)):
            return ";".join(",".join(map(str, v)) for v in value)
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def command_options(name):
    """Every ``--option`` spelling of command ``name`` (a group's: those of all its subcommands)."""
    command = cli.get_command(click.Context(cli), name)
    commands = list(command.commands.values()) if isinstance(command, click.Group) else [command]
    return {opt for c in commands for p in c.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}


def settings_table(text, name):
    """``{option: (default cell, help cell)}`` of the settings table that follows "`encslim NAME` (`Config`):"."""
    lines = text.splitlines()
    heading = f"`encslim {name}` (`{CONFIGS[name].__name__}`):"
    assert heading in lines, f"README has no settings table headed {heading}"
    rows, start = {}, lines.index(heading) + 1
    for line in lines[start:]:
        if rows and not line.startswith("|"):
            break
        match = re.fullmatch(r"\| `(--[a-z0-9-]+)` \| (.*?) \| (.*) \|", line)
        if match:
            option, default, help_text = match.groups()
            assert option not in rows, f"{option} appears twice in the {name} table"
            rows[option] = (default.strip("`"), help_text.replace("\\|", "|"))
    return rows


def expected_rows(name):
    """``{option: (default, help)}`` as the config of command ``name`` declares them."""
    return {option_name(n, f): (shown(f.get_default(call_default_factory=True)), f.description)
            for n, f in CONFIGS[name].model_fields.items()}


def test_shown_writes_defaults_as_the_tables_do():
    assert [shown(v) for v in (None, [], True, False, [1, 4], ("q_proj", "v_proj"), [["sam", "clip"], ["sam"]],
                               2.0, 0.05, 8, "5GB")] == ["—", "—", "on", "off", "1,4", "q_proj,v_proj",
                                                        "sam,clip;sam", "2", "0.05", "8", "5GB"]


def test_settings_table_reads_rows_until_the_table_ends():
    text = ("`encslim eval` (`EvalConfig`):\n\n| option | default | what it sets |\n|---|---|---|\n"
            "| `--mask-mode` | `removal` | a \\| b |\n| `--mask` | — | Slots. |\n\n| `--later` | `1` | other |\n")
    assert settings_table(text, "eval") == {"--mask-mode": ("removal", "a | b"), "--mask": ("—", "Slots.")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_settings_table_lists_every_field_with_its_default_and_help(name):
    table = settings_table(README.read_text(encoding="utf-8"), name)
    expected = expected_rows(name)
    missing = sorted(set(expected) - set(table))
    extra = sorted(set(table) - set(expected))
    assert not missing, f"README's {name} table lacks {missing}"
    assert not extra, f"README's {name} table names settings the config does not have: {extra}"
    wrong = {o: (table[o], expected[o]) for o in set(table) & set(expected) if table[o] != expected[o]}
    assert not wrong, f"README's {name} rows differ from the config (README, config): {wrong}"
    unknown = sorted(set(table) - command_options(name))
    assert not unknown, f"README's {name} table names options the command does not have: {unknown}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_command_rows_name_only_the_commands_options_with_their_defaults(name):
    readme = README.read_text(encoding="utf-8")
    rows = [line.split("|")[1] for line in readme.splitlines() if line.startswith(f"| `encslim {name} ")]
    flags = {flag for row in rows for flag in re.findall(r"(--[a-z][a-z0-9-]*)", row)}
    assert rows and flags, f"README's command table has no `encslim {name}` row with options"
    unknown = sorted(flags - command_options(name))
    assert not unknown, f"README's `encslim {name}` row names options the command does not have: {unknown}"
    defaults = {option: default for option, (default, _) in expected_rows(name).items()}
    numbers = {m.group(1): m.group(2) for row in rows for m in re.finditer(r"\[(--[a-z0-9-]+) ([0-9][0-9.e-]*)\]", row)}
    wrong = {o: (v, defaults[o]) for o, v in numbers.items() if o in defaults and v != defaults[o]}
    assert not wrong, f"`[--option NUMBER]` in the {name} row shows another default (README, config): {wrong}"
