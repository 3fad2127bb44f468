"""Benchmark: masked evaluation with the feature cache vs separate evaluations, on CPU.

Run ``python -m encslim.bench.perf.eval_speed`` (``--help`` for options). For N = 3 and 4 tiny
encoders it evaluates the full model plus the N single-encoder masks two ways, side by side
in one process:

* with the cache: one pass, each encoder once per sample, fusion + LLM per mask set;
* separately: N + 1 evaluations, each running the whole model from pixels.

It prints the wall-time ratio, the encoder forward passes per sample (N with the cache,
N(N+1) without, in ``zero`` mode where a separate evaluation still runs the masked encoder),
checks that both give identical predictions, and reports samples/s for the tiny config and a
"small" one (three ViT-S/16-sized encoders at 224 px, a ~100M-parameter Llama).
Samples are synthetic (random images, MCQ and short-answer questions): speed does not depend
on what the model answers.
"""

import json
import time

import numpy as np
import torch
from PIL import Image

from . import arguments
from ...models.registry import get_adapter
from ..evaluate import EvalSettings, evaluate
from ...data.samples import Sample
from .models import random_model, text, vision

VIT_S = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 6}
SMALL_LM = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 12,
            "num_key_value_heads": 4, "max_position_embeddings": 1024}


def synthetic_samples(count, seed=0, size=96):
    """``count`` samples with random images, alternating MCQ and short-answer questions."""
    rng = np.random.RandomState(seed)
    samples = []
    for i in range(count):
        image = Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8))
        if i % 2:
            samples.append(Sample(id=str(i), question="Which colour is the largest shape?", answers=["B"],
                                  image=image, options={"A": "red", "B": "blue", "C": "green", "D": "yellow"},
                                  category="General", metric="mcq"))
        else:
            samples.append(Sample(id=str(i), question="What number is printed in the corner?", answers=["7"],
                                  image=image, category="OCR & Chart", metric="vqa"))
    return samples


def small_model(seed=0):
    """``(model, processor)``: three ViT-S-sized encoders (CLIP/SigLIP 16 px patches, DINOv2 14), ~100M Llama."""
    encoders = {name: (vision(name, **VIT_S, patch_size=patch), 224)
                for name, patch in (("clip", 16), ("siglip", 16), ("dinov2", 14))}
    return random_model(encoders, text(**SMALL_LM), grid=8, seed=seed)


def compare(model, processor, samples, mask_mode="zero", batch_size=4, max_new_tokens=4):
    """Time the cached pass and the N + 1 separate evaluations of the full model and single masks.

    Returns:
        dict with wall times, encoder passes per sample, samples/s and whether predictions agree.
    """
    adapter = get_adapter(model.config.model_type)
    slots = adapter.slot_names(model.config)
    mask_sets = [frozenset()] + [frozenset({s}) for s in slots]
    loaded, settings = (model, processor, adapter), EvalSettings(mask_mode, batch_size=batch_size,
                                                                 max_new_tokens=max_new_tokens)
    evaluate(loaded, samples[:batch_size], mask_sets, settings)  # warm-up
    start = time.perf_counter()
    cached = evaluate(loaded, samples, mask_sets, settings)
    cached_s = time.perf_counter() - start
    separate_s, separate_passes, identical = 0.0, 0.0, True
    for masked in mask_sets:
        start = time.perf_counter()
        alone = evaluate(loaded, samples, [masked], settings, feature_cache=False)
        separate_s += time.perf_counter() - start
        separate_passes += alone.encoder_passes
        identical &= alone.predictions[masked] == cached.predictions[masked]
    n = len(samples)
    return {
        "encoders": len(slots), "samples": n, "mask_sets": len(mask_sets), "mask_mode": mask_mode,
        "cached_s": cached_s, "separate_s": separate_s, "speedup": separate_s / cached_s,
        "passes_cached": cached.encoder_passes, "passes_separate": separate_passes,
        "samples_per_s_cached": n / cached_s, "samples_per_s_separate": n / separate_s,
        "identical_predictions": identical,
    }


def full_model_speed(model, processor, samples, batch_size=4, max_new_tokens=4):
    """Samples/s of a plain full-model evaluation (after a warm-up batch)."""
    adapter = get_adapter(model.config.model_type)
    loaded, settings = (model, processor, adapter), EvalSettings(batch_size=batch_size, max_new_tokens=max_new_tokens)
    evaluate(loaded, samples[:batch_size], settings=settings)
    start = time.perf_counter()
    evaluate(loaded, samples, settings=settings)
    return len(samples) / (time.perf_counter() - start)


def _row(name, r):
    return (f"{name:<16} N={r['encoders']}  {r['mask_sets']} mask sets  {r['samples']:>3} samples  "
            f"cache {r['cached_s']:7.2f} s  separate {r['separate_s']:7.2f} s  ratio {r['speedup']:5.2f}x  "
            f"encoder passes/sample {r['passes_cached']:g} vs {r['passes_separate']:g}  "
            f"identical={r['identical_predictions']}")


def main(argv=None):
    parser = arguments.parser(__doc__, "eval_speed")
    parser.add_argument("--samples", type=int, default=32, help="samples for the tiny configs")
    parser.add_argument("--small-samples", type=int, default=4, help="samples for the small config (0: skip it)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json", type=arguments.output_file, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from ...models.families.native.tiny import build_tiny

    figures = {"threads": torch.get_num_threads(), "tiny": {}, "small": {}}
    samples = synthetic_samples(args.samples)
    opts = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    for encoders in (("clip", "siglip", "dinov2"), ("clip", "siglip", "dinov2", "convnext")):
        model, processor = build_tiny("A1", encoders)
        result = compare(model, processor, samples, **opts)
        result["samples_per_s_full"] = full_model_speed(model, processor, samples, **opts)
        figures["tiny"][f"N{len(encoders)}"] = result
        print(_row("tiny", result), f" full model {result['samples_per_s_full']:.1f} samples/s", flush=True)
    if args.small_samples:
        model, processor = small_model()
        params = sum(p.numel() for p in model.parameters())
        small = synthetic_samples(args.small_samples, size=224)
        result = compare(model, processor, small, **opts)
        result["samples_per_s_full"] = full_model_speed(model, processor, small, **opts)
        result["params"] = params
        figures["small"]["N3"] = result
        print(_row("small", result), f" full model {result['samples_per_s_full']:.2f} samples/s", flush=True)
        print(f"small config: {params / 1e6:.0f}M parameters "
              f"(LM {sum(p.numel() for p in model.language_model.parameters()) / 1e6:.0f}M)")
    print(f"CPU threads: {figures['threads']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
