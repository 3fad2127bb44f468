"""The masked ranking's CLI command: a thin layer over :func:`encslim.prune.rank.rank`.

``encslim rank`` is this command plus the recovery options (``--recover STEPS``), added at the
pipeline level by :mod:`encslim.recipes.rank_commands`: recovery composes prune, finetune and
evaluation, which prune does not import. :func:`rank_arguments` and :func:`show_ranking` are
shared with it.
"""

import click


def _cur_summary(data):
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


# options of a run that evaluates the model: meaningless when ranking from prediction files
EVALUATION_ONLY = ("subsets", "shapley_permutations", "batch_size", "max_new_tokens", "cache", "feature_memory_gb",
                   "threads")


def refuse_with_predictions(names):
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
@click.option("--subsets", default="single", show_default=True,
              type=click.Choice(["single", "pairs", "all", "greedy"]),
              help="Mask sets: each slot alone, also pairs, every kept set (<= 6 slots), or backward elimination. "
                   "The demo recipe (recipes/demo.yaml) and recipes' default use all.")
@click.option("--mask", "mask_mode", default="removal", show_default=True, type=click.Choice(["removal", "zero"]),
              help="removal: what prune ships; zero: the study's zeroed encoder output.")
@click.option("--category", "categories", multiple=True, help="Rank on this category only; repeatable.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Paired bootstrap resamples for the CUR intervals (0: none).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of bootstrap and Shapley permutations.")
@click.option("--shapley-permutations", type=click.IntRange(min=0), default=None,
              help="Sampled Shapley when not every kept set is run [default: 16 with greedy, else none].")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Samples per generate() call while evaluating each mask set (the demo recipe uses 32, "
                   "recipes' default 16); larger is faster while memory allows.")
@click.option("--max-new-tokens", default=8, show_default=True, type=click.IntRange(min=1),
              help="Tokens generated per answer before scoring (the demo recipe uses 4: its answers are one "
                   "word). Too few truncates answers.")
@click.option("--cache", type=click.Path(), default=None, help="A previous ranking folder whose scores to reuse.")
@click.option("--feature-memory-gb", default=4.0, show_default=True, type=click.FloatRange(min=0),
              help="CPU memory for the run's encoder features (each encoder runs once per sample for the whole "
                   "run); past it features are encoded again. 0: no run-wide feature store.")
@click.option("--device", default="cpu", show_default=True, help="Where the model runs: cpu, cuda or cuda:N.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Weight and activation dtype; bfloat16/float16 are for GPUs (on CPU they are slow and "
                   "may change answers).")
@click.option("--threads", type=int, default=None,
              help="torch CPU threads (default: the cores no other process keeps busy, or ENCSLIM_THREADS); "
                   "recorded in ranking.json.")
@click.option("--overwrite", is_flag=True, help="Replace OUT (its cached scores and recovered candidates are reused).")
@click.option("--json", "as_json", is_flag=True, help="Print ranking.json instead of the CUR table.")
def rank_cmd(**options):
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
        return _rank_predictions(**options)
    model_dir, data, kwargs = rank_arguments(**options)
    ranking = rank(model_dir, data, progress=sys.stderr.isatty(), **kwargs)
    show_ranking(ranking.data, options["out"], options["as_json"])


def rank_arguments(model_dir, data, out, subsets, mask_mode, categories, bootstrap, seed, shapley_permutations,
                   batch_size, max_new_tokens, cache, feature_memory_gb, device, dtype, threads, overwrite,
                   encoders=None, **_):
    """``(model, data, keyword arguments of rank())`` for the command's options; ``model`` is MODEL_DIR
    opened with its ``--encoder`` folders (a ModelFolder: config, family and every shard checked).

    Raises:
        click.UsageError: no MODEL_DIR or no --data.
    """
    from ..models.loading import open_folder

    if not model_dir:
        raise click.UsageError("missing MODEL_DIR (or rank from prediction files with --predictions KEY=PATH)")
    if not data:
        raise click.UsageError("missing option '--data'")
    return open_folder(model_dir, encoders), list(data), dict(
        subsets=subsets, mask_mode=mask_mode, categories=list(categories) or None, out=out, bootstrap=bootstrap,
        seed=seed, batch_size=batch_size, max_new_tokens=max_new_tokens, shapley_permutations=shapley_permutations,
        cache=cache, overwrite=overwrite, device=device, dtype=dtype, feature_memory_gb=feature_memory_gb,
        threads=threads)


def show_ranking(data, out, as_json, more=""):
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
    if more:
        click.echo("")
        click.echo(more)
    click.echo(f"wrote {out}/ranking.json, ranking.md, cur_heatmap.png, frontier.png")


def _rank_predictions(predictions, model_dir, model_opt, data, out, mask_mode, categories, bootstrap, seed, device,
                      dtype, overwrite, as_json, **_):
    import json

    from .rank_predictions import rank_predictions

    if model_dir and model_opt and model_dir != model_opt:
        raise click.UsageError("give the model once: MODEL_DIR or --model")
    model = model_opt or model_dir
    ranking = rank_predictions(list(predictions), model=model, data=list(data) or None,
                               categories=list(categories) or None, out=out, bootstrap=bootstrap, seed=seed,
                               mask_mode=mask_mode, overwrite=overwrite, device=device, dtype=dtype)
    if as_json:
        click.echo(json.dumps(ranking.data, indent=2))
        return
    boot = ranking.data["bootstrap"]
    click.echo(_cur_summary(ranking.data))
    click.echo(f"\nCUR in % from {len(predictions)} prediction sets (* = CI excludes 0); bootstrap over "
               f"{boot['clusters']} {boot['unit']}s."
               + ("" if model else " No --model: costs unknown."))
    click.echo(f"wrote {out}/ranking.json, ranking.md, cur_heatmap.png, frontier.png")
