"""I-MoF's removal plan: drop a tower and its projector from the checkpoint (class B, exact).

Follows the checkpoint layout of tsb0601/MMVP's ``LLaVA/llava/model/llava_arch.py`` (``LlavaMetaModel``:
``vision_tower`` + ``mm_projector`` for CLIP, ``dino_tower`` + ``dino_mm_projector`` for DINOv2).
A removed tower's tokens leave the interleaved sequence
(``prepare_inputs_labels_for_multimodal_withdino``), so deleting it and its projector is exact.
"""

from ...masking import FusionClass
from ...plan import Delete, RemovalPlan, check_drop
from .configuration import MODEL_TYPE, PROJECTORS, TOWER_PREFIXES


def removal_plan(config, drop):
    """Drop towers ``drop``: delete the tower and its projector; ``imof_towers`` lists the rest. Exact (class B)."""
    towers = list(config.imof_towers)
    drop = check_drop(towers, drop)
    kept = [t for t in towers if t not in drop]
    deletes = [Delete(prefix, t) for t in drop for prefix in (TOWER_PREFIXES[t], PROJECTORS[t])]
    notes = ["B: a removed tower's tokens leave the interleaved sequence, so deleting it and its projector is exact"]
    if kept == ["clip"]:
        notes.append("CLIP alone is LLaVA-1.5: encslim export --format llava writes a stock "
                     "LlavaForConditionalGeneration")
    return RemovalPlan(model_type=MODEL_TYPE, fusion_class=FusionClass.B.value, slots=towers, drop=drop,
                       delete_keys=deletes, config_patch=[{"op": "set", "path": "imof_towers", "value": kept}],
                       exact=True, notes=notes)
