"""Cambrian-1's four vision encoders, loaded from the user's local folders, and their preprocessing.

Cambrian checkpoints do not hold the encoders: ``CambrianMetaModel`` keeps them in a plain list
(``vision_tower_aux_list``, outside the module tree, so outside ``state_dict``) and each loads its
own hub id. encslim does the same with a local folder per slot (:mod:`encslim.models.external`),
in the folder layout the hub id has:

- ``siglip`` (``multimodal_encoder/siglip_encoder.SiglipVisionTower``): an open_clip folder of
  ``timm/ViT-SO400M-14-SigLIP-384`` (``open_clip_config.json`` + ``open_clip_model.safetensors``
  or ``open_clip_pytorch_model.bin``). The original runs ``clip_model.visual.trunk.forward_features``,
  a timm ``VisionTransformer``; :class:`TimmViT` re-implements that forward (patch conv, absolute
  position table, pre-norm blocks with exact-erf GELU, final ``norm``; no class token) with timm's
  parameter names, so ``visual.trunk.*`` loads as it is. 729 tokens are resized to 576 (24x24).
- ``clip`` (``clip_encoder.ClipVisionTower``): a transformers folder of
  ``openai/clip-vit-large-patch14-336``; ``CLIPVisionModel``, ``hidden_states[mm_vision_select_layer]``
  (-2), the CLS token dropped (``patch``).
- ``dinov2`` (``dino_encoder.DinoVisionTower``): a transformers folder of ``facebook/dinov2-giant``;
  ``Dinov2Model`` run at the id's ``-res`` size (378), ``last_hidden_state`` without CLS, 27x27
  resized to 24x24. Its position table is resampled as transformers 4.37.2 (Cambrian's pin) does,
  not as transformers 5 does (:func:`interpolate_pos_encoding_437`; tests/parity/cambrian/).
- ``convnext`` (``clip_convnext_encoder.CLIPConvNextTower``): an open_clip folder of
  ``laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup``; the timm ConvNeXt trunk's stem and
  four stages (Eagle's re-implementation, :mod:`encslim.models.convnext`, with timm's ``gamma``
  for the layer scale), each stage's output resized to 96x96 and concatenated (``multi-stage``).

Versions each tower follows (checked against the original's own run, tests/parity/cambrian/full: features
within 9.6e-7): SigLIP and ConvNeXt follow timm 0.9.16 (the original's pin; open_clip 2.24.0 wraps the timm
trunk); CLIP runs the installed transformers' ``CLIPVisionModel``, whose outputs equal transformers 4.37.2's;
DINOv2 runs the installed ``Dinov2Model`` with transformers 4.37.2's position resampling installed (see
:func:`interpolate_pos_encoding_437`; transformers 5's own is O(1) off at 378 px).

open_clip folders are read as the hub stores them (``open_clip_config.json`` plus
``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors``): the trunk's widths and depths come from
its weights, the head count and LayerNorm eps from the timm model name; the features' width must be what the
checkpoint's ``mm_projector_aux_i`` takes (the config names hub ids only; the adapter reads the widths off the
checkpoint). Folders come from ``--encoder``, ``encslim_encoder_paths`` or the local Hugging Face cache
(:mod:`.hub`).

Every resize is ``F.interpolate(bilinear, align_corners=False)`` in float32, as the towers'
``interpolate`` methods do. Weights are read with safetensors; a ``.bin`` only with
``torch.load(weights_only=True)``. Keys are checked strictly against the module (missing or
mis-shaped: an error naming them); the parts of a folder Cambrian never runs (the text tower,
SigLIP's attention-pool head, ConvNeXt's head) are ignored.

Preprocessing (``mm_utils.process_images``): per encoder, ``expand2square`` with the colour of its
processor's ``image_mean`` (``int(x * 255)``), a PIL resize to its input size (bicubic), then its
normalisation. The open_clip towers' ``ProcessorWrapper`` reports CLIP's mean as ``image_mean``
whatever the model's own normalisation, so SigLIP and ConvNeXt pad with CLIP's mean colour; that
quirk of the original is kept.
"""

import math
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import ModelLoadError
from ...convnext import ConvNeXt
from ...layout import BackboneDeviceMixin, Mlp
from ...llava_processing import CLIP_MEAN, CLIP_STD, expand2square  # LLaVA's, as Cambrian's mm_utils
from .folders import (OPEN_CLIP_CONFIG, TIMM_CONVNEXTS, TIMM_VITS, TRUNK_OVERRIDES, TRUNK_PREFIX, _check_width, _json,
                      _preprocess_json, convnext_args, hf_encoder, read_tensors, strict_fill, vit_args)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------ modules
class TimmAttention(nn.Module):
    """timm ``Attention`` (fused qkv with bias, no q/k norm): SDPA, then ``proj``."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TimmBlock(nn.Module):
    """timm ``Block`` without layer scale: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, dim, num_heads, mlp_hidden, eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = TimmAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmViT(nn.Module):
    """timm ``VisionTransformer.forward_features`` of the SigLIP trunk (``class_token=False``, no ``norm_pre``)."""

    def __init__(self, embed_dim, depth, num_heads, mlp_hidden, patch_size, image_size):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2, embed_dim))
        self.blocks = nn.Sequential(*[TimmBlock(embed_dim, num_heads, mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.embed_dim = embed_dim

    def forward_features(self, x):
        x = self.patch_embed(x) + self.pos_embed
        return self.norm(self.blocks(x))


def resample_tokens(features, tokens):
    """(B, N, C) -> (B, tokens, C): bilinear (align_corners=False) on the square grids, in float32."""
    b, n, c = features.shape
    if n == tokens:
        return features
    side, target = int(n ** 0.5), int(tokens ** 0.5)
    grid = features.view(b, side, side, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(target, target), mode="bilinear", align_corners=False)
    return grid.to(features.dtype).permute(0, 2, 3, 1).flatten(1, 2)


class Tower(BackboneDeviceMixin, nn.Module):
    """One encoder: ``forward(pixels)`` -> (B, token_len, width); ``vision_tower`` is the backbone."""

    def __init__(self, slot, kind, vision_tower, token_len, preprocess):
        super().__init__()
        self.slot, self.kind, self.token_len = slot, kind, int(token_len)
        self.vision_tower = vision_tower
        self.preprocess = preprocess  # {"image_size", "mean", "std", "pad_mean"}


class SiglipTower(Tower):
    def forward(self, images):
        features = self.vision_tower.forward_features(images.to(self.device, self.dtype))
        return resample_tokens(features, self.token_len)


class ClipTower(Tower):
    def __init__(self, *args, select_layer=-2, select_feature="patch"):
        super().__init__(*args)
        self.select_layer, self.select_feature = select_layer, select_feature

    def forward(self, images):
        out = self.vision_tower(images.to(self.device, self.dtype), output_hidden_states=True)
        features = out.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            features = features[:, 1:]
        return resample_tokens(features.to(images.dtype), self.token_len)


def interpolate_pos_encoding_437(embeddings, tokens, height, width):
    """DINOv2's position table resampled as transformers 4.37 does (Cambrian's pinned version).

    ``Dinov2Embeddings.interpolate_pos_encoding`` of transformers 4.37.2: bicubic (align_corners False)
    with ``scale_factor = (h // patch + 0.1) / sqrt(N)`` per side. transformers 5 resizes to an explicit
    ``size`` instead, which samples other points of the 37x37 table: at Cambrian's 378 px the tower's
    outputs move by O(1) (tests/parity/cambrian/: 1.2 of 3.9 on a small random tower; 2e-6 with this).
    Installed on the ``Dinov2Model``'s embeddings as a bound method (``embeddings`` is that module).
    """
    num_patches = tokens.shape[1] - 1
    num_positions = embeddings.position_embeddings.shape[1] - 1
    if num_patches == num_positions and height == width:
        return embeddings.position_embeddings
    class_pos = embeddings.position_embeddings[:, :1]
    patch_pos = embeddings.position_embeddings[:, 1:]
    dim = tokens.shape[-1]
    patch = embeddings.config.patch_size
    side = math.sqrt(num_positions)
    rows, cols = height // patch + 0.1, width // patch + 0.1
    grid = patch_pos.reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.to(torch.float32), scale_factor=(float(rows / side), float(cols / side)),
                         mode="bicubic", align_corners=False).to(patch_pos.dtype)
    if grid.shape[-2:] != (int(rows), int(cols)):
        raise ValueError(f"DINOv2 position table resampled to {tuple(grid.shape[-2:])}, not {(int(rows), int(cols))}")
    return torch.cat((class_pos, grid.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


class DinoTower(Tower):
    def forward(self, images):
        features = self.vision_tower(images.to(self.device, self.dtype)).last_hidden_state[:, 1:]
        return resample_tokens(features.to(images.dtype), self.token_len)


class ConvNextTower(Tower):
    def __init__(self, *args, multi_stage=True):
        super().__init__(*args)
        self.multi_stage = multi_stage

    def forward(self, images):
        side = int(self.token_len ** 0.5)
        x = self.vision_tower.stem(images.to(self.device, self.dtype))
        stages = []
        for stage in self.vision_tower.stages:
            x = stage(x)
            stages.append(x)
        if not self.multi_stage:
            stages = stages[-1:]
        out = []
        for feature in stages:
            feature = F.interpolate(feature.float(), size=(side, side), mode="bilinear", align_corners=False)
            out.append(feature.to(x.dtype).flatten(2, 3).permute(0, 2, 1))
        return torch.cat(out, -1)


# ------------------------------------------------------------------------------------ folders
def build_tower(slot, kind, folder, config):
    """The :class:`Tower` of ``slot`` from its local ``folder``, loaded strictly.

    open_clip folders are read as the hub stores them (``open_clip_config.json`` and
    ``open_clip_pytorch_model.bin``/``.safetensors``); the trunk's sizes come from its weights, the head count
    and LayerNorm eps from the timm model name (``encslim_trunk`` in the config, written by older tiny
    folders, overrides them). The features' width is checked against the aux projector's.
    """
    geometry, token_len = config.geometry(slot), config.token_len(slot)
    hub_id = config.hub_id(slot)
    known_width = (config.cambrian_encoder_specs.get(slot) or {}).get("width")  # the checkpoint's, when read
    if kind in ("siglip", "convnext"):
        cfg = _json(Path(folder) / OPEN_CLIP_CONFIG)
        name = cfg["model_cfg"]["vision_cfg"]["timm_model_name"]
        pre = cfg.get("preprocess_cfg", {})
        table = TIMM_VITS if kind == "siglip" else TIMM_CONVNEXTS
        if name not in table and TRUNK_OVERRIDES not in cfg:
            raise ModelLoadError(f"encoder folder {folder} (slot {slot}) is timm model {name}; encslim knows "
                                 f"{', '.join(table)}")
        state = read_tensors(folder, TRUNK_PREFIX, slot)
        derive = vit_args if kind == "siglip" else convnext_args
        args = {**derive(state, table.get(name, {}), folder, slot), **cfg.get(TRUNK_OVERRIDES, {})}
        mean = tuple(pre.get("mean", (0.5,) * 3 if kind == "siglip" else CLIP_MEAN))
        std = tuple(pre.get("std", (0.5,) * 3 if kind == "siglip" else CLIP_STD))
        preprocess = {"image_size": geometry["image_size"], "mean": mean, "std": std, "pad_mean": CLIP_MEAN}
        if kind == "siglip":
            _check_width(args["embed_dim"], known_width, folder, slot)
            trunk = TimmViT(args["embed_dim"], args["depth"], args["num_heads"], args["mlp_hidden"], args["patch_size"],
                            args.get("image_size", geometry["image_size"]))
            strict_fill(trunk, state, folder, slot)
            return SiglipTower(slot, kind, trunk, token_len, preprocess)
        multi = "multi-stage" in hub_id.lower()
        _check_width(sum(args["dims"]) if multi else args["dims"][-1], known_width, folder, slot)
        trunk = ConvNeXt(args["depths"], args["dims"], args["norm_eps"], 1e-6, 0)
        state = {k[:-len("gamma")] + "weight" if k.endswith(".gamma") else k: v for k, v in state.items()}
        strict_fill(trunk, state, folder, slot)
        return ConvNextTower(slot, kind, trunk, token_len, preprocess, multi_stage=multi)
    pre = _preprocess_json(folder)
    if kind == "clip":
        from transformers import CLIPVisionModel

        # a whole CLIPModel folder (openai/clip-vit-large-patch14-336): its text tower is not Cambrian's
        model = hf_encoder(CLIPVisionModel, folder, slot, ("text_model.", "text_projection.", "visual_projection.",
                                                            "logit_scale"))
        _check_width(model.config.hidden_size, known_width, folder, slot)
        preprocess = {"image_size": int(model.config.image_size), "mean": tuple(pre.get("image_mean", CLIP_MEAN)),
                      "std": tuple(pre.get("image_std", CLIP_STD)), "pad_mean": tuple(pre.get("image_mean", CLIP_MEAN))}
        return ClipTower(slot, kind, model, token_len, preprocess, select_layer=config.mm_vision_select_layer,
                         select_feature=config.mm_vision_select_feature)
    from transformers import Dinov2Model

    model = hf_encoder(Dinov2Model, folder, slot, ())
    _check_width(model.config.hidden_size, known_width, folder, slot)
    model.embeddings.interpolate_pos_encoding = types.MethodType(interpolate_pos_encoding_437, model.embeddings)
    mean = tuple(pre.get("image_mean", IMAGENET_MEAN))
    preprocess = {"image_size": geometry["image_size"], "mean": mean, "std": tuple(pre.get("image_std", IMAGENET_STD)),
                  "pad_mean": mean}
    return DinoTower(slot, kind, model, token_len, preprocess)


# ------------------------------------------------------------------------------------ pixels
def pixel_tensor(image, preprocess):
    """``process_images`` for one encoder: pad square, resize (bicubic), ``/255``, normalise: (3, S, S)."""
    import numpy as np

    size = int(preprocess["image_size"])
    background = tuple(int(x * 255) for x in preprocess["pad_mean"])
    image = expand2square(image.convert("RGB"), background).resize((size, size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    mean = np.asarray(preprocess["mean"], dtype=np.float32)
    std = np.asarray(preprocess["std"], dtype=np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())
