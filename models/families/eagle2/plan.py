"""Eagle2's removal plan: drop a tower from an ``eagle_chat`` checkpoint (class A2, exact).

Follows the checkpoint layout of NVlabs/Eagle's Eagle2 ``multi_backbone_channel_concatenation_encoder.py``
(``vision_towers.{i}`` in ``vision_path`` order) and ``modeling_eagle_chat.py`` (``mlp1`` on the fixed
SigLIP-then-ConvNeXt concat). The paper's mask zeroes a tower's block before ``mlp1``; the LayerNorm
statistics include those zeros. Removal deletes the tower's weights and records its width in
``config.json`` (``encslim_removed_dims``): the model then feeds that many zero channels in the tower's
place, so ``mlp1`` is unchanged and the pruned model computes the zero-masked one exactly. A pruned
folder loads with encslim only: its ``vision_path`` names the kept tower alone, and the original
``Eagle2ChatModel.__init__`` (``modeling_eagle_chat.py``, public-code index id 334094437) refuses it with
``KeyError`` on ``vit_hidden_size['siglip']`` / ``['convnext']`` (checked with the original code on
folders this plan wrote: ``tests/parity/eagle2/mob/original_loader.json``); it never rebuilds a tower.
"""

from ...masking import FusionClass
from ...plan import Delete, RemovalPlan, check_drop
from .configuration import CONVNEXT, CONVNEXT_SPEC_KEY, MODEL_TYPE, ORIGINAL_NAMES, REMOVED_KEY, TOWER_PREFIX


def removal_plan(config, drop):
    """Drop towers ``drop``: delete their weights, renumber later towers, keep their ``mlp1`` input block as
    zeros (``encslim_removed_dims``). Exact (A2: the LayerNorm sees the zeros the mask gave it)."""
    slots = list(config.slot_names)
    drop = check_drop(slots, drop)
    order = list(config.tower_slots)
    kept = [s for s in order if s not in drop]
    renames = {}
    for new, slot in enumerate(kept):
        old = order.index(slot)
        if old != new:
            renames[f"{TOWER_PREFIX}{old}."] = f"{TOWER_PREFIX}{new}."
    removed = {**config.encslim_removed_dims, **{s: config.slot_width(s) for s in drop}}
    patch = [{"op": "set", "path": "vision_config.vision_path",
              "value": "MOB:" + ";".join(ORIGINAL_NAMES[s] for s in kept)},
             {"op": "set", "path": REMOVED_KEY, "value": removed}]
    if CONVNEXT in drop:
        patch.append({"op": "delete", "path": f"vision_config.{CONVNEXT_SPEC_KEY}", "optional": True})
    layout = {s: (a, b) for s, a, b, _ in config.fusion_layout()}
    notes = ["A2 (LayerNorm-first mlp1): the removed tower's channels "
             + ", ".join(f"{s} [{layout[s][0]}, {layout[s][1]})" for s in drop)
             + " enter mlp1.0 as zeros, as the zero mask had them; mlp1 is unchanged, so removal is exact",
             "the pruned folder loads with encslim only: Eagle2-9B's own remote code refuses it "
             f"(Eagle2ChatModel.__init__ raises KeyError on vit_hidden_size[{', '.join(repr(s) for s in drop)}])"]
    return RemovalPlan(
        model_type=MODEL_TYPE, fusion_class=FusionClass.A2.value, slots=slots, drop=drop,
        delete_keys=[Delete(f"{TOWER_PREFIX}{order.index(s)}.", s) for s in drop],
        prefix_renames=renames, config_patch=patch, exact=True, notes=notes,
    )
