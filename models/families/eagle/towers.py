"""Eagle v1's CLIP and ConvNeXt towers, and the tower registry (name -> module class).

Each tower class takes a ``spec`` dict of sizes (missing keys: the real model's values) and keeps
the original's attribute layout, so its ``state_dict`` keys are the checkpoint's
``model.vision_tower.vision_towers.{i}.<key>``: the tower holds its backbone as ``vision_tower``.
``forward`` returns what the original tower's ``forward`` returns; the 32x32 resampling and the
channel concat are in :mod:`.modeling` (``MultiBackboneChannelConcatenationVisionTower``).

- ``clip-448``: ``eagle/model/multimodal_encoder/hr_clip_encoder.py`` (``HRCLIPVisionTower``,
  ``forward_embeddings``, ``resample_pos_embed``), built with ``input_image_size = 336``.
- ``convnext-1024``: ``eagle/model/multimodal_encoder/convnext_encoder.py``
  (``ConvNextVisionTower``) over ``eagle/model/multimodal_encoder/vision_models/convnext.py``;
  shared with Eagle2 and Cambrian, so it lives in :mod:`encslim.models.convnext`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...convnext import CONVNEXT_DEFAULT_SPEC, ConvNextVisionTower
from ...layout import tower_spec, under_vision_model

CLIP_DEFAULT_SPEC = {  # openai/clip-vit-large-patch14-336
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "input_image_size": 336,
}
CLIP_TINY_SPEC = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "image_size": 84, "patch_size": 14, "projection_dim": 32, "input_image_size": 84}

CONVNEXT_TINY_SPEC = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64], "head_classes": 10,
                      "input_image_size": 256}


# ---------------------------------------------------------------------------------------- CLIP
def resample_pos_embed(posemb, new_size, num_prefix_tokens=1):
    """``hr_clip_encoder.resample_pos_embed``: bicubic (antialiased) resize of the patch positions."""
    new_side = int(math.sqrt(new_size - num_prefix_tokens))
    old_side = int(math.sqrt(posemb.shape[1] - num_prefix_tokens))
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dtype, dim = grid.dtype, grid.shape[-1]
    grid = grid.float().reshape(posemb.shape[0], old_side, old_side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(posemb.shape[0], -1, dim).to(dtype)
    return torch.cat([prefix, grid], 1)


class HRCLIPVisionTower(nn.Module):
    """``clip-448``: transformers ``CLIPVisionModel`` run as ``HRCLIPVisionTower.forward`` does.

    The CLS token is dropped BEFORE ``pre_layrnorm``, every encoder layer runs without masks, and
    ``post_layernorm`` is never applied (it stays in the checkpoint). Output ``(B, N, D)``.
    """

    def __init__(self, spec=None):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        spec = tower_spec(CLIP_DEFAULT_SPEC, spec)
        self.input_image_size = spec.pop("input_image_size")
        self.vision_tower = under_vision_model(CLIPVisionModel(CLIPVisionConfig(**spec)))  # 4.37's key names
        self.hidden_size = spec["hidden_size"]

    def embeddings(self, pixel_values):
        """``hr_clip_encoder.forward_embeddings``: patches + CLS + (resampled) position embeddings."""
        emb = self.vision_tower.vision_model.embeddings
        patches = emb.patch_embedding(pixel_values.to(emb.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = emb.class_embedding.expand(pixel_values.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        positions = emb.position_embedding(emb.position_ids)
        if positions.shape[1] != tokens.shape[1]:
            positions = resample_pos_embed(positions, tokens.shape[1])
        return tokens + positions

    def forward(self, x):
        vision = self.vision_tower.vision_model
        x = vision.pre_layrnorm(self.embeddings(x)[:, 1:])
        for layer in vision.encoder.layers:
            x = layer(x, None)
            x = x[0] if isinstance(x, tuple) else x
        return x


# ---------------------------------------------------------------------------------- registry
def tower_class(name):
    """The module class of tower ``name`` (``clip-448``, ``convnext-1024``, ...)."""
    if name == "clip-448":
        return HRCLIPVisionTower
    if name == "convnext-1024":
        return ConvNextVisionTower
    if name == "sam-1024":
        from .sam_pix2struct import SAMVisionTower

        return SAMVisionTower
    if name == "det-1024":
        from .eva import EVAVITVisionTower

        return EVAVITVisionTower
    if name == "pix2struct-1024":
        from .sam_pix2struct import Pix2StructLargeVisionTower

        return Pix2StructLargeVisionTower
    raise ValueError(f"unknown Eagle tower '{name}'; known: clip-448, convnext-1024, sam-1024, det-1024, "
                     "pix2struct-1024")


def tower_input_size(name, spec):
    """Side of the image tower ``name`` runs at with ``spec`` (the model input is resized to it)."""
    spec = spec or {}
    if name == "clip-448":
        return spec.get("input_image_size", CLIP_DEFAULT_SPEC["input_image_size"])
    if name == "convnext-1024":
        return spec.get("input_image_size", CONVNEXT_DEFAULT_SPEC["input_image_size"])
    if name == "det-1024":
        from .eva import DEFAULT_SPEC

        return spec.get("input_image_size", DEFAULT_SPEC["input_image_size"])
    if name in ("sam-1024", "pix2struct-1024"):
        from .sam_pix2struct import PIX2STRUCT_DEFAULT_SPEC, SAM_DEFAULT_SPEC

        defaults = SAM_DEFAULT_SPEC if name == "sam-1024" else PIX2STRUCT_DEFAULT_SPEC
        return spec.get("image_size", defaults["image_size"])
    raise ValueError(f"unknown Eagle tower '{name}'")


def tower_width(name, spec):
    """Feature channels tower ``name`` delivers with ``spec`` (without building it)."""
    spec = spec or {}
    if name == "clip-448":
        return spec.get("hidden_size", CLIP_DEFAULT_SPEC["hidden_size"])
    if name == "convnext-1024":
        return spec.get("dims", CONVNEXT_DEFAULT_SPEC["dims"])[-1]
    if name == "sam-1024":
        from .sam_pix2struct import SAM_DEFAULT_SPEC

        return 4 * spec.get("output_channels", SAM_DEFAULT_SPEC["output_channels"])
    if name == "det-1024":
        from .eva import DEFAULT_SPEC

        return spec.get("embed_dim", spec.get("width", DEFAULT_SPEC.get("embed_dim", DEFAULT_SPEC.get("width"))))
    if name == "pix2struct-1024":
        from .sam_pix2struct import PIX2STRUCT_DEFAULT_SPEC

        return spec.get("hidden_size", PIX2STRUCT_DEFAULT_SPEC["hidden_size"])
    raise ValueError(f"unknown Eagle tower '{name}'")


def tiny_specs():
    """``{tower: spec}`` of the tiny towers ``create-tiny --family eagle`` builds."""
    from .eva import TINY_SPEC as EVA_TINY
    from .sam_pix2struct import PIX2STRUCT_TINY_SPEC, SAM_TINY_SPEC

    return {"clip-448": dict(CLIP_TINY_SPEC), "convnext-1024": dict(CONVNEXT_TINY_SPEC),
            "sam-1024": dict(SAM_TINY_SPEC), "det-1024": dict(EVA_TINY), "pix2struct-1024": dict(PIX2STRUCT_TINY_SPEC)}
