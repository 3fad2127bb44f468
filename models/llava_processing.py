"""The LLaVA-style image and prompt helpers that Eagle v1, I-MoF and Cambrian-1 share.

All three repositories copy LLaVA's ``mm_utils.py`` and ``conversation.py``; these functions follow
those copies (Eagle's ``eagle/mm_utils.py`` and ``eagle/conversation.py`` of NVlabs/EAGLE, which match
LLaVA-1.5's ``llava/mm_utils.py`` and ``llava/conversation.py`` as tsb0601/MMVP vendors them):

- :func:`expand2square`: ``mm_utils.expand2square``, the ``image_aspect_ratio: pad`` step of
  ``process_images`` (the shorter side padded, centred, with the processor's mean colour);
- :func:`chat_prompt`: ``conv_templates[template]`` (``vicuna_v1``: ``SeparatorStyle.TWO``;
  ``llama3``: ``SeparatorStyle.MPT``) with one user turn and an open assistant turn (``get_prompt``),
  ``<image>\\n`` before the question as ``eval/model_vqa.py`` writes it;
- :func:`guess_template`: Llama 3's template when the tokenizer knows ``<|eot_id|>``, else Vicuna's;
- :func:`tokenizer_image_token`: ``mm_utils.tokenizer_image_token``: each ``<image>``-separated chunk
  tokenized on its own, later chunks lose their BOS, the placeholder id ``-200``
  (``constants.IMAGE_TOKEN_INDEX``) between them, repeated once per image token so the fused
  features can be written into those positions.

Torch-free: the families' processors build tensors from what these return.
"""

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP's CLIPImageProcessor image_mean
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200  # llava/constants.py: the placeholder id spliced into input_ids
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
TEMPLATES = ("vicuna_v1", "llama3")


def expand2square(image, background):
    """LLaVA's ``expand2square``: pad the shorter side (centred) with ``background``.

    Args:
        image: a PIL image.
        background: the fill colour, an RGB tuple of ints.

    Returns:
        ``image`` itself when square, else a new square image holding it centred.
    """
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def chat_prompt(template, question, with_image=True):
    """``conv_templates[template]`` with one user turn and an open assistant turn (``get_prompt``).

    Args:
        template: ``vicuna_v1`` or ``llama3``.
        question: the user's text.
        with_image: put ``<image>\\n`` before the question.

    Returns:
        The prompt text.

    Raises:
        ValueError: an unknown template.
    """
    text = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image else question
    if template == "vicuna_v1":  # SeparatorStyle.TWO, sep " ", roles USER/ASSISTANT
        return f"{VICUNA_SYSTEM} USER: {text} ASSISTANT:"
    if template == "llama3":  # SeparatorStyle.MPT, sep <|eot_id|>
        system = f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{VICUNA_SYSTEM}"
        return (f"{system}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    raise ValueError(f"chat template '{template}' unknown; use one of {', '.join(TEMPLATES)}")


def guess_template(tokenizer):
    """``llama3`` when the tokenizer knows Llama 3's ``<|eot_id|>``, else ``vicuna_v1``."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return "llama3" if "<|eot_id|>" in vocab else "vicuna_v1"


def tokenizer_image_token(tokenizer, prompt, num_image_tokens):
    """LLaVA's ``mm_utils.tokenizer_image_token`` with the placeholder run expanded.

    Args:
        tokenizer: a transformers tokenizer.
        prompt: text with ``<image>`` placeholders.
        num_image_tokens: how many times ``IMAGE_TOKEN_INDEX`` stands for each placeholder.

    Returns:
        The id list: each ``<image>``-separated chunk tokenized on its own, later chunks without
        their BOS, ``IMAGE_TOKEN_INDEX`` repeated ``num_image_tokens`` times between them.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_PLACEHOLDER)]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i:
            ids.extend([IMAGE_TOKEN_INDEX] * num_image_tokens)
        ids.extend(chunk[offset:])
    return ids
