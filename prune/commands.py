"""``encslim prune``: choose slots (explicitly or from a ranking) and remove them physically."""

import json

import click

from .select import COSTS


def _fmt_bytes(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"


def _print_summary(result):
    plan, summary = result["plan"], result["summary"]
    exact = "yes" if plan["exact"] else "no (recommend fine-tuning)"
    click.echo(f"plan: drop {', '.join(plan['drop'])} (keep {', '.join(plan['kept'])}); fusion "
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
    saved = summary["bytes_before"] - summary["bytes_after"]
    click.echo(f"params: {summary['params_before']:,} -> {summary['params_after']:,}; bytes: "
               f"{_fmt_bytes(summary['bytes_before'])} -> {_fmt_bytes(summary['bytes_after'])} "
               f"(saved {_fmt_bytes(saved)})")
    for note in plan["notes"]:
        click.echo(f"note: {note}")


def _print_verification(verification):
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


@click.command("prune")
@click.argument("model")
@click.option("--drop", multiple=True, help="Slot(s) to remove (repeat or comma-separate).")
@click.option("--ranking", help="Folder (or ranking.json) written by `encslim rank`.")
@click.option("--keep", type=int, help="Keep the best K slots.")
@click.option("--min-retained", type=float, help="Smallest kept set with accuracy >= X of the full model's.")
@click.option("--drop-negative", is_flag=True, help="Drop slots whose removal improves accuracy.")
@click.option("--budget", type=float, help="Most accurate kept set whose --cost is at most B.")
@click.option("--cost", type=click.Choice(COSTS), default="vision_flops", show_default=True)
@click.option("--category", default="overall", show_default=True, help="Ranking category to decide on ('each': every category, with --min-retained).")
@click.option("--on", "on", type=click.Choice(["masked", "recovered"]), default="masked", show_default=True,
              help="With --min-retained: decide on masked accuracy, or on the accuracy after recovery "
                   "(a ranking made with `rank --recover`).")
@click.option("--out", "-o", help="Output folder.")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--verify/--no-verify", default=None, help="Verify the pruned model against the masked one (default: verify).")
@click.option("--verify-method", type=click.Choice(["auto", "full", "module-local"]), default="auto", show_default=True,
              help="full: compare logits (builds both models); module-local: kept tensors byte-equal and each sliced "
                   "or folded module on random inputs (no model built); auto: full when both fit in memory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--streaming/--in-memory", default=None, help="Executor (default: streaming when it does not fit).")
@click.option("--max-shard-size", default="2GB", show_default=True)
@click.option("--data", multiple=True, help="Benchmark file(s) for verification samples.")
@click.option("--samples", "num_samples", type=int, default=4, show_default=True, help="Verification samples K.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prune_cmd(model, drop, ranking, keep, min_retained, drop_negative, budget, cost, category, on, out, dry_run,
              verify, verify_method, overwrite, streaming, max_shard_size, data, num_samples, as_json, encoders=None):
    """Remove encoder slots from MODEL and write the pruned model to --out."""
    from .select import read_ranking, select
    from .surgery import model_slots, open_folder, prune

    names = [n.strip() for item in drop for n in item.split(",") if n.strip()] or None
    model = open_folder(model, encoders)  # config, family and weight headers read once for both calls below
    slots = model_slots(model)
    selection = select(slots, drop=names, ranking=read_ranking(ranking) if ranking else None, keep=keep,
                       min_retained=min_retained, drop_negative=drop_negative, budget=budget, category=category,
                       cost=cost, on=on)
    if selection.basis != "explicit":
        click.echo(f"selected: drop {', '.join(selection.drop)} ({selection.reason})", err=as_json)
    result = prune(model, selection.drop, out, verify=verify, streaming=streaming, max_shard_size=max_shard_size,
                   overwrite=overwrite, dry_run=dry_run, data=list(data) or None, num_samples=num_samples,
                   selection=selection.to_dict(), verify_method=verify_method)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
        return
    _print_summary(result)
    if not dry_run:
        _print_verification(result["verification"])
        click.echo(f"wrote {result['output']} ({len(result['files'])} files, manifest encslim_manifest.json)")
