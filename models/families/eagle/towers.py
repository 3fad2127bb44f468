"""Eagle v1's CLIP and ConvNeXt towers, and the tower registry (name -> module class).

Each tower class takes a ``spec`` dict of sizes (missing keys: the real model's values) and keeps
the original's attribute layout, so its ``state_dict`` keys are the checkpoint's
``model.vision_tower.vision_towers.{i}.<key>``: the tower holds its backbone as ``vision_tower``.
``forward`` returns what the original tower's ``forward`` returns; the 32x32 resampling and the
channel concat are in :mod:`.modeling` (``MultiBackboneChannelConcatenationVisionTower``).

- ``clip-448``: ``eagle/model/multimodal_encoder/hr_clip_encoder.py`` (``HRCLIPVisionTower``,
  ``forward_embeddings``, ``resample_pos_embed``), built with ``input_image_size = 336``.
- ``convnext-1024``: ``eagle/model/multimodal_encoder/convnext_encoder.py``
  (``ConvNextVisionTower``) over ``eagle/model/multimodal_encoder/vision_models/convnext.py``,
  Eagle's modified copy of timm's ConvNeXt (``convnext_xxlarge``: depths 3/4/30/3, dims
  384/768/1536/3072, norm eps 1e-5). Re-implemented here with the same module tree instead of
  importing timm: Eagle vendors the file itself (its layer scale is ``<block>.weight`` where timm
  says ``gamma``), and timm cannot be imported without torchvision.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...layout import Mlp, under_vision_model  # Mlp: timm's, as convnext.py's blocks use it

CLIP_DEFAULT_SPEC = {  # openai/clip-vit-large-patch14-336
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "input_image_size": 336,
}
CLIP_TINY_SPEC = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "image_size": 84, "patch_size": 14, "projection_dim": 32, "input_image_size": 84}

CONVNEXT_DEFAULT_SPEC = {  # convnext_xxlarge as convnext.py builds it
    "depths": [3, 4, 30, 3], "dims": [384, 768, 1536, 3072], "norm_eps": 1e-5, "ls_init_value": 1e-6,
    "head_classes": 1000, "input_image_size": 1024,
}
CONVNEXT_TINY_SPEC = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64], "head_classes": 10,
                      "input_image_size": 256}


def _spec(defaults, spec):
    unknown = set(spec or {}) - set(defaults) - {"model_type"}
    if unknown:
        raise ValueError(f"unknown tower size key(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(spec or {})}


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

        spec = _spec(CLIP_DEFAULT_SPEC, spec)
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


# ------------------------------------------------------------------------------------ ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """timm ``LayerNorm2d``: LayerNorm over channels of an NCHW tensor."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """convnext.py ``ConvNeXtBlock`` (conv_mlp False): dw 7x7 -> LayerNorm (channels last) -> Mlp -> layer scale.

    The layer scale is the parameter ``weight`` (Eagle's rename of timm's ``gamma``).
    """

    def __init__(self, dim, eps, ls_init_value):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, 4 * dim)
        self.weight = nn.Parameter(ls_init_value * torch.ones(dim))

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x)).permute(0, 3, 1, 2)
        return x.mul(self.weight.reshape(1, -1, 1, 1)) + shortcut


class ConvNeXtStage(nn.Module):
    """convnext.py ``ConvNeXtStage``: optional downsample (LayerNorm2d + 2x2 stride-2 conv), then blocks."""

    def __init__(self, in_chs, out_chs, depth, stride, eps, ls_init_value):
        super().__init__()
        if in_chs != out_chs or stride > 1:
            self.downsample = nn.Sequential(LayerNorm2d(in_chs, eps=eps),
                                            nn.Conv2d(in_chs, out_chs, kernel_size=2, stride=stride, bias=True))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(out_chs, eps, ls_init_value) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class NormMlpClassifierHead(nn.Module):
    """timm ``NormMlpClassifierHead`` (no hidden layer): in the checkpoint, never run by Eagle."""

    def __init__(self, dim, num_classes, eps):
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=eps)
        self.fc = nn.Linear(dim, num_classes)


class ConvNeXt(nn.Module):
    """convnext.py ``ConvNeXt`` with the patch stem (4x4 stride 4 conv + LayerNorm2d) and 4 stages."""

    def __init__(self, depths, dims, norm_eps, ls_init_value, head_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4, bias=True),
                                  LayerNorm2d(dims[0], eps=norm_eps))
        stages, prev = [], dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(ConvNeXtStage(prev, dim, depth, 1 if i == 0 else 2, norm_eps, ls_init_value))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.norm_pre = nn.Identity()
        if head_classes:
            self.head = NormMlpClassifierHead(prev, head_classes, norm_eps)


class ConvNextVisionTower(nn.Module):
    """``convnext-1024``: ``ConvNextVisionTower.forward``: stem, every stage, last stage as ``(B, H*W, C)``.

    ``head_classes`` sizes the unused classifier head the checkpoint carries (0: none);
    the loader reads it from the checkpoint.
    """

    def __init__(self, spec=None):
        super().__init__()
        spec = _spec(CONVNEXT_DEFAULT_SPEC, spec)
        self.input_image_size = spec["input_image_size"]
        self.vision_tower = ConvNeXt(spec["depths"], spec["dims"], spec["norm_eps"], spec["ls_init_value"],
                                     spec["head_classes"])
        self.hidden_size = spec["dims"][-1]

    def forward(self, images):
        x = self.vision_tower.stem(images.to(self.vision_tower.stem[0].weight.dtype))
        for stage in self.vision_tower.stages:
            x = stage(x)
        b, c = x.shape[:2]
        return x.view(b, c, -1).transpose(1, 2)


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
