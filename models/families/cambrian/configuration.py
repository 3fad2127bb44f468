"""Cambrian-1's config: ``CambrianConfig`` (a ``LlamaConfig``) and the encoder list it names.

Follows ``cambrian/model/language_model/cambrian_llama.py`` (``CambrianConfig``, ``model_type
cambrian_llama``; the released checkpoints say ``llava_llama``) and the keys
``cambrian_arch.CambrianMetaModel.__init__`` reads:

- ``mm_vision_tower_aux_list``: the encoders' hub ids, in connector order (Cambrian-8B:
  ``siglip/CLIP-ViT-SO400M-14-384``, ``openai/clip-vit-large-patch14-336``,
  ``facebook/dinov2-giant-res378``, ``clip-convnext-XXL-multi-stage``), and
  ``mm_vision_tower_aux_token_len_list`` (each one's token count after resampling: 576, 576, 576, 9216);
- ``mm_projector_type: sva``, ``vision_hidden_size`` (1024), ``connector_depth`` (3),
  ``num_query_group`` (1), ``query_num_list`` ([576]), ``image_token_len`` (576),
  ``image_position``, ``connector_only``, ``num_of_vision_sampler_layers`` (10),
  ``start_of_vision_sampler_layers`` (0), ``stride_of_vision_sampler_layers`` (3);
- ``mm_vision_select_layer`` (-2, CLIP's ``hidden_states`` index) and ``mm_vision_select_feature``.

Slots are short names derived from the hub ids with the original builder's own substring rules
(``multimodal_encoder/builder.build_vision_tower_aux_list``): ``openai/clip`` -> ``clip``,
``siglip`` -> ``siglip``, ``clip-convnext`` -> ``convnext``, ``dinov2`` -> ``dinov2``.

encslim-only keys (absent from real checkpoints): ``encslim_encoder_paths`` (``{slot: local
folder}``, see :mod:`encslim.models.external`) and ``cambrian_encoder_specs`` (``{slot:
{"image_size", "width"}}`` overriding the real encoders' input size and feature width: tiny models). When
a folder's config gives no width, the adapter reads it off the checkpoint's ``mm_projector_aux_{i}`` (as the
original reads it off the loaded tower), so a config as the original saved it loads as it is.
``token_budget`` (encslim's visual-token budget, :mod:`encslim.models.tokens`) is kept as a plain attribute, so
``config.json`` carries it through save and load; the original code ignores it (:func:`budget_refusal`).
"""

import re

from transformers import LlamaConfig

from ...external import CONFIG_KEY
from ...tokens import TokenBudget

MODEL_TYPE = "cambrian_llama"
IMAGE_TOKEN_INDEX = -200  # cambrian/constants.py
CAMBRIAN_KEYS = ("mm_vision_tower_aux_list", "mm_vision_tower_aux_token_len_list", "vision_hidden_size",
                 "query_num_list", "num_query_group", "image_token_len", "connector_depth")
# kind -> (hub id substring, builder order); the first rule that matches a hub id wins, as in the builder
KIND_RULES = (("clip", "openai/clip"), ("siglip", "siglip"), ("convnext", "clip-convnext"), ("dinov2", "dinov2"))
KINDS = tuple(k for k, _ in KIND_RULES)
CONVNEXT_STAGE_DIMS = {"clip-convnext-xxl": (384, 768, 1536, 3072), "clip-convnext-l": (192, 384, 768, 1536)}
DINO_WIDTHS = {"giant": 1536, "large": 1024, "base": 768, "small": 384}


def tower_kind(hub_id):
    """The encoder kind of a hub id (``clip``, ``siglip``, ``convnext``, ``dinov2``), or ``None``."""
    low = str(hub_id).lower()
    return next((kind for kind, needle in KIND_RULES if needle in low), None)


def _res(hub_id, default):
    match = re.search(r"-res(\d+)", str(hub_id))
    return int(match.group(1)) if match else default


def real_geometry(hub_id):
    """``{"image_size", "width"}`` of the real encoder a hub id names (what the original's towers report).

    - SigLIP (``siglip_encoder.extract_res_interp``): 384 px when the id says ``384`` (else 224), width 1152.
    - CLIP-L/14-336 (``clip_encoder``): 336 px (224 without ``336``), width 1024.
    - DINOv2 (``dino_encoder``): the ``-res`` size (default 518 px), width by model size.
    - ConvNeXt (``clip_convnext_encoder``): the ``-res`` size (default 1024 px), width of the last
      stage, or of all four stages with ``multi-stage``.
    """
    kind, low = tower_kind(hub_id), str(hub_id).lower()
    if kind == "siglip":
        return {"image_size": _res(hub_id, 384 if "384" in low else 224), "width": 1152}
    if kind == "clip":
        return {"image_size": 336 if "336" in low else 224, "width": 1024}
    if kind == "dinov2":
        width = next((w for size, w in DINO_WIDTHS.items() if f"dinov2-{size}" in low), 1024)
        return {"image_size": _res(hub_id, 518), "width": width}
    if kind == "convnext":
        dims = next((d for prefix, d in CONVNEXT_STAGE_DIMS.items() if low.startswith(prefix)), (384, 768, 1536, 3072))
        return {"image_size": _res(hub_id, 1024), "width": sum(dims) if "multi-stage" in low else dims[-1]}
    return {}


def slot_names(hub_ids):
    """Slot names of the encoder hub ids: their kinds, numbered when a kind repeats (``clip``, ``clip_2``)."""
    names, seen = [], {}
    for hub_id in hub_ids:
        kind = tower_kind(hub_id) or "encoder"
        seen[kind] = seen.get(kind, 0) + 1
        names.append(kind if seen[kind] == 1 else f"{kind}_{seen[kind]}")
    return names


def external_slots(config_dict):
    """The slots of a ``config.json`` dict, whose encoders the checkpoint does not hold (every one):
    what ``--encoder SLOT=PATH`` may name (the family record's ``external_encoders``)."""
    return slot_names(config_dict.get("mm_vision_tower_aux_list") or [])


def is_cambrian_config(config_dict):
    """Whether a ``config.json`` dict is Cambrian-1 with the SVA connector (by its keys, not ``model_type``)."""
    return (str(config_dict.get("mm_projector_type", "")) == "sva"
            and isinstance(config_dict.get("mm_vision_tower_aux_list"), list))


class CambrianConfig(LlamaConfig):
    """``cambrian_llama``: Llama plus Cambrian's connector keys (see the module docstring)."""

    model_type = MODEL_TYPE

    def __init__(self, mm_vision_tower_aux_list=None, mm_vision_tower_aux_token_len_list=None,
                 mm_projector_type="sva", vision_hidden_size=1024, connector_depth=3, num_query_group=1,
                 query_num_list=None, image_token_len=576, image_position=91, connector_only=False,
                 num_of_vision_sampler_layers=10, start_of_vision_sampler_layers=0,
                 stride_of_vision_sampler_layers=3, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                 cambrian_encoder_specs=None, **kwargs):
        paths = kwargs.pop(CONFIG_KEY, None)
        self.mm_vision_tower_aux_list = list(mm_vision_tower_aux_list or [
            "siglip/CLIP-ViT-SO400M-14-384", "openai/clip-vit-large-patch14-336", "facebook/dinov2-giant-res378",
            "clip-convnext-XXL-multi-stage"])
        self.mm_vision_tower_aux_token_len_list = list(mm_vision_tower_aux_token_len_list or [576, 576, 576, 9216])
        self.mm_projector_type = mm_projector_type
        self.vision_hidden_size = int(vision_hidden_size)
        self.connector_depth = int(connector_depth)
        self.num_query_group = int(num_query_group)
        self.query_num_list = list(query_num_list or [576])
        self.image_token_len = int(image_token_len)
        self.image_position = int(image_position)
        self.connector_only = bool(connector_only)
        self.num_of_vision_sampler_layers = int(num_of_vision_sampler_layers)
        self.start_of_vision_sampler_layers = int(start_of_vision_sampler_layers)
        self.stride_of_vision_sampler_layers = int(stride_of_vision_sampler_layers)
        self.mm_vision_select_layer = int(mm_vision_select_layer)
        self.mm_vision_select_feature = mm_vision_select_feature
        self.cambrian_encoder_specs = dict(cambrian_encoder_specs or {})
        if paths:
            setattr(self, CONFIG_KEY, dict(paths))
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ the encoders
    @property
    def slot_names(self):
        return slot_names(self.mm_vision_tower_aux_list)

    def slot_index(self, slot):
        return self.slot_names.index(slot)

    def hub_id(self, slot):
        return self.mm_vision_tower_aux_list[self.slot_index(slot)]

    def kind(self, slot):
        return tower_kind(self.hub_id(slot))

    def geometry(self, slot):
        """``{"image_size", "width"}`` of slot's encoder: the real encoder's, with the spec's overrides."""
        return {**real_geometry(self.hub_id(slot)), **dict(self.cambrian_encoder_specs.get(slot) or {})}

    def token_len(self, slot):
        return int(self.mm_vision_tower_aux_token_len_list[self.slot_index(slot)])

    @property
    def encoder_paths(self):
        return dict(getattr(self, CONFIG_KEY, None) or {})

    def window_sides(self, query_num):
        """``cross_att_token_len_list``: each encoder's window side for ``query_num`` queries."""
        side = int(query_num ** 0.5)
        return [int(n ** 0.5) // side for n in self.mm_vision_tower_aux_token_len_list]

    @property
    def sampler_layer_indices(self):
        """The decoder layers after which ``vision_sampler_layers[j]`` runs: ``start + j * stride``."""
        if self.connector_only:
            return []
        return [self.start_of_vision_sampler_layers + j * self.stride_of_vision_sampler_layers
                for j in range(self.num_of_vision_sampler_layers)]


def budget_refusal(config, budget):
    """Why ``config`` cannot take the token budget ``budget`` (a :class:`TokenBudget`), or ``None`` when it can.

    The image tokens are the ``image_token_len`` query grid after ``mm_projector``, unpadded per image, each
    row ended by ``image_newline``. Pooling that grid (rows stay rows, newlines end the pooled rows) is what a
    budget can do, and only without sampler layers inside the LLM: those re-query every image token against
    its window of the full grid (position embeddings sized for it).
    """
    if budget is None or not budget.active:
        return None
    if not config.connector_only:
        side = int(config.image_token_len ** 0.5)
        return (f"Cambrian's sampler layers inside the LLM (after decoder layers {config.sampler_layer_indices}) "
                f"re-query every image token against its window of the {side}x{side} query grid, so a reduced grid "
                "has no windows to query; only a connector_only Cambrian takes a token budget")
    if budget.method != "pool":
        return (f"Cambrian's image rows each end in an image_newline token, and the {budget.method} method keeps "
                "tokens whatever their rows, so the prompt could not know how many rows (newlines) remain; "
                "use --token-method pool")
    return None


def budget_grid(grid, budget: TokenBudget | None):
    """The ``(h, w)`` image grid the LLM reads under ``budget`` (pool: the pooled grid; none: ``grid``)."""
    return tuple(budget.grid_out(grid)) if budget is not None and budget.active else tuple(grid)
