"""``encslim prune``: choose slots (explicitly or from a ranking) and remove them physically."""

import json
from collections.abc import Mapping
from typing import Any

import click

from ..options import click_options, config_from_options
from .config import POLICIES, PruneConfig, SelectConfig


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"


def _print_summary(result: Mapping[str, Any]) -> None:
    plan, summary = result["plan"], result["summary"]
    exact = "yes" if plan["exact"] else "no (recommend fine-tuning)"
    click.echo(f"plan: drop {', '.join(plan['drop']) or 'nothing'} (keep {', '.join(plan['kept'])}); fusion "
               f"{plan['fusion_class']}; exact: {exact}")
    if plan["target_model_type"] != plan["model_type"]:
        click.echo(f"output model type: {plan['target_model_type']}")
    click.echo(f"{'slot':<16}{'params removed':>18}{'bytes removed':>16}")
    for slot, row in summary["removed_per_slot"].items():
        click.echo(f"{slot:<16}{row['params']:>18,}{_fmt_bytes(row['bytes']):>16}")
    click.echo(f"deleted tensors: {summary['deleted_tensors']}")
    for sl in summary["sliced"]:
        click.echo(f"sliced: {sl['key']} {sl['before']} -> {sl['after']} (dim {sl['dim']})")
    for fold in summary["folded"]:
        click.echo(f"folded: {fold['key']} {fold['shape']} from {', '.join(fold['from'])}")
    if summary.get("renamed"):
        click.echo(f"renamed tensors: {summary['renamed']}")
    click.echo("config.json diff:")
    for line in summary["config_diff"] or ["(none)"]:
        click.echo(f"  {line}")
    for name, lines in summary["processor_diff"].items():
        click.echo(f"{name} diff:")
        for line in lines or ["(none)"]:
            click.echo(f"  {line}")
    budget = result.get("token_budget")
    if budget:
        tokens = budget["image_tokens"]
        label = f"{budget['method']} {budget['budget']:g}" if budget["method"] else "every token"
        click.echo(f"token budget: {label} (from {budget['from']}); image tokens per image {tokens['before']} -> "
                   f"{tokens['after']}")
    saved = summary["bytes_before"] - summary["bytes_after"]
    click.echo(f"params: {summary['params_before']:,} -> {summary['params_after']:,}; bytes: "
               f"{_fmt_bytes(summary['bytes_before'])} -> {_fmt_bytes(summary['bytes_after'])} "
               f"(saved {_fmt_bytes(saved)})")
    for note in plan["notes"]:
        click.echo(f"note: {note}")


def _print_verification(verification: Mapping[str, Any]) -> None:
    if verification.get("skipped"):
        click.echo(f"verification: skipped ({verification['reason']})")
        return
    status = {True: "passed", False: "FAILED", None: "reported"}[verification["passed"]]
    if verification.get("method") == "module-local":
        click.echo(f"verification (module-local: {verification['reason']}): {status}; "
                   f"{verification['tensors_byte_equal']} kept tensors byte-equal to the source; "
                   f"{len(verification['modules'])} changed module(s), max |diff| "
                   f"{verification['max_module_diff']:.3g} on {verification['samples']} random inputs "
                   f"(tolerance {verification['tolerance']:g})")
        for name, entry in verification["modules"].items():
            click.echo(f"  {name}: max |diff| {entry['max_abs_diff']:.3g} ({'; '.join(entry['checks'])})")
        return
    click.echo(f"verification: {status}; max |logit diff| {verification['max_abs_diff']:.3g} over "
               f"{verification['samples']} {verification['inputs']} sample(s) (tolerance {verification['tolerance']:g})")
    if verification.get("recommendation"):
        click.echo(f"recommendation: {verification['recommendation']}")


def _policy_given(options: Mapping[str, Any]) -> bool:
    """Whether any selection policy option has a value (``--drop``, ``--keep``, ... or ``--policy``)."""
    return any(options.get(name) not in (None, False, (), []) for name in ("policy", *POLICIES))


def _in_memory(command: click.Command) -> click.Command:
    """``--streaming/--in-memory``: the executor's two names (the generated option would say --no-streaming)."""
    option = next(p for p in command.params if p.name == "streaming")
    option.secondary_opts = ["--in-memory"]
    return command


@_in_memory
@click.command("prune")
@click.argument("model")
@click.option("--ranking", help="Folder (or ranking.json) written by `encslim rank`.")
@click_options(SelectConfig)
@click.option("--out", "-o", help="Output folder.")
@click_options(PruneConfig)
@click.option("--data", multiple=True, help="Benchmark file(s) for verification samples.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prune_cmd(model: str, ranking: str | None, out: str | None, data: tuple[str, ...], as_json: bool,
              encoders: Mapping[str, str] | None = None, **options: Any) -> None:
    """Remove encoder slots from MODEL and write the pruned model to --out."""
    from .select import read_ranking, select
    from .surgery import model_slots, open_folder, prune

    budget_only = options.get("token_budget") is not None and not ranking and not _policy_given(options)
    if budget_only:  # --token-budget alone: apply the budget, remove nothing
        options = {k: v for k, v in options.items() if k not in SelectConfig.model_fields}
    else:
        choice, options = config_from_options(SelectConfig, options)  # bad values fail before the model is opened
    config, _ = config_from_options(PruneConfig, options)
    folder = open_folder(model, encoders)  # config, family and weight headers read once for both calls below
    if budget_only:
        result = prune(folder, [], out, config, data=list(data) or None)
    else:
        selection = select(model_slots(folder), read_ranking(ranking) if ranking else None, choice)
        if selection.basis != "explicit":
            click.echo(f"selected: drop {', '.join(selection.drop) or 'nothing'} ({selection.reason})", err=as_json)
        result = prune(folder, selection, out, config, data=list(data) or None)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
        return
    _print_summary(result)
    if not config.dry_run:
        _print_verification(result["verification"])
        click.echo(f"wrote {result['output']} ({len(result['files'])} files, manifest encslim_manifest.json)")
