"""The masked ranking's CLI command: a thin layer over :func:`encslim.prune.rank.rank`.

``encslim rank`` is this command plus the recovery options (``--recover STEPS``), added at the
pipeline level by :mod:`encslim.recipes.rank_commands`: recovery composes prune, finetune and
evaluation, which prune does not import. :func:`rank_arguments` and :func:`show_ranking` are
shared with it.
"""

from collections.abc import Iterable, Mapping
from typing import Any

import click

from ..options import click_options, config_from_options
from .config import RankConfig


def _cur_summary(data: Mapping[str, Any]) -> str:
    """A short terminal table: CUR per slot and category (percent), significant cells starred."""
    groups = [*data["categories"], "overall"]
    width = max(12, *(len(g) + 2 for g in groups))
    sw = max(12, *(len(s) + 2 for s in data["slots"]))
    lines = [f"{'slot':<{sw}}" + "".join(f"{g:>{width}}" for g in groups)]
    for slot in data["slots"]:
        cells = []
        for g in groups:
            cell = data["cur"][slot][g]
            text = "n/a" if cell["value"] is None else f"{100 * cell['value']:.1f}" + ("*" if cell.get("significant") else "")
            cells.append(f"{text:>{width}}")
        lines.append(f"{slot:<{sw}}" + "".join(cells))
    igs = ["n/a" if data["ig"].get(g) is None else f"{100 * data['ig'][g]:.1f}" for g in groups]
    lines.append(f"{'IG':<{sw}}" + "".join(f"{text:>{width}}" for text in igs))
    return "\n".join(lines)


def budget_summary(data: Mapping[str, Any]) -> str:
    """One line per token budget below 1: its CUR (percent) per category on the full model, and the
    reduced-budget configurations that beat every encoder-only one of no greater cost ("" without budgets)."""
    section = data.get("token_budgets")
    if not section:
        return ""
    groups = [*data["categories"], "overall"]
    lines = []
    for label, cells in (data.get("budget_cur") or {}).items():
        parts = [f"{g} " + ("n/a" if cells[g]["value"] is None else f"{100 * cells[g]['value']:.1f}") for g in groups]
        lines.append(f"budget {label} ({section['method']}): CUR % " + ", ".join(parts))
    for entry in data.get("beats_encoder_only") or []:
        lines.append(f"  {'+'.join(entry['kept'])} at budget {entry['budget']:g} ({100 * entry['accuracy']:.1f} %) beats "
                     f"{'+'.join(entry['encoder_only']['kept']) or '(none)'} at every token "
                     f"({100 * entry['encoder_only']['accuracy']:.1f} %) for no more FLOPs")
    return "\n".join(lines)


# options of a run that evaluates the model: meaningless when ranking from prediction files
EVALUATION_ONLY = ("subsets", "shapley_permutations", "batch_size", "max_new_tokens", "cache", "feature_memory_gb",
                   "threads", "token_budgets", "token_method")
# the command's own arguments and options; every other option is a RankConfig field
ARGUMENTS = ("model_dir", "data", "predictions", "model_opt", "out", "as_json", "encoders")


def refuse_with_predictions(names: Iterable[str]) -> None:
    """Refuse, with --predictions, the options among ``names`` given on the command line.

    Raises:
        click.UsageError: naming them.
    """
    ctx = click.get_current_context()
    ignored = [f"--{name.replace('_', '-')}" for name in names
               if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if ignored:
        raise click.UsageError(f"{', '.join(ignored)} only apply when rank runs the model; with --predictions "
                               "the mask sets are the prediction files given")


@click.command("rank")
@click.argument("model_dir", type=click.Path(), required=False)
@click.option("--data", "data", multiple=True, type=click.Path(),
              help="Benchmark file (VLMEvalKit TSV, JSONL, LLaVA JSON); repeat for several. Required unless "
                   "--predictions is given (then optional: answers, categories and images by index).")
@click.option("--predictions", "predictions", multiple=True, metavar="KEY=PATH",
              help="Rank from prediction files made elsewhere instead of running a model: KEY is full, "
                   "masked:SLOT[+SLOT] or kept:SLOT[+SLOT]; PATH a VLMEvalKit prediction file (.xlsx/.tsv/.json) or "
                   "lmms-eval samples_<task>.jsonl, or a folder of them. Repeat per mask set; full and each slot "
                   "masked alone are required.")
@click.option("--model", "model_opt", type=click.Path(), default=None,
              help="With --predictions: the model whose slots the keys name and whose costs to report "
                   "(same as MODEL_DIR).")
@click.option("--out", required=True, type=click.Path(), help="Folder to write ranking.json/.md and plots to.")
@click_options(RankConfig)
@click.option("--json", "as_json", is_flag=True, help="Print ranking.json instead of the CUR table.")
def rank_cmd(**options: Any) -> None:
    """Rank MODEL_DIR's encoder slots on benchmark data: CUR, IG, Shapley values, cost frontier.

    MODEL_DIR may be `demo` (the shipped demo model). The defaults are the quick ones; the demo
    recipe runs `--subsets all --batch-size 32 --max-new-tokens 4` (same mask, bootstrap, seed).
    With --predictions no model runs: the per-sample predictions of each mask set are read and
    scored (MODEL_DIR or --model optional, for the slot list and costs).
    """
    import sys

    from .rank import rank

    if options["predictions"]:
        refuse_with_predictions(EVALUATION_ONLY)
        _rank_predictions(**options)
        return
    model_dir, data, config = rank_arguments(options)
    ranking = rank(model_dir, data, config, out=options["out"], progress=sys.stderr.isatty())
    show_ranking(ranking.data, options["out"], options["as_json"])


def rank_arguments(options: Mapping[str, Any]) -> tuple[Any, list[str], RankConfig]:
    """``(model, data, RankConfig)`` for the command's options; ``model`` is MODEL_DIR opened with its
    ``--encoder`` folders (a ModelFolder: config, family and every shard checked).

    Raises:
        click.UsageError: no MODEL_DIR or no --data; ConfigError: a bad option value (one line).
    """
    from ..models.loading import open_folder

    config, _ = config_from_options(RankConfig, options)  # bad values fail before the model is opened
    if not options["model_dir"]:
        raise click.UsageError("missing MODEL_DIR (or rank from prediction files with --predictions KEY=PATH)")
    if not options["data"]:
        raise click.UsageError("missing option '--data'")
    return open_folder(options["model_dir"], options.get("encoders")), list(options["data"]), config


def show_ranking(data: Mapping[str, Any], out: str, as_json: bool, more: str = "") -> None:
    """Print ranking.json (``as_json``) or the CUR table, the run's figures, ``more`` and the files written."""
    import json

    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    ev = data["evaluation"]
    click.echo(_cur_summary(data))
    click.echo(f"\nCUR in % ({data['mask_mode']} mask; * = CI excludes 0). "
               f"{ev['mask_sets_evaluated']} mask sets evaluated, {ev['mask_sets_cached']} from cache, "
               f"{ev['encoder_passes_per_sample']:g} encoder passes per sample (whole run), {ev['wall_s']:.1f} s.")
    budgets = budget_summary(data)
    if budgets:
        click.echo(f"{ev['configurations_evaluated']} configurations (kept set x token budget) evaluated, "
                   f"{ev['configurations_cached']} from cache.\n{budgets}")
    if more:
        click.echo("")
        click.echo(more)
    click.echo(f"wrote {out}/ranking.json, ranking.md, cur_heatmap.png, frontier.png")


def _rank_predictions(predictions: tuple[str, ...], model_dir: str | None, model_opt: str | None, data: tuple[str, ...],
                      out: str, as_json: bool, **options: Any) -> None:
    import json

    from .rank_predictions import rank_predictions

    if model_dir and model_opt and model_dir != model_opt:
        raise click.UsageError("give the model once: MODEL_DIR or --model")
    model = model_opt or model_dir
    c, _ = config_from_options(RankConfig, options)
    ranking = rank_predictions(list(predictions), c, model=model, data=list(data) or None, out=out)
    if as_json:
        click.echo(json.dumps(ranking.data, indent=2))
        return
    boot = ranking.data["bootstrap"]
    click.echo(_cur_summary(ranking.data))
    click.echo(f"\nCUR in % from {len(predictions)} prediction sets (* = CI excludes 0); bootstrap over "
               f"{boot['clusters']} {boot['unit']}s."
               + ("" if model else " No --model: costs unknown."))
    click.echo(f"wrote {out}/ranking.json, ranking.md, cur_heatmap.png, frontier.png")
