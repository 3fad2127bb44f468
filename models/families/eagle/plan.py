"""Eagle v1's removal plan: drop towers from an ``eagle_llama`` checkpoint (class A1, exact).

Follows the checkpoint layout of NVlabs/EAGLE's ``eagle/model/multimodal_encoder/
multi_backbone_channel_concatenation_encoder.py`` (the ``vision_towers`` ModuleList, indexed in
``mm_vision_tower`` order; the 32x32 grids concatenated on channels in that order) and
``eagle/model/multimodal_projector/builder.py`` (``mlp2x_gelu``: ``mm_projector.0`` is the first
Linear, ``mm_hidden_size`` wide). A zero-masked tower's columns of ``mm_projector.0.weight`` multiply
zeros, so deleting them and the tower is exact.
"""

from ...masking import FusionClass
from ...plan import Delete, RemovalPlan, Slice, channel_ranges, check_drop
from .configuration import CONVNEXT, PROJECTOR_WEIGHT, TOWER_PREFIX, join_towers


def removal_plan(config, drop):
    """Drop towers ``drop``: delete their prefixes, renumber later towers, slice ``mm_projector.0.weight``.

    Exact for every tower (class A1 with the paper's zero mask).
    """
    names = list(config.tower_names)
    drop = check_drop(names, drop)
    widths = {n: config.tower_width(n) for n in names}
    keep, removed = channel_ranges(names, widths, drop)
    kept = [n for n in names if n not in drop]
    renames = {}
    for new, name in enumerate(kept):
        old = names.index(name)
        if old != new:
            renames[f"{TOWER_PREFIX}{old}."] = f"{TOWER_PREFIX}{new}."
    patch = [{"op": "set", "path": "mm_vision_tower", "value": join_towers(kept)},
             {"op": "set", "path": "mm_hidden_size", "value": sum(widths[n] for n in kept)}]
    patch += [{"op": "delete", "path": f"eagle_tower_specs.{n}", "optional": True} for n in drop]
    notes = ["A1: a zero-masked tower's columns of mm_projector.0.weight multiply zeros, so deleting them "
             "(and the tower) is exact"]
    if CONVNEXT in drop:
        notes.append("convnext-1024 dropped: NVlabs/EAGLE's own loader needs it (it takes that tower's image "
                     "processor); the result loads with encslim")
    return RemovalPlan(
        model_type="eagle_llama", fusion_class=FusionClass.A1.value, slots=names, drop=drop,
        delete_keys=[Delete(f"{TOWER_PREFIX}{names.index(n)}.", n) for n in drop],
        slices=[Slice(PROJECTOR_WEIGHT, 1, sum(widths.values()), keep, removed)],
        prefix_renames=renames, config_patch=patch, exact=True, notes=notes,
    )
