"""A native model as a stock ``LlavaForConditionalGeneration``: config, weights and processor.

LLaVA (transformers ``llava``) is one vision tower, ``hidden_states[vision_feature_layer]`` with the
CLS token dropped (``default``) or kept (``full``), a ``Linear -> GELU -> Linear`` projector, and a
causal LM. Which native models map onto it exactly is :func:`~.adapter.llava_blockers`'s call;
``encslim export --format llava`` calls :meth:`~.adapter.NativeAdapter.to_llava`, which uses the
functions here.

Weight layout (transformers 5): ``model.vision_tower.*`` <- the slot encoder's ``backbone.*``,
``model.multi_modal_projector.linear_{1,2}`` <- the projector's Linear layers,
``model.language_model.*`` <- the LM's ``model.*``, ``lm_head`` <- the LM's ``lm_head`` (module
names from the adapter's ``trainable_parts``).
"""

from ....errors import ConfigError
from .configuration import backbone_info


def llava_config(config):
    """The ``LlavaConfig`` equal to a LLaVA-compatible native config (one slot left)."""
    from transformers import LlavaConfig

    slot = config.slot_names[0]
    enc = config.encoder(slot)
    vision = config.vision_config(slot)
    prefix = backbone_info(vision)[1]
    strategy = "default" if prefix == 1 and enc["cls"] == "drop" else "full"
    text = config.text_config.to_dict()
    return LlavaConfig(
        vision_config=vision.to_dict(), text_config=text, image_token_index=config.image_token_id,
        image_seq_length=config.num_image_tokens(), vision_feature_layer=enc["feature_layer"],
        vision_feature_select_strategy=strategy, projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
    )


def llava_state_dict(state_dict, config, parts):
    """Rename a native state dict to LLaVA's key layout (no copies). Pure.

    Args:
        state_dict: the native model's state dict.
        config: its config (one slot left).
        parts: its :class:`~encslim.models.adapter.TrainableParts` (``adapter.trainable_parts(model)``):
            the module names of the slot's encoder, the fusion and the LM.

    Returns:
        ``{llava key: tensor}``.

    Raises:
        ConfigError: a key that has no place in LLaVA (the model is not LLaVA-shaped).
    """
    slot = config.slot_names[0]
    fusion = parts.fusion[0] + "."
    # one projector over the concatenated channels (A1), or the slot's own one (B)
    per_slot = f"{fusion}projectors.{slot}."
    projector = per_slot if any(k.startswith(per_slot) for k in state_dict) else f"{fusion}projector."
    lm = parts.language_model + "."
    rules = [(parts.encoders[slot] + ".backbone.", "model.vision_tower."),
             (projector + "0.", "model.multi_modal_projector.linear_1."),
             (projector + "2.", "model.multi_modal_projector.linear_2."),
             (lm + "model.", "model.language_model."),
             (lm + "lm_head.", "lm_head.")]
    out = {}
    for key, tensor in state_dict.items():
        for old, new in rules:
            if key.startswith(old):
                out[new + key[len(old):]] = tensor
                break
        else:
            raise ConfigError(f"weight '{key}' has no place in a LLaVA model; the model is not LLaVA-shaped")
    return out


def llava_processor(processor, config):
    """A stock ``LlavaProcessor`` that prepares the same images and tokens as the native processor.

    Images: resized to the slot's square size (bicubic, no crop), rescaled and normalised with the
    slot's mean/std, exactly as the native processor does. Text: the same tokenizer. It has no chat
    template: the export stage writes one from the adapter's ``build_prompt``.
    """
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    slot = config.slot_names[0]
    enc = config.encoder(slot)
    vision = config.vision_config(slot)
    size = enc["image_size"]
    image_processor = LlavaImageProcessorPil(
        do_resize=True, size={"height": size, "width": size}, resample=3, do_center_crop=False, do_pad=False,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(enc["image_mean"]),
        image_std=list(enc["image_std"]), do_convert_rgb=True,
    )
    prefix = backbone_info(vision)[1]  # LLaVA counts the CLS token, then 'default' drops it
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=processor.tokenizer, patch_size=vision.patch_size,
        vision_feature_select_strategy=llava_config(config).vision_feature_select_strategy,
        image_token=processor.image_token, num_additional_image_tokens=prefix,
    )


def to_llava(model, processor, parts):
    """``(LlavaConfig, state_dict, LlavaProcessor)`` computing what the one-slot native ``model`` computes.

    Args:
        model: a native model with one LLaVA-compatible slot left (no :func:`~.adapter.llava_blockers`).
        processor: its processor.
        parts: ``adapter.trainable_parts(model)``.
    """
    return (llava_config(model.config), llava_state_dict(model.state_dict(), model.config, parts),
            llava_processor(processor, model.config))


__all__ = ["llava_config", "llava_processor", "llava_state_dict", "to_llava"]
