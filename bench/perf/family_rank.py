"""Benchmark: ``rank`` on a tiny random model of any family: wall time and encoder passes per sample.

Usage::

    OMP_NUM_THREADS=2 python -m encslim.bench.perf.family_rank --family eagle [--tiny towers=clip-448,sam-1024]
        [--model DIR] [--n-eval 40] [--subsets single,pairs,all]

``--family`` is any registered family (``encslim create-tiny --help`` lists them and their options;
``--tiny NAME=VALUE`` passes one, e.g. Eagle's ``towers``); its tiny random model is written as
``encslim create-tiny --family NAME`` writes it. With ``--model`` a real folder (on a GPU:
``--device cuda --dtype bfloat16``) is ranked instead. For each subset mode the script prints the
wall time, the mask sets evaluated and the encoder passes per sample, then the time per mask set.
With the run-wide feature store each encoder runs once per sample whatever the mode (an Eagle X5's
five towers: 5 passes per sample), so the 32 mask sets of ``all`` cost little more encoder time than 6
(``single``); what grows is the LLM work, one pass per mask set. Rank's own answer:
``encoder_passes_per_sample`` in ranking.json.
"""

import tempfile
import time
from pathlib import Path

from . import arguments


def tiny_model(family, options, out):
    """Write ``family``'s tiny random model to ``out`` (the registry's ``tiny`` builder, as ``create-tiny``).

    Args:
        family: a registered family name.
        options: ``["name=value", ...]``: the family's ``create-tiny`` options.
        out: the folder to write.

    Returns:
        ``out``.

    Raises:
        SystemExit: an option the family does not take, or a family without a tiny builder.
    """
    from encslim.models.registry import get_family, resolve

    record = get_family(family)
    takes = {opt.name for opt in record.tiny_options}
    pairs = dict(option.split("=", 1) for option in options)
    unknown = sorted(set(pairs) - takes)
    if unknown or record.tiny is None:
        raise SystemExit(f"--family {family} has no tiny builder or takes no {', '.join(unknown)} "
                         f"(its options: {', '.join(sorted(takes)) or 'none'})")
    resolve(record.tiny)(out, seed=0, overwrite=False, **pairs)
    return out


def main(argv=None):
    from encslim.data.load import load_samples
    from encslim.demo.data import write_demo_data
    from encslim.models.loading import load_model
    from encslim.models.registry import families
    from encslim.prune.rank import rank

    parser = arguments.parser(__doc__, "family_rank")
    parser.add_argument("--family", default="native", choices=sorted(families()),
                        help="family of the tiny random model (default: native)")
    parser.add_argument("--tiny", action="append", default=[], metavar="NAME=VALUE",
                        help="a create-tiny option of the family (repeat)")
    parser.add_argument("--model", type=arguments.folder, default=None,
                        help="a model folder (default: the family's tiny random one)")
    parser.add_argument("--n-eval", type=int, default=40, help="demo eval samples")
    parser.add_argument("--subsets", default="single,pairs,all", help="comma-separated subset modes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else tiny_model(args.family, args.tiny, Path(tmp) / "tiny")
        loaded = load_model(folder, device=args.device, dtype=args.dtype)
        adapter = loaded[2]
        print(f"model {folder if args.model else f'tiny random {args.family}'}: slots "
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
