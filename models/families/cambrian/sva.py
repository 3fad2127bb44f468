"""Cambrian-1's Spatial Vision Aggregator: the sampler modules and the window rearrangement.

Module tree and parameter names follow ``cambrian/model/vision_sampler.py`` (cambrian-mllm/cambrian):

- :class:`MultiKVCrossAttention` (``MultiKVCrossAttention``): a LayerNorm + bias-free Linear per
  query and per encoder (``k_proj_{i}``, ``v_proj_{i}``), every encoder's keys concatenated, one
  ``scaled_dot_product_attention`` with a boolean mask, ``o_proj``;
- :class:`VisionCrossAttentionLayer` (``VisionCrossAttentionLayer``, the ``joint`` layer type
  Cambrian-1 uses): ``proj_context`` of the global context concatenated to the queries,
  ``proj_in``, the cross attention on the encoders' windows (each plus its ``pos_embed_{i}`` when
  its window holds more than one token), residual, ``norm``, ``proj_out`` (an MLP), residual;
- :class:`VisionTokenSampler` (``VisionTokenSampler``): ``layers`` of those.

One deviation in form, none in value: the original takes every encoder's latents and masks as
``*args``; here each is a list where ``None`` marks an encoder removed by the ``removal`` mask.
Its keys then take no part in the attention: the softmax over the remaining keys is what a mask of
``-inf`` on its keys gives, and what the pruned connector (without ``k_proj_{i}``/``v_proj_{i}``)
computes, in the same order of operations.

The window helpers follow ``cambrian_arch.py``: :func:`unpad_image`, :func:`unmask_attention_mask`
and :func:`rearrange_windows` (``rearrange_vision_tower_features_inference``).
"""

import torch
import torch.nn.functional as F
from torch import nn

NUM_HEADS = 16  # hard-coded in VisionCrossAttentionLayer


class MLP(nn.Module):
    """``vision_sampler.MLP``: bias-free Linear -> GELU -> Linear."""

    def __init__(self, d_in, d_hidden, d_out):
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_hidden, bias=False)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class MultiKVCrossAttention(nn.Module):
    """Queries attend to the concatenated keys of every (kept) encoder."""

    def __init__(self, q_dim, kv_dim_list, hidden_dim, num_heads, attention_bias=False):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim must be divisible by num_heads (got {hidden_dim} and {num_heads})")
        self.hidden_dim, self.num_heads, self.head_dim = hidden_dim, num_heads, hidden_dim // num_heads
        self.q_proj = nn.Sequential(nn.LayerNorm(q_dim), nn.Linear(q_dim, hidden_dim, bias=attention_bias))
        self.num_of_kvs = len(kv_dim_list)
        for i, kv_dim in enumerate(kv_dim_list):
            setattr(self, f"k_proj_{i}", nn.Sequential(nn.LayerNorm(kv_dim), nn.Linear(kv_dim, hidden_dim,
                                                                                       bias=attention_bias)))
            setattr(self, f"v_proj_{i}", nn.Sequential(nn.LayerNorm(kv_dim), nn.Linear(kv_dim, hidden_dim,
                                                                                       bias=attention_bias)))
        self.o_proj = nn.Linear(hidden_dim, q_dim, bias=attention_bias)

    def forward(self, queries, latents, masks):
        """``queries`` (B, Q, q_dim); ``latents``/``masks``: per encoder (B, V_i, D) / (B, 1, Q, V_i) or ``None``."""
        bsz, q_len, _ = queries.shape
        kept = [i for i, x in enumerate(latents) if x is not None]
        query = self.q_proj(queries)
        key = torch.cat([getattr(self, f"k_proj_{i}")(latents[i]) for i in kept], dim=1)
        value = torch.cat([getattr(self, f"v_proj_{i}")(latents[i]) for i in kept], dim=1)
        v_len = key.shape[1]
        query = query.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = key.view(bsz, v_len, self.num_heads, self.head_dim).transpose(1, 2)
        value = value.view(bsz, v_len, self.num_heads, self.head_dim).transpose(1, 2)
        mask = torch.cat([masks[i] for i in kept], dim=-1)
        if query.device.type == "cuda":  # the original's workaround for SDPA with a custom mask
            query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        out = out.transpose(1, 2).reshape(bsz, q_len, self.hidden_dim)
        return self.o_proj(out)


class VisionCrossAttentionLayer(nn.Module):
    """One SVA layer (``joint``): context-conditioned queries cross-attend to every encoder's window."""

    def __init__(self, q_dim, context_dim, kv_dim_list, kv_size_list, hidden_dim=1024):
        super().__init__()
        self.num_of_kvs = len(kv_dim_list)
        self.proj_context = nn.Linear(context_dim, hidden_dim, bias=False)
        self.proj_in = nn.Linear(q_dim + hidden_dim, hidden_dim, bias=False)
        self.proj_out = MLP(hidden_dim, hidden_dim, q_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.cross_attn = MultiKVCrossAttention(hidden_dim, kv_dim_list, hidden_dim, NUM_HEADS)
        self.kv_size_list = list(kv_size_list)
        for i, kv_size in enumerate(kv_size_list):
            if kv_size > 1:
                setattr(self, f"pos_embed_{i}", nn.Parameter(torch.randn(kv_size ** 2, hidden_dim)))

    def forward(self, queries, context_feature, latents, masks):
        residual = queries
        context_feature = self.proj_context(context_feature)
        queries = self.proj_in(torch.cat([queries, context_feature], -1))
        masks = [None if m is None else m.view(m.shape[0], 1, 1, -1).expand(-1, -1, queries.shape[1], -1)
                 for m in masks]
        with_pos = []
        for i, x in enumerate(latents):
            if x is not None and x.shape[1] > 1:
                x = x + getattr(self, f"pos_embed_{i}")[None, :, :].to(x.dtype)
            with_pos.append(x)
        queries = queries + self.cross_attn(queries, with_pos, masks)
        queries = self.proj_out(self.norm(queries))
        return queries + residual


class VisionTokenSampler(nn.Module):
    """``VisionTokenSampler`` (``joint``): ``num_of_layers`` cross-attention layers in sequence."""

    def __init__(self, q_dim, context_dim, kv_dim_list, kv_size_list, vision_hidden_size, num_of_layers=1):
        super().__init__()
        self.layers = nn.ModuleList([VisionCrossAttentionLayer(q_dim, context_dim, kv_dim_list, kv_size_list,
                                                               vision_hidden_size) for _ in range(num_of_layers)])

    def forward(self, queries, context_feature, latents, masks):
        for layer in self.layers:
            queries = layer(queries, context_feature, latents, masks)
        return queries


# ------------------------------------------------------------------------------ the windows
def unpad_image(tensor, original_size):
    """``cambrian_arch.unpad_image``: crop the rows/columns (dims 1, 2) that ``expand2square`` padded.

    ``original_size`` is the image's ``(width, height)``.
    """
    original_width, original_height = original_size
    current_height, current_width = tensor.shape[1:3]
    if original_width / original_height > current_width / current_height:
        new_height = int(original_height * (current_width / original_width))
        padding = (current_height - new_height) // 2
        return tensor[:, padding:current_height - padding, :]
    new_width = int(original_width * (current_height / original_height))
    padding = (current_width - new_width) // 2
    return tensor[:, :, padding:current_width - padding]


def unmask_attention_mask(mask, original_size):
    """``cambrian_arch.unmask_attention_mask``: False on the rows/columns of ``mask`` (1, H, W) that are padding."""
    original_w, original_h = original_size
    cur_h, cur_w = mask.shape[1:3]
    if original_w / original_h > cur_w / cur_h:
        new_height = int(original_h * (cur_w / original_w))
        padding = (cur_h - new_height) // 2
        if padding > 0:
            mask[:, :padding, :] = 0
            mask[:, -padding:, :] = 0
        return mask
    new_width = int(original_w * (cur_h / original_h))
    padding = (cur_w - new_width) // 2
    if padding > 0:
        mask[:, :, :padding] = 0
        mask[:, :, -padding:] = 0
    return mask


def unpadded_size(side, original_size):
    """``(h, w)`` of a ``side`` x ``side`` grid after :func:`unpad_image` for an image of ``original_size``."""
    return tuple(unpad_image(torch.empty(1, side, side), original_size).shape[1:3])


def rearrange_windows(feature, query_side, image_sizes, unpad=False):
    """``rearrange_vision_tower_features_inference`` for one encoder.

    Args:
        feature: (B, N, C) with N a square, its side a multiple of ``query_side``.
        query_side: the query grid's side.
        image_sizes: ``(width, height)`` of each image.
        unpad: drop the windows of padding queries (the sampler layers inside the LLM).

    Returns:
        ``(windows, masks)``: (sum of queries, r*r, C) and (sum of queries, r*r) booleans.
    """
    bs, n, channels = feature.shape
    side = int(n ** 0.5)
    if side * side != n or side % query_side:
        raise ValueError(f"an encoder's {n} tokens do not tile a {query_side}x{query_side} query grid")
    reduce = side // query_side
    windows, masks = [], []
    for b in range(bs):
        cur = feature[b].view(1, query_side, reduce, query_side, reduce, channels).permute(0, 1, 3, 2, 4, 5)
        cur = cur.contiguous()
        if unpad:
            cur = unpad_image(cur, image_sizes[b])
        windows.append(cur.flatten(0, 2).flatten(1, 2))
        mask = torch.ones((1, side, side), dtype=torch.bool, device=feature.device)
        mask = unmask_attention_mask(mask, image_sizes[b])
        mask = mask.view(1, query_side, reduce, query_side, reduce).permute(0, 1, 3, 2, 4).contiguous()
        if unpad:
            mask = unpad_image(mask, image_sizes[b])
        mask = mask.flatten(0, 2).flatten(1, 2)
        mask[mask.sum(-1) == 0] = True
        masks.append(mask)
    return torch.cat(windows, 0), torch.cat(masks, 0)
