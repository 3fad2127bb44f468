"""Eagle2's modules (nvidia/Eagle2-9B), parameter names equal to the original checkpoint's.

Follows Eagle2-9B's remote code (hub only; read from the public-code index: ``modeling_eagle_chat.py``
id 334094437, ``multi_backbone_channel_concatenation_encoder.py`` id 1157037724) and the tower files of
NVlabs/Eagle 783f656 (``Eagle2_5/eaglevl/model/multimodal_encoder/{siglip_vision_tower,convnext_encoder,
convnext}.py``, ``Eagle2_5/eaglevl/model/siglip/modeling_siglip.py``; eager attention, flash_attn absent).
``tests/parity/eagle2/mob`` holds a model that code built and saved, and its outputs (towers within 2e-6,
logits within 3e-7 of encslim's):

- ``siglip_vision_tower.py`` (``SiglipVisionTower``): ``SiglipVisionTower.vision_tower = SiglipVisionModel``
  (transformers 4.37: ``vision_model.*`` inside, pooling ``head.*`` included); ``last_hidden_state``
  (post-LayerNorm, B, 32*32, 1152).
- ``convnext_encoder.py`` (``ConvNextVisionTower``) over ``convnext.py``: ``convnext_xxlarge`` (Eagle's timm
  copy: layer scale ``weight``, not ``gamma``; shared, :mod:`encslim.models.convnext`). It first maps SigLIP
  normalisation to CLIP's (``slip_to_clip``, ``normalize_type: siglip``) and returns its LAST stage
  (B, 16*16, 3072).
- ``multi_backbone_channel_concatenation_encoder.py``: the ``vision_towers`` ModuleList in ``vision_path``
  order; each tower gets the tile (B, 3, S, S), resized ``bilinear, align_corners=True`` when its input
  size differs (SigLIP 448: none; ConvNeXt ``convnext_img_size`` 512).
- ``modeling_eagle_chat.py`` (``Eagle2ChatModel.extract_feature``, ``moe_version_type ==
  convnext_512_siglip_448``): ONLY SigLIP is pixel-shuffled (``downsample_ratio`` 0.5: 2x2 neighbours into
  channels -> B, 16*16, 4608), then ``mlp1(cat([siglip, convnext], -1))``: SigLIP's block first (channels
  0-4608), ConvNeXt's after (4608-7680), whatever the ``vision_path`` order. LayerNorm(7680) = 3072 + 1152 * 4.
  Projector ``mlp1.0`` LayerNorm, ``mlp1.1`` Linear, GELU, ``mlp1.3`` Linear; Qwen2 as
  ``language_model.model.*`` and ``language_model.lm_head.weight``.
- Pixel shuffle channel layout: shuffled token ``(R, C)`` of the 16x16 grid holds, in channel block
  ``q = 2 * dr + dc`` (each ``D`` wide), the SigLIP token at row ``2R + dr``, column ``2C + dc``. The
  interleave stays inside SigLIP's own block, so a removed SigLIP is one contiguous zero block.

Class A2 (LayerNorm-first projector): a removed tower's block enters ``mlp1`` as zeros
(``encslim_removed_dims``), so the pruned model computes the zero-masked one exactly.

Token budget (encslim's, absent from the original): with ``token_budget`` in the config, ``forward`` reduces
each tile's projected ``side x side`` grid on its own (:meth:`Eagle2ChatModel.reduce_tiles`,
:mod:`encslim.models.tokens`) before the ``<IMG_CONTEXT>`` replacement; the processor writes that many.
"""

import math

import torch
from torch import nn
from transformers import PreTrainedModel, Qwen2ForCausalLM

from ...convnext import ConvNextVisionTower
from ...layout import under_vision_model
from ...llava_processing import CLIP_MEAN, CLIP_STD
from ...masking import mask_feature
from ...tokens import budget_of, reduce_grids, scorer_for
from .configuration import CONVNEXT, MODEL_TYPE, SIGLIP, SIGLIP_MEAN, SIGLIP_STD, Eagle2ChatConfig


class SiglipVisionTower(nn.Module):
    """``siglip_vision_tower.SiglipVisionTower``: ``SiglipVisionModel(...).last_hidden_state`` (post-LayerNorm).

    transformers 5's ``SiglipVisionModel`` holds the transformer's modules itself; the checkpoint
    (transformers 4.37) names them under ``vision_model.``, so the model sits one level down. The
    pooling head is in the checkpoint and never used: its output is not computed here.
    """

    name = SIGLIP

    def __init__(self, spec, use_head=True):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        spec = {k: v for k, v in spec.items() if k not in ("model_type", "architectures", "transformers_version")}
        self.input_image_size = int(spec["image_size"])
        config = SiglipVisionConfig(**{**spec, "vision_use_head": use_head})
        self.vision_tower = under_vision_model(SiglipVisionModel(config))
        self.hidden_size = int(spec["hidden_size"])

    def forward(self, images):
        model = self.vision_tower.vision_model
        hidden = model.embeddings(images.to(model.embeddings.patch_embedding.weight.dtype))
        hidden = model.encoder(inputs_embeds=hidden).last_hidden_state
        return model.post_layernorm(hidden)


class Eagle2ConvNextTower(ConvNextVisionTower):
    """``convnext_encoder.ConvNextVisionTower`` (Eagle2): ``slip_to_clip`` on the float32 input
    (``normalize_type: siglip``), then stem and every stage; the last stage as ``(B, H*W, C)``."""

    name = CONVNEXT

    def __init__(self, spec, input_image_size, normalize_type="siglip"):
        super().__init__({**spec, "input_image_size": input_image_size})
        self.pre_norm = normalize_type

    def forward(self, images):
        if self.pre_norm == "siglip":  # constants, not buffers: nothing to load or re-initialise
            scale = torch.tensor([s / c for s, c in zip(SIGLIP_STD, CLIP_STD)], device=images.device).view(1, 3, 1, 1)
            shift = torch.tensor([(m - c) / s for m, c, s in zip(SIGLIP_MEAN, CLIP_MEAN, CLIP_STD)],
                                 device=images.device).view(1, 3, 1, 1)
            dtype = images.dtype
            images = (images.float() * scale + shift).to(dtype)
        return super().forward(images)


def pixel_shuffle(x, scale_factor=0.5):
    """``Eagle2ChatModel.pixel_shuffle`` on a ``(B, N, C)`` token grid, reshaped as ``extract_feature`` does."""
    h = w = int(x.shape[1] ** 0.5)
    x = x.reshape(x.shape[0], h, w, -1)
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    x = x.permute(0, 2, 1, 3).contiguous()
    return x.reshape(x.shape[0], -1, x.shape[-1])


class MultiBackboneChannelConcatenationVisionTower(nn.Module):
    """The ``vision_towers`` ModuleList in ``vision_path`` order; the per-tower input resize of ``forward``."""

    def __init__(self, config):
        super().__init__()
        # the unused ConvNeXt classifier and SigLIP pooling head, sized as the checkpoint has them
        head_classes = getattr(config, "convnext_head_classes", 1000)
        siglip_head = getattr(config, "siglip_use_head", True)
        self.slots = list(config.tower_slots)
        towers = []
        for slot in self.slots:
            if slot == SIGLIP:
                towers.append(SiglipVisionTower(config.siglip_spec(), use_head=siglip_head))
            else:
                spec = {k: v for k, v in config.convnext_spec().items() if k in ("depths", "dims", "norm_eps")}
                towers.append(Eagle2ConvNextTower({**spec, "head_classes": head_classes}, config.convnext_img_size,
                                                  config.vision_config.get("normalize_type", "siglip")))
        self.vision_towers = nn.ModuleList(towers)

    def tower(self, slot):
        return self.vision_towers[self.slots.index(slot)]

    def tower_output(self, slot, x):
        import torch.nn.functional as F

        tower = self.tower(slot)
        if tower.input_image_size != x.shape[2]:
            size = (tower.input_image_size, tower.input_image_size)
            x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True).to(dtype=x.dtype)
        return tower(x)


class MultiBackboneChannelConcatenationVisionModel(nn.Module):
    """``multi_backbone_channel_concatentation_model``: holds the tower as ``vision_model``."""

    def __init__(self, config):
        super().__init__()
        self.vision_model = MultiBackboneChannelConcatenationVisionTower(config)


class Eagle2ChatModel(PreTrainedModel):
    """``modeling_eagle_chat.Eagle2ChatModel`` (MOB path): ``vision_model``, ``language_model``, ``mlp1``.

    ``forward`` with ``pixel_values`` is the original's (features replace the ``<IMG_CONTEXT>``
    embeddings); without them it is the language model's forward (cached features, generation steps).
    """

    config_class = Eagle2ChatConfig
    base_model_prefix = "eagle2"
    main_input_name = "input_ids"
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        self.vision_model = MultiBackboneChannelConcatenationVisionModel(config)
        self.language_model = Qwen2ForCausalLM(config.llm_config)
        width, hidden = config.fusion_width(), config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.post_init()
        self.generation_config = self.language_model.generation_config  # generation runs in language_model

    @property
    def towers(self):
        return self.vision_model.vision_model

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def slot_features(self, slot, pixel_values):
        """What ``slot`` puts into the concat: ConvNeXt tokens, or SigLIP tokens after the pixel shuffle."""
        feature = self.towers.tower_output(slot, pixel_values)
        if slot == SIGLIP:
            feature = pixel_shuffle(feature, self.config.downsample_ratio)
        return feature

    def fuse(self, features, masked=frozenset(), mask_mode="removal", mask_values=None):
        """``mlp1(cat(...))`` in the fixed order (SigLIP, ConvNeXt); removed towers' blocks are zeros,
        masked ones zeros (or their constant)."""
        ref = next((features[s] for s in self.config.slot_names if s in features and s not in masked), None)
        ref = ref if ref is not None else next(iter(features.values()))
        parts = []
        for slot, start, stop, removed in self.config.fusion_layout():
            if removed or slot in masked:
                value = None if removed else (mask_values or {}).get(slot)
                parts.append(mask_feature(ref, stop - start, "zero" if removed else mask_mode, value))
            else:
                parts.append(features[slot])
        fused = torch.cat(parts, dim=-1)
        weight = next(self.mlp1.parameters())  # mlp1 may be wrapped (peft modules_to_save)
        return self.mlp1(fused.to(weight.dtype))

    def extract_feature(self, pixel_values):
        return self.fuse({s: self.slot_features(s, pixel_values) for s in self.config.slot_names})

    @property
    def tile_grid(self):
        """The ``(side, side)`` grid of one tile's projected tokens (``num_image_tokens`` = side * side)."""
        side = math.isqrt(self.config.num_image_tokens)
        return side, side

    def reduce_tiles(self, tokens):
        """``(T, N, H)`` projected tile tokens under ``config.token_budget``: each tile's grid reduced on its own
        (pooled, or its top-k by the attention of the LLM's first layer) -> ``(T, k, H)``; no budget: as they are."""
        budget = budget_of(self.config)
        if budget is None:
            return tokens
        scorer = scorer_for(self.language_model) if budget.method == "attention" else None
        return reduce_grids(tokens, [self.tile_grid], budget, scorer)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, inputs_embeds=None, image_flags=None,
                **kwargs):
        if pixel_values is not None:
            embeds = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
            vit = self.reduce_tiles(self.extract_feature(pixel_values))
            if image_flags is not None:
                vit = vit[image_flags.reshape(-1) == 1]
            selected = (input_ids == self.config.img_context_token_id).unsqueeze(-1)
            inputs_embeds, input_ids = embeds.masked_scatter(selected, vit.to(embeds.dtype)), None
        return self.language_model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   **kwargs)


def register_auto_classes():
    from transformers import AutoConfig

    try:
        AutoConfig.register(MODEL_TYPE, Eagle2ChatConfig)
    except ValueError:
        pass
