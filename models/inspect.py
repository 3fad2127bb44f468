"""``encslim inspect``: what a multi-encoder model is made of, slot by slot."""

from .loading import load_model


def vision_flops(model, slots=None, batch_size=1):
    """FLOPs of one forward of each vision tower on a ``batch_size`` of images at its input size.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; a
    multiply-add counts as 2 FLOPs), on zero images, so the figure is exact for the architecture.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for slot in slots or model.slot_names:
        size = model.config.encoder(slot)["image_size"]
        tower = model.vision_towers[slot]
        param = next(tower.parameters())
        pixels = torch.zeros(batch_size, 3, size, size, dtype=param.dtype, device=param.device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            tower(pixels)
        out[slot] = int(counter.get_total_flops())
    return out


def slot_parameter_counts(model):
    """Parameters that exist only for each slot, and the shared rest.

    A slot owns its vision tower and its part of the fusion: for channel concat (A1/A2) its
    columns of the projector's first Linear (and its LayerNorm entries for A2); for sequence
    concat (B) its projector; for cross attention (C) its K/V projections. Removing the slot
    removes exactly these parameters.

    Returns:
        ``({slot: {"vision": n, "fusion": n}}, shared_fusion, llm)``.
    """
    config = model.config
    per_slot = {s: {"vision": _count(model.vision_towers[s]), "fusion": 0} for s in model.slot_names}
    fusion_total = _count(model.fusion)
    kind = config.fusion["type"]
    if kind == "channel_concat":
        layers = model.fusion.projector
        first_linear = layers[1] if config.fusion_class == "A2" else layers[0]
        for slot, dim in model.fusion.dims.items():
            per_slot[slot]["fusion"] = dim * first_linear.out_features + (2 * dim if config.fusion_class == "A2" else 0)
    elif kind == "sequence_concat":
        for slot, projector in model.fusion.projectors.items():
            per_slot[slot]["fusion"] = _count(projector)
    else:
        for slot in model.slot_names:
            per_slot[slot]["fusion"] = _count(model.fusion.k_proj[slot]) + _count(model.fusion.v_proj[slot])
    shared = fusion_total - sum(p["fusion"] for p in per_slot.values())
    return per_slot, shared, _count(model.language_model)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def inspect_model(path):
    """Describe a model folder: slots, fusion, parameters, FLOPs. Returns a JSON-able dict.

    Raises:
        ModelLoadError: the folder is not a model, or its family is unsupported.
    """
    model, _, adapter = load_model(path)
    config = model.config
    per_slot, shared, llm = slot_parameter_counts(model)
    flops = vision_flops(model)
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
    total = sum(p.numel() for p in model.parameters())
    return {
        "path": str(path),
        "model_type": config.model_type,
        "fusion": {
            "type": config.fusion["type"],
            "class": adapter.fusion_class(config),
            "settings": dict(config.fusion),
            "shared_params": shared,
            "image_tokens": config.num_image_tokens(),
        },
        "slots": slots,
        "llm": {"model_type": config.text_config.model_type, "params": llm,
                "hidden_size": config.text_config.hidden_size},
        "params_total": total,
        "export_targets": adapter.export_targets(config, adapter.slot_names(config)),
    }


def format_inspection(info):
    """A human table of :func:`inspect_model`'s result."""
    lines = [
        f"model   {info['path']}  ({info['model_type']})",
        f"fusion  {info['fusion']['type']} (class {info['fusion']['class']}), "
        f"{info['fusion']['image_tokens']} image tokens, {info['fusion']['shared_params']:,} shared params",
        "",
        f"{'slot':<12}{'backbone':<22}{'input':>7}{'tokens':>8}{'dim':>6}{'params':>12}{'vision FLOPs':>15}"
        f"{'share':>8}  exact removal",
    ]
    for s in info["slots"]:
        lines.append(
            f"{s['name']:<12}{s['backbone']:<22}{s['image_size']:>7}{s['tokens']:>8}{s['feature_shape'][1]:>6}"
            f"{s['params']:>12,}{s['vision_flops']:>15,}{s['vision_flops_share']:>8.1%}  "
            f"{'yes' if s['removal_exact'] else 'no (finetune after removal)'}"
        )
    lines += [
        "",
        f"LLM     {info['llm']['model_type']}, {info['llm']['params']:,} params",
        f"total   {info['params_total']:,} params",
    ]
    return "\n".join(lines)
