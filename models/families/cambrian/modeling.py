"""Cambrian-1's model: the SVA connector, the sampler layers inside the Llama, ``image_newline``.

Module tree and parameter names follow cambrian-mllm/cambrian exactly, so a real checkpoint loads
with strict key matching:

- ``CambrianLlamaModel`` (``language_model/cambrian_llama.py`` + ``cambrian_arch.CambrianMetaModel``):
  a ``LlamaModel`` with ``mm_projector_aux_{i}`` (Linear d_i -> vision_hidden_size, GELU, Linear,
  LayerNorm) per encoder, ``vision_sampler_{g}`` per query group (``connector_depth`` layers),
  ``vision_sampler_layers.{j}`` (one layer each, queries of the LLM's width), ``vision_query``,
  ``image_newline`` and ``mm_projector`` (Linear, GELU, Linear). The encoders are not modules of
  it: the original keeps them in a plain list outside ``state_dict`` (``vision_tower_aux_list``), and
  so does this class (filled by the loader, :mod:`.encoders`).
- :meth:`CambrianLlamaForCausalLM.connector` follows ``prepare_inputs_labels_for_multimodal``
  (the inference path, not XLA): aux projectors; global context = token mean of encoder 0; per
  query group the queries cross-attend to their windows (``rearrange_vision_tower_features_inference``
  with the padding keys masked), are resized to the ``image_token_len`` grid (bilinear,
  align_corners=False) and concatenated; ``mm_projector``; per image the padded rows/columns are cut
  (``unpad_image``) and ``image_newline`` ends each row; the windows of the unpadded grid and the
  per-query context are what the sampler layers in the LLM read.
- :meth:`CambrianLlamaModel.forward` is Llama's decoder loop (transformers 5's ``LlamaModel.forward``, whose
  logits equal the original's on transformers 4.37.2 within 3.3e-7: tests/parity/cambrian/full)
  plus ``CambrianLlamaModel.forward``'s step: after decoder layer ``start + j * stride`` the image
  tokens (newline tokens excepted) are the queries of ``vision_sampler_layers[j]`` and are replaced
  by its output. It runs on the prompt pass only (the original passes the vision features to the
  first ``generate`` step alone).

A visual-token budget (encslim's ``config.token_budget``, absent from the original) pools each image's
unpadded grid after ``mm_projector``, before ``image_newline`` ends each pooled row; only a ``connector_only``
config with the ``pool`` method takes one (:func:`.configuration.budget_refusal` says why).

Deviations:

- The original finds the image tokens at ``config.image_position`` (a constant of its chat template,
  batch size 1, no left padding); encslim finds each row's image tokens in ``input_ids`` (the
  placeholder run), which is the same position for the original's own prompts and also holds for
  left-padded batches.
- The study's ``zero`` mask: the original code has no mask; encslim zeroes the encoder's features right
  after its ``mm_projector_aux_i`` (FAMILIES.md, from the authors' masking code), before the global
  context is taken, so a zero-masked encoder 0 also gives a zero global context.
- Removing an encoder by mask (the ``removal`` mode) leaves its keys out of every cross attention
  (:mod:`.sva`); when that encoder is encoder 0, the global context is the token mean of the first
  encoder kept, which is what the connector without it computes.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel
from transformers.models.llama import modeling_llama as _llama
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from ....errors import ConfigError
from ...layout import CACHE_KWARG
from ...tokens import budget_of, reduce_grids
from .configuration import IMAGE_TOKEN_INDEX, CambrianConfig, budget_refusal
from .sva import VisionTokenSampler, rearrange_windows, unpad_image

_capture = getattr(_llama, "capture_outputs", lambda f: f)
_defaults = getattr(_llama, "merge_with_config_defaults", lambda f: f)


@dataclass
class SamplerContext:
    """What the sampler layers inside the LLM read (built by :meth:`CambrianLlamaForCausalLM.connector`).

    Attributes:
        seq_len: the prompt length the context belongs to (later, shorter calls are decode steps).
        rows: ``(row, start, h, w)`` per image: its first image token and its unpadded grid.
        windows: per encoder (queries, r*r, D), ``None`` for an encoder removed by the mask.
        masks: per encoder (queries, r*r) booleans, ``None`` likewise.
        context: (queries, 1, D) global context per query.
    """

    seq_len: int
    rows: list
    windows: list
    masks: list
    context: torch.Tensor


def aux_projector(in_dim, hidden):
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden))


class CambrianLlamaModel(LlamaModel):
    """``CambrianLlamaModel``: ``LlamaModel`` + the SVA connector (see the module docstring)."""

    config_class = CambrianConfig

    def __init__(self, config):
        super().__init__(config)
        names, vh = config.slot_names, config.vision_hidden_size
        self.vision_tower_aux_list = []  # filled by the loader; a plain list, outside state_dict, as in the original
        self.mm_projector = nn.Sequential(nn.Linear(vh * config.num_query_group, config.hidden_size), nn.GELU(),
                                          nn.Linear(config.hidden_size, config.hidden_size))
        for i, slot in enumerate(names):
            setattr(self, f"mm_projector_aux_{i}", aux_projector(config.geometry(slot)["width"], vh))
        for g in range(config.num_query_group):
            setattr(self, f"vision_sampler_{g}", VisionTokenSampler(
                vh, vh, [vh] * len(names), config.window_sides(config.query_num_list[g]), vh, config.connector_depth))
        if not config.connector_only:
            sides = config.window_sides(config.image_token_len)
            self.vision_sampler_layers = nn.ModuleList(
                [VisionTokenSampler(config.hidden_size, vh, [vh] * len(names), sides, vh, 1)
                 for _ in range(config.num_of_vision_sampler_layers)])
        self.vision_query = nn.Parameter(torch.randn((config.num_query_group, vh)) / vh ** 0.5)
        self.image_newline = nn.Parameter(torch.randn(config.hidden_size) / config.hidden_size ** 0.5)
        self._sampler_at = {layer: j for j, layer in enumerate(config.sampler_layer_indices)}

    def sample_latents(self, hidden, j, ctx):
        """Run ``vision_sampler_layers[j]`` on each image's tokens (rows of the grid, newline excepted)."""
        width = hidden.shape[-1]
        queries = [hidden[b, s:s + h * (w + 1)].view(h, w + 1, width)[:, :w].reshape(h * w, 1, width)
                   for b, s, h, w in ctx.rows]
        out = self.vision_sampler_layers[j](torch.cat(queries, 0), ctx.context, ctx.windows, ctx.masks)
        out = torch.split(out, [h * w for _, _, h, w in ctx.rows], 0)
        hidden = hidden.clone()
        for (b, s, h, w), latent in zip(ctx.rows, out):
            newline = hidden[b, s:s + h * (w + 1)].view(h, w + 1, width)[:, w:]
            hidden[b, s:s + h * (w + 1)] = torch.cat([latent.view(h, w, width), newline], 1).flatten(0, 1)
        return hidden

    @_defaults
    @_capture
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, use_cache=None,
                vision_context=None, **kwargs):
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        cache = kwargs.pop(CACHE_KWARG, None)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = _llama.DynamicCache(config=self.config)
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)
        mask = _llama.create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         position_ids=position_ids, **{CACHE_KWARG: cache})
        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        sampling = vision_context is not None and hidden.shape[1] == vision_context.seq_len and vision_context.rows
        for i, layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                           position_ids=position_ids, use_cache=use_cache, **{CACHE_KWARG: cache}, **kwargs)
            if sampling and i in self._sampler_at:
                hidden = self.sample_latents(hidden, self._sampler_at[i], vision_context)
        hidden = self.norm(hidden)
        return _llama.BaseModelOutputWithPast(last_hidden_state=hidden, **{CACHE_KWARG: cache})


class CambrianLlamaForCausalLM(LlamaForCausalLM):
    """``CambrianLlamaForCausalLM`` of cambrian-mllm/cambrian (Llama LM head on :class:`CambrianLlamaModel`)."""

    config_class = CambrianConfig
    _no_split_modules = ["LlamaDecoderLayer", "VisionTokenSampler"]

    def __init__(self, config):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = CambrianLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, *args, vision_context=None, **kwargs):
        """``LlamaForCausalLM.forward``; ``vision_context`` (a :class:`SamplerContext`) reaches the decoder loop."""
        if vision_context is not None:
            kwargs["vision_context"] = vision_context
        return super().forward(*args, **kwargs)

    @property
    def towers(self):
        """``{slot: tower}`` of the loaded encoders (empty before the loader attaches them)."""
        return {t.slot: t for t in self.model.vision_tower_aux_list}

    def connector(self, features, input_ids, image_sizes, removed=frozenset(), zeroed=frozenset()):
        """Image embeddings spliced into the text embeddings, and the :class:`SamplerContext` of the LLM's samplers.

        Args:
            features: ``{slot: (B, N_i, D_i)}`` encoder outputs; slots in ``removed`` may be absent.
            input_ids: (B, L) with each row's image placeholder run (``-200``) of ``h * (w + 1)`` tokens.
            image_sizes: ``(width, height)`` per row, the images' sizes before ``expand2square``.
            removed: slots masked in ``removal`` mode: their keys leave every cross attention.
            zeroed: slots masked in ``zero`` mode: their features are zeros after their aux projector.

        Returns:
            ``(inputs_embeds, context)``.
        """
        config, inner = self.config, self.model
        names = config.slot_names
        image = input_ids == IMAGE_TOKEN_INDEX
        embeds = inner.embed_tokens(input_ids.masked_fill(image, 0))
        dtype = embeds.dtype
        aux = []
        for i, slot in enumerate(names):
            if slot in removed:
                aux.append(None)
                continue
            projected = getattr(inner, f"mm_projector_aux_{i}")(features[slot].to(dtype)).to(dtype)
            aux.append(torch.zeros_like(projected) if slot in zeroed else projected)
        source = next(a for a in aux if a is not None)
        bs = source.shape[0]
        global_context = source.mean(1).view(bs, 1, 1, -1)
        final = int(config.image_token_len ** 0.5)
        groups = []
        for g, query_num in enumerate(config.query_num_list):
            side = int(query_num ** 0.5)
            queries = inner.vision_query[g].view(1, 1, 1, -1).expand(bs, query_num, -1, -1).flatten(0, 1)
            context = global_context.expand(-1, query_num, 1, -1).flatten(0, 1)
            windows, masks = _windows(aux, side, image_sizes, unpad=False)
            out = getattr(inner, f"vision_sampler_{g}")(queries, context, windows, masks).view(bs, query_num, -1)
            if side != final:
                out = out.permute(0, 2, 1).contiguous().view(bs, -1, side, side)
                out = F.interpolate(out.float(), size=(final, final), mode="bilinear", align_corners=False).to(dtype)
                out = out.permute(0, 2, 3, 1).contiguous().flatten(1, 2)
            groups.append(out)
        projected = inner.mm_projector(torch.cat(groups, -1)).to(dtype).view(bs, final, final, -1)
        budget = budget_of(config)
        if budget_refusal(config, budget):
            raise ConfigError(f"token budget {budget.label}: {budget_refusal(config, budget)}")
        pieces, rows, contexts = [], [], []
        for b in range(bs):
            cur = reduce_image_grid(unpad_image(projected[b].unsqueeze(0), image_sizes[b]), budget)
            h, w = cur.shape[1:3]
            cur = torch.cat([cur, inner.image_newline.view(1, 1, 1, -1).expand(1, h, 1, -1).to(cur)], dim=2)
            pieces.append(cur.flatten(1, 2).squeeze(0))
            found = image[b].nonzero()
            if int(image[b].sum()) != h * (w + 1):
                raise ValueError(f"row {b} holds {int(image[b].sum())} image tokens where its image needs {h * (w + 1)} "
                                 f"({h}x{w} grid plus newlines); build the inputs with the Cambrian processor")
            rows.append((b, int(found[0]), h, w))
            contexts.append(global_context[b].expand(h * w, 1, -1))
        embeds = embeds.masked_scatter(image.unsqueeze(-1), torch.cat(pieces, 0).to(dtype))
        windows, masks = _windows(aux, final, image_sizes, unpad=True)
        context = SamplerContext(int(input_ids.shape[1]), rows, windows, masks, torch.cat(contexts, 0))
        return embeds, context


def reduce_image_grid(grid, budget):
    """One image's ``(1, h, w, H)`` projected grid pooled under ``budget`` (``None``: as it is)."""
    if budget is None:
        return grid
    _, h, w, width = grid.shape
    pooled = reduce_grids(grid.reshape(1, h * w, width), [(h, w)], budget)
    return pooled.view(1, *budget.grid_out((h, w)), width)


def _windows(aux, side, image_sizes, unpad):
    windows, masks = [], []
    for a in aux:
        if a is None:
            windows.append(None)
            masks.append(None)
        else:
            win, mask = rearrange_windows(a, side, image_sizes, unpad=unpad)
            windows.append(win)
            masks.append(mask)
    return windows, masks


def register_auto_classes():
    """Make ``AutoConfig``/``AutoModelForCausalLM`` know ``cambrian_llama`` (as the original registers it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(CambrianConfig.model_type, CambrianConfig)
    except ValueError:
        pass
    try:
        AutoModelForCausalLM.register(CambrianConfig, CambrianLlamaForCausalLM)
    except ValueError:
        pass
