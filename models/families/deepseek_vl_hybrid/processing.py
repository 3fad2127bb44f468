"""DeepSeek-VL's prompts and model inputs, through transformers' own ``DeepseekVL(Hybrid)Processor``.

Follows transformers' ``models/deepseek_vl_hybrid/processing_deepseek_vl_hybrid.py`` (the image token
repeated ``num_image_tokens`` times) and, without a chat template, the prompt format of
deepseek-ai/DeepSeek-VL's ``conversation.py`` (``User: ...\n\nAssistant:``).
"""

from transformers import BatchFeature

DEFAULT_TEMPLATE = "User: {prompt}\n\nAssistant:"


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
