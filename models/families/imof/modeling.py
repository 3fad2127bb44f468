"""I-MoF's modules (tsb0601/MMVP), parameter names equal to the original checkpoint's.

Follows ``LLaVA/llava/model`` of tsb0601/MMVP:

- ``llava_arch.LlavaMetaModel``: a LLaVA-1.5 Llama with TWO towers built from the same
  ``mm_vision_tower`` (``openai/clip-vit-large-patch14-336``) and two ``mlp2x_gelu`` projectors
  built from the same config (``mm_hidden_size`` 1024 -> ``hidden_size``): ``vision_tower`` +
  ``mm_projector`` (CLIP) and ``dino_tower`` + ``dino_mm_projector`` (DINOv2).
- ``multimodal_encoder/clip_encoder.CLIPVisionTower``: ``self.vision_tower = CLIPVisionModel``
  (transformers 4.37, so keys ``model.vision_tower.vision_tower.vision_model.*``);
  ``hidden_states[mm_vision_select_layer]`` (-2), CLS dropped for ``patch``.
- ``multimodal_encoder/dino_encoder.DINOVisionTower``: ``self.vision_tower =
  torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')`` (keys
  ``model.dino_tower.vision_tower.*``, torch.hub naming, :mod:`.dinov2`) and ``self.clip_vision_tower =
  CLIPVisionModel`` (a second CLIP copy used only for ``dtype``/``device``: keys
  ``model.dino_tower.clip_vision_tower.vision_model.*``). Features: ``forward_features(images)
  ["x_prenorm"]`` (the last block's output BEFORE the final ``norm``), CLS dropped for ``patch``.
  ``select_layer`` is ignored. Its input is the SAME tensor as CLIP's (the CLIP processor's
  336 px crop, CLIP mean/std), so DINOv2's 37x37 position table is interpolated to 24x24.
- ``multimodal_projector/builder.build_vision_projector``: ``linear`` or ``mlp{N}x_gelu``.
- ``prepare_inputs_labels_for_multimodal_withdino``: per image, ``merged = torch.empty(2 * N, D);
  merged[0::2] = clip; merged[1::2] = dino`` (both AFTER their projectors), spliced in at the one
  ``-200`` placeholder: the LLM sees ``c0 d0 c1 d1 ... c575 d575`` (1152 tokens)
  (:func:`fuse_towers`, :func:`embed_towers`).

A visual-token budget (encslim's ``config.token_budget``, absent from MMVP) reduces each tower's projected
grid on its own, before the interleave (:func:`reduce_tower`): both towers keep the same number of tokens,
so the LLM still sees ``c0 d0 c1 d1 ...``, with ``tokens_out(grid)`` pairs (pool: each pair is the same
window of both towers; attention: each tower's own top-k, in grid order).

The fusion is class B (DESIGN §1): removing a tower drops its tokens (and both its tower and its
projector), which is exact.
"""

import re

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from ....errors import ConfigError
from ...layout import ROTARY_INV_FREQ, under_vision_model
from ...llava_processing import IMAGE_TOKEN_INDEX
from ...masking import check_mask_set, mask_feature
from ...tokens import budget_of, reduce_grids, scorer_for
from .configuration import MODEL_TYPE, ImofConfig
from .dinov2 import DinoVisionTransformer


def _clip_holder(config):
    """``CLIPVisionModel`` one level down under ``vision_model``: transformers 4.37's key names
    (transformers 5's ``CLIPVisionModel`` holds the transformer's modules itself)."""
    from transformers import CLIPVisionModel

    return under_vision_model(CLIPVisionModel(config.clip_vision_config()))


def _select(features, select_feature):
    return features[:, 1:] if select_feature == "patch" else features


class CLIPVisionTower(nn.Module):
    """clip_encoder.py ``CLIPVisionTower.forward``: ``hidden_states[select_layer]``, CLS dropped for ``patch``."""

    def __init__(self, config):
        super().__init__()
        self.select_layer = config.mm_vision_select_layer
        self.select_feature = config.mm_vision_select_feature
        self.vision_tower = _clip_holder(config)

    def forward(self, images):
        model = self.vision_tower.vision_model
        dtype = model.embeddings.patch_embedding.weight.dtype
        out = model(images.to(dtype), output_hidden_states=True)
        return _select(out.hidden_states[self.select_layer], self.select_feature).to(images.dtype)


class DINOVisionTower(nn.Module):
    """dino_encoder.py ``DINOVisionTower.forward``: ``forward_features(images)["x_prenorm"]``, CLS dropped
    for ``patch``. ``clip_vision_tower`` (never run) is the original's CLIP copy, kept for its keys."""

    def __init__(self, config):
        super().__init__()
        self.select_feature = config.mm_vision_select_feature
        if config.imof_dino_clip_copy:
            self.clip_vision_tower = _clip_holder(config)
        self.vision_tower = DinoVisionTransformer(config.dino_spec())

    def forward(self, images):
        dtype = self.vision_tower.patch_embed.proj.weight.dtype
        out = self.vision_tower.forward_features(images.to(dtype))
        return _select(out["x_prenorm"], self.select_feature).to(images.dtype)


def build_vision_projector(config):
    """multimodal_projector/builder.py ``build_vision_projector``: ``linear`` or ``mlp{N}x_gelu``."""
    kind = config.mm_projector_type
    if kind == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    depth = int(re.match(r"^mlp(\d+)x_gelu$", kind).group(1))
    modules = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
    for _ in range(1, depth):
        modules += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
    return nn.Sequential(*modules)


def interleave(parts):
    """Token-interleave equally long ``(B, N, H)`` tensors: ``a0 b0 a1 b1 ...`` (one tensor: itself)."""
    if len(parts) == 1:
        return parts[0]
    b, n, h = parts[0].shape
    return torch.stack(parts, dim=2).reshape(b, n * len(parts), h)


def encode_towers(model, pixel_values, towers=None):
    """``{tower: (B, N, D)}``: each present tower's features of ``pixel_values`` (``towers``: a subset)."""
    pixels = pixel_values.to(model.device, model.dtype)
    return {t: model.model.tower(t)(pixels) for t in model.config.imof_towers if towers is None or t in set(towers)}


def reduce_tower(model, tower, projected):
    """Tower ``tower``'s projected ``(B, N, H)`` grid under ``config.token_budget`` (none: as it is)."""
    budget = budget_of(model.config)
    if budget is None:
        return projected
    scorer = scorer_for(model) if budget.method == "attention" else None
    return reduce_grids(projected, [model.config.tower_grid(tower)], budget, scorer)


def fuse_towers(model, features, masked=frozenset(), mask_mode="removal", mask_values=None):
    """Each tower's projected tokens, reduced to the token budget, interleaved
    (``prepare_inputs_labels_for_multimodal_withdino``); masked towers' tokens dropped (removal) or their
    features replaced before the projector."""
    config = model.config
    masked = check_mask_set(config.imof_towers, masked, mask_mode, mask_values)
    ref = next(v for k, v in features.items() if k not in masked) if set(features) - masked \
        else next(iter(features.values()))
    parts = []
    for tower in config.imof_towers:
        if tower in masked and mask_mode == "removal":
            continue
        feature = features[tower] if tower not in masked else \
            mask_feature(ref, config.tower_width(tower), mask_mode, (mask_values or {}).get(tower))
        parts.append(reduce_tower(model, tower, model.model.projector(tower)(feature)))
    return interleave(parts)


def embed_towers(model, input_ids, features, masked=frozenset(), mask_mode="removal", mask_values=None):
    """The token embeddings of ``input_ids`` with the fused features in the ``-200`` positions."""
    image = input_ids == IMAGE_TOKEN_INDEX
    embeds = model.get_input_embeddings()(input_ids.masked_fill(image, 0))
    if not features:
        return embeds
    fused = fuse_towers(model, features, masked, mask_mode, mask_values)
    if int(image.sum()) != fused.shape[0] * fused.shape[1]:
        budget = budget_of(model.config)
        raise ConfigError(f"the prompts hold {int(image.sum())} image tokens but {fused.shape[0]} image(s) give "
                          f"{fused.shape[1]} each (token budget {budget.label if budget else '1'}): the "
                          "processor's token_budget differs from the model's")
    return embeds.masked_scatter(image.unsqueeze(-1), fused.to(embeds.dtype))


class ImofLlamaModel(LlamaModel):
    """``LlavaLlamaModel`` of MMVP: ``LlamaModel`` + ``vision_tower``/``mm_projector`` + ``dino_tower``/
    ``dino_mm_projector`` (only the towers of ``imof_towers``)."""

    config_class = ImofConfig

    def __init__(self, config):
        super().__init__(config)
        if "clip" in config.imof_towers:
            self.vision_tower = CLIPVisionTower(config)
        if "dinov2" in config.imof_towers:
            self.dino_tower = DINOVisionTower(config)
        if "clip" in config.imof_towers:
            self.mm_projector = build_vision_projector(config)
        if "dinov2" in config.imof_towers:
            self.dino_mm_projector = build_vision_projector(config)

    def tower(self, name):
        return self.vision_tower if name == "clip" else self.dino_tower

    def projector(self, name):
        return self.mm_projector if name == "clip" else self.dino_mm_projector


class ImofLlamaForCausalLM(LlamaForCausalLM):
    """``LlavaLlamaForCausalLM`` of MMVP. ``forward(input_ids, pixel_values, ...)`` runs the whole model
    (the ``-200`` placeholder run expanded, as :class:`ImofProcessor` writes it); without pixels it is the LM."""

    config_class = ImofConfig
    _no_split_modules = ["LlamaDecoderLayer", "CLIPVisionTower", "DINOVisionTower"]
    # MMVP trains with transformers 4.31, whose Llama saves each layer's rotary table: recomputed here
    _keys_to_ignore_on_load_unexpected = [ROTARY_INV_FREQ.pattern]

    def __init__(self, config):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = ImofLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, pixel_values=None, inputs_embeds=None, **kwargs):
        if pixel_values is not None:
            features = encode_towers(self, pixel_values)
            inputs_embeds, input_ids = embed_towers(self, input_ids.to(self.device), features), None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)


def register_auto_classes():
    """Make ``AutoConfig``/``AutoModelForCausalLM`` know ``imof_llama``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(MODEL_TYPE, ImofConfig)
    except ValueError:
        pass
    try:
        AutoModelForCausalLM.register(ImofConfig, ImofLlamaForCausalLM)
    except ValueError:
        pass
