"""Benchmark: ``rank`` on an Eagle X5 (tiny random by default): wall time and encoder passes per sample.

Usage::

    OMP_NUM_THREADS=2 python -m encslim.bench.perf.eagle_rank [--model DIR] [--n-eval 40] [--subsets single,pairs,all]

With ``--model`` a real Eagle-X5-7B folder (on a GPU: ``--device cuda --dtype bfloat16``) is
ranked instead of the tiny one. For each subset mode the script prints the wall time, the mask
sets evaluated and the encoder passes per sample, then the time per mask set. With the run-wide
feature store each of the five towers runs once per sample whatever the mode (5 passes per
sample), so 31 mask sets (``all``) cost little more encoder time than 6 (``single``); what grows
is the LLM work, one pass per mask set. Rank's own answer: ``encoder_passes_per_sample`` in
ranking.json.
"""

import argparse
import tempfile
import time
from pathlib import Path


def main(argv=None):
    from encslim.data.load import load_samples
    from encslim.demo.data import write_demo_data
    from encslim.models.families.eagle.tiny import create_tiny_eagle
    from encslim.models.loading import load_model
    from encslim.prune.rank import rank

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="an Eagle folder (default: a tiny random X5)")
    parser.add_argument("--n-eval", type=int, default=40, help="demo eval samples")
    parser.add_argument("--subsets", default="single,pairs,all", help="comma-separated subset modes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else create_tiny_eagle(Path(tmp) / "eagle-x5")
        loaded = load_model(folder, device=args.device, dtype=args.dtype)
        adapter = loaded[2]
        print(f"model {folder if args.model else 'tiny random Eagle X5'}: towers "
              f"{', '.join(adapter.slot_names(loaded[0].config))}")
        write_demo_data(Path(tmp) / "d", seed=0, n_train=4, n_eval=args.n_eval)
        data = load_samples(Path(tmp) / "d" / "eval.jsonl")
        rank(loaded, data[:4], subsets="single", bootstrap=0, max_new_tokens=2)  # warm-up
        for mode in [m for m in args.subsets.split(",") if m]:
            start = time.perf_counter()
            ranking = rank(loaded, data, subsets=mode, bootstrap=0, max_new_tokens=2)
            seconds = time.perf_counter() - start
            ev = ranking["evaluation"]
            print(f"rank --subsets {mode:<6} {seconds:7.1f} s wall, {ev['mask_sets_evaluated']:3d} mask sets, "
                  f"{ev['encoder_passes_per_sample']:4.1f} encoder passes/sample, "
                  f"{seconds / max(ev['mask_sets_evaluated'], 1):5.2f} s per mask set, {len(data)} samples")


if __name__ == "__main__":
    main()
