"""Cambrian-1's inputs: one pixel tensor per encoder, the chat prompt and its token ids.

- Images follow ``cambrian/mm_utils.process_images``: for every encoder its own ``expand2square``
  colour, size and normalisation (:func:`~encslim.models.families.cambrian.encoders.pixel_tensor`); the batch
  holds ``pixel_values_<slot>`` per encoder that runs and ``image_sizes`` (the images' ``(width,
  height)`` before padding, which the connector's unpadding reads, as the original's ``image_sizes``).
- Prompts follow ``cambrian/conversation.py``: ``llama_3`` (Cambrian-8B), ``vicuna_v1`` (13B) or
  ``chatml_direct`` (34B), with ``<image>\\n`` before the question as ``inference.py`` does.
- Token ids follow ``mm_utils.tokenizer_image_token`` (the one ``inference.py`` and the eval
  scripts call): each chunk tokenized on its own, later chunks without their BOS. The original puts
  one ``-200`` there and splices in ``h * (w + 1)`` image embeddings; encslim repeats the placeholder
  that many times (``h x w`` is the ``image_token_len`` grid after unpadding for that image's
  aspect ratio, plus one newline per row), so the LLM sees the original's sequence.

Without images (text inputs for cached features) the grid of a square image is assumed: cached
encoder features carry no image size. Rank and eval on non-square images with the feature cache
therefore see every image as square (no unpadding); the pixel path unpads as the original does.

Under a visual-token budget (``token_budget``: read from the model's config when the processor is built, or set
later as the attribute; never saved) an image holds its pooled grid plus one newline per pooled row.
"""

import json
from pathlib import Path

import torch

from ...layout import TokenizerMixin, left_pad
from ...llava_processing import VICUNA_SYSTEM, tokenizer_image_token
from ...tokens import BudgetError, budget_of, parse_budget
from .configuration import budget_grid
from .encoders import pixel_tensor
from .sva import unpadded_size

PROCESSOR_FILE = "processor_config.json"
IMAGE_PLACEHOLDER = "<image>"
TEMPLATES = ("llama_3", "vicuna_v1", "chatml_direct")
LLAMA3_SYSTEM = ("You are Cambrian, a highly intelligent multimodal AI trained by NYU Vision X. \n"
                 "    As a multimodal AI, you have the ability to process and analyze images. Whenever an image is "
                 "present in the conversation, very carefully examine it and consider its content when formulating "
                 "your response.\n    You should give concise responses to very simple questions, but provide "
                 "thorough responses to more complex and open-ended questions. ")
CAMBRIAN_SYSTEM = ("You are Cambrian, a highly intelligent multimodal AI trained by NYU Vision X. As a multimodal AI, "
                   "you have the ability to process and analyze images. Whenever an image is present in the "
                   "conversation, very carefully examine it and consider its content when formulating your response. "
                   "You should give concise responses to very simple questions, but provide thorough responses to "
                   "more complex and open-ended questions.")


def chat_prompt(template, question, with_image=True):
    """``conv_templates[template]`` with one user turn and an open assistant turn (``get_prompt``)."""
    text = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image else question
    if template == "llama_3":  # SeparatorStyle.LLAMA_3
        return (f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>{LLAMA3_SYSTEM}<|eot_id|>"
                f"<|start_header_id|>user<|end_header_id|>{text}<|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    if template == "vicuna_v1":  # SeparatorStyle.TWO, sep " "
        return f"{VICUNA_SYSTEM} USER: {text} ASSISTANT:"
    if template == "chatml_direct":  # SeparatorStyle.MPT, sep <|im_end|>
        return (f"<|im_start|>system\n{CAMBRIAN_SYSTEM}<|im_end|><|im_start|>user\n{text}<|im_end|>"
                "<|im_start|>assistant\n")
    raise ValueError(f"chat template '{template}' unknown; use one of {', '.join(TEMPLATES)}")


def guess_template(tokenizer):
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if "<|eot_id|>" in vocab:
        return "llama_3"
    return "chatml_direct" if "<|im_start|>" in vocab else "vicuna_v1"


class CambrianProcessor(TokenizerMixin):
    """Images -> ``pixel_values_<slot>`` + ``image_sizes``; prompts -> ids with the placeholder run expanded.

    Args:
        tokenizer: the LLM's tokenizer.
        config: the model's :class:`~encslim.models.families.cambrian.configuration.CambrianConfig`.
        preprocess: ``{slot: {"image_size", "mean", "std", "pad_mean"}}`` of the loaded encoders.
        template: the chat template (default: guessed from the tokenizer).
    """

    def __init__(self, tokenizer, config, preprocess, template=None):
        self.tokenizer = tokenizer
        self.slots = list(config.slot_names)
        self.grid = int(config.image_token_len ** 0.5)
        self.preprocess = {s: dict(preprocess[s]) for s in self.slots if s in preprocess}
        self.template = template or guess_template(tokenizer)
        self.image_token = IMAGE_PLACEHOLDER
        self.token_budget = budget_of(config)

    @classmethod
    def from_pretrained(cls, path, config, preprocess):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        saved = Path(path) / PROCESSOR_FILE
        template = json.loads(saved.read_text()).get("template") if saved.is_file() else None
        return cls(tokenizer, config, preprocess, template)

    def save_pretrained(self, folder):
        self.tokenizer.save_pretrained(str(folder))
        Path(folder, PROCESSOR_FILE).write_text(json.dumps(
            {"processor_class": "CambrianProcessor", "template": self.template}, indent=2) + "\n")

    # ------------------------------------------------------------------ images
    def image_tokens(self, size=None):
        """Image tokens in the LLM sequence for an image of ``size`` ``(width, height)`` (None: square)."""
        h, w = (self.grid, self.grid) if size is None else unpadded_size(self.grid, size)
        budget = parse_budget(getattr(self, "token_budget", None))
        if budget is not None and budget.method != "pool":
            raise BudgetError(f"Cambrian's image rows take the pool token method only, not {budget.method}")
        h, w = budget_grid((h, w), budget)
        return h * (w + 1)

    def pixel_inputs(self, images, slots=None):
        """``{pixel_values_<slot>: (B, 3, S, S)}`` for ``slots`` (default: all) and ``image_sizes`` (B, 2)."""
        out = {}
        for slot in self.slots if slots is None else slots:
            out[f"pixel_values_{slot}"] = torch.stack([pixel_tensor(im, self.preprocess[slot]) for im in images])
        out["image_sizes"] = torch.tensor([list(im.size) for im in images], dtype=torch.long)
        return out

    # ------------------------------------------------------------------ text
    def build_prompt(self, question, with_image=True):
        return chat_prompt(self.template, question, with_image)

    def text_inputs(self, prompts, sizes=None):
        """LEFT-padded ``input_ids``/``attention_mask``; ``sizes``: each row's image size (None: square)."""
        sizes = sizes if sizes is not None else [None] * len(prompts)
        rows = [tokenizer_image_token(self.tokenizer, p, self.image_tokens(s)) for p, s in zip(prompts, sizes)]
        return left_pad(rows, self.pad_token_id)
