"""The ``encslim`` command line: one Click group, a thin layer over the Python API.

Sub-commands live next to the code they drive (``<package>/commands.py``) and are imported
only when invoked, so ``encslim --help`` never imports torch. User errors
(:class:`encslim.errors.EncslimError`) become one line on stderr and exit code 2.
"""

import difflib
import functools
import logging
import os
import sys
from importlib import import_module

import click

from . import __version__
from .errors import EncslimError

# command name -> "module:attribute" of a click.Command (or of a function building one); imported on first use
COMMANDS = {
    "run": "encslim.recipes.commands:run_cmd",
    "recipes": "encslim.recipes.commands:recipes_group",
    "inspect": "encslim.models.commands:inspect_cmd",
    "create-tiny": "encslim.models.commands:create_tiny_command",
    "eval": "encslim.bench.commands:eval_cmd",
    "bench": "encslim.bench.bench_commands:bench_cmd",
    "rank": "encslim.recipes.rank_commands:rank_cmd",  # the masked ranking (prune) + --recover (pipeline)
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
    "eval": "Evaluate a model on benchmark files (VLMEvalKit TSV, JSONL) under encoder masks.",
    "bench": "Benchmark a full model against variants: latency per stage, memory, FLOPs, accuracy.",
    "rank": "Rank encoder slots per category: CUR, IG, Shapley values, cost frontier.",
    "prune": "Remove encoder slots (explicit or from a ranking) and write the pruned model.",
    "demo": "Planted-specialization demo: write its data, train its model.",
    "finetune": "Fine-tune a (pruned) model: LoRA or full, DeepSpeed ZeRO-2/3, merge.",
}


def short_help(name):
    """The one-line help of command ``name``; the family-dependent ones come from the registry's records."""
    if name == "create-tiny":
        from .models.registry import families

        return f"Write a tiny random model folder ({', '.join(families())})."
    if name == "export":
        from .models.registry import export_formats

        return f"Export a model ({', '.join(export_formats())}), verified against the source."
    return SHORT_HELP.get(name, "")


# commands that load a model folder, so take --encoder SLOT=PATH (encoders outside the checkpoint)
ENCODER_COMMANDS = frozenset({"inspect", "eval", "bench", "rank", "prune", "finetune", "export", "run"})

# command (or "group sub-command") -> its arguments that name a model folder; each accepts ``demo``
# (the shipped demo model, as in recipes), resolved by encslim.demo.assets.resolve_model_arg
MODEL_ARGUMENTS = {
    "inspect": ("model_dir",),
    "eval": ("model",),
    "rank": ("model_dir",),
    "prune": ("model",),
    "bench": ("full", "variants"),
    "finetune train": ("model_dir", "distill_from"),
    "export": ("model_dir",),
}


def did_you_mean(name, choices):
    """`` Did you mean 'x'?`` for the closest of ``choices`` to ``name`` (difflib), or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=2, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


class DemoModelPath(click.ParamType):
    """A model-folder argument that also accepts ``demo``: wraps the argument's own type (checks
    such as ``exists`` run on the resolved path)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = getattr(inner, "name", "path")

    def convert(self, value, param, ctx):
        from .demo.assets import resolve_model_arg

        try:
            value = resolve_model_arg(value)
        except EncslimError as err:
            self.fail(str(err), param, ctx)
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, *args, **kwargs):
        return self.inner.get_metavar(*args, **kwargs)


def _parse_encoders(ctx, param, values):
    """``--encoder NAME=PATH`` callback: the ``{slot: absolute folder}`` mapping the command receives."""
    from .models.external import parse_encoder_args

    try:
        return parse_encoder_args(values)
    except EncslimError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


ENCODER_HELP = ("Local folder of an encoder the checkpoint does not hold, as SLOT=PATH (repeat per slot; "
                "for families that keep their encoders outside the checkpoint). Saved in encslim's outputs.")


def accept_encoders(command):
    """Give ``command`` (and the sub-commands of a group) the ``--encoder SLOT=PATH`` option.

    The option's value reaches the command function as its ``encoders`` parameter (``{slot: folder}``,
    empty when not given); the command passes it on to the API that opens the model
    (``ModelFolder.open(path, encoders=...)``, ``load_model(..., encoders=...)``). A command function
    that takes no ``encoders`` parameter (it opens no model) accepts ``--encoder`` only empty.
    """
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_encoders(sub)
        return command
    if not any(p.name == "encoders" for p in command.params):
        command.params.append(click.Option(["--encoder", "encoders"], multiple=True, metavar="SLOT=PATH",
                                           is_eager=True, callback=_parse_encoders, help=ENCODER_HELP))
        command.callback = _taking_encoders(command.callback, command.name)
    return command


def _taking_encoders(callback, name):
    """``callback`` called with ``encoders`` only when it takes that parameter; else a non-empty value is refused."""
    import inspect

    params = inspect.signature(callback).parameters.values() if callback is not None else ()
    if callback is None or any(p.name == "encoders" or p.kind is p.VAR_KEYWORD for p in params):
        return callback

    @functools.wraps(callback)
    def call(*args, encoders=None, **kwargs):
        if encoders:
            raise click.UsageError(f"{name} opens no model folder; drop --encoder")
        return callback(*args, **kwargs)

    return call


def accept_demo(command, path):
    """Let the model arguments and options of ``command`` (named ``path`` in :data:`MODEL_ARGUMENTS`) take ``demo``."""
    if getattr(command, "_encslim_accepts_demo", False):
        return command
    names = MODEL_ARGUMENTS.get(path, ())
    for param in command.params:
        if param.name in names and not isinstance(param.type, DemoModelPath):
            param.type = DemoModelPath(param.type)
    for sub_name, sub in getattr(command, "commands", {}).items():
        accept_demo(sub, f"{path} {sub_name}")
    command._encslim_accepts_demo = True
    return command


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported when used, not at start-up."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        command = getattr(import_module(module), attr)
        if not isinstance(command, click.Command):  # a factory: commands generated from the registry
            command = command()
        command = accept_demo(command, name)
        return accept_encoders(command) if name in ENCODER_COMMANDS else command

    def resolve_command(self, ctx, args):
        name = click.utils.make_str(args[0]) if args else ""
        if name and not name.startswith("-") and name not in COMMANDS and not ctx.resilient_parsing:
            ctx.fail(f"No such command '{name}'.{did_you_mean(name, COMMANDS)} "
                     f"Commands: {', '.join(sorted(COMMANDS))}.")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter):
        """List sub-commands from SHORT_HELP, without importing their modules."""
        rows = [(name, short_help(name)) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="encslim")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose):
    """Find and remove redundant vision encoders in multi-encoder multimodal LLMs.

    Every MODEL argument (inspect, eval, rank, prune, bench, finetune, export) also accepts
    `demo`: the shipped demo model, as in recipes (`encslim inspect demo`).
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from .runtime import quiet_deepspeed

    quiet_deepspeed()  # accelerate imports DeepSpeed where installed; only a DeepSpeed run shows its lines
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
