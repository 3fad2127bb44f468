"""Write a benchmark report: ``bench.json`` (everything), ``bench.md`` (tables) and the plots.

``bench.json`` fields: ``schema_version``, ``environment`` (device, versions, dtype, threads,
attention implementation, timer), ``settings``, ``full`` (name of the reference model),
``models`` (per model: ``name, path, role, masked, mask_mode, slots, encoders_run,
fusion_class, image_tokens, prompt_tokens, attn_implementation, params, weight_bytes, flops,
prefill_flops_predicted, token_budget,
stage_tokens_match_generate, latency[batch] = {iterations, stages[stage] = {n, mean, std, min,
max, p50, p90, p95, p99}, decode_tokens_per_s, end_to_end_tokens_per_s}, memory, accuracy,
comparison`` (the variant's entry of ``comparisons`` at the first batch size; null for the full)),
``order`` (measurement order per batch size), ``comparisons`` (per variant and batch size:
``speedup``, ``vision``/``end_to_end`` predicted vs measured saving, ``prefill`` (prefill time saved:
``image_tokens``, ``measured_ratio`` of prefill times next to ``predicted_ratio`` of the analytic prefill
FLOPs and ``counted_ratio``), ``flagged``, ``reasons``, ``notes``), ``engines`` (``eager``, and with ``--engine vllm`` the vLLM version, engine arguments,
concurrencies and the models not measured there), per model ``vllm`` (``--engine vllm``: ``engine,
start_s, ttft_ms, request_ms, decode_tokens_per_s`` (summaries), ``concurrency[c] = {rounds, round_ms,
requests_per_s, output_tokens_per_s}``, ``accuracy``; see :mod:`encslim.bench.vllm_engine`) and
``outputs`` (the files written). Times are milliseconds.
"""

import json
from pathlib import Path

from .compare import FLAG_EFFICIENCY
from .plots import plot_accuracy_vs_latency, plot_latency_breakdown

JSON_NAME, MD_NAME = "bench.json", "bench.md"
BREAKDOWN_PNG, PARETO_PNG = "latency_breakdown.png", "accuracy_vs_latency.png"


def write_report(report, out_dir):
    """Write the report files into ``out_dir``; return the list of file names written."""
    out_dir = Path(out_dir)
    written = []
    if plot_latency_breakdown(report, out_dir / BREAKDOWN_PNG):
        written.append(BREAKDOWN_PNG)
    if plot_accuracy_vs_latency(report, out_dir / PARETO_PNG):
        written.append(PARETO_PNG)
    written += [JSON_NAME, MD_NAME]
    report["outputs"] = written
    (out_dir / JSON_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / MD_NAME).write_text(render_markdown(report), encoding="utf-8")
    return written


def _ms(summary):
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def _pct(value):
    return "—" if value is None else f"{100 * value:.1f} %"


def _x(value):
    return "—" if value is None else f"{value:.2f}×"


def _si(value):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:g}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _latency_section(report, batch_size):
    key = str(batch_size)
    by_name = {c["model"]: c for c in report["comparisons"] if c["batch_size"] == batch_size}
    lines = [f"## Latency, batch size {batch_size} (ms, mean ± std; engine: {_eager_engine(report)})", ""]
    rows = []
    for m in report["models"]:
        lat = m["latency"][key]
        st = lat["stages"]
        dec = lat["decode_tokens_per_s"]
        speed = by_name.get(m["name"], {}).get("speedup", {}).get("end_to_end", 1.0)
        rows.append([m["name"], _ms(st["vision"]), _ms(st["fusion"]), _ms(st["prefill"]), _ms(st["ttft"]),
                     _ms(st["decode"]), "—" if dec is None else f"{dec['mean']:.1f}", _ms(st["end_to_end"]),
                     f"{st['end_to_end']['p50']:.3f} / {st['end_to_end']['p95']:.3f} / {st['end_to_end']['p99']:.3f}",
                     _x(speed), lat["iterations"]])
    lines += _table(["model", "vision", "fusion", "prefill", "TTFT", "decode", "decode tok/s", "end to end",
                     "e2e p50 / p95 / p99", "speedup (e2e)", "iters"], rows)
    rows = []
    for m in report["models"]:
        st = m["latency"][key]["stages"]
        rows.append([m["name"]] + [f"{st[f'encoder:{s}']['mean']:.3f}" if f"encoder:{s}" in st else "skipped"
                                   for s in report["models"][0]["slots"]])
    lines += ["Per encoder (ms, mean):", ""] + _table(["model"] + report["models"][0]["slots"], rows)
    return lines


def _savings_section(report):
    lines = ["## Predicted (FLOPs) vs measured (time) savings", "",
             "A variant is flagged when its measured saving is below 70 % of the FLOP prediction.", ""]
    rows = []
    for c in report["comparisons"]:
        v, e = c["vision"], c["end_to_end"]
        rows.append([c["model"], c["batch_size"], _pct(v["predicted_saving"]), _pct(v["measured_saving"]),
                     _x(v["efficiency"]), _pct(e["predicted_saving"]), _pct(e["measured_saving"]),
                     _x(e["efficiency"]), "**FLAGGED**" if c["flagged"] else "ok"])
    lines += _table(["model", "batch", "vision predicted", "vision measured", "measured/predicted",
                     "e2e predicted", "e2e measured", "measured/predicted", "flag"], rows)
    for c in report["comparisons"]:
        for text in c["reasons"] + c["notes"]:
            lines.append(f"- {c['model']} (batch {c['batch_size']}): {text}")
    return lines + [""]


def _prefill_section(report):
    """Prefill time saved per variant: the measured ratio of prefill times next to the FLOP-predicted ratio."""
    lines = ["## Prefill time saved", "",
             "Variant / full at each batch size: image tokens per image (after the model's token budget), the "
             "prefill's mean time, and its FLOPs as the analytic cost model predicts them (2PL + 2 n_layers L² d "
             "over the prompt's L tokens, encslim.models.costs) and as the FLOP counter counted them.", ""]
    if str(report["environment"].get("device", "")).startswith("cpu"):
        lines += ["On CPU the counted prefill FLOPs leave attention out (torch's FLOP counter has no formula for "
                  "aten._scaled_dot_product_flash_attention_for_cpu): they are the 2PL term alone, the predicted "
                  "ones add the L² attention term.", ""]
    rows = []
    budgets = {m["name"]: m.get("token_budget") for m in report["models"]}
    for c in report["comparisons"]:
        p = c.get("prefill")
        if not p:
            continue
        budget = budgets.get(c["model"])
        rows.append([c["model"], "every token" if not budget else f"{budget['method']} {budget['budget']:g}",
                     c["batch_size"], f"{p['image_tokens'][0]} → {p['image_tokens'][1]}", _ratio(p["measured_ratio"]),
                     _ratio(p["predicted_ratio"]), _ratio(p["counted_ratio"]), _pct(p["measured_saving"]),
                     _pct(p["predicted_saving"])])
    lines += _table(["model", "token budget", "batch", "image tokens", "prefill time ratio", "predicted FLOP ratio",
                     "counted FLOP ratio", "prefill time saved", "predicted saving"], rows)
    return lines


def _ratio(value):
    return "—" if value is None else f"{value:.3f}"


def _costs_section(report):
    slots = report["models"][0]["slots"]
    lines = ["## Parameters and FLOPs per sample", "",
             "FLOPs from torch.utils.flop_counter (matmul, conv, attention; element-wise ops not counted), "
             "batch size 1; decode covers the generated tokens after the first.", ""]
    rows = []
    for m in report["models"]:
        f, p = m["flops"], m["params"]
        rows.append([m["name"], ", ".join(m["encoders_run"]), m["image_tokens"], _si(p["total"]), _si(p["vision"]),
                     _si(f["vision"]), _si(f["fusion"]), _si(f["prefill"]), _si(f["decode"]), _si(f["total"]),
                     "yes" if m["stage_tokens_match_generate"] else "**no**"])
    lines += _table(["model", "encoders run", "image tokens", "params", "vision params", "vision FLOPs",
                     "fusion FLOPs", "prefill FLOPs", "decode FLOPs", "total FLOPs", "stages = generate"], rows)
    rows = [[m["name"]] + [_si(m["flops"].get(f"encoder:{s}", 0)) for s in slots] for m in report["models"]]
    return lines + ["FLOPs per encoder:", ""] + _table(["model"] + slots, rows)


def _memory_section(report):
    lines = ["## Peak memory", ""]
    mems = [m for m in report["models"] if m["memory"]]
    if not mems:
        return lines + ["Not measured (--no-memory).", ""]
    lines += [f"Method: {mems[0]['memory']['method']}.", ""]
    rows = []
    for m in mems:
        mem = m["memory"]
        if "error" in mem:
            rows.append([m["name"], "—", "—", "—", f"failed: {mem['error']}"])
            continue
        for batch, row in mem["per_batch_size"].items():
            gpu = (f"{row['max_allocated_bytes'] / 2**20:.1f} / {row['max_reserved_bytes'] / 2**20:.1f}"
                   if "max_allocated_bytes" in row else "—")
            rows.append([m["name"], batch, f"{row['peak_rss_bytes'] / 2**20:.1f}",
                         f"{row['peak_rss_delta_bytes'] / 2**20:.1f}", gpu])
    return lines + _table(["model", "batch", "peak RSS (MiB)", "peak RSS over baseline (MiB)",
                           "GPU max allocated / reserved (MiB)"], rows)


def _accuracy_section(report):
    heading = f"## Accuracy (engine: {_eager_engine(report)})"
    if not any(m["accuracy"] for m in report["models"]):
        return [heading, "", "Not measured (no --data given).", ""]
    return [heading, ""] + _accuracy_table({m["name"]: m["accuracy"] for m in report["models"]})


def _accuracy_table(accuracies):
    """One row per model of ``{name: accuracy or None}`` (the first is the full model's), Δ against it."""
    measured = {name: acc for name, acc in accuracies.items() if acc}
    categories = sorted({c for acc in measured.values() for c in acc if c != "overall"})
    full = next(iter(accuracies.values())) or {}
    rows = []
    for name, acc in measured.items():
        delta = acc["overall"] - full["overall"] if "overall" in full else None
        rows.append([name, f"{acc['overall']:.3f}", "—" if delta is None else f"{delta:+.3f}"]
                    + [f"{acc[c]:.3f}" if c in acc else "—" for c in categories])
    return _table(["model", "overall", "Δ vs full"] + categories, rows)


def _eager_engine(report):
    version = report.get("environment", {}).get("transformers")
    return "eager, transformers" + (f" {version}" if version else "")


def _vllm_section(report):
    """The figures of ``--engine vllm`` (see :mod:`encslim.bench.vllm_engine`), one row per measured model."""
    engine = report.get("engines", {}).get("vllm")
    if not engine:
        return []
    levels, s = engine["concurrency"], report["settings"]
    lines = [f"## vLLM: {engine['engine']} {engine['version']} ({engine['api']})", "",
             "Wall-clock ms around `LLM.generate`, image preprocessing included; TTFT: one request of 1 token; "
             f"request: one request of {s['max_new_tokens']} tokens (EOS ignored); decode tok/s from the engine's "
             "token timestamps; req/s @c: c requests submitted together. Medians over the rounds; prefix caching "
             "and the multimodal processor cache off."
             + (f" Device: {engine['device']}." if engine.get("device") else ""), ""]
    full = report["models"][0].get("vllm")
    rows = []
    for m in report["models"]:
        v = m.get("vllm")
        if not v:
            continue
        dec = v["decode_tokens_per_s"]
        ratio = full["ttft_ms"]["p50"] / v["ttft_ms"]["p50"] if full else None
        rows.append([m["name"], v["engine"], f"{v['ttft_ms']['p50']:.2f}", _x(ratio), f"{v['request_ms']['p50']:.2f}",
                     "—" if dec is None else f"{dec['p50']:.1f}"]
                    + [f"{v['concurrency'][str(c)]['requests_per_s']:.2f}" for c in levels]
                    + [f"{v['concurrency'][str(levels[-1])]['output_tokens_per_s']:.1f}", f"{v['start_s']:.1f}"])
    lines += _table(["model", "engine", "TTFT ms", "TTFT speedup", "request ms", "decode tok/s"]
                    + [f"req/s @{c}" for c in levels] + [f"out tok/s @{levels[-1]}", "start s"], rows)
    lines += [f"Not measured in vLLM: {name} ({why})." for name, why in engine["not_measured"].items()]
    accuracies = {m["name"]: (m.get("vllm") or {}).get("accuracy") for m in report["models"] if m.get("vllm")}
    if any(accuracies.values()):
        lines += ["", f"### Accuracy (engine: {engine['engine']} {engine['version']}, greedy)", ""]
        lines += _accuracy_table(accuracies)
    return lines + [""]


def _environment_section(report):
    env = report["environment"]
    keys = ("device", "device_name", "dtype", "torch_threads", "omp_num_threads", "attn_implementation", "timer",
            "torch", "transformers", "encslim", "python", "platform", "timestamp")
    return ["## Environment", ""] + _table(["field", "value"], [[k, env.get(k)] for k in keys if k in env])


def render_console(report, out=None):
    """The terminal summary of ``encslim bench``: latency and speedup at every batch size, accuracy when
    measured, and each flagged comparison with its reasons (the same as ``bench.md``, shorter)."""
    lines = []
    has_accuracy = any(m.get("accuracy") for m in report["models"])
    for batch_size in report["settings"]["batch_sizes"]:
        key = str(batch_size)
        by_name = {c["model"]: c for c in report["comparisons"] if str(c["batch_size"]) == key}
        lines.append(f"batch size {batch_size}")
        lines.append(f"  {'model':38s} {'vision ms':>10s} {'e2e ms':>10s} {'speedup':>8s}  flag")
        for m in report["models"]:
            st = m["latency"][key]["stages"]
            comp = by_name.get(m["name"])
            speed = comp["speedup"]["end_to_end"] if comp else 1.0
            flag = "" if comp is None else ("FLAGGED" if comp["flagged"] else "ok")
            lines.append(f"  {m['name'][:38]:38s} {st['vision']['mean']:10.3f} {st['end_to_end']['mean']:10.3f} "
                         f"{speed:7.2f}x  {flag}")
    if has_accuracy:
        full = report["models"][0].get("accuracy") or {}
        lines.append("accuracy (overall)")
        for m in report["models"]:
            acc = (m.get("accuracy") or {}).get("overall")
            if acc is None:
                lines.append(f"  {m['name'][:38]:38s} {'-':>7s}")
                continue
            delta = "" if m is report["models"][0] or "overall" not in full else f"  ({acc - full['overall']:+.3f} vs full)"
            lines.append(f"  {m['name'][:38]:38s} {acc:7.3f}{delta}")
    lines += _prefill_console(report)
    lines += _vllm_console(report)
    flagged = [c for c in report["comparisons"] if c["flagged"]]
    for c in flagged:
        lines.append(f"FLAGGED {c['model']} (batch {c['batch_size']}): measured saving below "
                     f"{100 * FLAG_EFFICIENCY:.0f} % of the FLOP prediction")
        lines += [f"  - {reason}" for reason in c["reasons"]]
    if out is not None:
        lines.append(f"report in {out}/bench.md" + ("" if has_accuracy else " (no accuracy: pass --data)"))
    return "\n".join(lines)


def _prefill_console(report):
    """One line per variant whose image tokens changed: prefill time ratio next to the FLOP-predicted one."""
    lines = []
    for c in report["comparisons"]:
        p = c.get("prefill")
        if p and p["image_tokens"][0] != p["image_tokens"][1]:
            lines.append(f"prefill {c['model']} (batch {c['batch_size']}): image tokens {p['image_tokens'][0]} -> "
                         f"{p['image_tokens'][1]}; time x{_ratio(p['measured_ratio'])} (predicted by FLOPs "
                         f"x{_ratio(p['predicted_ratio'])})")
    return lines


def _vllm_console(report):
    engine = report.get("engines", {}).get("vllm")
    if not engine:
        return []
    top = engine["concurrency"][-1]
    lines = [f"vLLM {engine['version']} (offline engine)",
             f"  {'model':38s} {'TTFT ms':>10s} {'decode tok/s':>12s} {f'req/s @{top}':>10s}"]
    for m in report["models"]:
        v = m.get("vllm")
        if v:
            dec = v["decode_tokens_per_s"]
            lines.append(f"  {m['name'][:38]:38s} {v['ttft_ms']['p50']:10.2f} "
                         f"{'-' if dec is None else format(dec['p50'], '.1f'):>12s} "
                         f"{v['concurrency'][str(top)]['requests_per_s']:10.2f}")
    return lines


def render_markdown(report):
    """``bench.md``: the report as tables a person reads."""
    s = report["settings"]
    lines = ["# encslim bench", "",
             f"Full model: **{report['full']}**; variants: {', '.join(m['name'] for m in report['models'][1:])}.", "",
             f"Settings: batch sizes {s['batch_sizes']}, {s['max_new_tokens']} new tokens (greedy, fixed length), "
             f"{s['warmup']} warm-up rounds, at least {s['min_iters']} rounds and {s['min_seconds']} s per model, "
             f"models measured interleaved ({' '.join(report['order'][str(s['batch_sizes'][0])][:2 * len(report['models'])])} ...). "
             f"Times exclude preprocessing; TTFT = vision + fusion + prefill.", ""]
    for batch_size in s["batch_sizes"]:
        lines += _latency_section(report, batch_size)
    lines += _savings_section(report) + _prefill_section(report) + _costs_section(report) + _memory_section(report)
    lines += _accuracy_section(report) + _vllm_section(report) + _environment_section(report)
    if PARETO_PNG not in report.get("outputs", []):
        lines += [f"{PARETO_PNG} not written: accuracy needs --data.", ""]
    return "\n".join(lines)
