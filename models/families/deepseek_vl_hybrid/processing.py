"""DeepSeek-VL's prompts and model inputs, through transformers' own ``DeepseekVL(Hybrid)Processor``.

Follows transformers' ``models/deepseek_vl_hybrid/processing_deepseek_vl_hybrid.py`` (the image token
repeated ``num_image_tokens`` times) and, without a chat template, the prompt format of
deepseek-ai/DeepSeek-VL's ``conversation.py`` (``User: ...\n\nAssistant:``).

Under a visual-token budget (``processor.token_budget``, set from the model's ``config.json`` when the
adapter loads it) each image holds the tokens the reducer leaves of its ``side x side`` grid
(:func:`image_token_count`).
"""

from transformers import BatchFeature

from ...tokens import parse_budget, square_grid_tokens

DEFAULT_TEMPLATE = "User: {prompt}\n\nAssistant:"


def build_prompt(processor, question, with_image=True):
    """The chat prompt for ``question`` (the processor's chat template, else DeepSeek-VL's format)."""
    if getattr(processor, "chat_template", None):
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
    prompt = f"{processor.image_token}\n{question}" if with_image else question
    return DEFAULT_TEMPLATE.format(prompt=prompt)


def image_token_count(processor):
    """Image tokens per image: ``num_image_tokens`` (a ``side x side`` grid), or what ``processor.token_budget``
    (a ``TokenBudget``, its dict or ``None``) leaves of that grid."""
    return square_grid_tokens(processor.num_image_tokens, parse_budget(getattr(processor, "token_budget", None)))


def model_inputs(processor, images, prompts):
    """``input_ids``/``attention_mask`` (image token expanded, left padding) and the images' pixels.

    Text is expanded here rather than by the processor call, so prompts with image tokens can
    also be tokenised without images (when cached features stand in for them).
    """
    token, count = processor.image_token, image_token_count(processor)
    texts = [p if images is None or token in p else f"{token}\n{p}" for p in prompts]
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    data = dict(tokenizer([t.replace(token, token * count) for t in texts], padding=True, return_tensors="pt"))
    if images is not None:
        data.update(processor.image_processor(list(images), return_tensors="pt"))
    return BatchFeature(data)
