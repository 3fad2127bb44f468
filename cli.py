"""The ``encslim`` command line: one Click group, a thin layer over the Python API.

Sub-commands live next to the code they drive (``<package>/commands.py``) and are imported
only when invoked, so ``encslim --help`` never imports torch. User errors
(:class:`encslim.errors.EncslimError`) become one line on stderr and exit code 2.
"""

import logging
import os
import sys
from importlib import import_module

import click

from . import __version__
from .errors import EncslimError

# command name -> "module:attribute" of a click.Command; imported on first use
COMMANDS = {
    "run": "encslim.recipes.commands:run_cmd",
    "recipes": "encslim.recipes.commands:recipes_group",
    "inspect": "encslim.models.commands:inspect_cmd",
    "create-tiny": "encslim.models.commands:create_tiny_cmd",
    "eval": "encslim.bench.commands:eval_cmd",
    "bench": "encslim.bench.bench_commands:bench_cmd",
    "rank": "encslim.prune.rank_commands:rank_cmd",
    "prune": "encslim.prune.commands:prune_cmd",
    "demo": "encslim.demo.commands:demo_group",
    "finetune": "encslim.finetune.commands:finetune_group",
    "export": "encslim.export.commands:export_cmd",
}

# one-line help shown by `encslim --help` without importing the command modules
SHORT_HELP = {
    "run": "Run a YAML recipe end to end (rank, prune, finetune, export, bench).",
    "recipes": "List and validate recipes.",
    "inspect": "Show a model's encoder slots, fusion, parameters and FLOPs.",
    "create-tiny": "Write a tiny random native model folder.",
    "eval": "Evaluate a model on benchmark files (VLMEvalKit TSV, JSONL) under encoder masks.",
    "bench": "Benchmark a full model against variants: latency per stage, memory, FLOPs, accuracy.",
    "rank": "Rank encoder slots per category: CUR, IG, Shapley values, cost frontier.",
    "prune": "Remove encoder slots (explicit or from a ranking) and write the pruned model.",
    "demo": "Planted-specialization demo: write its data, train its model.",
    "finetune": "Fine-tune a (pruned) model: LoRA or full, DeepSpeed ZeRO-2/3, merge.",
    "export": "Export a model: HF folder, stock LLaVA / DeepSeek-VL, remote code, ONNX (verified).",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported when used, not at start-up."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(import_module(module), attr)

    def format_commands(self, ctx, formatter):
        """List sub-commands from SHORT_HELP, without importing their modules."""
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="encslim")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose):
    """Find and remove redundant vision encoders in multi-encoder multimodal LLMs."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # transformers' per-tensor loading bars drown the output of short commands
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv=None):
    """Console-script entry point: run the group, turning user errors into one line."""
    try:
        cli.main(args=argv, prog_name="encslim", standalone_mode=False)
    except EncslimError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
