"""Independent parity checks of the Eagle v1 re-implementation against other implementations.

- ``convnext-1024`` (models.convnext.ConvNextVisionTower, Eagle's vendored timm ConvNeXt) against
  transformers' own ``ConvNextModel``: same math, different parameter names.
- ``clip-448`` (towers.HRCLIPVisionTower = Eagle's ``hr_clip_encoder``) against a composition of
  stock transformers CLIP modules (CLS dropped BEFORE ``pre_layrnorm``, no ``post_layernorm``), against
  a from-scratch attention/MLP forward, and its position-embedding resample against PIL's
  antialiased bicubic (which torch's ``antialias=True`` reproduces; Eagle's ``resample_pos_embed``).
- ``MultiBackboneChannelConcatenationVisionTower.tower_features``: the input and the output grid are
  resized with bilinear ``align_corners=True`` (checked against a hand-written interpolation matrix).
- ``EagleProcessor.pixel_values`` against Eagle's ``mm_utils.expand2square`` (copied verbatim) and a
  plain PIL/numpy CLIP preprocessing.

Everything is seeded and CPU-only.
"""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from encslim.models import llava_processing
from encslim.models.convnext import CONVNEXT_DEFAULT_SPEC, ConvNextVisionTower
from encslim.models.families.eagle.processing import EagleProcessor
from encslim.models.families.eagle.towers import CLIP_TINY_SPEC, HRCLIPVisionTower, resample_pos_embed
from encslim.models.llava_processing import CLIP_MEAN, CLIP_STD

# ------------------------------------------------------------------------------------------------ helpers


def _randomise(module, seed, scale=0.2):
    """Seeded non-trivial weights: every parameter moves (LayerNorms leave 1/0, layer scales leave 1e-6)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * scale
            if param.dim() == 1 and name.endswith("weight"):  # LayerNorm gains / layer scales
                param.copy_(1.0 + noise)
            else:
                param.copy_(noise)
    return module


def _max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------------------------ 1. ConvNeXt

CONVNEXT_SPEC = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64], "norm_eps": 1e-6, "head_classes": 0,
                 "input_image_size": 96}


def _hf_convnext_name(key):
    """Our (= Eagle/timm) ConvNeXt key -> transformers ConvNextModel key."""
    key = key.removeprefix("vision_tower.")
    key = key.replace("stem.0.", "embeddings.patch_embeddings.").replace("stem.1.", "embeddings.layernorm.")
    key = key.replace("stages.", "encoder.stages.")
    key = key.replace(".downsample.", ".downsampling_layer.").replace(".blocks.", ".layers.")
    key = key.replace(".conv_dw.", ".dwconv.").replace(".norm.", ".layernorm.")
    key = key.replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.")
    # the block's own parameter ``weight`` (Eagle's name of timm's ``gamma``) is HF's layer scale
    return re.sub(r"^(encoder\.stages\.\d+\.layers\.\d+)\.weight$", r"\1.layer_scale_parameter", key)


@pytest.fixture(scope="module")
def convnext_pair():
    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(0)
    ours = _randomise(ConvNextVisionTower(CONVNEXT_SPEC), seed=1).eval()
    config = ConvNextConfig(num_channels=3, patch_size=4, depths=CONVNEXT_SPEC["depths"],
                            hidden_sizes=CONVNEXT_SPEC["dims"], hidden_act="gelu", layer_scale_init_value=1e-6,
                            layer_norm_eps=1e-6, drop_path_rate=0.0)
    hf = ConvNextModel(config).eval()
    ours_sd = ours.state_dict()
    mapped = {_hf_convnext_name(k): v for k, v in ours_sd.items()}
    hf_keys = set(hf.state_dict())
    # the mapping is a bijection onto HF's keys minus the pooler LayerNorm (which Eagle has no analogue of
    # with head_classes 0: timm's head.norm only exists with a head)
    assert len(mapped) == len(ours_sd)
    assert set(mapped) == hf_keys - {"layernorm.weight", "layernorm.bias"}, (
        sorted(set(mapped) ^ (hf_keys - {"layernorm.weight", "layernorm.bias"})))
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    assert sorted(missing) == ["layernorm.bias", "layernorm.weight"] and not unexpected
    _randomise(hf.layernorm, seed=2)  # the final (pooler) norm gets non-trivial weights too
    return ours, hf


def test_convnext_layernorm_eps_matches_hf(convnext_pair):
    """HF hard-codes eps 1e-6 on every ConvNeXt LayerNorm except the pooler one (config.layer_norm_eps);
    ours uses the spec's ``norm_eps`` (1e-6 here) everywhere. Eagle's convnext_xxlarge default is 1e-5."""
    ours, hf = convnext_pair
    our_eps = {n: m.eps for n, m in ours.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    hf_eps = {n: m.eps for n, m in hf.named_modules() if isinstance(m, torch.nn.LayerNorm) and n != "layernorm"}
    assert our_eps and set(our_eps.values()) == {1e-6}
    assert len(our_eps) == len(hf_eps) and set(hf_eps.values()) == {1e-6}
    assert CONVNEXT_DEFAULT_SPEC["norm_eps"] == 1e-5  # convnext.py: convnext_xxlarge norm_eps default


def test_convnext_tower_matches_hf_convnextmodel(convnext_pair):
    ours, hf = convnext_pair
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = ours(x)
        out = hf(pixel_values=x, output_hidden_states=True)
        # per stage (diagnostic): our stem / stages against HF's hidden states
        h = ours.vision_tower.stem(x)
        assert _max_diff(h, out.hidden_states[0]) < 1e-5
        for i, stage in enumerate(ours.vision_tower.stages):
            h = stage(h)
            assert _max_diff(h, out.hidden_states[i + 1]) < 1e-5, f"stage {i}"
    last = out.hidden_states[-1]
    assert last.shape == (2, 64, 3, 3)
    assert torch.equal(last, out.last_hidden_state)
    want = last.flatten(2).transpose(1, 2)  # (B, H*W, C), row-major tokens
    assert got.shape == (2, 9, 64)
    assert _max_diff(got, want) < 1e-5
    # sanity: the blocks are not near-identity (layer scales were randomised), so a broken block shows up
    assert _max_diff(got, ours.vision_tower.stages[3].downsample(
        ours.vision_tower.stages[2](ours.vision_tower.stages[1](ours.vision_tower.stages[0](
            ours.vision_tower.stem(x))))).flatten(2).transpose(1, 2).detach()) > 1e-2


def test_convnext_tower_applies_no_final_norm(convnext_pair):
    """Eagle's ConvNextVisionTower.forward_features runs stem + stages only: no norm_pre / head.norm / HF pooler
    LayerNorm on the tokens."""
    ours, hf = convnext_pair
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = ours(x)
        tokens = hf(pixel_values=x).last_hidden_state.flatten(2).transpose(1, 2)
        normed_hf = hf.layernorm(tokens)
        normed_plain = F.layer_norm(tokens, (tokens.shape[-1],), eps=1e-6)
    assert _max_diff(got, tokens) < 1e-5
    assert _max_diff(got, normed_hf) > 1e-2
    assert _max_diff(got, normed_plain) > 1e-2
    # a tower that carries a classifier head (as the checkpoint does) still returns the un-normed tokens
    with_head = ConvNextVisionTower({**CONVNEXT_SPEC, "head_classes": 5}).eval()
    missing, unexpected = with_head.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("vision_tower.head.") for k in missing) and missing
    _randomise(with_head.vision_tower.head, seed=5)
    with torch.no_grad():
        assert torch.equal(with_head(x), got)


# ------------------------------------------------------------------------------------------------ 2. CLIP


@pytest.fixture(scope="module")
def clip_tower():
    torch.manual_seed(0)
    tower = HRCLIPVisionTower(dict(CLIP_TINY_SPEC)).eval()
    return _randomise(tower, seed=11)


def _call_layer(layer, x):
    out = layer(x, attention_mask=None)
    return out[0] if isinstance(out, tuple) else out


def _manual_clip_layer(layer, x, heads):
    """CLIPEncoderLayer from its weights alone: pre-LN attention (scale head_dim**-0.5, no mask) and
    quick_gelu MLP, both residual."""
    b, n, d = x.shape
    hd = d // heads
    h = F.layer_norm(x, (d,), layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
    att = layer.self_attn

    def split(t):
        return t.reshape(b, n, heads, hd).transpose(1, 2)

    q, k, v = (split(F.linear(h, p.weight, p.bias)) for p in (att.q_proj, att.k_proj, att.v_proj))
    w = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
    o = (w @ v).transpose(1, 2).reshape(b, n, d)
    x = x + F.linear(o, att.out_proj.weight, att.out_proj.bias)
    h = F.layer_norm(x, (d,), layer.layer_norm2.weight, layer.layer_norm2.bias, layer.layer_norm2.eps)
    h = F.linear(h, layer.mlp.fc1.weight, layer.mlp.fc1.bias)
    h = h * torch.sigmoid(1.702 * h)  # quick_gelu (openai CLIP)
    return x + F.linear(h, layer.mlp.fc2.weight, layer.mlp.fc2.bias)


def test_clip_tower_is_stock_modules_with_cls_dropped_before_pre_layrnorm(clip_tower):
    clip = clip_tower.vision_tower.vision_model
    assert clip.config.hidden_act == "quick_gelu"
    x = torch.randn(2, 3, 84, 84, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        got = clip_tower(x)
        h = clip.pre_layrnorm(clip.embeddings(x)[:, 1:])  # stock embeddings forward, CLS dropped first
        for layer in clip.encoder.layers:
            h = _call_layer(layer, h)
        stock = clip(pixel_values=x).last_hidden_state  # CLS kept through pre_layrnorm and attention
        from_scratch = clip.pre_layrnorm(clip.embeddings(x)[:, 1:])
        for layer in clip.encoder.layers:
            from_scratch = _manual_clip_layer(layer, from_scratch, clip.config.num_attention_heads)
    assert got.shape == (2, 36, 32)
    assert _max_diff(got, h) < 1e-6
    assert _max_diff(got, from_scratch) < 1e-5
    # no post_layernorm
    assert _max_diff(got, clip.post_layernorm(h)) > 1e-3
    # the stock model (CLS in attention) gives something else, so this test can fail
    assert _max_diff(got, stock[:, 1:]) > 1e-3


def _pil_resample_pos_embed(posemb, new_side):
    """Eagle's resample_pos_embed re-done with PIL: CLS prefix kept, patch grid resized per channel with PIL's
    (always antialiased) bicubic on float 'F' images; torch's ``bicubic, antialias=True`` is PIL's filter."""
    pos = posemb[0].detach().double().numpy()
    prefix, grid = pos[:1], pos[1:]
    old_side = int(round(math.sqrt(grid.shape[0])))
    grid = grid.reshape(old_side, old_side, -1)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(grid[:, :, c]).astype(np.float32))
                           .resize((new_side, new_side), Image.BICUBIC), dtype=np.float64)
                for c in range(grid.shape[-1])]
    resized = np.stack(channels, -1).reshape(new_side * new_side, -1)
    return torch.from_numpy(np.concatenate([prefix, resized], 0))[None].float()


@pytest.mark.parametrize("pixels, side", [(112, 8), (56, 4)])  # up- and down-sampling of the 6x6 grid
def test_clip_position_embedding_resample(clip_tower, pixels, side):
    clip = clip_tower.vision_tower.vision_model
    emb = clip.embeddings
    posemb = emb.position_embedding.weight[None]  # (1, 37, D)
    want_pos = _pil_resample_pos_embed(posemb, side)
    with torch.no_grad():
        lib_pos = resample_pos_embed(emb.position_embedding(emb.position_ids), side * side + 1)
    assert lib_pos.shape == (1, side * side + 1, 32)
    assert torch.equal(lib_pos[:, 0], posemb[:, 0].detach())  # CLS prefix untouched
    assert _max_diff(lib_pos, want_pos) < 1e-5
    # antialias / PIL-bicubic matters: HF's interpolate_pos_encoding style (plain bicubic) is different
    plain = F.interpolate(posemb[:, 1:].detach().reshape(1, 6, 6, -1).permute(0, 3, 1, 2), size=(side, side),
                          mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, 32)
    assert _max_diff(lib_pos[:, 1:], plain) > 1e-3

    x = torch.randn(2, 3, pixels, pixels, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        patches = F.conv2d(x, emb.patch_embedding.weight, stride=14).flatten(2).transpose(1, 2)
        tokens = torch.cat([emb.class_embedding.expand(2, 1, -1), patches], 1) + want_pos
        assert _max_diff(clip_tower.embeddings(x), tokens) < 1e-5
        h = clip.pre_layrnorm(tokens[:, 1:])
        for layer in clip.encoder.layers:
            h = _manual_clip_layer(layer, h, clip.config.num_attention_heads)
        got = clip_tower(x)
    assert got.shape == (2, side * side, 32)
    assert _max_diff(got, h) < 1e-5


# ------------------------------------------------------------------------------------------------ 3. tower_features


def _bilinear_align_corners_matrix(n_out, n_in):
    """(n_out, n_in) linear interpolation matrix with align_corners=True: src = i * (n_in - 1) / (n_out - 1)."""
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        lo = min(int(math.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        a[i, lo] += 1 - frac
        a[i, hi] += frac
    return a


def _resize_ac(t, size, dtype=torch.float32):
    """(B, C, H, W) -> (B, C, size, size) bilinear align_corners=True, separable, computed in float64."""
    ah = _bilinear_align_corners_matrix(size, t.shape[-2])
    aw = _bilinear_align_corners_matrix(size, t.shape[-1])
    return (ah @ t.double() @ aw.T).to(dtype)


@pytest.fixture(scope="module")
def tiny_x5():
    from encslim.models.families.eagle.tiny import build_tiny_eagle

    model, _ = build_tiny_eagle(seed=0)
    return model.eval()


def test_tower_features_clip_resizes_input_and_grid(tiny_x5):
    vt = tiny_x5.model.vision_tower
    tower = vt.vision_towers[0]
    assert vt.names[0] == "clip-448" and isinstance(tower, HRCLIPVisionTower)
    assert (vt.input_image_size, tower.input_image_size, vt.grid_size) == (256, 84, 32)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(21))
    with torch.no_grad():
        got = vt.tower_features(0, x)
        # (a) the same composition with F.interpolate
        small = F.interpolate(x, size=(84, 84), mode="bilinear", align_corners=True)
        feat = tower(small)
        assert feat.shape == (2, 36, 32)
        grid = feat.transpose(1, 2).reshape(2, 32, 6, 6)
        want = F.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=True).flatten(2).transpose(1, 2)
        # (b) hand-written align_corners=True interpolation, tokens read row-major
        small_b = _resize_ac(x, 84)
        want_b = _resize_ac(feat.reshape(2, 6, 6, 32).permute(0, 3, 1, 2), 32).permute(0, 2, 3, 1).reshape(2, 1024, 32)
        end_to_end_b = _resize_ac(tower(small_b).reshape(2, 6, 6, 32).permute(0, 3, 1, 2), 32)
        end_to_end_b = end_to_end_b.permute(0, 2, 3, 1).reshape(2, 1024, 32)
        # align_corners=False (the other common convention) must be distinguishable
        wrong = F.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    assert got.shape == (2, 1024, 32)
    assert _max_diff(got, want) < 1e-6
    # same convention exactly (float64); in float32 torch rounds the source coordinate i * 255/83 (~1.5e-5
    # px at the far edge), which on unit-variance noise gives differences up to ~1e-4
    assert _max_diff(F.interpolate(x.double(), size=(84, 84), mode="bilinear", align_corners=True),
                     _resize_ac(x, 84, torch.float64)) < 1e-10
    assert _max_diff(small, small_b) < 2e-4
    assert _max_diff(got, want_b) < 1e-5
    # whole chain on the hand-made resize: that input difference goes through the tower (588-term patch
    # sums, LayerNorms over 32 channels) onto outputs of magnitude ~3, hence the looser 1e-3 here
    assert _max_diff(got, end_to_end_b) < 1e-3
    assert _max_diff(got, wrong) > 1e-3
    # corners of the 32x32 grid are the 6x6 grid's corners exactly (align_corners=True)
    for r, c in ((0, 0), (0, 5), (5, 0), (5, 5)):
        assert _max_diff(got[:, (r // 5) * 31 * 32 + (c // 5) * 31], feat[:, r * 6 + c]) < 1e-6


def test_tower_features_convnext_8x8_to_32x32(tiny_x5):
    vt = tiny_x5.model.vision_tower
    tower = vt.vision_towers[1]
    assert vt.names[1] == "convnext-1024" and isinstance(tower, ConvNextVisionTower)
    assert tower.input_image_size == vt.input_image_size == 256  # no input resize
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(22))
    with torch.no_grad():
        got = vt.tower_features(1, x)
        feat = tower(x)
        c = feat.shape[-1]
        assert feat.shape == (2, 64, c)  # 256 / 32 = 8 -> 8x8 tokens
        want = _resize_ac(feat.reshape(2, 8, 8, c).permute(0, 3, 1, 2), 32).permute(0, 2, 3, 1).reshape(2, 1024, c)
    assert got.shape == (2, 1024, c)
    assert _max_diff(got, want) < 1e-5


def test_forward_is_channel_concat_of_tower_features(tiny_x5):
    vt = tiny_x5.model.vision_tower
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(23))
    with torch.no_grad():
        got = vt(x)
        parts = [vt.tower_features(i, x) for i in range(len(vt.vision_towers))]
    assert [p.shape[:2] for p in parts] == [(1, 1024)] * len(parts)
    assert got.shape == (1, 1024, vt.hidden_size) == (1, 1024, sum(p.shape[-1] for p in parts))
    assert torch.equal(got, torch.cat(parts, -1))


# ------------------------------------------------------------------------------------------------ 4. processor


def eagle_expand2square(pil_img, background_color):
    """eagle/mm_utils.py ``expand2square``, verbatim."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def _reference_pixels(image, size):
    """process_images(pad) with the CLIP processor, in plain PIL + numpy."""
    background = tuple(int(x * 255) for x in CLIP_MEAN)
    img = eagle_expand2square(image.convert("RGB"), background)
    w, h = img.size
    short = min(w, h)  # shortest edge -> size (square here), bicubic
    img = img.resize((round(w * size / short), round(h * size / short)), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2  # centre crop
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float64) / 255.0
    arr = (arr - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float()


def _noise_image(width, height, seed):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")


def test_clip_constants_and_pad_colour():
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    assert list(CLIP_MEAN) == list(OPENAI_CLIP_MEAN) and list(CLIP_STD) == list(OPENAI_CLIP_STD)
    assert tuple(int(x * 255) for x in CLIP_MEAN) == (122, 116, 104)  # truncation, not rounding (123, 117, 104)


@pytest.mark.parametrize("width, height", [(50, 37), (29, 71), (40, 40)])  # wide, tall (odd pads), square
def test_expand2square_matches_eagle(width, height):
    img = _noise_image(width, height, seed=width)
    bg = (122, 116, 104)
    ours = np.asarray(llava_processing.expand2square(img, bg))
    want = np.asarray(eagle_expand2square(img, bg))
    assert np.array_equal(ours, want)
    side = max(width, height)
    assert ours.shape == (side, side, 3)
    top, left = (side - height) // 2, (side - width) // 2
    assert np.array_equal(ours[top:top + height, left:left + width], np.asarray(img))
    mask = np.ones((side, side), bool)
    mask[top:top + height, left:left + width] = False
    assert (ours[mask] == np.asarray(bg, np.uint8)).all()


@pytest.fixture(scope="module")
def processor():
    from encslim.models.tokenizer import build_tokenizer

    return EagleProcessor(build_tokenizer(), image_size=64)


def test_pixel_values_match_pil_numpy_pipeline(processor):
    images = [_noise_image(50, 37, seed=1), _noise_image(29, 71, seed=2)]  # wide, tall
    got = processor.pixel_values(images)
    assert got.shape == (2, 3, 64, 64) and got.dtype == torch.float32
    for i, image in enumerate(images):
        want = _reference_pixels(image, 64)
        # both resize the same uint8 PIL image with PIL BICUBIC, so pixels agree exactly; what is left is the
        # float32 (HF) vs float64 (here) rescale/normalise rounding, ~1e-7 / std
        assert _max_diff(got[i], want) < 1e-5
    # the padded band (top rows of the wide image, left columns of the tall one) is the mean colour,
    # normalised: (int(255 * mean) / 255 - mean) / std, slightly negative because of the truncation
    pad = (np.asarray([122, 116, 104]) / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    pad = torch.tensor(pad, dtype=torch.float32)[:, None, None]
    assert _max_diff(got[0, :, :3, :], pad.expand(3, 3, 64)) < 1e-5
    assert _max_diff(got[1, :, :, :3], pad.expand(3, 64, 3)) < 1e-5
    assert (pad < 0).all()
    # a centre-anchored paste at the wrong offset (top-left) is detectable
    shifted = Image.new("RGB", (50, 50), (122, 116, 104))
    shifted.paste(images[0], (0, 0))
    wrong = _reference_pixels(shifted, 64)
    assert _max_diff(got[0], wrong) > 1e-1
