"""Benchmark: ``rank`` with the run-wide feature store, the per-call feature cache, and no cache.

Usage (from anywhere; defaults to the shipped demo model and its eval split)::

    OMP_NUM_THREADS=2 python -m encslim.bench.perf.rank_speed [--model DIR] [--n-eval 400] [--subsets greedy]

Three ways to get the encoder features, slowest last:

* ``run``: one :class:`~encslim.bench.features.FeatureStore` for the whole rank run (the
  default of ``encslim rank``): every encoder runs once per sample, whatever the subset mode;
* ``call``: the evaluator's per-call cache only (``feature_memory_gb=0``): once per sample per
  evaluator call, so ``greedy`` and sampled Shapley, which call it repeatedly, re-encode;
* ``off``: no feature cache (``feature_cache=False``): every mask set runs the model from pixels.

The model is loaded once and warmed up, so the times are ranking only. Prints, for each run,
the wall time, the encoder passes per sample and the mask sets evaluated, then the ratios. All
runs rank the same samples with the same seed; their rankings must agree (the script checks
the accuracy tables are identical and says so).
"""

import functools
import json
import tempfile
import time
from pathlib import Path

from . import arguments

MODES = ("run", "call", "off")


def run(model, data, subsets, mode, bootstrap):
    from encslim.bench.evaluate import evaluate
    from encslim.prune.rank import rank

    feature_cache = mode != "off"
    evaluator = functools.partial(evaluate, feature_cache=feature_cache)
    evaluator.__qualname__ = f"evaluate(feature_cache={feature_cache})"
    evaluator.__module__ = evaluate.__module__
    start = time.perf_counter()
    ranking = rank(model, data, subsets=subsets, bootstrap=bootstrap, evaluator=evaluator,
                   feature_memory_gb=0 if mode == "call" else 4.0)
    return ranking, time.perf_counter() - start


def main(argv=None):
    from encslim.demo.data import write_demo_data
    from encslim.demo.assets import demo_model_path

    parser = arguments.parser(__doc__, "rank_speed")
    parser.add_argument("--model", type=arguments.folder, default=None,
                        help="model folder (default: the shipped demo model)")
    parser.add_argument("--n-eval", type=int, default=400, help="demo eval samples")
    parser.add_argument("--seed", type=int, default=0, help="demo data seed")
    parser.add_argument("--subsets", default="all", choices=["single", "pairs", "all", "greedy"])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--no-baseline", action="store_true", help="only the run-wide store (--modes run)")
    args = parser.parse_args(argv)
    modes = ["run"] if args.no_baseline else [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; use {', '.join(MODES)}")
    from encslim.data.load import load_samples
    from encslim.models.loading import load_model

    model = load_model(Path(args.model) if args.model else demo_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_data(Path(tmp) / "d", seed=args.seed, n_train=4, n_eval=args.n_eval)
        data = load_samples(Path(tmp) / "d" / "eval.jsonl")
        run(model, data[:8], "single", "run", 0)  # warm-up: imports, allocator, FLOP counting
        results = {}
        for mode in modes:
            ranking, seconds = run(model, data, args.subsets, mode, args.bootstrap)
            ev = ranking["evaluation"]
            results[mode] = (ranking, seconds)
            print(f"features {mode:>4}: {seconds:7.1f} s wall, "
                  f"{ev['encoder_passes_per_sample']:5.1f} encoder passes/sample, "
                  f"{ev['mask_sets_evaluated']} mask sets, {args.n_eval} samples")
    if len(results) > 1:
        (first, (base, t_base)), rest = next(iter(results.items())), list(results.items())[1:]
        for mode, (other, t_other) in rest:
            same = json.dumps(base["subsets"], sort_keys=True) == json.dumps(other["subsets"], sort_keys=True)
            ratio = (other["evaluation"]["encoder_passes_per_sample"]
                     / max(base["evaluation"]["encoder_passes_per_sample"], 1e-9))
            print(f"{mode} vs {first}: wall-time ratio {t_other / t_base:.2f}x; encoder passes ratio {ratio:.1f}x; "
                  f"accuracy tables identical: {same}")


if __name__ == "__main__":
    main()
