import pytest
import torch
import torch.nn.functional as F
from transformers.models.pix2struct.image_processing_pil_pix2struct import Pix2StructImageProcessorPil

from encslim.models.families.eagle.sam_pix2struct import (
    CLIP_MEAN, CLIP_STD, PIX2STRUCT_TINY_SPEC, SAM_TINY_SPEC, Pix2StructLargeVisionTower,
    SAMVisionTower, pix2struct_patch_grid, pix2struct_preprocess,
)

# Keys follow Eagle's sam_encoder.py: SamModel.vision_encoder (4.37 names) + ShortSamVisionNeck.
SAM_LAYER = ["layer_norm1.weight", "layer_norm1.bias", "attn.rel_pos_h", "attn.rel_pos_w",
             "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "layer_norm2.weight", "layer_norm2.bias", "mlp.lin1.weight", "mlp.lin1.bias",
             "mlp.lin2.weight", "mlp.lin2.bias"]
SAM_TINY_KEYS = (
    ["vision_tower.pos_embed", "vision_tower.patch_embed.projection.weight",
     "vision_tower.patch_embed.projection.bias"]
    + [f"vision_tower.layers.0.{k}" for k in SAM_LAYER]
    + [f"vision_tower.layers.1.{k}" for k in SAM_LAYER]
    + ["vision_tower.neck.conv1.weight", "vision_tower.neck.layer_norm1.weight",
       "vision_tower.neck.layer_norm1.bias"]
)
# Pix2StructForConditionalGeneration.encoder subtree, prefixed by the tower attribute.
PIX_LAYER = ["attention.query.weight", "attention.key.weight", "attention.value.weight",
             "attention.output.weight", "mlp.wi_0.weight", "mlp.wi_1.weight", "mlp.wo.weight",
             "pre_mlp_layer_norm.weight", "pre_attention_layer_norm.weight"]
PIX_TINY_KEYS = (
    ["vision_tower.embeddings.patch_projection.weight", "vision_tower.embeddings.patch_projection.bias",
     "vision_tower.embeddings.row_embedder.weight", "vision_tower.embeddings.column_embedder.weight"]
    + [f"vision_tower.encoder.layer.0.{k}" for k in PIX_LAYER]
    + [f"vision_tower.encoder.layer.1.{k}" for k in PIX_LAYER]
    + ["vision_tower.layernorm.weight"]
)


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


def _clip_images(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    pix = torch.rand(b, 3, h, w, generator=g)
    return (pix - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def test_sam_keys_and_shape():
    tower = _randomize(SAMVisionTower(SAM_TINY_SPEC), 0)
    sd = tower.state_dict()
    assert list(sd) == SAM_TINY_KEYS
    assert sd["vision_tower.layers.0.attn.rel_pos_h"].shape == (7, 16)  # window 4: 2*4-1
    assert sd["vision_tower.layers.1.attn.rel_pos_h"].shape == (31, 16)  # global on 16x16
    assert sd["vision_tower.neck.conv1.weight"].shape == (16, 32, 1, 1)
    assert tower.input_image_size == 256 and tower.hidden_size == 64
    with torch.no_grad():
        out = tower(torch.randn(2, 3, 256, 256))
    assert out.shape == (2, 64, 8, 8)


def test_sam_composition_matches_eagle():
    torch.manual_seed(0)
    tower = _randomize(SAMVisionTower(SAM_TINY_SPEC), 1)
    vt, x = tower.vision_tower, torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        h = vt.patch_embed(x) + vt.pos_embed
        for layer in vt.layers:
            h = layer(h)
        h = vt.neck.conv1(h.permute(0, 3, 1, 2))  # Eagle neck, channels_first LayerNorm
        u = h.mean(1, keepdim=True)
        h = (h - u) / torch.sqrt((h - u).pow(2).mean(1, keepdim=True) + 1e-6)
        h = h * vt.neck.layer_norm1.weight[:, None, None] + vt.neck.layer_norm1.bias[:, None, None]
        ref = F.pixel_unshuffle(h, 2)
        out = tower(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_pix2struct_keys_and_shape():
    tower = _randomize(Pix2StructLargeVisionTower(PIX2STRUCT_TINY_SPEC), 0)
    assert list(tower.state_dict()) == PIX_TINY_KEYS
    assert tower.input_image_size == 256 and tower.hidden_size == 32 and tower.max_patches == 256
    with torch.no_grad():
        out = tower(_clip_images(2, 256, 256))
    assert out.shape == (2, 32, 32, 32)


@pytest.mark.parametrize("shape,max_patches", [((2, 256, 256), 256), ((2, 96, 160), 64),
                                               ((1, 1024, 1024), 2048), ((1, 200, 120), 100)])
def test_pix2struct_preprocess_matches_processor(shape, max_patches):
    b, h, w = shape
    x = (_clip_images(b, h, w, seed=3) * torch.tensor(CLIP_STD).view(1, 3, 1, 1)
         + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) * 255.0
    ref = Pix2StructImageProcessorPil(is_vqa=False)(images=x, return_tensors="pt", max_patches=max_patches)
    patches, mask = pix2struct_preprocess(x, max_patches=max_patches)
    assert patches.shape == ref["flattened_patches"].shape
    torch.testing.assert_close(patches, ref["flattened_patches"], atol=1e-5, rtol=0)
    torch.testing.assert_close(mask, ref["attention_mask"], atol=0, rtol=0)
    if (h, w, max_patches) == (1024, 1024, 2048):
        assert pix2struct_patch_grid(h, w, max_patches) == (45, 45)  # Eagle's hard-coded 2025


def test_pix2struct_forward_matches_eagle_pipeline():
    tower = _randomize(Pix2StructLargeVisionTower(PIX2STRUCT_TINY_SPEC), 2)
    images = _clip_images(2, 256, 256, seed=4)
    x = (images * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) * 255.0
    inputs = Pix2StructImageProcessorPil(is_vqa=False)(images=x.float(), return_tensors="pt", max_patches=256)
    with torch.no_grad():
        feats = tower.vision_tower(**inputs).last_hidden_state[:, :256]
        ref = F.interpolate(feats.transpose(1, 2).reshape(2, 32, 16, 16), size=(32, 32),
                            mode="bilinear", align_corners=True)
        out = tower(images)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_pix2struct_preprocess_is_differentiable():
    x = (torch.rand(1, 3, 64, 48) * 255).requires_grad_(True)
    patches, _ = pix2struct_preprocess(x, max_patches=20)
    patches[..., 2:].pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("cls,spec", [(SAMVisionTower, SAM_TINY_SPEC),
                                      (Pix2StructLargeVisionTower, PIX2STRUCT_TINY_SPEC)])
def test_strict_load_round_trip(cls, spec):
    src, dst = _randomize(cls(spec), 5), _randomize(cls(spec), 6)
    dst.load_state_dict(src.state_dict(), strict=True)
    images = _clip_images(1, 256, 256, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(dst(images), src(images), atol=0, rtol=0)


def test_spec_defaults_and_unknown_keys():
    spec = {k: v for k, v in PIX2STRUCT_TINY_SPEC.items() if k != "max_patches"}
    tower = Pix2StructLargeVisionTower(spec)
    assert tower.max_patches == 2048 and tower.do_resize and tower.grid_size == 32
    assert SAMVisionTower(SAM_TINY_SPEC).pixel_shuffle
    with pytest.raises(ValueError, match="unknown"):
        SAMVisionTower({**SAM_TINY_SPEC, "hiden_size": 8})
