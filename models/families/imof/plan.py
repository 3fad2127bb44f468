"""I-MoF's removal plan: drop a tower and its projector from the checkpoint (class B, exact).

Follows the checkpoint layout of tsb0601/MMVP's ``LLaVA/llava/model/llava_arch.py`` (``LlavaMetaModel``:
``vision_tower`` + ``mm_projector`` for CLIP, ``dino_tower`` + ``dino_mm_projector`` for DINOv2).
A removed tower's tokens leave the interleaved sequence
(``prepare_inputs_labels_for_multimodal_withdino``), so deleting it and its projector is exact.

MMVP's own loader must not open the result: ``LlavaMetaModel.__init__`` builds BOTH towers and both
projectors for every config with ``mm_vision_tower`` (``build_vision_tower``, then the DINO tower from
torch.hub and a random ``dino_mm_projector`` where the checkpoint has none), and its forward always runs
``prepare_inputs_labels_for_multimodal_withdino``: it has no CLIP-only model. So the pruned config says
``model_type: imof_llama`` / ``ImofLlamaForCausalLM`` and its ``mm_vision_tower`` starts with
:data:`~.configuration.PRUNED_TOWER_PREFIX`, which ``multimodal_encoder/builder.py``
``build_vision_tower`` refuses (``ValueError: Unknown vision tower``) on every path of
``builder.load_pretrained_model`` (``LlavaLlamaForCausalLM.from_pretrained`` and the Auto classes alike).
"""

from ...masking import FusionClass
from ...plan import Delete, RemovalPlan, check_drop
from .configuration import MODEL_TYPE, PROJECTORS, PRUNED_TOWER_PREFIX, TOWER_PREFIXES

ARCHITECTURE = "ImofLlamaForCausalLM"


def pruned_tower_name(name):
    """The ``mm_vision_tower`` of a pruned I-MoF: MMVP's ``build_vision_tower`` refuses it (see above)."""
    name = str(name)
    return name if name.startswith(PRUNED_TOWER_PREFIX) else PRUNED_TOWER_PREFIX + name


def config_patch(config, kept):
    """``imof_towers`` lists the kept towers; the type, architecture and tower name MMVP's loader refuses;
    the tower sizes read from the checkpoint written out (the removed tower no longer tells them)."""
    ops = [{"op": "set", "path": "imof_towers", "value": kept},
           {"op": "set", "path": "model_type", "value": MODEL_TYPE},
           {"op": "set", "path": "architectures", "value": [ARCHITECTURE]},
           {"op": "set", "path": "mm_vision_tower", "value": pruned_tower_name(config.mm_vision_tower)}]
    for key in ("imof_clip_spec", "imof_dino_spec"):
        if getattr(config, key):
            ops.append({"op": "set", "path": key, "value": dict(getattr(config, key))})
    return ops


def removal_plan(config, drop):
    """Drop towers ``drop``: delete the tower and its projector; ``imof_towers`` lists the rest. Exact (class B)."""
    towers = list(config.imof_towers)
    drop = check_drop(towers, drop)
    kept = [t for t in towers if t not in drop]
    deletes = [Delete(prefix, t) for t in drop for prefix in (TOWER_PREFIXES[t], PROJECTORS[t])]
    notes = ["B: a removed tower's tokens leave the interleaved sequence, so deleting it and its projector is exact",
             f"mm_vision_tower starts with '{PRUNED_TOWER_PREFIX}': MMVP's loader refuses the folder "
             "(build_vision_tower: Unknown vision tower) instead of rebuilding the removed tower from the hub with a random projector"]
    if kept == ["clip"]:
        notes.append("CLIP alone is LLaVA-1.5: encslim export --format llava writes a stock "
                     "LlavaForConditionalGeneration")
    return RemovalPlan(model_type=MODEL_TYPE, fusion_class=FusionClass.B.value, slots=towers, drop=drop,
                       delete_keys=deletes, config_patch=config_patch(config, kept), exact=True, notes=notes)
