"""transformers' DeepSeek-VL classes with encslim's keywords, and tiny random hybrids.

The evaluator and the ranking call a loaded model directly: ``model(**inputs, image_features=,
masked_slots=, mask_mode=, mask_values=)`` and ``model.generate(...)`` with the same keywords,
and ask the processor for ``build_prompt(question)``. The subclasses below add exactly that to
the stock classes; their weights, config and saved files are the stock ones (the subclasses keep
the stock class names, so ``save_pretrained`` records the stock architecture and processor).
"""

import torch
from transformers import BatchFeature
from transformers import DeepseekVLForConditionalGeneration as _StockModel
from transformers import DeepseekVLHybridForConditionalGeneration as _HybridModel
from transformers import DeepseekVLHybridProcessor as _HybridProcessor
from transformers import DeepseekVLProcessor as _StockProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling

PIXEL_KEYS = ("pixel_values", "high_res_pixel_values")
DEFAULT_TEMPLATE = "User: {prompt}\n\nAssistant:"


class _EncslimKeywords:
    """``forward``/``generate`` that also take ``image_features``, ``masked_slots``, ``mask_mode``, ``mask_values``."""

    def _encslim_fuse(self, features, masked, mask_mode, mask_values):
        raise NotImplementedError

    def _encslim_encode(self, pixels):
        raise NotImplementedError

    def forward(self, input_ids=None, pixel_values=None, high_res_pixel_values=None, attention_mask=None,
                image_features=None, masked_slots=None, mask_mode="removal", mask_values=None, **kwargs):
        pixels = {k: v for k, v in zip(PIXEL_KEYS, (pixel_values, high_res_pixel_values)) if v is not None}
        if (image_features is not None or masked_slots) and input_ids is not None and (image_features or pixels):
            if image_features is None:
                image_features = self._encslim_encode(pixels)
            pooled = self._encslim_fuse(image_features, masked_slots or (), mask_mode, mask_values)
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
            pixels = {}
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **pixels, **kwargs)

    def prepare_inputs_for_generation(self, *args, is_first_iteration=False, **kwargs):
        images = {k: kwargs.pop(k) for k in ("image_features", *PIXEL_KEYS) if k in kwargs}
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):
            inputs.update(images)  # image inputs feed the prefill only
        return inputs


class DeepseekVLHybridForConditionalGeneration(_EncslimKeywords, _HybridModel):
    """The stock hybrid, plus encslim's masking keywords (see the module docstring)."""

    def _encslim_encode(self, pixels):
        from .deepseek_vl_hybrid import encode_hybrid

        return encode_hybrid(self, pixels)

    def _encslim_fuse(self, features, masked, mask_mode, mask_values):
        from .deepseek_vl_hybrid import hybrid_fuse

        return hybrid_fuse(self.model.aligner, features, masked, mask_mode, mask_values)


class DeepseekVLForConditionalGeneration(_EncslimKeywords, _StockModel):
    """The stock single-encoder DeepSeek-VL, plus encslim's keywords (its one slot cannot be masked)."""

    def _encslim_encode(self, pixels):
        vision = self.model.vision_model
        return {"siglip": vision(pixels["pixel_values"].to(self.device, vision.dtype)).last_hidden_state}

    def _encslim_fuse(self, features, masked, mask_mode, mask_values):
        if masked:
            raise ValueError("deepseek_vl has a single encoder slot; it cannot be masked")
        return self.model.aligner(features["siglip"])


def build_prompt(processor, question, with_image=True):
    """The chat prompt for ``question`` (the processor's chat template, else DeepSeek-VL's format)."""
    if getattr(processor, "chat_template", None):
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
    prompt = f"{processor.image_token}\n{question}" if with_image else question
    return DEFAULT_TEMPLATE.format(prompt=prompt)


def model_inputs(processor, images, prompts):
    """``input_ids``/``attention_mask`` (image token expanded, left padding) and the images' pixels.

    Text is expanded here rather than by the processor call, so prompts with image tokens can
    also be tokenised without images (when cached features stand in for them).
    """
    token, count = processor.image_token, processor.num_image_tokens
    texts = [p if images is None or token in p else f"{token}\n{p}" for p in prompts]
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    data = dict(tokenizer([t.replace(token, token * count) for t in texts], padding=True, return_tensors="pt"))
    if images is not None:
        data.update(processor.image_processor(list(images), return_tensors="pt"))
    return BatchFeature(data)


class DeepseekVLHybridProcessor(_HybridProcessor):
    """The stock hybrid processor, plus ``build_prompt``."""

    def build_prompt(self, question, with_image=True):
        return build_prompt(self, question, with_image)


class DeepseekVLProcessor(_StockProcessor):
    """The stock DeepSeek-VL processor, plus ``build_prompt``."""

    def build_prompt(self, question, with_image=True):
        return build_prompt(self, question, with_image)


# ---------------------------------------------------------------------------- tiny random hybrids
TINY_TEXT = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
TINY_SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "image_size": 32}
TINY_SAM = {"model_type": "sam_vision_model", "hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "patch_size": 8, "image_size": 64, "output_channels": 16,
            "global_attn_indexes": [1], "window_size": 4}


def build_tiny_hybrid(seed=0, tokenizer=None):
    """``(model, processor)``: a tiny random ``deepseek_vl_hybrid`` (SigLIP 32 px, SAM 64 px, 16 image tokens).

    The SAM branch's weights get seeded noise on top of transformers' near-zero init (and a
    non-zero ``high_res_vision_alpha``), so that masking SAM visibly changes the output.
    """
    from transformers import DeepseekVLHybridConfig
    from transformers.models.deepseek_vl_hybrid.image_processing_pil_deepseek_vl_hybrid import (
        DeepseekVLHybridImageProcessorPil,
    )

    from .tokenizer import build_tokenizer

    tokenizer = tokenizer or build_tokenizer()
    config = DeepseekVLHybridConfig(
        text_config=dict(TINY_TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(TINY_SIGLIP), high_res_vision_config=dict(TINY_SAM),
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token), tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = DeepseekVLHybridForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.model.named_parameters():
            if name.startswith(("high_res_vision", "aligner.high_res")):
                param.add_(torch.randn_like(param) * 0.1)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    side = TINY_SIGLIP["image_size"] // TINY_SIGLIP["patch_size"]
    image_processor = DeepseekVLHybridImageProcessorPil(
        size={"height": TINY_SIGLIP["image_size"], "width": TINY_SIGLIP["image_size"]},
        high_res_size={"height": TINY_SAM["image_size"], "width": TINY_SAM["image_size"]},
    )
    processor = DeepseekVLHybridProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          num_image_tokens=side * side)
    return model, processor


def create_tiny_hybrid(out, seed=0, overwrite=False):
    """Write a tiny random ``deepseek_vl_hybrid`` folder (weights, config, processor, tokenizer) to ``out``."""
    from ..outputs import atomic_output_dir

    model, processor = build_tiny_hybrid(seed)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out
