"""I-MoF's inputs: the 336 px image tensor both towers see, the LLaVA-1.5 prompt and its token ids.

Follows tsb0601/MMVP's ``LLaVA/llava/mm_utils.py`` (``process_images``: ``expand2square`` with the CLIP
mean colour when ``image_aspect_ratio`` is ``pad``, then CLIP-336's ``CLIPImageProcessor``;
``tokenizer_image_token``) and ``LLaVA/llava/conversation.py`` (``conv_vicuna_v1``), through the shared
LLaVA helpers of :mod:`encslim.models.llava_processing`.

Under a visual-token budget (``token_budget``: read from the model's config when the processor is built, or
set later as the attribute; never saved with the processor) each tower writes the placeholders its reduced
grid keeps.
"""

import json
import math
from pathlib import Path

import torch

from ...layout import IMAGE_PLACEHOLDER, TokenizerMixin, left_pad
from ...llava_processing import CLIP_MEAN, CLIP_STD, chat_prompt, expand2square, guess_template, tokenizer_image_token
from ...tokens import CONFIG_KEY, BudgetError, parse_budget

PROCESSOR_FILE = "processor_config.json"


class ImofProcessor(TokenizerMixin):
    """Images -> ``pixel_values`` (B, 3, S, S) for both towers; prompts -> ids with the placeholder run expanded.

    Images follow ``mm_utils.process_images``: ``expand2square`` with the CLIP mean colour when
    ``image_aspect_ratio`` is ``pad``, then CLIP-336's ``CLIPImageProcessor`` (shortest edge 336,
    bicubic, centre crop, CLIP mean/std); DINOv2 gets the same tensor. Prompts follow
    ``conversation.conv_vicuna_v1`` (LLaVA-1.5) and ids ``mm_utils.tokenizer_image_token``, with the
    ``-200`` placeholder repeated once per image token of the towers not removed.
    """

    def __init__(self, tokenizer, image_size, tower_tokens, template=None, pad=True, token_budget=None):
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.tower_tokens = dict(tower_tokens)
        self.token_budget = parse_budget(token_budget)
        self.template = template or guess_template(tokenizer)
        self.pad = pad
        self.image_token = IMAGE_PLACEHOLDER
        self.image_mean, self.image_std = list(CLIP_MEAN), list(CLIP_STD)
        self.image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": self.image_size}, crop_size={"height": self.image_size, "width": self.image_size},
            resample=3, do_center_crop=True, do_normalize=True, image_mean=self.image_mean, image_std=self.image_std)

    @classmethod
    def from_config(cls, tokenizer, config, template=None):
        return cls(tokenizer, config.image_size, {t: config.tower_tokens(t) for t in config.imof_towers},
                   template=template, pad=getattr(config, "image_aspect_ratio", None) == "pad",
                   token_budget=getattr(config, CONFIG_KEY, None))

    @classmethod
    def from_pretrained(cls, path, config):
        from transformers import AutoTokenizer

        saved = Path(path) / PROCESSOR_FILE
        template = json.loads(saved.read_text()).get("template") if saved.is_file() else None
        return cls.from_config(AutoTokenizer.from_pretrained(str(path)), config, template)

    def save_pretrained(self, folder):
        self.tokenizer.save_pretrained(str(folder))
        Path(folder, PROCESSOR_FILE).write_text(json.dumps(
            {"processor_class": "ImofProcessor", "template": self.template, "image_size": self.image_size,
             "pad": self.pad}, indent=2) + "\n")

    def num_image_tokens(self, masked=frozenset(), mask_mode="removal"):
        """Image tokens per image: each present tower's, or what ``token_budget`` leaves of its square grid."""
        gone = set(masked) if mask_mode == "removal" else set()
        budget = parse_budget(getattr(self, "token_budget", None))
        counts = [n for t, n in self.tower_tokens.items() if t not in gone]
        if budget is None:
            return sum(counts)
        sides = [math.isqrt(n) for n in counts]
        if any(s * s != n for s, n in zip(sides, counts)):
            raise BudgetError(f"tower token counts {counts} are no square grids (CLS kept), so no token budget applies")
        return sum(budget.tokens_out((s, s)) for s in sides)

    def pixel_values(self, images):
        background = tuple(int(x * 255) for x in self.image_mean)
        prepared = [expand2square(im.convert("RGB"), background) if self.pad else im.convert("RGB") for im in images]
        return torch.as_tensor(self.image_processor(prepared, return_tensors="pt")["pixel_values"])

    def build_prompt(self, question, with_image=True):
        return chat_prompt(self.template, question, with_image)

    def prompt_ids(self, prompt, num_image_tokens):
        """``tokenizer_image_token`` with each placeholder repeated ``num_image_tokens`` times."""
        return tokenizer_image_token(self.tokenizer, prompt, num_image_tokens)

    def text_inputs(self, prompts, num_image_tokens):
        """LEFT-padded ``input_ids``/``attention_mask`` of ``prompts``."""
        return left_pad([self.prompt_ids(p, num_image_tokens) for p in prompts], self.pad_token_id)
