"""Eagle det-1024 tower (EVA-02-L ViTDet) re-implementation: shapes, checkpoint keys, RoPE, windows."""

import pytest
import torch

from encslim.models.families.eagle.eva import (DEFAULT_SPEC, TINY_SPEC, EVAVITVisionTower, VisionRotaryEmbeddingFast,
                                      window_partition, window_unpartition)

# Read off eva_vit.py: EVAViT registers patch_embed, pos_embed, rope_win, rope_glb, blocks (own
# parameters are saved before children); Block: norm1, attn, drop_path (Identity), norm2, mlp;
# Attention: q_proj, k_proj, v_proj (no bias), q_bias, v_bias, rope (the shared module, whose
# persistent freqs_cos/freqs_sin buffers repeat under every block), proj, inner_attn_ln (Identity);
# SwiGLU(subln=True): w1, w2, act, ffn_ln, w3.
TOP_KEYS = ["pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "rope_win.freqs_cos", "rope_win.freqs_sin", "rope_glb.freqs_cos", "rope_glb.freqs_sin"]
BLOCK_KEYS = ["norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.q_proj.weight",
              "attn.k_proj.weight", "attn.v_proj.weight", "attn.rope.freqs_cos", "attn.rope.freqs_sin",
              "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.w1.weight",
              "mlp.w1.bias", "mlp.w2.weight", "mlp.w2.bias", "mlp.ffn_ln.weight", "mlp.ffn_ln.bias",
              "mlp.w3.weight", "mlp.w3.bias"]
TINY_KEYS = ["vision_tower." + k for k in TOP_KEYS] + [
    f"vision_tower.blocks.{i}.{k}" for i in range(4) for k in BLOCK_KEYS]
# what a safetensors checkpoint can hold: one name per shared tensor (rope_win / rope_glb)
SAVED_KEYS = [k for k in TINY_KEYS if ".attn.rope." not in k]


def _tower(spec=TINY_SPEC, seed=0):
    torch.manual_seed(seed)
    tower = EVAVITVisionTower(spec).eval()
    with torch.no_grad():  # non-trivial weights (LayerNorm / biases start at 1 / 0)
        for p in tower.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return tower


def test_default_spec_is_det_1024():
    assert DEFAULT_SPEC["window_block_indexes"] == [0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22]
    assert (DEFAULT_SPEC["input_image_size"], DEFAULT_SPEC["embed_dim"], DEFAULT_SPEC["pretrain_img_size"]) == (
        1024, 1024, 224)
    with pytest.raises(ValueError):
        EVAVITVisionTower({"widht": 8})


def test_tiny_forward_shape():
    tower = _tower()
    assert (tower.input_image_size, tower.hidden_size, tower.num_patches) == (256, 32, 256)
    assert [b.window_size for b in tower.vision_tower.blocks] == [4, 0, 4, 0]
    out = tower(torch.randn(2, 3, 256, 256))
    assert out.shape == (2, 32, 16, 16) and torch.isfinite(out).all()


def test_state_dict_keys_match_original_layout():
    sd = _tower().state_dict()
    assert list(sd) == SAVED_KEYS
    vt = "vision_tower."
    assert sd[vt + "pos_embed"].shape == (1, 4 * 4 + 1, 32)          # 64 / 16 = 4, plus the cls slot
    assert sd[vt + "rope_win.freqs_cos"].shape == (4 * 4, 16)         # window 4, head dim 16
    assert sd[vt + "rope_glb.freqs_sin"].shape == (16 * 16, 16)       # 256 / 16 = 16
    assert sd[vt + "blocks.0.mlp.w1.weight"].shape == (int(32 * 4 * 2 / 3), 32)
    tower = _tower()
    blocks = tower.vision_tower.blocks
    assert blocks[0].attn.rope is blocks[2].attn.rope is tower.vision_tower.rope_win
    assert blocks[1].attn.rope is blocks[3].attn.rope is tower.vision_tower.rope_glb


def test_strict_round_trip_and_rope_tables():
    src, dst = _tower(seed=1), _tower(seed=2)
    x = torch.randn(1, 3, 256, 256)
    assert not torch.allclose(src(x), dst(x))
    dst.load_state_dict(src.state_dict(), strict=True)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    # a torch.save of the original module also lists the per-block aliases: they are the only extras
    fresh = _tower(seed=3)
    sd = dict(src.state_dict())
    sd.update({f"vision_tower.blocks.{i}.attn.rope.{n}": sd[f"vision_tower.rope_{'win' if i % 2 == 0 else 'glb'}.{n}"]
               for i in range(4) for n in ("freqs_cos", "freqs_sin")})
    missing, unexpected = fresh.load_state_dict(sd, strict=False)
    assert missing == [] and sorted(unexpected) == sorted(set(TINY_KEYS) - set(SAVED_KEYS))
    torch.testing.assert_close(fresh(x), src(x), rtol=0, atol=0)
    # the tables are a function of the spec: recomputing them changes nothing
    before = fresh.vision_tower.rope_glb.freqs_cos.clone()
    fresh.vision_tower.rope_glb.freqs_cos.zero_()
    fresh.vision_tower.rope_glb.reset_tables()
    torch.testing.assert_close(fresh.vision_tower.rope_glb.freqs_cos, before, rtol=0, atol=0)


def test_window_padding():
    x = torch.randn(2, 6, 7, 5)
    windows, pad_hw = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 2, 4, 4, 5) and pad_hw == (8, 8)
    assert windows[1, :, 3:].abs().sum() == 0                      # right-hand padding is zeros
    torch.testing.assert_close(windows[1, :2, :3], x[0, :2, 4:7], rtol=0, atol=0)
    torch.testing.assert_close(window_unpartition(windows, 4, pad_hw, (6, 7)), x, rtol=0, atol=0)
    tower = _tower({**TINY_SPEC, "input_image_size": 96})           # 6 x 6 tokens, window 4 -> pad to 8
    out = tower(torch.randn(1, 3, 96, 96))
    assert out.shape == (1, 32, 6, 6) and torch.isfinite(out).all()


def test_rope_matches_complex_rotation():
    dim, n, pt = 4, 3, 16                       # half head dim 4 -> head dim 8; 3 x 3 grid
    rope = VisionRotaryEmbeddingFast(dim, pt_seq_len=pt, ft_seq_len=n)
    q = torch.randn(2, 1, n * n, 2 * dim, dtype=torch.float64)
    got = rope(q)
    base = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))   # dim / 2 frequencies
    pos = torch.arange(n, dtype=torch.float64) * pt / n
    ii, jj = torch.meshgrid(pos, pos, indexing="ij")
    # token (i, j): the first dim/2 adjacent pairs rotate by pos_i * f, the last dim/2 by pos_j * f
    angle = torch.cat([ii.reshape(-1, 1) * base, jj.reshape(-1, 1) * base], dim=-1)   # (n*n, dim)
    z = torch.view_as_complex(q.reshape(2, 1, n * n, dim, 2).contiguous()) * torch.polar(
        torch.ones_like(angle), angle)
    want = torch.view_as_real(z).reshape(q.shape)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)     # buffers are float32
