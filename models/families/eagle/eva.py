"""Eagle v1's ``det-1024`` tower: EVA-02-L ViTDet (``EVAVITVisionTower("eva02-l-16", det_args)``).

Re-implements ``eagle/model/multimodal_encoder/vision_models/eva_vit.py`` (NVlabs/EAGLE) in plain
torch (no fvcore / einops / scipy / xformers / apex), for the configuration Eagle actually builds:
``multi_backbone_channel_concatenation_encoder.py`` sets ``input_image_size = 1024`` and
``vision_tower_pretrained_from = '.../eva02_L_coco_det_sys_o365.pth'`` (no "336" and no "clip" in
the name, so ``build_eva_vit`` keeps ``pretrain_img_size=224`` and ``subln=False``), and
``build_eva_vit('eva02-l-16')`` builds ``EVAViT(patch 16, window 16, width 1024, depth 24,
heads 16, mlp_ratio 4*2/3, qkv_bias, xattn=False)`` with window attention in every block except
2, 5, 8, 11, 14, 17, 20, 23 (global attention).

Parts of ``eva_vit.py`` the det-1024 tower never runs are left out: ``use_rel_pos`` (accepted but
ignored by the original ``EVAViT``), ``residual_block_indexes`` (``ResBottleneckBlock``, ``Conv2d``,
channel-first ``LayerNorm``, ``get_norm``, ``FrozenBatchNorm2d``: empty in ``build_eva_vit``),
the non-fast ``VisionRotaryEmbedding``, the rope ``freqs_for`` variants other than ``'lang'``,
``subln=True`` attention (``inner_attn_ln``; only for "clip" weights of eva02-l-14) and the
``xattn=True`` path (``FlashAttention``, whose import is commented out in the original; det-1024
sets ``xattn=False``, so the explicit softmax attention below IS the original's computation).
Drop path is 0 (``drop_path_rate=0.0``), so ``Block.drop_path`` is ``nn.Identity`` as in the
original.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ...layout import BackboneDeviceMixin

ORIGINAL_KEYS_NOTE = """\
state_dict keys of EVAVITVisionTower (prefix in the Eagle checkpoint:
``model.vision_tower.vision_towers.{i}.``), in the original's order:

  vision_tower.pos_embed                      (1, (pretrain_img_size // patch)**2 + 1, C)  cls slot kept
  vision_tower.patch_embed.proj.{weight,bias}
  vision_tower.rope_win.freqs_{cos,sin}       (window_size**2, head_dim)        persistent buffers
  vision_tower.rope_glb.freqs_{cos,sin}       ((img_size // patch)**2, head_dim) persistent buffers
  vision_tower.blocks.{j}.norm1.{weight,bias}
  vision_tower.blocks.{j}.attn.{q_bias,v_bias}
  vision_tower.blocks.{j}.attn.{q,k,v}_proj.weight                 (no bias: k has none, q/v use q_bias/v_bias)
  vision_tower.blocks.{j}.attn.rope.freqs_{cos,sin}                 alias of rope_win / rope_glb
  vision_tower.blocks.{j}.attn.proj.{weight,bias}
  vision_tower.blocks.{j}.norm2.{weight,bias}
  vision_tower.blocks.{j}.mlp.{w1,w2}.{weight,bias}
  vision_tower.blocks.{j}.mlp.ffn_ln.{weight,bias}                  (SwiGLU is always built with subln=True)
  vision_tower.blocks.{j}.mlp.w3.{weight,bias}

There is no final norm. The RoPE tables are registered with ``register_buffer(name, tensor)``
(persistent=True), so they ARE state_dict entries; and because every ``Attention`` keeps the
shared ``VisionRotaryEmbeddingFast`` module as ``self.rope``, ``Module.state_dict`` lists them once
per block as well (same tensors). transformers 4.44's ``save_pretrained`` refuses those shared
tensors; Eagle's trainer passes ``{k: v.cpu()}`` copies (un-shared on a GPU), so its safetensors
hold every alias (tests/parity/eagle). A checkpoint may also hold only ``rope_win`` / ``rope_glb``
(transformers 5 drops shared aliases) or neither: loading tolerates the aliases as missing or
unexpected (loading ``rope_win`` / ``rope_glb`` fills the shared module, and the values are deterministic).
"""

DEFAULT_SPEC = {  # build_eva_vit(model_name='eva02-l-16', image_size=1024) as det-1024 calls it
    "input_image_size": 1024,   # EVAViT img_size: sizes rope_glb (64 x 64 tokens)
    "patch_size": 16,
    "in_chans": 3,
    "embed_dim": 1024,
    "depth": 24,
    "num_heads": 16,
    "mlp_ratio": 4 * 2 / 3,     # SwiGLU hidden = int(1024 * 8 / 3) = 2730
    "qkv_bias": True,
    "window_size": 16,
    "global_window_size": 0,    # 0: the other (global) blocks attend over the whole grid
    # window attention everywhere but blocks 2, 5, 8, 11, 14, 17, 20, 23 (global attention)
    "window_block_indexes": [i for i in range(24) if i % 3 != 2],
    "pretrain_img_size": 224,   # pos_embed is a 14 x 14 (+ cls) grid, bicubic-resized at run time
    "pretrain_use_cls_token": True,
    "use_abs_pos": True,
    "pt_hw_seq_len": 16,        # RoPE pretrain grid
    "intp_freq": True,          # RoPE positions interpolated to window_size / img_size // patch
    "rope_theta": 10000,
    "norm_eps": 1e-6,           # partial(nn.LayerNorm, eps=1e-6): norm1, norm2, mlp.ffn_ln
}

TINY_SPEC = {  # every det-1024 code path (window + global blocks, RoPE, pos-embed resize) on CPU
    "input_image_size": 256, "embed_dim": 32, "depth": 4, "num_heads": 2, "window_size": 4,
    "window_block_indexes": [0, 2], "pretrain_img_size": 64,
}


def _spec(spec):
    unknown = set(spec or {}) - set(DEFAULT_SPEC) - {"model_type"}
    if unknown:
        raise ValueError(f"unknown det-1024 size key(s) {sorted(unknown)}; known: {sorted(DEFAULT_SPEC)}")
    out = {**DEFAULT_SPEC, **(spec or {})}
    out.pop("model_type", None)
    return out


def window_partition(x, window_size):
    """``eva_vit.window_partition``: (B, H, W, C) -> (B * nW, ws, ws, C), zero-padding H, W up; returns (Hp, Wp)."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(windows, window_size, pad_hw, hw):
    """``eva_vit.window_unpartition``: inverse of :func:`window_partition`, cropping the padding."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


def get_abs_pos(abs_pos, has_cls_token, hw):
    """``eva_vit.get_abs_pos``: drop the cls slot, bicubic-resize (align_corners=False, in float32) -> (1, H, W, C)."""
    h, w = hw
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    xy_num = abs_pos.shape[1]
    size = int(xy_num ** 0.5)
    assert size * size == xy_num
    if size != h or size != w:
        new_abs_pos = F.interpolate(abs_pos.reshape(1, size, size, -1).permute(0, 3, 1, 2).float(),
                                    size=(h, w), mode="bicubic", align_corners=False).to(abs_pos.dtype)
        return new_abs_pos.permute(0, 2, 3, 1)
    return abs_pos.reshape(1, h, w, -1)


class PatchEmbed(nn.Module):
    """``eva_vit.PatchEmbed``: conv ``proj`` (kernel = stride = patch), output (B, H, W, C)."""

    def __init__(self, kernel_size=(16, 16), stride=(16, 16), padding=(0, 0), in_chans=3, embed_dim=768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


def rotate_half(x):
    """``eva_vit.rotate_half``: INTERLEAVED pairs, (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...).

    The original writes it with einops ``rearrange(x, '... (d r) -> ... d r', r=2)``.
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class VisionRotaryEmbeddingFast(nn.Module):
    """``eva_vit.VisionRotaryEmbeddingFast`` (``freqs_for='lang'``, no ``custom_freqs``): 2-D axial RoPE.

    ``dim`` is half the head dim. Positions ``t = arange(ft_seq_len) / ft_seq_len * pt_seq_len``;
    each frequency is repeated twice (interleaved pairs), the row (h) table fills the first half of
    the head dim and the column (w) table the second (the original's ``broadcat``). Buffers
    ``freqs_cos`` / ``freqs_sin`` of shape ``(ft_seq_len**2, 2 * dim)`` are persistent, as in the
    original.
    """

    def __init__(self, dim, pt_seq_len=16, ft_seq_len=None, theta=10000):
        super().__init__()
        self.settings = (dim, pt_seq_len, pt_seq_len if ft_seq_len is None else ft_seq_len, theta)
        cos, sin = self.tables()
        self.register_buffer("freqs_cos", cos)
        self.register_buffer("freqs_sin", sin)

    def tables(self):
        """``(freqs_cos, freqs_sin)`` computed from the settings (float32, CPU)."""
        dim, pt_seq_len, ft_seq_len, theta = self.settings
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[:(dim // 2)].float() / dim))
        t = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
        freqs = t[:, None] * freqs[None, :]                    # einsum('..., f -> ... f')
        freqs = freqs.repeat_interleave(2, dim=-1)             # repeat('... n -> ... (n r)', r=2)
        n, d = freqs.shape
        freqs = torch.cat((freqs[:, None, :].expand(n, n, d), freqs[None, :, :].expand(n, n, d)), dim=-1)
        return freqs.cos().view(-1, freqs.shape[-1]), freqs.sin().view(-1, freqs.shape[-1])

    @torch.no_grad()
    def reset_tables(self):
        """Recompute the buffers in place (their device and dtype kept): they are a function of the
        settings, so a checkpoint without them (or a meta-device build) loads exactly."""
        cos, sin = self.tables()
        self.freqs_cos = cos.to(self.freqs_cos.device if self.freqs_cos.device.type != "meta" else "cpu",
                                self.freqs_cos.dtype)
        self.freqs_sin = sin.to(self.freqs_cos.device, self.freqs_sin.dtype)

    def forward(self, t):
        return t * self.freqs_cos + rotate_half(t) * self.freqs_sin


class SwiGLU(nn.Module):
    """``eva_vit.SwiGLU`` with ``subln=True``: ``w3(ffn_ln(silu(w1 x) * w2 x))`` (dropout 0)."""

    def __init__(self, in_features, hidden_features, eps=1e-6):
        super().__init__()
        self.w1 = nn.Linear(in_features, hidden_features)
        self.w2 = nn.Linear(in_features, hidden_features)
        self.act = nn.SiLU()
        self.ffn_ln = nn.LayerNorm(hidden_features, eps=eps)
        self.w3 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.w3(self.ffn_ln(self.act(self.w1(x)) * self.w2(x)))


class Attention(nn.Module):
    """``eva_vit.Attention`` with ``xattn=False``, ``subln=False`` (``inner_attn_ln`` is ``nn.Identity``).

    q/k/v projections have no bias; ``q_bias`` / ``v_bias`` are added to q and v, k gets none.
    RoPE is applied to q and k; then ``softmax((q * head_dim**-0.5) @ k^T) @ v`` computed exactly
    as the original's non-xattn branch (no SDPA, same operation order).
    """

    @property
    def rope(self):
        return self._rope[0]

    def __init__(self, dim, num_heads=8, qkv_bias=True, rope=None):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        all_head_dim = head_dim * num_heads
        self.scale = head_dim ** -0.5
        self.q_proj = nn.Linear(dim, all_head_dim, bias=False)
        self.k_proj = nn.Linear(dim, all_head_dim, bias=False)
        self.v_proj = nn.Linear(dim, all_head_dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(all_head_dim))
            self.v_bias = nn.Parameter(torch.zeros(all_head_dim))
        else:
            self.q_bias = None
            self.v_bias = None
        # the EVAViT's shared rope_win / rope_glb module, held outside the module tree: the original
        # registers it here too, so its state_dict repeats the tables per block (same tensors), which
        # safetensors cannot store twice; the tables are saved once, as rope_win / rope_glb
        self._rope = [rope]
        self.proj = nn.Linear(all_head_dim, dim)
        self.inner_attn_ln = nn.Identity()

    def forward(self, x):
        B, H, W, C = x.shape
        x = x.view(B, -1, C)
        N = H * W
        q = F.linear(input=x, weight=self.q_proj.weight, bias=self.q_bias)
        k = F.linear(input=x, weight=self.k_proj.weight, bias=None)
        v = F.linear(input=x, weight=self.v_proj.weight, bias=self.v_bias)
        q = q.reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)  # B, heads, N, head_dim
        k = k.reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        v = v.reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        q = self.rope(q).type_as(v)
        k = self.rope(k).type_as(v)
        q = q * self.scale
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1).type_as(x)
        x = (attn @ v).transpose(1, 2).reshape(B, N, -1)
        x = self.inner_attn_ln(x)
        return self.proj(x).view(B, H, W, C)


class Block(nn.Module):
    """``eva_vit.Block`` (no residual conv block, drop path 0): pre-norm window/global attention + SwiGLU.

    ``window_size > 0``: attention inside zero-padded ``window_size`` windows (padding tokens are
    attended to, unmasked, as in the original); ``0``: over the whole grid.
    """

    def __init__(self, dim, num_heads, mlp_ratio=4 * 2 / 3, qkv_bias=True, eps=1e-6, window_size=0, rope=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, rope=rope)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio), eps=eps)
        self.window_size = window_size

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class EVAViT(nn.Module):
    """``eva_vit.EVAViT`` (``use_abs_pos``, ``rope``, ``intp_freq`` paths): (B, 3, S, S) -> (B, C, S/p, S/p).

    Deviation: no gradient checkpointing switch (``with_cp``), no ``frozen`` / detectron2 feature
    bookkeeping (``_out_features``, ...): none of it changes the eval-mode output or the state_dict.
    """

    def __init__(self, img_size=1024, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4 * 2 / 3, qkv_bias=True, eps=1e-6, use_abs_pos=True, pt_hw_seq_len=16,
                 intp_freq=True, rope_theta=10000, window_size=0, global_window_size=0,
                 window_block_indexes=(), pretrain_img_size=224, pretrain_use_cls_token=True):
        super().__init__()
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.patch_embed = PatchEmbed(kernel_size=(patch_size, patch_size), stride=(patch_size, patch_size),
                                      in_chans=in_chans, embed_dim=embed_dim)
        if use_abs_pos:
            num_patches = (pretrain_img_size // patch_size) * (pretrain_img_size // patch_size)
            num_positions = (num_patches + 1) if pretrain_use_cls_token else num_patches
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            self.pos_embed = None
        half_head_dim = embed_dim // num_heads // 2
        hw_seq_len = img_size // patch_size
        self.rope_win = VisionRotaryEmbeddingFast(dim=half_head_dim, pt_seq_len=pt_hw_seq_len,
                                                  ft_seq_len=window_size if intp_freq else None, theta=rope_theta)
        self.rope_glb = VisionRotaryEmbeddingFast(dim=half_head_dim, pt_seq_len=pt_hw_seq_len,
                                                  ft_seq_len=hw_seq_len if intp_freq else None, theta=rope_theta)
        self.blocks = nn.ModuleList()
        for i in range(depth):
            windowed = i in window_block_indexes
            self.blocks.append(Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eps=eps,
                                     window_size=window_size if windowed else global_window_size,
                                     rope=self.rope_win if windowed else self.rope_glb))
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x):
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        for blk in self.blocks:
            x = blk(x)  # B, H, W, C
        return x.permute(0, 3, 1, 2)  # B, C, H, W (no final norm)


class EVAVITVisionTower(BackboneDeviceMixin, nn.Module):
    """``eva_vit.EVAVITVisionTower`` for det-1024: ``vision_tower`` is the :class:`EVAViT`.

    ``forward(images)``: (B, 3, S, S) -> (B, embed_dim, S/16, S/16), channel-first, exactly what
    the original returns for a tensor batch (cast to the tower's dtype first). Deviations: no
    image processor / checkpoint loading in ``__init__`` (the project's loader fills the
    weights); a list of images raises ``TypeError`` (the original's list branch computes
    per-image features but then returns only the LAST image's ``(1, C, h, w)`` map - a bug).
    """

    def __init__(self, spec=None):
        super().__init__()
        spec = _spec(spec)
        self.spec = spec
        self.input_image_size = spec["input_image_size"]
        self.hidden_size = spec["embed_dim"]
        self.vision_tower = EVAViT(
            img_size=spec["input_image_size"], patch_size=spec["patch_size"], in_chans=spec["in_chans"],
            embed_dim=spec["embed_dim"], depth=spec["depth"], num_heads=spec["num_heads"],
            mlp_ratio=spec["mlp_ratio"], qkv_bias=spec["qkv_bias"], eps=spec["norm_eps"],
            use_abs_pos=spec["use_abs_pos"], pt_hw_seq_len=spec["pt_hw_seq_len"], intp_freq=spec["intp_freq"],
            rope_theta=spec["rope_theta"], window_size=spec["window_size"],
            global_window_size=spec["global_window_size"], window_block_indexes=tuple(spec["window_block_indexes"]),
            pretrain_img_size=spec["pretrain_img_size"], pretrain_use_cls_token=spec["pretrain_use_cls_token"])

    @property
    def config(self):
        """The original's ``eva_config`` dict (``build_eva_vit``), without ``pretrained_from``."""
        s = self.spec
        return dict(image_size=s["input_image_size"], patch_size=s["patch_size"], window_size=s["window_size"],
                    hidden_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"],
                    window_block_indexes=tuple(s["window_block_indexes"]),
                    num_patches=s["input_image_size"] ** 2 // s["patch_size"] ** 2)

    @property
    def num_patches(self):
        return self.config["num_patches"]

    def forward(self, images):
        if isinstance(images, (list, tuple)):
            raise TypeError("EVAVITVisionTower takes a (B, 3, S, S) tensor batch")
        return self.vision_tower(images.to(device=self.device, dtype=self.dtype))
