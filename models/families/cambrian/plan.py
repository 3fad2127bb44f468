"""Cambrian-1's removal plan: drop encoders from a ``cambrian_llama`` checkpoint (class C, exact).

Follows the checkpoint layout of cambrian-mllm/cambrian's ``cambrian/model/cambrian_arch.py``
(``CambrianMetaModel``: one ``mm_projector_aux_{i}`` per encoder of ``mm_vision_tower_aux_list``, the
``vision_sampler_{g}`` connector groups and the ``vision_sampler_layers`` inside the LLM) and
``cambrian/model/vision_sampler.py`` (``VisionCrossAttentionLayer``: ``k_proj_{i}``/``v_proj_{i}`` and,
for windows wider than one token, ``pos_embed_{i}`` per encoder). A removal-masked encoder's keys take
no part in any cross attention, so deleting them is exact.
"""

from ...external import CONFIG_KEY
from ...masking import FusionClass
from ...plan import Delete, RemovalPlan, check_drop
from .configuration import MODEL_TYPE


def sampler_prefixes(config):
    """``(prefix, window sides)`` of every cross-attention layer: connector groups, then LLM samplers."""
    out = []
    for g, query_num in enumerate(config.query_num_list):
        sides = config.window_sides(query_num)
        out += [(f"model.vision_sampler_{g}.layers.{layer}.", sides) for layer in range(config.connector_depth)]
    if not config.connector_only:
        sides = config.window_sides(config.image_token_len)
        out += [(f"model.vision_sampler_layers.{j}.layers.0.", sides) for j in range(config.num_of_vision_sampler_layers)]
    return out


def removal_plan(config, drop):
    """Drop encoders ``drop``: their aux projector, their K/V projections and position embedding in every
    cross-attention layer; renumber the rest; shrink the config lists. Exact for every encoder (class C)."""
    names = config.slot_names
    drop = check_drop(names, drop)
    kept = [n for n in names if n not in drop]
    deletes, renames, prefix_renames = [], {}, {}
    layers = sampler_prefixes(config)
    for slot in drop:
        i = names.index(slot)
        deletes.append(Delete(f"model.mm_projector_aux_{i}.", slot))
        for prefix, sides in layers:
            deletes += [Delete(f"{prefix}cross_attn.k_proj_{i}.", slot), Delete(f"{prefix}cross_attn.v_proj_{i}.", slot)]
            if sides[i] > 1:
                deletes.append(Delete(f"{prefix}pos_embed_{i}", slot, prefix=False))
    for new, slot in enumerate(kept):
        old = names.index(slot)
        if old == new:
            continue
        prefix_renames[f"model.mm_projector_aux_{old}."] = f"model.mm_projector_aux_{new}."
        for prefix, sides in layers:
            for proj in ("k_proj", "v_proj"):
                prefix_renames[f"{prefix}cross_attn.{proj}_{old}."] = f"{prefix}cross_attn.{proj}_{new}."
            if sides[old] > 1:
                renames[f"{prefix}pos_embed_{old}"] = f"{prefix}pos_embed_{new}"
    keep_index = [names.index(n) for n in kept]
    patch = [{"op": "set", "path": "mm_vision_tower_aux_list",
              "value": [config.mm_vision_tower_aux_list[i] for i in keep_index]},
             {"op": "set", "path": "mm_vision_tower_aux_token_len_list",
              "value": [config.mm_vision_tower_aux_token_len_list[i] for i in keep_index]}]
    patch += [{"op": "delete", "path": f"cambrian_encoder_specs.{n}", "optional": True} for n in drop]
    paths = config.encoder_paths
    if paths:
        patch.append({"op": "set", "path": CONFIG_KEY, "value": {n: paths[n] for n in kept if n in paths}})
    notes = ["C: a removal-masked encoder's keys take no part in any cross attention, so deleting its aux "
             "projector, K/V projections and position embeddings is exact"]
    if names[0] in drop:
        notes.append(f"{names[0]} supplied the SVA's global context (the token mean of encoder 0); {kept[0]} "
                     f"supplies it now, exactly as the removal mask computed, but proj_context was trained on "
                     f"{names[0]}'s mean: expect a larger drop than its keys alone explain")
    return RemovalPlan(model_type=MODEL_TYPE, fusion_class=FusionClass.C.value, slots=names, drop=drop,
                       delete_keys=deletes, renames=renames, prefix_renames=prefix_renames, config_patch=patch,
                       exact=True, notes=notes)
