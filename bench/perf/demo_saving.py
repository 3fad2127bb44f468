"""Benchmark script: does the demo's 2-encoder variant save the vision time its FLOPs predict?

The acceptance check of the benchmark (issue 8): on CPU, the demo model's 2-encoder variant
(pruned with ``encslim.prune.surgery.prune``) against the 4-encoder full model shows a measured
vision-time saving within ``[0.7, 1.1]`` of the FLOP prediction. A timing claim belongs in a
benchmark script, not in a test, so this is one::

    python -m encslim.bench.perf.demo_saving                      # demo/model, drop siglip,convnext
    python -m encslim.bench.perf.demo_saving --drop convnext --batch-sizes 1,4 --min-seconds 5
    python -m encslim.bench.perf.demo_saving --untrained          # the demo architecture, random weights

It prints the predicted and measured savings side by side (mean and median) per batch size
and exits 1 when the ratio at the largest batch size falls outside the band. At small batches
on CPU the tiny encoders are dominated by fixed per-encoder costs (Python dispatch, small
kernels), so removing two of four saves more time than their FLOP share (ratio above 1.1); the
largest batch is where time follows FLOPs, which is what the prediction assumes. Timing does not depend on the weights, so
``--untrained`` (the demo architecture with random weights) previews the figures before the
trained demo model ships in ``demo/model``.

Default drop: ``siglip`` and ``convnext`` (32 px views of what the others also see), the pair the
demo recipe removes; the variant keeps ``vit`` (128 px, the only encoder that reads the digits)
and ``clip`` (16 px).
"""

import sys
import tempfile
from pathlib import Path

from . import arguments

BAND = (0.7, 1.1)
DEFAULT_DROP = ("siglip", "convnext")


def demo_model_dir():
    """Where the trained demo model ships: ``<encslim>/demo/model``."""
    from ...demo.assets import DEMO_MODEL_DIR

    return DEMO_MODEL_DIR


def write_untrained_demo(out):
    """Save the demo architecture with random weights (seed 0) to ``out``; return ``out``."""
    from ...demo.training import build_demo_model
    from .models import save_model

    model, processor = build_demo_model(seed=0)
    return Path(save_model(out, model.eval(), processor))


def measure(model_dir, drop, batch_sizes=(1, 4, 64), min_iters=20, min_seconds=3.0, warmup=3, max_new_tokens=4,
            work_dir=None):
    """Prune ``drop`` from ``model_dir``, benchmark full vs pruned, return the vision figures.

    Returns:
        ``{"drop", "report", "rows": [{"batch_size", "predicted", "measured", "ratio",
        "measured_p50", "ratio_p50", "within"}]}``.
    """
    from ...prune.surgery import prune
    from ..benchmark import BenchSettings, run_bench

    work = Path(work_dir or tempfile.mkdtemp(prefix="encslim-demo-saving-"))
    variant = work / f"{Path(model_dir).resolve().name}-drop-{'+'.join(drop)}"
    prune(model_dir, list(drop), variant, verify=True)
    settings = BenchSettings(batch_sizes=tuple(batch_sizes), max_new_tokens=max_new_tokens, warmup=warmup,
                             min_iters=min_iters, min_seconds=min_seconds, device="cpu", memory=False)
    report = run_bench(model_dir, [variant], work / "bench", settings)
    rows = []
    for comparison in report["comparisons"]:
        vision = comparison["vision"]
        rows.append({"batch_size": comparison["batch_size"], "predicted": vision["predicted_saving"],
                     "measured": vision["measured_saving"], "ratio": vision["efficiency"],
                     "measured_p50": vision["measured_saving_p50"], "ratio_p50": vision["efficiency_p50"],
                     "within": vision["efficiency"] is not None and BAND[0] <= vision["efficiency"] <= BAND[1]})
    return {"drop": list(drop), "report": report, "report_dir": str(work / "bench"), "rows": rows}


def print_figures(result):
    report = result["report"]
    full, variant = report["models"][0], report["models"][1]
    env = report["environment"]
    print(f"device {env['device']} ({env['device_name']}), {env['torch_threads']} torch threads, "
          f"torch {env['torch']}")
    print(f"full {full['name']}: encoders {', '.join(full['encoders_run'])}; "
          f"variant: {', '.join(variant['encoders_run'])} (dropped {', '.join(result['drop'])})")
    for slot in full["encoders_run"]:
        print(f"  encoder {slot:9s} {full['flops'][f'encoder:{slot}'] / 1e6:9.2f} MFLOP/sample")
    print(f"{'batch':>5s} {'full ms':>9s} {'variant ms':>10s} {'predicted':>9s} {'measured':>9s} {'ratio':>6s} "
          f"{'meas.p50':>9s} {'ratio.p50':>9s}  in {list(BAND)}")
    for row in result["rows"]:
        b = str(row["batch_size"])
        f_ms = full["latency"][b]["stages"]["vision"]["mean"]
        v_ms = variant["latency"][b]["stages"]["vision"]["mean"]
        print(f"{row['batch_size']:5d} {f_ms:9.3f} {v_ms:10.3f} {100 * row['predicted']:8.1f}% "
              f"{100 * row['measured']:8.1f}% {row['ratio']:6.3f} {100 * row['measured_p50']:8.1f}% "
              f"{row['ratio_p50']:9.3f}  {'yes' if row['within'] else 'NO'}")
    for comparison in result["report"]["comparisons"]:
        for note in comparison["reasons"] + comparison["notes"]:
            print(f"batch {comparison['batch_size']}: {note}")
    print(f"report: {result['report_dir']}/bench.md")


def main(argv=None):
    parser = arguments.parser(__doc__, "demo_saving")
    parser.add_argument("--model", type=arguments.folder, default=None, help="model folder (default: demo/model)")
    parser.add_argument("--untrained", action="store_true", help="benchmark the demo architecture, random weights")
    parser.add_argument("--drop", default=",".join(DEFAULT_DROP), help="slots to prune (comma-separated)")
    parser.add_argument("--batch-sizes", default="1,4,64")
    parser.add_argument("--min-iters", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work-dir", default=None, help="where the variant and the report go (default: a temp dir)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="encslim-demo-saving-"))
    if args.untrained:
        model = write_untrained_demo(work / "demo-untrained")
    else:
        model = Path(args.model) if args.model else demo_model_dir()
        if not (model / "config.json").is_file():
            print(f"no model in {model}: the trained demo model has not shipped yet; pass --model DIR or "
                  f"--untrained", file=sys.stderr)
            return 2
    result = measure(model, [s.strip() for s in args.drop.split(",") if s.strip()],
                     [int(b) for b in args.batch_sizes.split(",")], args.min_iters, args.min_seconds, args.warmup,
                     work_dir=work)
    print_figures(result)
    largest = max(result["rows"], key=lambda row: row["batch_size"])
    return 0 if largest["within"] else 1


if __name__ == "__main__":
    sys.exit(main())
