"""CLI: ``encslim finetune MODEL --data F... --out DIR`` and ``encslim finetune merge ADAPTER --out DIR``.

``finetune`` is a group whose default sub-command is ``train``: ``encslim finetune MODEL ...`` is
``encslim finetune train MODEL ...``. A model folder literally named ``merge`` or ``train`` is
written ``./merge``.
"""

import json

import click

from ..options import click_options, config_from_options
from .config import FinetuneConfig

DEFAULT_SUBCOMMAND = "train"


class DefaultGroup(click.Group):
    """A click group that runs ``train`` when the first argument is not a sub-command."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            _refuse_typo(ctx, args[0], self.commands)
            args = [DEFAULT_SUBCOMMAND, *args]
        return super().parse_args(ctx, args)


def _refuse_typo(ctx, first, commands):
    """A first argument that is no folder but close to a sub-command name is a typo, not a model."""
    import difflib
    from pathlib import Path

    close = difflib.get_close_matches(first, list(commands), n=1, cutoff=0.6)
    if close and not first.startswith("-") and not Path(first).exists():
        ctx.fail(f"No such sub-command or model folder '{first}'. Did you mean '{close[0]}'?")


@click.group("finetune", cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
def finetune_group():
    """Fine-tune a (pruned) model with LoRA or fully, optionally under DeepSpeed.

    \b
    encslim finetune MODEL --data F... --out DIR [options]   (= encslim finetune train ...)
    encslim finetune merge ADAPTER_DIR --out DIR
    """


@finetune_group.command("train")
@click.argument("model_dir", type=click.Path())
@click.option("--data", "data", multiple=True, required=True, type=click.Path(),
              help="Training file(s): .jsonl, LLaVA .json, VLMEvalKit .tsv (repeatable).")
@click.option("--out", required=True, type=click.Path(), help="Output folder.")
@click_options(FinetuneConfig)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def train_cmd(model_dir, data, out, overwrite, encoders=None, **options):
    """Fine-tune MODEL_DIR on --data and write --out (a LoRA adapter, or a plain model with --merge/--full).

    Every option is a field of :class:`~encslim.finetune.config.FinetuneConfig` (one declaration).
    """
    from ..models.loading import open_folder
    from .train import finetune

    config, _ = config_from_options(FinetuneConfig, options)
    model_dir = open_folder(model_dir, encoders)  # config, family and every shard checked before any work
    from ..runtime import configure_threads

    configure_threads()  # the free cores (ENCSLIM_THREADS overrides); recorded in finetune.json
    summary = finetune(model_dir, list(data), out, config, overwrite=overwrite)
    if summary is None:
        return
    for line in summary_lines(summary):
        click.echo(line)
    if summary.get("loss_rose"):
        from .train import loss_rose_message

        click.echo(f"warning: {loss_rose_message(summary)}", err=True)
    click.echo(f"wrote {out}" + (" (merged model)" if summary["merged"] else ""))


def summary_lines(summary):
    """The finetune summary a person reads: steps, samples seen, smoothed start/end loss, parameters."""
    parts = summary["parts"]
    seen, n = summary.get("samples_seen"), summary["samples"]
    epochs = f", {seen / n:.2g} epoch(s)" if seen is not None and n else ""
    lines = [f"trained {summary['steps']} steps: {seen if seen is not None else '?'} samples seen of {n} in the "
             f"data{epochs}; {parts['trainable']:,} of {parts['total']:,} parameters trained"]
    if summary.get("loss_start") is not None:
        k = summary.get("loss_window", 1)
        lines.append(f"loss {summary['loss_start']:.4f} -> {summary['loss_end']:.4f} (mean of the first/last {k} "
                     f"logged step(s); single steps {summary['loss_first']:.4f} -> {summary['loss_last']:.4f})")
    else:
        lines.append("loss: none logged")
    distill = summary.get("distill")
    if distill and distill.get("kl_start") is not None:
        lines.append(f"distilled from {distill['teacher']} ({distill['stored']}, T={distill['temperature']:g}, "
                     f"weight {distill['weight']:g}; hidden: {distill['hidden']}): KL to the teacher "
                     f"{distill['kl_start']:.4f} -> {distill['kl_end']:.4f}")
    return lines


@finetune_group.command("merge")
@click.argument("adapter_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Output folder for the merged model.")
@click.option("--base", default=None, type=click.Path(), help="Base model folder [default: the adapter's].")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def merge_cmd(adapter_dir, out, base, overwrite, as_json):
    """Fold the LoRA adapter in ADAPTER_DIR into its base model and write a plain model folder."""
    from .merge import merge_adapter

    result = merge_adapter(adapter_dir, out, base=base, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"wrote {out}: merged logits within {result['max_abs_logit_diff']:.2g} of base + adapter")
