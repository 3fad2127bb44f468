"""The Eagle2 family's adapter (nvidia/Eagle2-9B, ``model_type: eagle_chat``) and its strict loading.

Follows NVlabs/Eagle's Eagle2 remote code ``modeling_eagle_chat.py`` (``Eagle2ChatModel``: ``extract_feature``
and the ``<IMG_CONTEXT>`` embeddings it replaces; generation in ``language_model``). Slots ``siglip`` and
``convnext``, class A2 (LayerNorm-first projector): see :mod:`.modeling` for the forward, :mod:`.plan` for
the exact removal. Strict loading refuses any missing, unexpected or mis-shaped key; the one tolerated
difference is the unused ConvNeXt classifier and SigLIP pooling head, sized from the checkpoint.
"""

from ....errors import ConfigError
from ...adapter import Slot, TrainableParts
from ...layout import LayoutAdapter, check_keys, from_pretrained, meta_shapes
from ...masking import FusionClass, check_mask_set
from .configuration import (CONVNEXT, FUSION_ORDER, IMG_CONTEXT, MODEL_TYPE, SIGLIP, TOWER_PREFIX, fit_to_checkpoint,
                            is_eagle2_config, read_eagle2_config)
from .modeling import Eagle2ChatModel, register_auto_classes
from .plan import removal_plan
from .processing import Eagle2Processor


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

    def matches(self, config_dict):
        return is_eagle2_config(config_dict)

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
        return config.num_image_tokens

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

    def image_token_id(self, config):
        token = getattr(config, "img_context_token_id", None)
        if token is None:
            raise ConfigError(f"the model's tokenizer has no {IMG_CONTEXT} token")
        return token

    # ------------------------------------------------------------------ the split forward
    def encode(self, model, batch, slots=None):
        pixels = batch.get("pixel_values")
        if pixels is None:
            return {}
        pixels = pixels.to(model.device, model.dtype)
        wanted = set(model.config.slot_names if slots is None else slots)
        return {s: model.slot_features(s, pixels) for s in model.config.slot_names if s in wanted}

    def fuse(self, model, features, masked=frozenset(), mask_mode="removal", mask_values=None):
        masked = check_mask_set(model.config.slot_names, masked, mask_mode, mask_values)
        return model.fuse(features, masked, mask_mode, mask_values)

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        input_ids = batch["input_ids"].to(model.device)
        embeds = model.get_input_embeddings()(input_ids)
        if not features:
            return embeds
        image = (input_ids == self.image_token_id(model.config)).unsqueeze(-1)
        fused = self.fuse(model, features, masked, mask_mode, mask_values)
        return embeds.masked_scatter(image, fused.to(embeds.dtype))

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
        if config.encslim_removed_dims:
            removed = ", ".join(f"{s} ({w} zero channels)" for s, w in config.encslim_removed_dims.items())
            notes.append(f"tower(s) removed: {removed} before mlp1 (config.json encslim_removed_dims); this folder "
                         "loads with encslim, not with NVlabs' Eagle2 remote code (it needs both towers)")
        return notes


register_auto_classes()
ADAPTER = Eagle2Adapter()
