"""``encslim bench``: the click command, a thin layer over :func:`encslim.bench.benchmark.run_bench`."""

import click

from ..errors import ConfigError


def parse_batch_sizes(text):
    """``"1,4"`` -> ``(1, 4)``; a ``ConfigError`` naming the bad item otherwise."""
    sizes = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ConfigError(f"--batch-sizes: '{item}' is not a positive integer; pass e.g. --batch-sizes 1,4")
        sizes.append(int(item))
    return tuple(sizes)


@click.command("bench")
@click.argument("full", type=click.Path(exists=True, file_okay=False))
@click.argument("variants", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Benchmark file(s) for accuracy per category (TSV, JSONL, LLaVA JSON).")
@click.option("--out", required=True, type=click.Path(), help="Output folder (must not exist).")
@click.option("--batch-sizes", default="1,4", show_default=True, help="Comma-separated batch sizes.")
@click.option("--max-new-tokens", default=16, show_default=True, type=int,
              help="Tokens generated per row (fixed length: min = max).")
@click.option("--min-iters", default=10, show_default=True, type=int, help="Minimum measured rounds.")
@click.option("--min-seconds", default=2.0, show_default=True, type=float,
              help="Minimum measured time per model and batch size.")
@click.option("--warmup", default=3, show_default=True, type=int, help="Warm-up rounds, discarded.")
@click.option("--mask", "masks", multiple=True, metavar="SLOT[,SLOT]",
              help="Also benchmark the full model with these slots masked at run time (repeatable).")
@click.option("--mask-skip", is_flag=True,
              help="For each --mask, also benchmark a copy that skips the masked encoders.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: the free cores, or ENCSLIM_THREADS; printed in bench.json).")
@click.option("--no-memory", is_flag=True, help="Skip the per-model peak memory subprocesses.")
@click.option("--eval-batch-size", default=8, show_default=True, type=int)
@click.option("--limit", type=int, default=None, help="Evaluate at most this many samples.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
def bench_cmd(full, variants, data, out, batch_sizes, max_new_tokens, min_iters, min_seconds, warmup, masks,
              mask_skip, device, dtype, threads, no_memory, eval_batch_size, limit, overwrite, encoders=None):
    """Benchmark FULL against VARIANT folders: latency per stage, memory, FLOPs, accuracy.

    Models are measured interleaved (A B A B ...); speedups are ratios to FULL. Writes
    bench.json, bench.md, latency_breakdown.png and (with --data) accuracy_vs_latency.png.
    """
    from ..models.loading import open_folder
    from ..runtime import configure_threads
    from .benchmark import BenchSettings, run_bench

    full = open_folder(full, encoders)  # --encoder names FULL's encoders; run_bench opens the variants
    configure_threads(threads)
    settings = BenchSettings(batch_sizes=parse_batch_sizes(batch_sizes), max_new_tokens=max_new_tokens,
                             warmup=warmup, min_iters=min_iters, min_seconds=min_seconds, device=device,
                             dtype=dtype, memory=not no_memory, eval_batch_size=eval_batch_size, limit=limit)
    report = run_bench(full, variants, out, settings, data=data, masks=masks, mask_skip=mask_skip,
                       overwrite=overwrite)
    _echo_summary(report, out)


def _echo_summary(report, out):
    from .report import render_console

    click.echo(render_console(report, out))
