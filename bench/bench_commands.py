"""``encslim bench``: the click command, a thin layer over :func:`encslim.bench.benchmark.run_bench`.

Every setting is a field of :class:`~encslim.bench.config.BenchConfig` (one declaration, shared with
the recipes); the options are generated from it.
"""

import click

from ..options import click_options, config_from_options
from .config import BenchConfig


@click.command("bench")
@click.argument("full", type=click.Path(exists=True, file_okay=False))
@click.argument("variants", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Benchmark file(s) for accuracy per category (TSV, JSONL, LLaVA JSON).")
@click.option("--out", required=True, type=click.Path(), help="Output folder (must not exist).")
@click_options(BenchConfig)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
def bench_cmd(full, variants, data, out, overwrite, encoders=None, **options):
    """Benchmark FULL against VARIANT folders: latency per stage, memory, FLOPs, accuracy.

    Models are measured interleaved (A B A B ...); speedups are ratios to FULL. Writes
    bench.json, bench.md, latency_breakdown.png and (with --data) accuracy_vs_latency.png.
    """
    from ..models.loading import open_folder
    from ..runtime import configure_threads
    from . import benchmark

    config, _ = config_from_options(BenchConfig, options)
    if config.engine == "vllm":
        from .vllm_engine import vllm_version

        vllm_version()  # imported before FULL is opened: not installed, or broken (the message names the fix)
    full = open_folder(full, encoders)  # --encoder names FULL's encoders; run_bench opens the variants
    configure_threads(config.threads)
    report = benchmark.run_bench(full, variants, out, config, data=data, overwrite=overwrite)
    _echo_summary(report, out)


def _echo_summary(report, out):
    from .report import render_console

    click.echo(render_console(report, out))
