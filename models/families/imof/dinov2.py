"""DINOv2 ViT-L/14 as torch.hub builds it for I-MoF's ``dino_tower``: the module tree and ``forward_features``.

Follows facebookresearch/dinov2 (``dinov2/models/vision_transformer.py`` ``DinoVisionTransformer`` with
``block_chunks=0`` and ffn ``mlp``; ``dinov2/layers/`` ``patch_embed.py``, ``attention.py``
(``MemEffAttention``'s plain-torch path), ``layer_scale.py``, ``block.py``), which tsb0601/MMVP's
``multimodal_encoder/dino_encoder.DINOVisionTower`` loads with ``torch.hub.load('facebookresearch/dinov2',
'dinov2_vitl14')``: parameter names are torch.hub's. I-MoF feeds it CLIP's 336 px crop, so the 37x37
position table is interpolated (bicubic, with the original's 0.1 offset) to 24x24.
"""

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ...layout import Mlp
from .configuration import DINO_DEFAULT_SPEC, spec_over


class PatchEmbed(nn.Module):
    """dinov2/layers/patch_embed.py ``PatchEmbed``: conv ``proj``, ``norm`` Identity, flattened."""

    def __init__(self, patch_size, embed_dim, img_size):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Attention(nn.Module):
    """dinov2/layers/attention.py ``MemEffAttention`` without xFormers (its plain-torch path)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = torch.unbind(self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads), 2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """dinov2/layers/layer_scale.py ``LayerScale``: ``x * gamma``."""

    def __init__(self, dim, init_values):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """dinov2/layers/block.py ``NestedTensorBlock`` in eval: ``x + ls1(attn(norm1 x))``, ``x + ls2(mlp(norm2 x))``."""

    def __init__(self, dim, num_heads, mlp_ratio, init_values):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """dinov2/models/vision_transformer.py ``DinoVisionTransformer`` (``block_chunks=0``, ffn ``mlp``):
    the module tree of ``dinov2_vitl14`` and its ``forward_features``."""

    def __init__(self, spec=None):
        super().__init__()
        spec = spec_over(DINO_DEFAULT_SPEC, spec, "DINOv2")
        dim = spec["embed_dim"]
        self.patch_size = spec["patch_size"]
        self.num_register_tokens = spec["num_register_tokens"]
        self.interpolate_offset = spec["interpolate_offset"]
        self.interpolate_antialias = spec["interpolate_antialias"]
        self.patch_embed = PatchEmbed(self.patch_size, dim, spec["img_size"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        if self.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, self.num_register_tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, spec["num_heads"], spec["mlp_ratio"], spec["init_values"])
                                    for _ in range(spec["depth"]))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, dim))

    def interpolate_pos_encoding(self, x, w, h):
        """The original's bicubic resize of the patch table by ``scale_factor`` (with its 0.1 offset)."""
        previous_dtype = x.dtype
        npatch, n = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        m = int(math.sqrt(n))
        if self.interpolate_offset:
            kwargs = {"scale_factor": (float(w0 + self.interpolate_offset) / m,
                                       float(h0 + self.interpolate_offset) / m)}
        else:
            kwargs = {"size": (w0, h0)}
        patch_pos_embed = F.interpolate(patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                                        antialias=self.interpolate_antialias, **kwargs)
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)

    def prepare_tokens(self, x):
        _, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        if self.num_register_tokens:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(self, x):
        x = self.prepare_tokens(x)
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_patchtokens": x_norm[:, self.num_register_tokens + 1:],
                "x_prenorm": x}
