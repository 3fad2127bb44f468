"""Adapter for the native encslim architecture (``model_type: encslim``), all fusion classes."""

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .adapter import Adapter, Slot, register_adapter
from .configuration_encslim import EncslimConfig
from .modeling_encslim import EncslimForConditionalGeneration
from .processing_encslim import EncslimProcessor

EXACT_CLASSES = {"A1": True, "A2": False, "B": True, "C": True}


def register_auto_classes():
    """Make ``AutoConfig``/``AutoModelForImageTextToText``/``AutoProcessor`` know ``encslim``."""
    try:
        AutoConfig.register("encslim", EncslimConfig)
    except ValueError:
        pass  # already registered in this process
    try:
        AutoModelForImageTextToText.register(EncslimConfig, EncslimForConditionalGeneration)
    except ValueError:
        pass
    try:
        AutoProcessor.register(EncslimConfig, EncslimProcessor)
    except ValueError:
        pass


class NativeAdapter(Adapter):
    model_type = "encslim"

    def slots(self, config):
        exact = EXACT_CLASSES[config.fusion_class]
        return [
            Slot(
                name=e["name"],
                backbone=e["vision_config"]["model_type"],
                image_size=e["image_size"],
                num_tokens=config.slot_num_tokens(e["name"]),
                feature_dim=config.slot_feature_dim(e["name"]),
                removal_exact=exact,
            )
            for e in config.encoders
        ]

    def fusion_class(self, config):
        return config.fusion_class

    def load(self, path, device="cpu", dtype=None, device_map=None):
        kwargs = {"dtype": dtype} if dtype is not None else {}
        if device_map is not None:
            kwargs["device_map"] = device_map
        model = EncslimForConditionalGeneration.from_pretrained(path, **kwargs)
        if device_map is None:
            model.to(device)
        model.eval()
        return model, EncslimProcessor.from_pretrained(path)

    def encode(self, model, batch):
        pixels = {k[len("pixel_values_"):]: v for k, v in batch.items() if k.startswith("pixel_values_")}
        return model.encode(pixels)

    def decode(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        return model.decode(
            features, input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
            masked_slots=masked, mask_mode=mask_mode, mask_values=mask_values,
        )

    def prepare_batch(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        removed = masked if mask_mode == "removal" else ()
        return processor(text=prompts, images=images, masked_slots=removed)

    def removal_plan(self, config, drop):
        from ..prune.plan import native_removal_plan

        return native_removal_plan(config, drop)

    def export_targets(self, config, kept):
        return ["hf", "remote-code", "onnx"]


register_auto_classes()
register_adapter(NativeAdapter())
