"""Eagle2's inputs: one tile per image, the ``qwen2-chat`` prompt and its ``<IMG_CONTEXT>`` run.

Follows NVlabs/Eagle's Eagle2 code: images as InternVL's ``build_transform`` (RGB, bicubic resize to the
tile size, to [0, 1], SigLIP mean/std) with ``dynamic_preprocess(max_num=1)`` (one tile: Eagle2's dynamic
tiling and thumbnail are not reproduced); the prompt as ``conversation.py`` registers ``qwen2-chat``
(``SeparatorStyle.CHATML``); the prompt's ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` * 256 +
``</img>`` (``modeling_eagle_chat.Eagle2ChatModel.chat``), whose embeddings the features replace.
"""

import json
from pathlib import Path

import torch

from ....errors import ConfigError, ModelLoadError
from ...layout import IMAGE_PLACEHOLDER, TokenizerMixin, left_pad
from .configuration import IMG_CONTEXT, IMG_END, IMG_START, SIGLIP_MEAN, SIGLIP_STD

SYSTEM_MESSAGE = "You are a helpful assistant."
TEMPLATES = ("qwen2-chat",)
PROCESSOR_FILE = "processor_config.json"


def chat_prompt(template, question, with_image=True, system=SYSTEM_MESSAGE):
    """``conv_templates[template]`` (``qwen2-chat``, SeparatorStyle.CHATML) with one user turn, open assistant turn."""
    if template not in TEMPLATES:
        raise ConfigError(f"chat template '{template}' unknown; Eagle2 family knows {', '.join(TEMPLATES)}")
    text = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image else question
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
            "<|im_start|>assistant\n")


class Eagle2Processor(TokenizerMixin):
    """One tile per image -> ``pixel_values`` (B, 3, S, S); prompts -> ids with ``<img><IMG_CONTEXT>*N</img>``."""

    PAD_FALLBACKS = ("pad_token_id", "eos_token_id")

    def __init__(self, tokenizer, image_size, num_image_tokens, template="qwen2-chat"):
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.num_image_tokens = int(num_image_tokens)
        self.template = template or "qwen2-chat"
        self.image_token = IMAGE_PLACEHOLDER
        self.image_mean, self.image_std = list(SIGLIP_MEAN), list(SIGLIP_STD)

    @classmethod
    def from_config(cls, tokenizer, config):
        return cls(tokenizer, config.tile_size, config.num_image_tokens, config.template)

    @classmethod
    def from_pretrained(cls, path, config):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if tokenizer.convert_tokens_to_ids(IMG_CONTEXT) in (None, tokenizer.unk_token_id):
            raise ModelLoadError(f"{path}: the tokenizer has no {IMG_CONTEXT} token; Eagle2's tokenizer adds it")
        processor = cls.from_config(tokenizer, config)
        saved = Path(path, PROCESSOR_FILE)
        if saved.is_file():
            processor.template = json.loads(saved.read_text()).get("template") or processor.template
        return processor

    def save_pretrained(self, folder):
        self.tokenizer.save_pretrained(str(folder))
        Path(folder, PROCESSOR_FILE).write_text(json.dumps(
            {"processor_class": "Eagle2Processor", "template": self.template, "image_size": self.image_size,
             "image_mean": self.image_mean, "image_std": self.image_std}, indent=2) + "\n")

    @property
    def image_token_id(self):
        return self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)

    def pixel_values(self, images):
        """InternVL ``build_transform``: RGB, resize to S x S (bicubic), to [0, 1], normalise (SigLIP mean/std)."""
        import numpy as np
        from PIL import Image

        rows = []
        for image in images:
            image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
            array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
            mean = torch.tensor(self.image_mean).view(3, 1, 1)
            std = torch.tensor(self.image_std).view(3, 1, 1)
            rows.append((array - mean) / std)
        return torch.stack(rows)

    def build_prompt(self, question, with_image=True):
        return chat_prompt(self.template, question, with_image)

    def expand(self, prompt):
        return prompt.replace(IMAGE_PLACEHOLDER, IMG_START + IMG_CONTEXT * self.num_image_tokens + IMG_END)

    def text_inputs(self, prompts):
        """LEFT-padded ``input_ids``/``attention_mask``."""
        rows = [self.tokenizer(self.expand(p), add_special_tokens=False).input_ids for p in prompts]
        return left_pad(rows, self.pad_token_id)
