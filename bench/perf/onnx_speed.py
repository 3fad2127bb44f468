"""Benchmark: onnxruntime vs PyTorch eager on CPU, for the vision graph and one decode step.

Usage::

    OMP_NUM_THREADS=1 python -m encslim.bench.perf.onnx_speed [--model DIR] [--threads 1] [--batch 1 --batch 4]

Without ``--model`` the shipped demo model is used when present, else a small random native
model (2 encoders at 64 px, a 4-layer 256-wide Llama) is built. The model is exported with
``encslim.export.export_onnx`` (validated), then both runtimes get the same inputs, warmed up and
timed interleaved (PyTorch, onnxruntime, PyTorch, ...) with ``perf_counter`` under the same thread
count. Printed: mean and median milliseconds per call and the ratio PyTorch / onnxruntime (> 1
means onnxruntime is faster).

* vision: every encoder + fusion, ``pixel_values_<slot>`` -> ``image_embeds``;
* decode step: one new token for each row with a ``--past``-token key/value cache.
"""

import statistics
import tempfile
import time
from pathlib import Path

from . import arguments
from .models import text, vision, write_model

SMALL_TEXT = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 4, "max_position_embeddings": 1024}
SMALL_VIT = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
             "patch_size": 8}


def small_model(out):
    """Write a small random native model (clip + dinov2 at 64 px, channel concat on an 8x8 grid)."""
    encoders = {name: (vision(name, **SMALL_VIT), 64) for name in ("clip", "dinov2")}
    return write_model(out, encoders, text(**SMALL_TEXT), grid=8)


def interleaved(calls, warmup=3, min_iters=20, min_seconds=2.0):
    """Time ``{name: fn}`` alternately after warm-up; ``{name: [ms, ...]}``."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    start = time.perf_counter()
    while len(next(iter(times.values()))) < min_iters or time.perf_counter() - start < min_seconds:
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def vision_calls(model, vlm, batch):
    import numpy as np
    import torch

    from encslim.export.onnx_graphs import VisionGraph, example_pixels

    pixels = example_pixels(model, batch)
    graph, session = VisionGraph(model).eval(), vlm.sessions["vision"]
    feed = {f"pixel_values_{s}": p.numpy() for s, p in zip(graph.slots, pixels)}

    def torch_call():
        with torch.inference_mode():
            return graph(pixels)

    out_t, out_o = torch_call(), session.run(None, feed)[0]
    assert np.abs(out_t.numpy() - out_o).max() < 1e-3
    return {"pytorch": torch_call, "onnxruntime": lambda: session.run(None, feed)}


def decode_calls(model, vlm, batch, past):
    import torch

    from encslim.export.onnx_graphs import DecoderGraph, example_decoder_inputs, past_names

    embeds, mask, cache = example_decoder_inputs(model.language_model.config, batch, 1, past)
    graph, session = DecoderGraph(model.language_model).eval(), vlm.sessions["decoder"]
    feed = {"inputs_embeds": embeds.numpy(), "attention_mask": mask.numpy()}
    feed.update(zip(past_names(len(cache)), [t.numpy() for kv in cache for t in kv]))

    def torch_call():
        with torch.inference_mode():
            return graph(embeds, mask, cache)

    return {"pytorch": torch_call, "onnxruntime": lambda: session.run(None, feed)}


def report(label, times):
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"{label:<28} pytorch {mean['pytorch']:8.3f} ms (median {median['pytorch']:8.3f})   "
          f"onnxruntime {mean['onnxruntime']:8.3f} ms (median {median['onnxruntime']:8.3f})   "
          f"ratio pytorch/ort {mean['pytorch'] / mean['onnxruntime']:5.2f}x (median "
          f"{median['pytorch'] / median['onnxruntime']:5.2f}x)  n={len(times['pytorch'])}")


def main(argv=None):
    parser = arguments.parser(__doc__, "onnx_speed")
    parser.add_argument("--model", type=arguments.folder, default=None,
                        help="native model folder (default: demo model, else small)")
    parser.add_argument("--threads", type=int, default=1, help="threads for both runtimes")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 4)")
    parser.add_argument("--past", type=int, default=128, help="cached tokens before the decode step")
    parser.add_argument("--min-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    import torch

    from encslim.export import export_onnx
    from encslim.export.ort_generate import OrtVlm
    from encslim.models.loading import load_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else _default_model(Path(tmp) / "model")
        export_onnx(model_dir, Path(tmp) / "onnx")
        model, _, _ = load_model(model_dir)
        vlm = OrtVlm(Path(tmp) / "onnx", threads=args.threads)
        params = sum(p.numel() for p in model.parameters())
        print(f"model {model_dir} ({params / 1e6:.1f} M parameters, slots {', '.join(model.slot_names)}); "
              f"{args.threads} thread(s) each; torch {torch.__version__}, onnxruntime {_ort_version()}")
        for batch in args.batch or [1, 4]:
            report(f"vision, batch {batch}", interleaved(vision_calls(model, vlm, batch),
                                                         min_seconds=args.min_seconds))
            report(f"decode step, batch {batch}", interleaved(decode_calls(model, vlm, batch, args.past),
                                                              min_seconds=args.min_seconds))


def _default_model(scratch):
    from encslim.errors import ModelLoadError

    try:
        from encslim.demo.assets import demo_model_path

        return demo_model_path()
    except (ImportError, ModelLoadError):
        return small_model(scratch)


def _ort_version():
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
