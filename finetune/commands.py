"""CLI: ``encslim finetune MODEL --data F... --out DIR`` and ``encslim finetune merge ADAPTER --out DIR``.

``finetune`` is a group whose default sub-command is ``train``: ``encslim finetune MODEL ...`` is
``encslim finetune train MODEL ...``. A model folder literally named ``merge`` or ``train`` is
written ``./merge``.
"""

import json

import click

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
@click.option("--lora-r", default=8, show_default=True, type=int, help="LoRA rank.")
@click.option("--lora-alpha", default=None, type=float, help="LoRA alpha [default: 2 x rank].")
@click.option("--lora-targets", default="q_proj,v_proj", show_default=True,
              help="LLM linear layers that get LoRA (matched inside the LLM only), or all-linear.")
@click.option("--full", is_flag=True, help="Full fine-tuning of the LLM instead of LoRA.")
@click.option("--train-encoders", type=click.Choice(["none", "lora", "full"]), default="none", show_default=True,
              help="Encoders: frozen, LoRA on their linear layers, or fully trained.")
@click.option("--max-steps", default=None, type=int, help="Optimizer steps [default: one epoch].")
@click.option("--epochs", default=1.0, show_default=True, type=float, help="Epochs when --max-steps is not given.")
@click.option("--lr", default=None, type=float, help="Peak learning rate [default: 2e-4 LoRA, 2e-5 --full].")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Samples per device per step.")
@click.option("--grad-accum", default=1, show_default=True, type=int, help="Gradient accumulation steps.")
@click.option("--deepspeed", "deepspeed", default=None,
              help="DeepSpeed JSON file (e.g. recipes/deepspeed/zero3.json), or zero2 / zero3 for the shipped ones.")
@click.option("--bf16", is_flag=True, help="bfloat16 mixed precision (GPUs).")
@click.option("--merge", is_flag=True, help="Fold LoRA into the weights: OUT becomes a plain model folder.")
@click.option("--encoder-dropout", default=0.0, show_default=True, type=float,
              help="Probability of masking each encoder during training (removal-consistent mask).")
@click.option("--no-cache-features", is_flag=True, help="Recompute frozen encoders every step instead of caching.")
@click.option("--prompt-format", type=click.Choice(["eval", "raw"]), default="eval", show_default=True,
              help="eval: the evaluation harness's prompt; raw: the question text as it is.")
@click.option("--save-steps", default=100, show_default=True, type=int, help="Checkpoint every N steps.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same --out from its last checkpoint.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--distill-from", "distill_from", default=None, type=click.Path(), metavar="FULL_MODEL",
              help="Distil from this full model: KL to its answer distribution (computed once) beside the label loss.")
@click.option("--distill-temperature", default=2.0, show_default=True, type=float, help="Temperature T of the KL.")
@click.option("--distill-weight", default=0.5, show_default=True, type=float,
              help="a in loss = (1-a)*CE + a*T^2*KL (1: the teacher only).")
@click.option("--distill-hidden-weight", default=0.0, show_default=True, type=float,
              help="Weight of an MSE between the fused image tokens of student and teacher (where shapes match).")
@click.option("--distill-top-k", default=None, type=int,
              help="Teacher log-probs kept per answer token [default: whole vocabulary up to 4096, else 64 + tail].")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def train_cmd(model_dir, data, out, lora_r, lora_alpha, lora_targets, full, train_encoders, max_steps, epochs, lr,
              batch_size, grad_accum, deepspeed, bf16, merge, encoder_dropout, no_cache_features, prompt_format,
              save_steps, resume, seed, distill_from, distill_temperature, distill_weight, distill_hidden_weight,
              distill_top_k, overwrite, encoders=None):
    """Fine-tune MODEL_DIR on --data and write --out (a LoRA adapter, or a plain model with --merge/--full)."""
    from ..models.loading import open_folder
    from .config import FinetuneConfig
    from .train import finetune

    model_dir = open_folder(model_dir, encoders)  # config, family and every shard checked before any work

    config = FinetuneConfig(
        lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets, full=full, train_encoders=train_encoders,
        max_steps=max_steps, epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
        deepspeed=deepspeed, bf16=bf16, merge=merge, encoder_dropout=encoder_dropout,
        cache_features=not no_cache_features, prompt_format=prompt_format, save_steps=save_steps,
        resume=resume, seed=seed, distill_from=distill_from, distill_temperature=distill_temperature,
        distill_weight=distill_weight, distill_hidden_weight=distill_hidden_weight, distill_top_k=distill_top_k,
    )
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
