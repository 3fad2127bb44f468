"""The model card (``README.md``) of an exported folder, rendered from plain data.

Pure functions: a card-info dict in, Markdown out. The card says what the model is, what was
removed and why (the CUR/IG table of the ranking, when one is known), whether the export and
the removal were verified, the benchmark figures when known, and how to load the folder.
"""

import json

# the export stage's own formats; a family's stock format brings its title (StockExport.title) as format_title
FORMAT_TITLES = {
    "hf": "a transformers folder in the family's own layout",
    "llava": "stock transformers LlavaForConditionalGeneration",
    "remote-code": "a transformers folder with its modeling code (trust_remote_code=True)",
    "onnx": "ONNX graphs for onnxruntime",
}


def render_card(info):
    """Markdown model card.

    Args:
        info: dict with ``name``, ``format``, ``format_title`` (optional: the format in prose, default
            :data:`FORMAT_TITLES`), ``source``, ``model_type``, ``fusion_class`` (optional),
            ``slots`` (kept: list of dicts with name/backbone/image_size/num_tokens), ``removed`` (slot
            names, over the whole lineage), ``origin`` (the original model's path), ``lineage`` (one
            line per stage), ``parameters``, ``ranking`` (ranking.json dict or None), ``source_verification``
            (``(stage, dict)`` recorded in the source's manifest, or None), ``export_verification`` (list of records), ``bench`` (dict or None),
            ``how_to_load`` (code), ``notes`` (list of str), ``token_budget`` (optional: ``{"method", "budget",
            "source", "image_tokens"}``, :func:`encslim.export.finish.token_budget_entry`).

    Returns:
        The card text.
    """
    lines = [f"# {info['name']}", "",
             f"Exported by encslim {info.get('encslim_version', '')} as **{_title(info)}** "
             f"from `{info['source']}`.", ""]
    lines += _summary(info)
    lines += _lineage(info)
    lines += _removal(info)
    lines += _verification(info)
    lines += _bench(info.get("bench"))
    lines += ["## How to load", "", "```python", info["how_to_load"].strip(), "```", ""]
    notes = info.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Every file's sha256 is listed in `encslim_manifest.json`.", ""]
    return "\n".join(lines)


def _title(info):
    return info.get("format_title") or FORMAT_TITLES.get(info["format"], info["format"])


def _summary(info):
    lines = ["## Model", "", f"- family: `{info['model_type']}`"]
    if info.get("fusion_class"):
        lines.append(f"- fusion class: {info['fusion_class']}")
    if info.get("parameters"):
        lines.append(f"- parameters: {info['parameters']:,}")
    budget = info.get("token_budget")
    if budget:
        lines.append(f"- token budget: {budget['method']} {budget['budget']:g}: the LLM reads {budget['image_tokens']} "
                     f"image tokens per image (config.json `token_budget`); method: {budget['source']}")
    lines += ["", "| encoder slot | backbone | input | image tokens |", "|---|---|---|---|"]
    for slot in info.get("slots", []):
        lines.append(f"| {slot['name']} | {slot['backbone']} | {slot['image_size']}px | {slot['num_tokens']} |")
    return lines + [""]


def _lineage(info):
    """Where the model came from: the original model and every encslim stage since, oldest first."""
    rows = info.get("lineage") or []
    origin = info.get("origin")
    if not rows and not origin:
        return []
    lines = ["## Lineage", ""]
    if origin:
        lines.append(f"Original model: `{origin}`.")
    if rows:
        lines += ["", "Stages (oldest first, as recorded in `encslim_manifest.json`):", ""]
        lines += [f"{i}. {row}" for i, row in enumerate(rows, 1)]
    return lines + [""]


def _removal(info):
    removed = list(info.get("removed") or [])
    lines = ["## What was removed and why", ""]
    if removed:
        lines.append(f"Removed encoder slot(s): {', '.join(f'`{s}`' for s in removed)}, with everything that "
                     "existed only for them (backbone, projector branch or channel slice, K/V projections).")
    else:
        lines.append("No encoder was removed from this model by encslim (no removal is recorded in its manifest).")
    lines.append("")
    ranking = info.get("ranking")
    if ranking:
        lines += ["The ranking below measured each encoder's contribution: CUR = accuracy lost when the "
                  "encoder is masked, relative to the full model (95% CI; * = significant); IG = information "
                  "gap of the category (how much the encoders disagree on it).", ""]
        lines += ranking_table(ranking, removed)
    elif removed:
        lines += ["No ranking was recorded; the slots were removed by explicit choice.", ""]
    return lines


def ranking_table(ranking, removed=()):
    """Markdown rows: one per slot with CUR per category (overall first), then an IG row."""
    categories = ["overall"] + [c for c in ranking.get("categories", []) if c != "overall"]
    cur = ranking.get("cur", {})
    lines = ["| slot | " + " | ".join(f"CUR {c}" for c in categories) + " |",
             "|---|" + "---|" * len(categories)]
    for slot in ranking.get("slots", list(cur)):
        name = f"{slot} (removed)" if slot in set(removed) else slot
        cells = [_cur_cell(cur.get(slot, {}).get(c)) for c in categories]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ig = ranking.get("ig") or {}
    if ig:
        lines.append("| IG | " + " | ".join(_number(ig.get(c)) for c in categories) + " |")
    full = (ranking.get("accuracy") or {}).get("full") or {}
    if full:
        lines.append("| full-model accuracy | " + " | ".join(_number(full.get(c)) for c in categories) + " |")
    return lines + [""]


def _cur_cell(entry):
    if not entry:
        return "-"
    if entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci")
    text = f"{entry['value']:+.3f}"
    if ci and None not in ci:
        text += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    return text + (" *" if entry.get("significant") else "")


def _number(value):
    return "-" if value is None else f"{value:.3f}"


def _verification(info):
    lines = ["## Verification", ""]
    stage, recorded = info.get("source_verification") or (None, None)
    if recorded:
        lines += [f"Recorded by `encslim {stage or 'prune'}` for the source folder "
                  "(for a removal: the masked full model against the pruned model):", "",
                  "```json", json.dumps(recorded, indent=2, sort_keys=True, default=str), "```", ""]
    records = info.get("export_verification") or []
    if records:
        lines += ["Export (this folder against the source folder, on probe images and prompts):", "",
                  "| output | max abs diff | tolerance | matched |", "|---|---|---|---|"]
        for r in records:
            name = f"{r['graph']}: {r['output']}" if r.get("graph") else r["output"]
            lines.append(f"| {name} | {r['max_abs_diff']:.3g} | {r['atol']:g} | {'yes' if r['matched'] else 'NO'} |")
        lines.append("")
    if not recorded and not records:
        lines += ["Not verified.", ""]
    return lines


def _bench(bench):
    """Benchmark section from a ``bench.json`` (``encslim bench``): latency per model, speedups."""
    if not bench:
        return []
    lines = ["## Benchmark", "", f"From `encslim bench` ({_environment(bench)}); means over timed iterations.", ""]
    lines += ["| model | batch | vision ms | prefill ms | time to first token ms | decode tokens/s | accuracy |",
              "|---|---|---|---|---|---|---|"]
    for model in bench.get("models") or []:
        accuracy = (model.get("accuracy") or {}).get("overall")
        for batch, lat in sorted((model.get("latency") or {}).items()):
            stages = lat.get("stages") or {}
            lines.append(f"| {model.get('name')} | {batch} | {_mean(stages.get('vision'))} | "
                         f"{_mean(stages.get('prefill'))} | {_mean(stages.get('ttft'))} | "
                         f"{_mean(lat.get('decode_tokens_per_s'))} | {_number(accuracy)} |")
    comparisons = bench.get("comparisons") or []
    if comparisons:
        lines += ["", "Speedups against the full model (`x` times faster):", "",
                  "| model | batch | vision | time to first token | end to end |", "|---|---|---|---|---|"]
        for c in comparisons:
            speed = c.get("speedup") or {}
            lines.append(f"| {c.get('model')} | {c.get('batch_size')} | {_times(speed.get('vision'))} | "
                         f"{_times(speed.get('ttft'))} | {_times(speed.get('end_to_end'))} |")
    return lines + [""]


def _environment(bench):
    env = bench.get("environment") or {}
    parts = [str(env[k]) for k in ("device", "dtype") if env.get(k)]
    return ", ".join(parts) or "environment not recorded"


def _mean(summary):
    if not isinstance(summary, dict) or summary.get("mean") is None:
        return "-"
    return f"{summary['mean']:.2f}"


def _times(value):
    return "-" if value is None else f"{value:.2f}x"


__all__ = ["render_card", "ranking_table", "FORMAT_TITLES"]
