"""The native encslim multi-encoder MLLM: ``LLM(fusion(E_1(I), ..., E_n(I)), text)``.

Self-contained (torch + transformers only) so that ``export --format remote-code`` can ship it.
Per-slot modules live in ``ModuleDict``s keyed by slot name, so removing a slot deletes keys and
renumbers nothing.

The forward is split in two, because encoders do not depend on the mask:

* :meth:`encode` runs each vision tower once: ``{slot: features (B, N_slot, D_slot)}``;
* :meth:`decode` fuses the features with some slots masked, and runs the LLM.

Mask modes (DESIGN §1): ``removal`` (default) is the mask that equals physical removal of the
slot: zero its channel slice (A1/A2), drop its tokens (B), drop its keys (C). ``zero`` replaces
the slot's features by zeros (the study's setting). ``mean`` replaces them by a constant vector
per slot (``mask_values``), e.g. the data-set mean of the features.

A visual-token budget (``config.token_budget``, ``tokens.py``) shortens the fused image tokens, grid by
grid (``EncslimConfig.token_grids``), before they enter the ``<image>`` positions: :meth:`embed` applies
it, so :meth:`decode`, ``forward`` and ``generate`` all read the reduced tokens.
"""

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import EncslimConfig, backbone_info

# transformers renamed the key/value cache argument and output field ``past_key_values`` -> ``cache``
# (the old name warns, then goes in 5.40): use whichever this transformers has
CACHE_KWARG = ("cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
               else "past_key_values")
from ...masking import MaskMode, check_mask_set, mask_feature
from ...tokens import BudgetError, budget_of, reduce_grids, scorer_for

PIXEL_PREFIX = "pixel_values_"
# the forward's keywords it takes through **kwargs (transformers' convention), besides pixel_values_<slot>
FORWARD_KWARGS = ("cache", "past_key_values", "use_cache", "masked_slots", "mask_mode", "mask_values", "slot_keep")


class VisionSlot(nn.Module):
    """One vision backbone and the token selection/pooling that turns it into slot features."""

    def __init__(self, config: EncslimConfig, name: str):
        super().__init__()
        enc = config.encoder(name)
        vision_config = config.vision_config(name)
        self.kind, self.prefix = backbone_info(vision_config)
        self.feature_layer = enc["feature_layer"]
        self.keep_cls = enc["cls"] == "keep"
        self.grid = config.slot_grid(name)
        self.backbone = AutoModel.from_config(vision_config)
        if self.kind == "neck":
            # transformers' SAM init leaves the neck convolutions uninitialised (torch.empty)
            for module in self.backbone.modules():
                if isinstance(module, nn.Conv2d) and not module.weight.is_meta:
                    module.reset_parameters()

    def forward(self, pixel_values):
        if self.kind == "neck":
            fmap = self.backbone(pixel_values=pixel_values).last_hidden_state
            return self._pool_map(fmap)
        hidden = self.backbone(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        hidden = hidden[self.feature_layer]
        if self.kind == "conv":
            return self._pool_map(hidden)
        prefix, tokens = hidden[:, : self.prefix], hidden[:, self.prefix:]
        side = int(round(tokens.shape[1] ** 0.5))
        if side != self.grid:
            fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
            return self._pool_map(fmap)
        return torch.cat([prefix, tokens], dim=1) if self.keep_cls else tokens

    def _pool_map(self, fmap):
        """(B, C, H, W) -> (B, grid*grid, C), average-pooled when the grid is smaller."""
        if fmap.shape[-1] != self.grid or fmap.shape[-2] != self.grid:
            fmap = F.adaptive_avg_pool2d(fmap, self.grid)
        return fmap.flatten(2).transpose(1, 2)


class ChannelConcatFusion(nn.Module):
    """Classes A1/A2: concatenate slot features along channels, then one projector.

    A1 (``linear_first``, Eagle's mlp2x_gelu): ``Linear -> GELU -> Linear``; A2 (``layernorm_first``,
    Eagle2): ``LayerNorm -> Linear -> GELU -> Linear``. A slot is a slice of the input channels.
    """

    def __init__(self, config: EncslimConfig):
        super().__init__()
        self.slots = config.slot_names
        self.dims = {s: config.slot_feature_dim(s) for s in self.slots}
        # A2 after removal: removed slots keep their channel block as constant zeros (``removed_dims``),
        # in the original concat order (``layout``), so the LayerNorm sees what the zero mask gave it
        self.removed = dict(config.fusion.get("removed_dims") or {})
        self.layout = list(config.fusion.get("layout") or self.slots)
        in_dim = sum(self.dims.values()) + sum(self.removed.values())
        hidden = config.text_config.hidden_size
        layers = [nn.LayerNorm(in_dim)] if config.fusion["projector"] == "layernorm_first" else []
        layers += [nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)]
        self.projector = nn.Sequential(*layers)

    def forward(self, features, masked, mode, mask_values):
        ref = _reference(features)
        parts = []
        for slot in self.layout:
            if slot in self.removed:
                parts.append(ref.new_zeros(*ref.shape[:-1], self.removed[slot]))
            elif slot in masked:
                parts.append(mask_feature(ref, self.dims[slot], mode, (mask_values or {}).get(slot)))
            else:
                parts.append(features[slot])
        return self.projector(torch.cat(parts, dim=-1))


def _reference(features):
    """Any present feature tensor, to take batch size, token count, dtype and device from."""
    for value in features.values():
        return value
    raise ValueError("at least one slot's features are needed")


def _slot_input(features, slot, masked, mode, mask_values):
    """A slot's features for token/key fusions (B, C): ``None`` when removal drops them, else masked or real."""
    if slot not in masked:
        return features[slot]
    if mode == MaskMode.REMOVAL:
        return None
    feature = features[slot]
    return mask_feature(feature, feature.shape[-1], mode, (mask_values or {}).get(slot))


def _mlp(in_dim, hidden):
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class SequenceConcatFusion(nn.Module):
    """Class B: each slot has its own projector; its tokens are concatenated in slot order."""

    def __init__(self, config: EncslimConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.projectors = nn.ModuleDict(
            {s: _mlp(config.slot_feature_dim(s), hidden) for s in config.slot_names}
        )

    def forward(self, features, masked, mode, mask_values):
        out = []
        for slot, projector in self.projectors.items():
            feature = _slot_input(features, slot, masked, mode, mask_values)
            if feature is not None:
                out.append(projector(feature))
        return torch.cat(out, dim=1)


class CrossAttentionFusion(nn.Module):
    """Class C (Cambrian SVA-like): learnable queries attend over every slot's keys and values.

    Each slot owns only its K/V projections; removing it removes its keys from the attention,
    which is exactly an attention mask over its keys.
    """

    def __init__(self, config: EncslimConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.num_heads = config.fusion["num_heads"]
        self.queries = nn.Parameter(torch.randn(config.fusion["num_queries"], hidden) * 0.02)
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.ModuleDict({s: nn.Linear(config.slot_feature_dim(s), hidden) for s in config.slot_names})
        self.v_proj = nn.ModuleDict({s: nn.Linear(config.slot_feature_dim(s), hidden) for s in config.slot_names})
        self.o_proj = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.mlp = _mlp(hidden, hidden)

    def forward(self, features, masked, mode, mask_values):
        keys, values = [], []
        for slot in self.k_proj:
            feature = _slot_input(features, slot, masked, mode, mask_values)
            if feature is None:
                continue
            keys.append(self.k_proj[slot](feature))
            values.append(self.v_proj[slot](feature))
        if not keys:
            raise ValueError("cross-attention fusion needs at least one unmasked slot")
        key, value = torch.cat(keys, dim=1), torch.cat(values, dim=1)
        batch = key.shape[0]
        queries = self.queries.unsqueeze(0).expand(batch, -1, -1).to(key.dtype)
        attn = F.scaled_dot_product_attention(
            self._heads(self.q_proj(queries)), self._heads(key), self._heads(value)
        )
        x = queries + self.o_proj(attn.transpose(1, 2).reshape(batch, queries.shape[1], -1))
        return x + self.mlp(self.norm(x))

    def _heads(self, x):
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)


FUSIONS = {
    "channel_concat": ChannelConcatFusion,
    "sequence_concat": SequenceConcatFusion,
    "cross_attention": CrossAttentionFusion,
}


class EncslimPreTrainedModel(PreTrainedModel):
    config_class = EncslimConfig
    config: EncslimConfig
    base_model_prefix = "encslim"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _skip_keys_device_placement = [CACHE_KWARG]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, CrossAttentionFusion):
            nn.init.normal_(module.queries, std=std)
        elif isinstance(module, nn.Linear) and not _inside_backbone(self, module):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and not _inside_backbone(self, module):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _inside_backbone(model, module):
    fusion = getattr(model, "fusion", None)
    return fusion is None or not any(m is module for m in fusion.modules())


class EncslimForConditionalGeneration(EncslimPreTrainedModel, GenerationMixin):
    """Multi-encoder MLLM with named encoder slots, a fusion module and a causal LM."""

    def __init__(self, config: EncslimConfig):
        super().__init__(config)
        self.vision_towers = nn.ModuleDict({s: VisionSlot(config, s) for s in config.slot_names})
        self.fusion = FUSIONS[config.fusion["type"]](config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        no_split = set()
        for module in self.modules():
            if isinstance(module, PreTrainedModel) and module is not self:
                no_split.update(module._no_split_modules or [])
        self._no_split_modules = sorted(no_split)
        self.post_init()

    # ---------------------------------------------------------------- embeddings
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    # ---------------------------------------------------------------- encode / fuse / decode
    @property
    def slot_names(self):
        return list(self.vision_towers)

    def encode(self, pixel_values, slots=None):
        """Run the vision towers: ``{slot: (B, N_slot, D_slot)}``.

        Args:
            pixel_values: ``{slot: (B, 3, H, W)}``, one tensor per slot at its own resolution.
            slots: run only these slots (default: every slot with pixel values).
        """
        wanted = self.slot_names if slots is None else [s for s in self.slot_names if s in set(slots)]
        features = {}
        for slot in wanted:
            if slot not in pixel_values:
                continue
            tower = self.vision_towers[slot]
            pixels = pixel_values[slot].to(device=_device_of(tower), dtype=_dtype_of(tower))
            features[slot] = tower(pixels)
        return features

    def fuse(self, features, masked_slots=(), mask_mode="removal", mask_values=None):
        """Fuse slot features into LLM image embeddings ``(B, T, hidden)``."""
        masked = check_mask_set(self.slot_names, masked_slots, mask_mode, mask_values)
        missing = [s for s in self.slot_names if s not in masked and s not in features]
        if missing:
            raise ValueError(f"features missing for unmasked slot(s) {missing}")
        fusion_device = _device_of(self.fusion)
        features = {k: v.to(fusion_device) for k, v in features.items()}
        return self.fusion(features, masked, mask_mode, mask_values)

    def embed(self, features, input_ids, masked_slots=(), mask_mode="removal", mask_values=None):
        """The LLM input embeddings: text embeddings with the fused image embeddings in the ``<image>`` positions."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        positions = input_ids == self.config.image_token_id
        if features is not None and (features or bool(positions.any())):  # else a text-only prompt
            image_embeds = self.fuse(features, masked_slots, mask_mode, mask_values)
            image_embeds = self.reduce_tokens(image_embeds.to(inputs_embeds.device, inputs_embeds.dtype),
                                              masked_slots, mask_mode)
            expected = image_embeds.shape[0] * image_embeds.shape[1]
            if int(positions.sum()) != expected:
                raise ValueError(
                    f"the text holds {int(positions.sum())} image tokens but the image gives {expected} "
                    f"({image_embeds.shape[1]} per sample); build the prompt with the processor, "
                    f"passing the same masked slots"
                )
            image_embeds = image_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(positions.unsqueeze(-1), image_embeds)
        return inputs_embeds

    def reduce_tokens(self, image_embeds, masked_slots=(), mask_mode="removal"):
        """Apply the config's token budget to fused image embeddings ``(B, T, hidden)`` (unchanged without one).

        The grids are those of the slots present (removal mode drops the masked slots' grids); the
        ``attention`` method scores tokens in the LLM's first decoder layer.
        """
        budget = budget_of(self.config)
        if budget is None:
            return image_embeds
        gone = set(masked_slots or ()) if str(mask_mode) == MaskMode.REMOVAL.value else set()
        grids = self.config.token_grids([s for s in self.slot_names if s not in gone])
        if grids is None:
            raise BudgetError(f"this model takes no token budget (a slot keeps its CLS token), but its config "
                             f"sets token_budget {budget.to_dict()}; remove it from config.json")
        scorer = scorer_for(self.language_model) if budget.method == "attention" else None
        return reduce_grids(image_embeds, grids, budget, scorer)

    def decode(self, features, input_ids=None, attention_mask=None, masked_slots=(), mask_mode="removal",
               mask_values=None, inputs_embeds=None, labels=None, **lm_kwargs):
        """Fuse ``features`` (some slots masked) into the ``<image>`` positions and run the LLM."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(features, input_ids, masked_slots, mask_mode, mask_values)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs
        )

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                labels=None, logits_to_keep=0, image_features=None, **kwargs):
        """Full forward. Pixels come as ``pixel_values={slot: tensor}`` or ``pixel_values_<slot>=``.

        ``image_features`` (the output of :meth:`encode`) skips the vision towers. As transformers'
        models do, the arguments passed by name only arrive through ``**kwargs``: the key/value cache
        (``cache`` or ``past_key_values``, whichever name the caller uses), ``use_cache``, and the mask:
        ``masked_slots``, ``mask_mode`` (default ``removal``), ``mask_values`` and ``slot_keep``; the
        rest goes to the language model. Slots masked in ``removal`` mode are not encoded at all.
        ``slot_keep`` (``{slot: (B,) tensor}``) multiplies each sample's slot features by a weight
        before fusion: with 0/1 weights it zero-masks slots per sample (training-time encoder dropout;
        for class A1 this is the removal mask).
        """
        pixel_values = _collect_pixels(pixel_values, kwargs)
        cache, past_key_values = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
        cache = cache if cache is not None else past_key_values  # either name, whatever the caller uses
        use_cache, masked_slots = kwargs.pop("use_cache", None), kwargs.pop("masked_slots", None)
        mask_mode, mask_values = kwargs.pop("mask_mode", "removal"), kwargs.pop("mask_values", None)
        slot_keep = kwargs.pop("slot_keep", None)
        if image_features is None and pixel_values:
            skip = set(masked_slots or ()) if mask_mode == "removal" else set()
            image_features = self.encode(pixel_values, [s for s in self.slot_names if s not in skip])
        if slot_keep and image_features is not None:
            image_features = _keep_per_sample(image_features, slot_keep)
        out = self.decode(
            image_features, input_ids=input_ids, attention_mask=attention_mask, masked_slots=masked_slots,
            mask_mode=mask_mode, mask_values=mask_values, inputs_embeds=inputs_embeds, labels=labels,
            position_ids=position_ids, use_cache=use_cache, logits_to_keep=logits_to_keep,
            **{CACHE_KWARG: cache}, **kwargs,
        )
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits, hidden_states=out.hidden_states,
                                      attentions=out.attentions, **{CACHE_KWARG: getattr(out, CACHE_KWARG)})

    def _validate_model_kwargs(self, model_kwargs):
        # per-slot pixel inputs arrive as pixel_values_<slot>, which no signature can list; the cache and
        # mask keywords are the forward's, taken through **kwargs
        super()._validate_model_kwargs({k: v for k, v in model_kwargs.items()
                                        if not k.startswith(PIXEL_PREFIX) and k not in FORWARD_KWARGS})

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None,
                                      is_first_iteration=False, **kwargs):
        pixel_keys = [k for k in kwargs if k == "pixel_values" or k.startswith(PIXEL_PREFIX) or k == "image_features"]
        pixels = {k: kwargs.pop(k) for k in pixel_keys}
        inputs = super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration, **kwargs,
        )
        if is_first_iteration or not kwargs.get("use_cache", True):
            inputs.update(pixels)
        return inputs


def _keep_per_sample(features, slot_keep):
    """``features`` with each listed slot's rows scaled by its per-sample weights ``(B,)``."""
    out = dict(features)
    for slot, keep in slot_keep.items():
        if slot in out:
            feature = out[slot]
            out[slot] = feature * keep.to(feature).reshape(-1, *([1] * (feature.dim() - 1)))
    return out


def _collect_pixels(pixel_values, kwargs):
    """Merge ``pixel_values`` (a dict) and ``pixel_values_<slot>`` keyword arguments."""
    merged = dict(pixel_values or {})
    for key in [k for k in kwargs if k.startswith(PIXEL_PREFIX)]:
        value = kwargs.pop(key)
        if value is not None:
            merged[key[len(PIXEL_PREFIX):]] = value
    return merged


def _device_of(module):
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _dtype_of(module):
    for p in module.parameters():
        return p.dtype
    return torch.float32


__all__ = ["EncslimForConditionalGeneration", "EncslimPreTrainedModel"]
