"""The Eagle2 family's adapter (nvidia/Eagle2-9B, ``model_type: eagle_chat``) and its strict loading.

Follows Eagle2-9B's remote code ``modeling_eagle_chat.py`` (hub only; public-code index id 334094437:
``Eagle2ChatModel.extract_feature``, ``forward``'s ``<IMG_CONTEXT>`` replacement, ``chat``'s prompt;
generation in ``language_model``), checked against goldens that code made (``tests/parity/eagle2``).
Slots ``siglip`` and ``convnext``, class A2 (LayerNorm-first projector): see :mod:`.modeling` for the
forward, :mod:`.plan` for the exact removal. Strict loading refuses any missing, unexpected or mis-shaped
key; the tolerated differences are the unused ConvNeXt classifier and SigLIP pooling head and ConvNeXt's
sizes, all read from the checkpoint.

Dynamic tiles (:mod:`.processing`): a batch holds every image's tiles and ``num_tiles``; :meth:`encode`
gives each image's row its tiles' tokens one after the other, zero-padded to the batch's longest, and
:meth:`embed` puts each row's first ``n_i`` fused tokens into its ``n_i`` ``<IMG_CONTEXT>`` places. The
evaluator builds cached-feature prompts with :meth:`image_text_inputs` (tile counts from the image sizes)
and counts only real tokens for mean features (:meth:`feature_lengths`). A token budget (``token_budget``)
reduces each tile's projected grid on its own (thumbnail included): an image of ``T`` tiles gets ``T * k``
places, and :meth:`embed` reduces every row's tiles (padding tiles too, then left out) before the scatter.
Fine-tuning builds its prompts without images, so :meth:`pixel_inputs` gives one untiled view per image (the
thumbnail).
"""

import math

import torch

from ....errors import ConfigError
from ...adapter import Slot, TrainableParts
from ...layout import IMAGE_PLACEHOLDER, LayoutAdapter, check_keys, from_pretrained, meta_shapes
from ...masking import FusionClass, check_mask_set
from ...tokens import budget_of
from .configuration import (CONVNEXT, FUSION_ORDER, IMG_CONTEXT, MODEL_TYPE, SIGLIP, TOWER_PREFIX, fit_to_checkpoint,
                            read_eagle2_config)
from .modeling import Eagle2ChatModel, register_auto_classes
from .plan import removal_plan
from .processing import Eagle2Processor


def per_image(tokens, tiles):
    """``(sum T_i, N, D)`` tile tokens -> ``(B, T_max * N, D)``: each image's tiles in order, zeros after."""
    parts = [p.reshape(-1, p.shape[-1]) for p in torch.split(tokens, tiles)]
    out = tokens.new_zeros(len(parts), max(p.shape[0] for p in parts), tokens.shape[-1])
    for row, part in enumerate(parts):
        out[row, :part.shape[0]] = part
    return out


def _cover(features, masked, tokens):
    """When every slot given is masked (zero / mean placeholders), stretch them to ``tokens`` rows: the fusion
    reads only their shape, and a tiled prompt needs more rows than one tile's placeholder has."""
    if any(s not in masked for s in features):
        return features
    return {s: f.new_zeros(f.shape[0], max(tokens, f.shape[1]), f.shape[-1]) for s, f in features.items()}


def _tile_counts(counts, per_tile, budget):
    """Each row's tile count from its ``<IMG_CONTEXT>`` count (``per_tile`` places a tile); ``ConfigError`` when a
    count is no whole number of tiles (prompts written under another token budget than the model's)."""
    odd = [int(c) for c in counts if int(c) % per_tile]
    if odd:
        raise ConfigError(f"a prompt holds {odd[0]} image tokens, not a whole number of tiles of {per_tile} "
                          f"(token budget {budget.label if budget else '1'}): the processor's token_budget differs "
                          "from the model's")
    return [int(c) // per_tile for c in counts]


def expected_shapes(config):
    return meta_shapes(Eagle2ChatModel, config)


def strict_load(path, config, dtype=None, device_map=None):
    """``from_pretrained`` refusing any missing, unexpected or mis-shaped key (naming them)."""
    shapes = fit_to_checkpoint(path, config)
    check_keys(path, shapes, expected_shapes(config), f"Eagle2 config ({config.vision_config.get('vision_path')})")
    return from_pretrained(Eagle2ChatModel, path, config, dtype, device_map)


class Eagle2Adapter(LayoutAdapter):
    """Eagle2 (``eagle_chat`` with a MOB vision config): slots ``siglip`` and ``convnext``, class A2."""

    model_type = MODEL_TYPE
    model_class = Eagle2ChatModel

    def read_config(self, path):
        return read_eagle2_config(path)

    def slots(self, config):
        sizes = {SIGLIP: config.siglip_spec()["image_size"], CONVNEXT: config.convnext_img_size}
        return [Slot(s, s, int(sizes[s]), config.num_image_tokens, config.slot_width(s), removal_exact=True)
                for s in config.slot_names]

    def fusion_class(self, config):
        return FusionClass.A2

    def fusion_settings(self, config):
        return {"type": "channel_concat", "projector": "layernorm_first", "order": list(FUSION_ORDER),
                "pixel_shuffle": {"slot": SIGLIP, "downsample_ratio": config.downsample_ratio},
                "layout": [{"slot": s, "channels": [a, b], "removed": r} for s, a, b, r in config.fusion_layout()],
                "mask": "zeros before mlp1 (the LayerNorm counts them)"}

    def image_tokens(self, config, masked=frozenset(), mask_mode="removal"):
        """Tokens per tile: ``num_image_tokens``, or what the config's token budget leaves of the tile's grid."""
        budget = budget_of(config)
        return budget.tokens_out(self.token_grids(config)[0]) if budget else config.num_image_tokens

    def grids_per_image(self, processor, image):
        """The image's tiles (thumbnail included): every tile is encoded, projected and reduced on its own."""
        return processor.num_tiles(image)

    def token_grids(self, config, masked=frozenset(), mask_mode="removal"):
        """One tile's grid after the pixel shuffle and ``mlp1``: ``side x side`` = ``num_image_tokens``; the reducer
        runs on every tile of an image (thumbnail included)."""
        side = math.isqrt(config.num_image_tokens)
        return [(side, side)]

    # ------------------------------------------------------------------ loading and inputs
    def load(self, path, device="cpu", dtype=None, device_map=None):
        register_auto_classes()
        config = self.read_config(path)
        processor = Eagle2Processor.from_pretrained(path, config)
        config.img_context_token_id = processor.image_token_id
        model = strict_load(path, config, dtype, device_map)
        model.config.img_context_token_id = processor.image_token_id
        if device_map is None:
            model.to(device)
        return model.eval(), processor

    def configure_processor(self, processor, max_tiles=None, **settings):
        """Eagle2's processor setting ``max_tiles`` (at most this many tiles per image, thumbnail aside).

        Raises:
            ConfigError: another setting, or ``max_tiles`` below the config's ``min_dynamic_patch``.
        """
        super().configure_processor(processor, **settings)
        if max_tiles is not None:
            processor.set_max_tiles(max_tiles)
        return processor

    def image_token_id(self, config):
        token = getattr(config, "img_context_token_id", None)
        if token is None:
            raise ConfigError(f"the model's tokenizer has no {IMG_CONTEXT} token")
        return token

    def prepare_batch(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        """Prompts expanded by each image's tile count; every image's tiles and ``num_tiles`` (B,)."""
        if images is None:
            return processor.text_inputs(prompts)
        images = list(images)
        batch = self.image_text_inputs(processor, images, prompts)
        batch.update(processor.image_inputs(images))
        return batch

    def image_text_inputs(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        """The text inputs of :meth:`prepare_batch` with images, without their pixels (a tile count needs only
        the image's size): what the evaluator pairs with cached features."""
        prompts = [p if IMAGE_PLACEHOLDER in p else f"{IMAGE_PLACEHOLDER}\n{p}" for p in prompts]
        return processor.text_inputs(prompts, [processor.num_tiles(i) for i in images])

    def feature_lengths(self, processor, images):
        """Per image, the feature tokens it really has (the rest of its row in :meth:`encode` is padding)."""
        return [processor.num_tiles(i) * processor.num_image_tokens for i in images]

    def pixel_inputs(self, processor, images, masked=frozenset()):
        """One S x S view per image (no tiles): training builds its prompts without the images, so one tile each."""
        images = list(images)
        return {"pixel_values": processor.pixel_values(images, tiled=False),
                "num_tiles": torch.ones(len(images), dtype=torch.long)}

    # ------------------------------------------------------------------ the split forward
    def encode(self, model, batch, slots=None):
        """``{slot: (B, T_max * N, D)}``: each row its image's tiles' tokens one after the other, zero-padded
        after its own ``T_i * N`` (``num_tiles``; absent: one tile per pixel row)."""
        pixels = batch.get("pixel_values")
        if pixels is None:
            return {}
        pixels = pixels.to(model.device, model.dtype)
        tiles = batch.get("num_tiles")
        tiles = [1] * pixels.shape[0] if tiles is None else [int(t) for t in tiles]
        if sum(tiles) != pixels.shape[0]:
            raise ConfigError(f"num_tiles sums to {sum(tiles)} but pixel_values holds {pixels.shape[0]} tiles")
        wanted = set(model.config.slot_names if slots is None else slots)
        return {s: per_image(model.slot_features(s, pixels), tiles) for s in model.config.slot_names if s in wanted}

    def fuse(self, model, features, masked=frozenset(), mask_mode="removal", mask_values=None):
        masked = check_mask_set(model.config.slot_names, masked, mask_mode, mask_values)
        return model.fuse(features, masked, mask_mode, mask_values)

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        """Each row's first ``n_i`` fused tokens into its ``n_i`` ``<IMG_CONTEXT>`` places (row order)."""
        input_ids = batch["input_ids"].to(model.device)
        embeds = model.get_input_embeddings()(input_ids)
        if not features:
            return embeds
        image = input_ids == self.image_token_id(model.config)
        counts = image.sum(dim=1)
        fused, per_tile = self._fused_tiles(model, features, counts, (masked, mask_mode, mask_values))
        if int(counts.max()) > fused.shape[1]:
            raise ConfigError(f"a prompt holds {int(counts.max())} image tokens but its features only "
                              f"{fused.shape[1] // per_tile} tile(s) of {per_tile}: the text was built for more "
                              "tiles than were encoded")
        valid = torch.arange(fused.shape[1], device=fused.device).unsqueeze(0) < counts.to(fused.device).unsqueeze(1)
        return embeds.masked_scatter(image.unsqueeze(-1), fused[valid].to(embeds.dtype))

    def _fused_tiles(self, model, features, counts, mask):
        """``(B, T_max * k, H)`` fused tokens, each tile reduced on its own under the config's token budget, and
        ``k`` (tokens per tile after the reducer; ``num_image_tokens`` without a budget)."""
        budget, n = budget_of(model.config), model.config.num_image_tokens
        per_tile = self.image_tokens(model.config)
        tiles = _tile_counts(counts, per_tile, budget) if budget else None
        need = max(tiles) * n if tiles else int(counts.max())
        fused = self.fuse(model, _cover(features, mask[0], need), *mask)
        if budget is None:
            return fused, per_tile
        if fused.shape[1] % n:
            raise ConfigError(f"the image features hold {fused.shape[1]} tokens per row, not whole tiles of {n}")
        b, length, hidden = fused.shape
        reduced = model.reduce_tiles(fused.reshape(b * (length // n), n, hidden))
        return reduced.reshape(b, -1, hidden), per_tile

    def generate(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None,
                 max_new_tokens=16, **generate_kwargs):
        if features is None:
            run = [s for s in model.config.slot_names if not (mask_mode == "removal" and s in set(masked))]
            features = self.encode(model, batch, run)
        embeds = self.embed(model, features, batch, masked, mask_mode, mask_values)
        kwargs = {"do_sample": False, "num_beams": 1, **generate_kwargs}
        return model.language_model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(
            embeds.device), max_new_tokens=max_new_tokens, **kwargs)

    # ------------------------------------------------------------------ modules and parameters
    def encoders(self, model):
        return {s: model.towers.tower(s) for s in model.config.slot_names}

    def parts(self, model):
        return {"fusion": model.mlp1, "language_model": model.language_model}

    def slot_parameters(self, model):
        """A2: a removed tower's ``mlp1`` columns stay (they see the LayerNorm of its zeros): no fusion share."""
        return {s: {"vision": sum(p.numel() for p in m.parameters()), "fusion": 0}
                for s, m in self.encoders(model).items()}

    def trainable_parts(self, model):
        slots = model.config.tower_slots
        return TrainableParts(language_model="language_model", fusion=("mlp1",),
                              encoders={s: f"{TOWER_PREFIX}{slots.index(s)}" for s in model.config.slot_names})

    # ------------------------------------------------------------------ removal and export
    def removal_plan(self, config, drop):
        return removal_plan(config, drop)

    def export_targets(self, config, kept):
        return ["hf"]

    def export_blockers(self, config, kept, fmt):
        if fmt == "hf":
            return []
        return [f"{fmt} export is not available for Eagle2; --format hf writes Eagle2's own layout (loads with "
                "encslim; with NVlabs' remote code only while both towers are kept)"]

    def export_notes(self, config):
        notes = []
        budget = budget_of(config)
        if budget is not None:
            notes.append(f"token budget {budget.label} (config.json token_budget): {self.image_tokens(config)} of "
                         f"the {config.num_image_tokens} image tokens of each tile reach the LLM; Eagle2-9B's own "
                         "remote code has no reducer (it ignores the key and writes every tile's tokens), so a folder "
                         "with a token budget loads with encslim only")
        if config.encslim_removed_dims:
            removed = ", ".join(f"{s} ({w} zero channels)" for s, w in config.encslim_removed_dims.items())
            notes.append(f"tower(s) removed: {removed} before mlp1 (config.json encslim_removed_dims); this folder "
                         "loads with encslim. Eagle2-9B's own remote code refuses it (Eagle2ChatModel.__init__ raises "
                         f"KeyError on vit_hidden_size[{', '.join(repr(s) for s in config.encslim_removed_dims)}]: "
                         "checked with the original code, tests/parity/eagle2); it never opens it with a tower rebuilt")
        return notes


register_auto_classes()
ADAPTER = Eagle2Adapter()
