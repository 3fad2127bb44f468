"""Predicted against measured savings of a variant, and why they differ (pure functions).

The prediction is the FLOP saving: ``1 - flops(variant) / flops(full)``, for the vision stage
(the encoders that run) and end to end (vision + fusion + prefill + decode). The measurement is
the same ratio of mean times. A variant is *flagged* when its measured saving is below
``FLAG_EFFICIENCY`` (70 %) of the prediction; the reasons are read off the measurements.
"""

from . import stats

FLAG_EFFICIENCY = 0.7
ABOVE_EFFICIENCY = 1.1  # measured saving this far above the prediction gets a note
OVERHEAD_MS = 1.0      # a stage shorter than this is dominated by per-call overhead
NOISY_CV = 0.25        # coefficient of variation above which timings are called noisy


def _stat(entry, batch_size, stage, key):
    return entry["latency"][str(batch_size)]["stages"][stage][key]


def _mean(entry, batch_size, stage):
    return _stat(entry, batch_size, stage, "mean")


def _cv(entry, batch_size, stage):
    return stats.coefficient_of_variation(entry["latency"][str(batch_size)]["stages"][stage])


def _saving_block(full, variant, batch_size, stage, flops_key):
    """Predicted (FLOPs) and measured (mean time; median too, robust to spikes) saving of one stage."""
    predicted = stats.saving(full["flops"][flops_key], variant["flops"][flops_key])
    measured = stats.saving(_mean(full, batch_size, stage), _mean(variant, batch_size, stage))
    median = stats.saving(_stat(full, batch_size, stage, "p50"), _stat(variant, batch_size, stage, "p50"))
    efficiency = stats.saving_efficiency(predicted, measured)
    return {"predicted_saving": predicted, "measured_saving": measured, "efficiency": efficiency,
            "measured_saving_p50": median, "efficiency_p50": stats.saving_efficiency(predicted, median),
            "flagged": efficiency is not None and efficiency < FLAG_EFFICIENCY}


def _ratio(variant, full):
    return variant / full if full else None


def prefill_block(full, variant, batch_size):
    """The prefill time saved by ``variant`` (fewer image tokens: a token budget, or a sequence-concat encoder gone),
    measured next to its prediction.

    Returns:
        ``{"image_tokens": [full, variant], "prompt_tokens": [full, variant], "tokens_ratio",
        "predicted_ratio"`` (analytic prefill FLOPs, :func:`encslim.bench.costs.predicted_prefill_flops`),
        ``"counted_ratio"`` (prefill FLOPs counted by the FLOP counter), ``"measured_ratio"`` (mean prefill
        time) and ``"measured_ratio_p50"``, ``"predicted_saving"``, ``"measured_saving"``, ``"efficiency"``
        (measured / predicted saving; ``None`` when nothing is predicted)}``; ratios are variant / full.
    """
    flops = full.get("prefill_flops_predicted"), variant.get("prefill_flops_predicted")
    predicted = None if None in flops else _ratio(flops[1], flops[0])
    measured = _ratio(_mean(variant, batch_size, "prefill"), _mean(full, batch_size, "prefill"))
    predicted_saving = None if predicted is None else 1 - predicted
    measured_saving = None if measured is None else 1 - measured
    return {"image_tokens": [full["image_tokens"], variant["image_tokens"]],
            "prompt_tokens": [full["prompt_tokens"], variant["prompt_tokens"]],
            "tokens_ratio": _ratio(variant["image_tokens"], full["image_tokens"]),
            "predicted_ratio": predicted, "counted_ratio": _ratio(variant["flops"]["prefill"], full["flops"]["prefill"]),
            "measured_ratio": measured,
            "measured_ratio_p50": _ratio(_stat(variant, batch_size, "prefill", "p50"),
                                         _stat(full, batch_size, "prefill", "p50")),
            "predicted_saving": predicted_saving, "measured_saving": measured_saving,
            "efficiency": stats.saving_efficiency(predicted_saving, measured_saving)}


def _gflops_per_s(flops, batch_size, ms):
    return flops * batch_size / (ms / 1000.0) / 1e9 if ms > 0 else 0.0


def vision_reasons(full, variant, batch_size, device_type):
    """Likely reasons why the measured vision saving falls short of the FLOP prediction."""
    reasons = []
    removed = [s for s in full["encoders_run"] if s not in variant["encoders_run"]]
    kept = [s for s in full["encoders_run"] if s in variant["encoders_run"]]
    stage = {s: f"encoder:{s}" for s in full["encoders_run"]}
    if removed and kept:
        def throughput(slots):
            flops = sum(full["flops"][stage[s]] for s in slots)
            return _gflops_per_s(flops, batch_size, sum(_mean(full, batch_size, stage[s]) for s in slots))
        kept_rate, removed_rate = throughput(kept), throughput(removed)
        if kept_rate < FLAG_EFFICIENCY * removed_rate:
            reasons.append(f"device not saturated by the kept encoders: they run at {kept_rate:.3g} GFLOP/s "
                           f"against {removed_rate:.3g} for the removed ones, so their time is not "
                           f"proportional to their FLOPs")
        kept_ms = sum(_mean(full, batch_size, stage[s]) for s in kept)
        variant_ms = _mean(variant, batch_size, "vision")
        if variant_ms > 1.15 * kept_ms:
            reasons.append(f"the kept encoders take {variant_ms:.3f} ms in the variant against {kept_ms:.3f} ms "
                           f"in the full model (different weights or inputs, or interference)")
    short = [s for s in full["encoders_run"] if _mean(full, batch_size, stage[s]) < OVERHEAD_MS]
    if short:
        reasons.append(f"overhead-dominated tiny model: encoder(s) {', '.join(short)} take under "
                       f"{OVERHEAD_MS:g} ms, where Python dispatch and kernel launches, not FLOPs, set the time")
    if device_type == "cuda" and batch_size == 1:
        reasons.append("batch size 1 on a GPU: small kernels leave the device unsaturated; compare at a larger "
                       "--batch-sizes")
    reasons += _noise(full, variant, batch_size, "vision")
    return reasons


def end_to_end_reasons(full, variant, batch_size, device_type):
    """Likely reasons why the measured end-to-end saving falls short of the FLOP prediction."""
    reasons = []
    if variant["image_tokens"] == full["image_tokens"]:
        reasons.append(f"image token count unchanged ({full['image_tokens']}): the LLM's prefill and decode "
                       f"cost the same, only the encoders got cheaper")
    e2e = _mean(full, batch_size, "end_to_end")
    total_flops = full["flops"]["total"] or 1
    vision_time = _mean(full, batch_size, "vision") / e2e if e2e else 0.0
    vision_flops = full["flops"]["vision"] / total_flops
    if vision_time < FLAG_EFFICIENCY * vision_flops:
        reasons.append(f"vision is {100 * vision_flops:.0f} % of the FLOPs but only {100 * vision_time:.0f} % "
                       f"of the end-to-end time, so removing encoders saves less time than FLOPs")
    decode_time = _mean(full, batch_size, "decode") / e2e if e2e else 0.0
    decode_flops = full["flops"]["decode"] / total_flops
    if decode_time > 2 * decode_flops and decode_time > 0.2:
        reasons.append(f"decode is {100 * decode_time:.0f} % of the end-to-end time but {100 * decode_flops:.0f} % "
                       f"of the FLOPs: token-by-token steps are memory- or overhead-bound")
    overhead = e2e - _mean(full, batch_size, "stage_sum")
    if e2e and overhead > 0.2 * e2e:
        reasons.append(f"generate() adds {overhead:.2f} ms per call ({100 * overhead / e2e:.0f} %) beyond the "
                       f"model stages (logits processing, cache bookkeeping)")
    if device_type == "cuda" and batch_size == 1:
        reasons.append("batch size 1 on a GPU: the device is not saturated")
    reasons += _noise(full, variant, batch_size, "end_to_end")
    return reasons


def _above_prediction(full, variant, batch_size, vision):
    """A note when removal saves more vision time than its FLOPs predict, with the measured shares."""
    efficiency = vision["efficiency"]
    removed = [s for s in full.get("encoders_run", []) if s not in variant.get("encoders_run", [])]
    stages = full["latency"][str(batch_size)]["stages"]
    if efficiency is None or efficiency <= ABOVE_EFFICIENCY or not removed:
        return None
    if not all(f"encoder:{s}" in stages for s in removed) or not stages["vision"]["mean"]:
        return None
    time_share = sum(stages[f"encoder:{s}"]["mean"] for s in removed) / stages["vision"]["mean"]
    return (f"vision saving {efficiency:.2f}x its FLOP prediction: the removed encoder(s) {', '.join(removed)} "
            f"took {100 * time_share:.0f} % of the full model's vision time for {100 * vision['predicted_saving']:.0f} % "
            f"of its vision FLOPs; fixed per-encoder costs (dispatch, small kernels) weigh more than FLOPs at this "
            f"size and batch; a larger batch brings the ratio toward 1")


def _noise(full, variant, batch_size, stage):
    worst = max(_cv(full, batch_size, stage), _cv(variant, batch_size, stage))
    if worst > NOISY_CV:
        return [f"noisy timings: {stage} varies by {100 * worst:.0f} % (std/mean); raise --min-seconds or "
                f"quiet the machine"]
    return []


def compare(full, variant, batch_size, device_type="cpu"):
    """Speedups and predicted-vs-measured savings of ``variant`` against ``full``.

    Args:
        full, variant: model entries of the report (``flops``, ``latency``, ``encoders_run``,
            ``image_tokens``, ``masked``, ``mask_mode``).
        batch_size: which batch size to compare.
        device_type: ``cpu`` or ``cuda``.

    Returns:
        ``{"model", "batch_size", "speedup": {stage: x}, "vision": {...}, "end_to_end": {...}, "prefill": {...},
        "flagged", "reasons", "notes"}``; ``prefill`` is :func:`prefill_block` (prefill time saved, measured
        against the FLOP prediction); each of ``vision``/``end_to_end`` holds
        ``predicted_saving``, ``measured_saving`` (means), ``efficiency`` (measured / predicted),
        ``measured_saving_p50``/``efficiency_p50`` (medians) and ``flagged``.
    """
    stages = ("vision", "fusion", "prefill", "ttft", "decode", "end_to_end")
    speedups = {s: stats.speedup(_mean(full, batch_size, s), _mean(variant, batch_size, s)) for s in stages}
    vision = _saving_block(full, variant, batch_size, "vision", "vision")
    e2e = _saving_block(full, variant, batch_size, "end_to_end", "total")
    reasons, notes = [], []
    if vision["flagged"]:
        reasons += [f"vision: {r}" for r in vision_reasons(full, variant, batch_size, device_type)]
    if e2e["flagged"]:
        reasons += [f"end to end: {r}" for r in end_to_end_reasons(full, variant, batch_size, device_type)]
    if (vision["flagged"] or e2e["flagged"]) and not reasons:
        reasons.append("no cause identified from the measurements; rerun with a larger --min-seconds")
    above = _above_prediction(full, variant, batch_size, vision)
    if above:
        notes.append(above)
    if variant.get("masked") and variant.get("mask_mode") == "zero":
        notes.append(f"masked without surgery: the masked encoder(s) {', '.join(variant['masked'])} still run "
                     f"and only their features are zeroed, so masking alone saves nothing; skipping the "
                     f"encoder (--mask-skip) or pruning it does")
    return {"model": variant["name"], "batch_size": batch_size, "speedup": speedups, "vision": vision,
            "end_to_end": e2e, "prefill": prefill_block(full, variant, batch_size),
            "flagged": vision["flagged"] or e2e["flagged"], "reasons": reasons, "notes": notes}
