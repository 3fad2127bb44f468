"""Benchmark: ``rank --subsets all`` with the evaluator's feature cache vs without, side by side.

Usage (from anywhere; defaults to the shipped demo model and its eval split)::

    OMP_NUM_THREADS=2 python -m encslim.bench.perf.rank_speed [--model DIR] [--n-eval 400] [--subsets all]

The model is loaded once and warmed up, so the times are ranking only. Prints, for each run,
the wall time, the encoder passes per sample and the mask sets evaluated, then the ratios. Both
runs rank the same samples with the same seed; their rankings must agree
(the script checks the accuracy tables are identical and says so).
"""

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path


def run(model, data, subsets, feature_cache, bootstrap):
    from encslim.bench.evaluate import evaluate
    from encslim.prune.rank import rank

    evaluator = functools.partial(evaluate, feature_cache=feature_cache)
    evaluator.__qualname__ = f"evaluate(feature_cache={feature_cache})"
    evaluator.__module__ = evaluate.__module__
    start = time.perf_counter()
    ranking = rank(model, data, subsets=subsets, bootstrap=bootstrap, evaluator=evaluator)
    return ranking, time.perf_counter() - start


def main(argv=None):
    from encslim.demo.data import write_demo_data
    from encslim.demo.assets import demo_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped demo model)")
    parser.add_argument("--n-eval", type=int, default=400, help="demo eval samples")
    parser.add_argument("--seed", type=int, default=0, help="demo data seed")
    parser.add_argument("--subsets", default="all", choices=["single", "pairs", "all", "greedy"])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without the feature cache")
    args = parser.parse_args(argv)
    from encslim.data.load import load_samples
    from encslim.models.loading import load_model

    model = load_model(Path(args.model) if args.model else demo_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_data(Path(tmp) / "d", seed=args.seed, n_train=4, n_eval=args.n_eval)
        data = load_samples(Path(tmp) / "d" / "eval.jsonl")
        run(model, data[:8], "single", True, 0)  # warm-up: imports, allocator, FLOP counting
        results = {}
        for cached in (True,) if args.no_baseline else (True, False):
            ranking, seconds = run(model, data, args.subsets, cached, args.bootstrap)
            ev = ranking["evaluation"]
            results[cached] = (ranking, seconds)
            print(f"feature cache {'on ' if cached else 'off'}: {seconds:7.1f} s wall, "
                  f"{ev['encoder_passes_per_sample']:5.1f} encoder passes/sample, "
                  f"{ev['mask_sets_evaluated']} mask sets, {args.n_eval} samples")
    if len(results) == 2:
        (on, t_on), (off, t_off) = results[True], results[False]
        same = json.dumps(on["subsets"], sort_keys=True) == json.dumps(off["subsets"], sort_keys=True)
        print(f"wall-time ratio (off/on): {t_off / t_on:.2f}x; encoder passes ratio: "
              f"{off['evaluation']['encoder_passes_per_sample'] / on['evaluation']['encoder_passes_per_sample']:.1f}x; "
              f"accuracy tables identical: {same}")


if __name__ == "__main__":
    main()
