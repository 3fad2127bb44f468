"""Eagle's SAM and Pix2Struct vision towers, built offline from transformers configs.

Follows NVlabs/EAGLE ``eagle/model/multimodal_encoder/sam_encoder.py`` (``SamLayerNorm``,
``ShortSamVisionNeck``, ``SAMVisionTower``) and ``pix2struct_encoder.py``
(``Pix2StructLargeVisionTower``), configured as ``multi_backbone_channel_concatenation_encoder.py``
``load_vision_towers`` builds them for ``'sam-1024'`` (input 1024, ``add_pixel_shuffle=True``) and
``'pix2struct-1024'`` (input 1024, ``do_resize=True``, ``de_normalize=True``).

The original calls ``from_pretrained``; here the same transformers modules are built from
``SamVisionConfig`` / ``Pix2StructVisionConfig`` so no download happens, and weights are loaded
afterwards with ``load_state_dict``. State-dict keys are ``vision_tower.<key>`` exactly as Eagle
saves them. transformers 5 kept the 4.37 attribute names of ``SamVisionEncoder`` (``patch_embed``,
``pos_embed``, ``layers``, ``neck``; ``layer_norm1/attn/layer_norm2/mlp`` per layer) and of
``Pix2StructVisionModel`` (``embeddings``, ``encoder.layer``, ``layernorm``), so no renaming is
needed.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Pix2StructVisionConfig, Pix2StructVisionModel, SamVisionConfig
from transformers.models.sam.modeling_sam import SamVisionEncoder

from ...layout import BackboneDeviceMixin

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# facebook/sam-vit-large vision_config (ViT-L).
SAM_DEFAULT_SPEC = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "global_attn_indexes": (5, 11, 17, 23),
    "window_size": 14,
    "output_channels": 256,
    "image_size": 1024,
    "patch_size": 16,
    "mlp_dim": 4096,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "use_abs_pos": True,
    "use_rel_pos": True,
    "hidden_act": "gelu",
    "pixel_shuffle": True,
    # Eagle ran on transformers 4.37 whose only SAM attention was eager; sdpa is the same math.
    "attn_implementation": "sdpa",
}
SAM_TINY_SPEC = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "global_attn_indexes": (1,),
    "window_size": 4,
    "output_channels": 16,
    "image_size": 256,
    "mlp_dim": 128,
}

# google/pix2struct-large vision_config. hidden/layers/heads/d_kv/d_ff/patch are the published
# values; seq_len 4096, 32/128 relative buckets (unused by the vision encoder), gelu_new and
# eps 1e-6 are the Pix2StructVisionConfig defaults, believed to match the checkpoint's config.
PIX2STRUCT_DEFAULT_SPEC = {
    "hidden_size": 1536,
    "num_hidden_layers": 18,
    "num_attention_heads": 24,
    "d_kv": 64,
    "d_ff": 3968,
    "patch_size": 16,
    "seq_len": 4096,
    "dense_act_fn": "gelu_new",
    "layer_norm_eps": 1e-6,
    "max_patches": 2048,  # Pix2StructProcessor.__call__ default, which Eagle relies on
    "image_size": 1024,
    "do_resize": True,
    "grid_size": 32,  # Eagle's hard-coded F.interpolate size
}
PIX2STRUCT_TINY_SPEC = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "d_kv": 16,
    "d_ff": 64,
    "seq_len": 64,
    "max_patches": 256,
    "image_size": 256,
}


def _merge_spec(spec, defaults, name):
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} spec keys: {unknown}")
    return {**defaults, **spec}


class SamLayerNorm(nn.Module):
    """Eagle's ``sam_encoder.SamLayerNorm`` (the transformers 4.37 ConvNext-style LayerNorm).

    ``channels_first`` normalises dim 1 with float32 statistics, casts back to the input dtype and
    then applies the affine; transformers 5's ``SamLayerNorm`` is an ``nn.LayerNorm`` subclass
    with different dtype handling, so Eagle's version is kept verbatim.
    """

    def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        if data_format not in ("channels_last", "channels_first"):
            raise NotImplementedError(f"Unsupported data format: {data_format}")
        self.normalized_shape = (normalized_shape,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        input_dtype = x.dtype
        x = x.float()
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = ((x - u) / torch.sqrt(s + self.eps)).to(dtype=input_dtype)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ShortSamVisionNeck(nn.Module):
    """Eagle's ``sam_encoder.ShortSamVisionNeck``: 1x1 conv + channels_first LayerNorm.

    Takes the encoder's (B, H, W, hidden) layers output (transformers 4.37 and 5 both hand the neck
    channels-last) and returns (B, H, W, output_channels), channels-last again, unlike the stock
    ``SamVisionNeck`` which returns (B, C, H, W).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(config.hidden_size, config.output_channels, kernel_size=1, bias=False)
        self.layer_norm1 = SamLayerNorm(config.output_channels, data_format="channels_first")

    def forward(self, hidden_states):
        hidden_states = self.conv1(hidden_states.permute(0, 3, 1, 2))
        return self.layer_norm1(hidden_states).permute(0, 2, 3, 1)


class SAMVisionTower(BackboneDeviceMixin, nn.Module):
    """Eagle's ``sam_encoder.SAMVisionTower`` as built for ``'sam-1024'``.

    ``vision_tower`` is ``SamModel.vision_encoder`` (``SamVisionEncoder``) with ``neck`` swapped
    for ``ShortSamVisionNeck``. ``forward`` follows the tensor branch of Eagle's ``forward``:
    last_hidden_state (B, H, W, C) -> flatten -> (B, C, H, W) -> ``pixel_unshuffle(., 2)`` giving
    (B, 4*C, H/2, W/2) with spec ``pixel_shuffle`` (Eagle's ``add_pixel_shuffle``) true, else
    (B, H*W, C). Deviations: the list-of-images branch is not supported, inputs are cast to the
    tower dtype, and ``hidden_size`` derives from ``output_channels`` instead of hard-coding 256.
    """

    def __init__(self, spec=None):
        super().__init__()
        self.spec = _merge_spec(spec, SAM_DEFAULT_SPEC, "SAM")
        s = self.spec
        config = SamVisionConfig(
            hidden_size=s["hidden_size"], output_channels=s["output_channels"],
            num_hidden_layers=s["num_hidden_layers"], num_attention_heads=s["num_attention_heads"],
            image_size=s["image_size"], patch_size=s["patch_size"], hidden_act=s["hidden_act"],
            layer_norm_eps=s["layer_norm_eps"], qkv_bias=s["qkv_bias"], mlp_dim=s["mlp_dim"],
            use_abs_pos=s["use_abs_pos"], use_rel_pos=s["use_rel_pos"], window_size=s["window_size"],
            global_attn_indexes=list(s["global_attn_indexes"]),
            attn_implementation=s["attn_implementation"],
        )
        sam_model = SamVisionEncoder(config)
        sam_model.neck = ShortSamVisionNeck(sam_model.config)
        self.vision_tower = sam_model
        self.sam_model_config = sam_model.config
        self.input_image_size = s["image_size"]
        self.pixel_shuffle = bool(s["pixel_shuffle"])
        self.hidden_size = s["output_channels"] * (4 if self.pixel_shuffle else 1)

    def forward(self, images):
        images = images.to(device=self.device, dtype=self.dtype)
        feats = self.vision_tower(images).last_hidden_state.flatten(start_dim=1, end_dim=2)
        if self.pixel_shuffle:
            b, n, c = feats.shape
            h = w = int(n ** 0.5)
            feats = F.pixel_unshuffle(feats.transpose(1, 2).reshape(b, c, h, w), 2)
        return feats


def pix2struct_patch_grid(height, width, max_patches, patch_height=16, patch_width=16):
    """(rows, cols) of Pix2StructImageProcessor.extract_flattened_patches, same float formula."""
    scale = (max_patches * (patch_height / height) * (patch_width / width)) ** 0.5
    rows = max(min(int(scale * height / patch_height), max_patches), 1)
    cols = max(min(int(scale * width / patch_width), max_patches), 1)
    return rows, cols


def pix2struct_preprocess(images, max_patches=2048, patch_size=16):
    """Batched, differentiable torch version of ``Pix2StructImageProcessor`` (is_vqa=False).

    ``images``: (B, C, H, W) pixel values in [0, 255]. Per image: normalise by the mean and the
    population std over all C*H*W values, std floored at 1/sqrt(C*H*W); resize to the patch grid
    with ``F.interpolate(bilinear, align_corners=False, antialias=True)``; unfold into
    (rows*cols, C*p*p) patches ordered (p_h, p_w, C); prepend 1-based row and column ids; zero-pad
    to ``max_patches``; attention mask = row sum != 0 (as the processor computes it). Computed in
    float32 on the input's device. Returns (flattened_patches (B, max_patches, 2 + C*p*p),
    attention_mask (B, max_patches)).
    """
    x = images.float()
    b, c, h, w = x.shape
    p = patch_size
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, correction=0)
    x = (x - mean) / std.clamp(min=1.0 / math.sqrt(c * h * w))
    rows, cols = pix2struct_patch_grid(h, w, max_patches, p, p)
    x = F.interpolate(x, size=(rows * p, cols * p), mode="bilinear", align_corners=False, antialias=True)
    patches = F.unfold(x, (p, p), stride=(p, p)).reshape(b, c, p, p, rows * cols)
    patches = patches.permute(0, 4, 2, 3, 1).reshape(b, rows * cols, c * p * p)
    ar_r = torch.arange(1, rows + 1, device=x.device, dtype=x.dtype)
    ar_c = torch.arange(1, cols + 1, device=x.device, dtype=x.dtype)
    ids = torch.stack([ar_r.repeat_interleave(cols), ar_c.repeat(rows)], dim=-1)
    result = torch.cat([ids.expand(b, -1, -1), patches], dim=-1)
    result = F.pad(result, [0, 0, 0, max_patches - rows * cols])
    return result, (result.sum(dim=-1) != 0).to(result.dtype)


class Pix2StructLargeVisionTower(BackboneDeviceMixin, nn.Module):
    """Eagle's ``pix2struct_encoder.Pix2StructLargeVisionTower`` as built for ``'pix2struct-1024'``.

    ``vision_tower`` is ``Pix2StructForConditionalGeneration.encoder`` (a ``Pix2StructVisionModel``).
    ``forward``: CLIP-normalised (B, 3, S, S) images -> ``(x * std + mean) * 255`` ->
    ``pix2struct_preprocess`` (in torch instead of Eagle's ``Pix2StructProcessor`` call, which is
    numpy, per image and non-differentiable) -> ``last_hidden_state[:, :rows*cols]``. With
    ``do_resize`` that is reshaped to (B, C, rows, cols) and bilinearly resized
    (align_corners=True) to (B, C, grid_size, grid_size); else (B, rows*cols, C) is returned.
    Eagle hard-codes 2025 tokens / 45x45, which is ``pix2struct_patch_grid(S, S, 2048)``; here the
    grid is derived from ``max_patches`` and the input size (exactly 45x45 for any square input
    and 2048). Eagle's ``de_normalize=False`` path (broken there: ``x`` undefined) is not kept.
    """

    def __init__(self, spec=None):
        super().__init__()
        self.spec = _merge_spec(spec, PIX2STRUCT_DEFAULT_SPEC, "Pix2Struct")
        s = self.spec
        p = s["patch_size"]
        config = Pix2StructVisionConfig(
            hidden_size=s["hidden_size"], patch_embed_hidden_size=3 * p * p, d_ff=s["d_ff"],
            d_kv=s["d_kv"], num_hidden_layers=s["num_hidden_layers"],
            num_attention_heads=s["num_attention_heads"], dense_act_fn=s["dense_act_fn"],
            layer_norm_eps=s["layer_norm_eps"], seq_len=s["seq_len"],
        )
        self.vision_tower = Pix2StructVisionModel(config)
        self.input_image_size = s["image_size"]
        self.hidden_size = s["hidden_size"]
        self.max_patches = s["max_patches"]
        self.patch_size = p
        self.do_resize = bool(s["do_resize"])
        self.grid_size = s["grid_size"]

    def forward(self, images):
        mean = torch.tensor(CLIP_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        x = (images * std + mean) * 255.0
        patches, mask = pix2struct_preprocess(x.float(), self.max_patches, self.patch_size)
        feats = self.vision_tower(
            flattened_patches=patches.to(device=self.device, dtype=self.dtype),
            attention_mask=mask.to(device=self.device, dtype=self.dtype),
        ).last_hidden_state
        rows, cols = pix2struct_patch_grid(x.shape[-2], x.shape[-1], self.max_patches,
                                           self.patch_size, self.patch_size)
        b, _, c = feats.shape
        feats = feats[:, : rows * cols, :]
        if not self.do_resize:
            return feats
        feats = feats.transpose(1, 2).reshape(b, c, rows, cols)
        size = (self.grid_size, self.grid_size)
        return F.interpolate(feats.float(), size=size, mode="bilinear", align_corners=True).to(feats.dtype)
