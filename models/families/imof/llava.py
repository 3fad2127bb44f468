"""A CLIP-only I-MoF as a stock LLaVA-1.5 (``export --format llava``).

Without DINOv2 the model is LLaVA-1.5 (tsb0601/MMVP's ``llava_arch`` with its ``vision_tower`` and
``mm_projector`` alone), which transformers' ``models/llava/modeling_llava.py``
(``LlavaForConditionalGeneration``: ``vision_tower``, ``multi_modal_projector.linear_1``/``linear_2``,
``language_model``) computes exactly; this module renames the keys and writes the matching
``LlavaConfig`` and ``LlavaProcessor``.
"""

import torch
from transformers import LlamaConfig

from ....errors import ConfigError
from ...layout import IMAGE_PLACEHOLDER
from ...tokens import budget_of


def llava_blockers(config, kept):
    """Why an I-MoF model keeping towers ``kept`` cannot become a stock LLaVA: one-line reasons, empty when it can."""
    reasons = []
    if list(kept) != ["clip"]:
        reasons.append("a stock LLaVA holds the CLIP tower alone; drop dinov2 first (encslim prune --drop dinov2)")
    if config.mm_projector_type != "mlp2x_gelu":
        reasons.append(f"LLaVA's projector is mlp2x_gelu, this one is {config.mm_projector_type}")
    budget = budget_of(config)
    if budget is not None:
        reasons.append(f"LLaVA's stock class has no token reducer: this model applies the token budget "
                       f"{budget.label} (config.json token_budget); export it as --format hf, or remove the budget")
    return reasons


def llava_conversion(model, processor):
    """``(LlavaConfig, state_dict, LlavaProcessor)`` of a CLIP-only I-MoF: stock ``LlavaForConditionalGeneration``
    computing exactly what this model computes (:meth:`.adapter.ImofAdapter.to_llava`).

    If the tokenizer has no ``<image>`` token it is added, and the embedding and LM head grow one (never
    read) row: stock LLaVA looks the image ids up before replacing them.

    Raises:
        ConfigError: the model is not CLIP-only with an ``mlp2x_gelu`` projector.
    """
    from transformers import LlavaConfig

    config = model.config
    reasons = llava_blockers(config, config.imof_towers)
    if reasons:
        raise ConfigError(f"this I-MoF model cannot be a stock LLaVA: {'; '.join(reasons)}")
    tokenizer = processor.tokenizer
    state, vocab, image_id = _llava_state(model, tokenizer)
    base = set(LlamaConfig().to_dict()) - {"architectures", "model_type", "transformers_version", "dtype",
                                           "torch_dtype"}
    text = {k: v for k, v in config.to_dict().items() if k in base}
    text.update(model_type="llama", vocab_size=vocab)
    strategy = "default" if config.mm_vision_select_feature == "patch" else "full"
    vision = config.clip_vision_config()
    llava_config = LlavaConfig(
        vision_config=vision.to_dict(), text_config=text, image_token_index=image_id,
        image_seq_length=config.tower_tokens("clip"), vision_feature_layer=config.mm_vision_select_layer,
        vision_feature_select_strategy=strategy, projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=bool(config.tie_word_embeddings), pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
    )
    return llava_config, state, _llava_processor(processor, tokenizer, config.image_size, vision.patch_size, strategy)


def _llava_state(model, tokenizer):
    """``(state_dict in llava-hf names, vocab size, image token id)``; adds ``<image>`` to the tokenizer
    (and one zero row to the embedding and LM head) where it has none."""
    rules = [("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
             ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
             ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
             ("model.", "model.language_model."), ("lm_head.", "lm_head.")]
    state = {}
    for key, tensor in model.state_dict().items():
        old, new = next((o, n) for o, n in rules if key.startswith(o))
        state[new + key[len(old):]] = tensor
    vocab = model.config.vocab_size
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_id is None or image_id == tokenizer.unk_token_id:
        tokenizer.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_id >= vocab:
        grow = image_id + 1 - vocab
        for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            if key in state:
                state[key] = torch.cat([state[key], state[key].new_zeros(grow, state[key].shape[1])])
        vocab = image_id + 1
    return state, vocab, image_id


def _llava_processor(processor, tokenizer, size, patch_size, strategy):
    """The stock ``LlavaProcessor`` preparing images as this model's processor does (PIL backend)."""
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    image_processor = LlavaImageProcessorPil(
        do_pad=processor.pad, do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(processor.image_mean), image_std=list(processor.image_std), do_convert_rgb=True,
    )
    return LlavaProcessor(  # no chat template: export --format llava writes it from build_prompt
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy=strategy, image_token=IMAGE_PLACEHOLDER, num_additional_image_tokens=1,
    )
