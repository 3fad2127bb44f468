"""``encslim inspect``: what a multi-encoder model is made of, slot by slot."""

from .loading import load_model


def vision_flops(model, processor, adapter, slots=None):
    """FLOPs of one forward of each slot's encoder on one blank image at its input size.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; a
    multiply-add counts as 2 FLOPs) around :meth:`Adapter.encode` of that slot alone, so the
    figure is exact for the architecture.
    """
    import torch
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    names = adapter.slot_names(model.config)
    side = max(s.image_size for s in adapter.slots(model.config))
    prompt = adapter.build_prompt(processor, "")
    out = {}
    for slot in slots or names:
        others = frozenset(s for s in names if s != slot)
        batch = adapter.prepare_batch(processor, [Image.new("RGB", (side, side))], [prompt], masked=others)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            adapter.encode(model, batch, [slot])
        out[slot] = int(counter.get_total_flops())
    return out


def _count(module):
    return sum(p.numel() for p in module.parameters())


def inspect_model(path):
    """Describe a model folder: slots, fusion, parameters, FLOPs. Returns a JSON-able dict.

    Raises:
        ModelLoadError: the folder is not a model, or its family is unsupported.
    """
    model, processor, adapter = load_model(path)
    config = model.config
    per_slot = adapter.slot_parameters(model)
    parts = adapter.parts(model)
    shared = _count(parts["fusion"]) - sum(p["fusion"] for p in per_slot.values())
    llm = _count(parts["language_model"])
    flops = vision_flops(model, processor, adapter)
    total_flops = sum(flops.values()) or 1
    slots = []
    for slot in adapter.slots(config):
        slots.append({
            "name": slot.name,
            "backbone": slot.backbone,
            "image_size": slot.image_size,
            "tokens": slot.num_tokens,
            "feature_shape": [slot.num_tokens, slot.feature_dim],
            "params": per_slot[slot.name]["vision"] + per_slot[slot.name]["fusion"],
            "params_vision": per_slot[slot.name]["vision"],
            "params_fusion": per_slot[slot.name]["fusion"],
            "vision_flops": flops[slot.name],
            "vision_flops_share": flops[slot.name] / total_flops,
            "removal_exact": slot.removal_exact,
        })
    # encoders a family keeps outside the module tree (Cambrian's) count too, each parameter once
    params = {id(p): p for m in (model, *adapter.encoders(model).values()) for p in m.parameters()}
    total = sum(p.numel() for p in params.values())
    fusion_class, settings = adapter.fusion_class(config), adapter.fusion_settings(config)
    text = getattr(config, "text_config", config)
    return {
        "path": str(path),
        "model_type": config.model_type,
        "fusion": {
            "type": settings.get("type", fusion_class.value),
            "class": fusion_class.value,
            "settings": settings,
            "shared_params": shared,
            "image_tokens": adapter.image_tokens(config),
        },
        "slots": slots,
        "llm": {"model_type": text.model_type, "params": llm, "hidden_size": text.hidden_size},
        "params_total": total,
        "export_targets": adapter.export_targets(config, adapter.slot_names(config)),
    }


def format_inspection(info):
    """A human table of :func:`inspect_model`'s result."""
    w = max([12] + [len(s["name"]) + 2 for s in info["slots"]])
    bw = max([10] + [len(s["backbone"]) + 2 for s in info["slots"]])
    lines = [
        f"model   {info['path']}  ({info['model_type']})",
        f"fusion  {info['fusion']['type']} (class {info['fusion']['class']}), "
        f"{info['fusion']['image_tokens']} image tokens, {info['fusion']['shared_params']:,} shared params",
        "",
        f"{'slot':<{w}}{'backbone':<{bw}}{'input':>7}{'tokens':>8}{'dim':>6}{'params':>12}{'vision FLOPs':>15}"
        f"{'share':>8}  exact removal",
    ]
    for s in info["slots"]:
        lines.append(
            f"{s['name']:<{w}}{s['backbone']:<{bw}}{s['image_size']:>7}{s['tokens']:>8}{s['feature_shape'][1]:>6}"
            f"{s['params']:>12,}{s['vision_flops']:>15,}{s['vision_flops_share']:>8.1%}  "
            f"{'yes' if s['removal_exact'] else 'no (finetune after removal)'}"
        )
    lines += [
        "",
        f"LLM     {info['llm']['model_type']}, {info['llm']['params']:,} params",
        f"total   {info['params_total']:,} params",
    ]
    return "\n".join(lines)
