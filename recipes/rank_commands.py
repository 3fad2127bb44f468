"""CLI command ``encslim rank``: the masked ranking, and with ``--recover STEPS`` its recovery.

The ranking's own options and output come from :mod:`encslim.prune.rank_commands`; this module
adds the recovery's options and runs :func:`encslim.recipes.recover.rank_and_recover`. The command
sits in the pipeline layer because recovery composes prune, finetune and evaluation.
"""

from typing import Any

import click

from ..prune import rank_commands as masked
from .recover_config import recover_config, recover_options

RECOVER_OPTIONS = recover_options()  # generated from RecoverConfig's fields
RECOVER_NAMES = tuple(option.name for option in RECOVER_OPTIONS)


def _rank_with_recovery(**options: Any) -> None:
    """The masked ranking (prune's command), then, with ``--recover``, the recovery of its candidates."""
    import sys

    if options["predictions"]:
        masked.refuse_with_predictions((*masked.EVALUATION_ONLY, *RECOVER_NAMES))
    rank_options = {k: v for k, v in options.items() if k not in RECOVER_NAMES}
    if options["recover"] is None:
        ctx = click.get_current_context()
        stray = [f"--{name.replace('_', '-')}" for name in RECOVER_NAMES
                 if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if stray:
            raise click.UsageError(f"{', '.join(stray)} only work with --recover STEPS")
        masked_only = masked.rank_cmd.callback
        assert masked_only is not None  # the command was made from its function
        masked_only(**rank_options)
        return

    from .recover import rank_and_recover

    model_dir, data, config = masked.rank_arguments(rank_options)
    recover = recover_config(options, seed=config.seed)
    assert recover is not None  # --recover STEPS was given
    as_json = options["as_json"]
    ranking = rank_and_recover(model_dir, data, recover, options["out"], config, progress=sys.stderr.isatty(),
                               echo=lambda line: click.echo(line, err=as_json))
    masked.show_ranking(ranking.data, options["out"], as_json, more=recovery_summary(ranking.data))


def recovery_summary(data: dict[str, Any]) -> str:
    """Masked vs recovered accuracy per candidate (percent), one line per variant."""
    block = data["recovery"]
    groups = [*data["categories"], "overall"]
    width = max(10, *(len(g) + 2 for g in groups))
    kw = max(22, *(len("+".join(c["kept"])) + 2 for c in block["candidates"]))
    lines = [f"accuracy (%) after {block['steps']} recovery steps (prune --on recovered uses {block['primary']})",
             f"{'kept':<{kw}}{'':<12}" + "".join(f"{g:>{width}}" for g in groups)]
    for entry in block["candidates"]:
        kept = "+".join(entry["kept"])
        if "skipped" in entry:
            lines.append(f"{kept:<{kw}}skipped: {entry['skipped']}")
            continue
        lines.append(f"{kept:<{kw}}{'masked':<12}" + "".join(f"{100 * entry['accuracy_masked'][g]:>{width}.1f}"
                                                             for g in groups))
        for variant, acc in entry["accuracy_recovered"].items():
            lines.append(f"{'':<{kw}}{variant:<12}" + "".join(f"{100 * acc[g]:>{width}.1f}" for g in groups))
    return "\n".join(lines)


def _params() -> list[click.Parameter]:
    """prune's rank options, the recovery options placed before --overwrite and --json."""
    params = list(masked.rank_cmd.params)
    at = next(i for i, p in enumerate(params) if p.name == "overwrite")
    return params[:at] + RECOVER_OPTIONS + params[at:]


rank_cmd = click.Command("rank", callback=_rank_with_recovery, params=_params(), help=masked.rank_cmd.help,
                         short_help=masked.rank_cmd.short_help)
