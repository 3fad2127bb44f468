"""Eagle v1's inputs: the 1024 px image tensor, the chat prompt and its token ids.

- Images follow ``eagle/mm_utils.process_images`` with ``image_aspect_ratio: pad``: ``expand2square``
  padded with the CLIP mean colour (``int(x * 255)`` per channel), then the ConvNeXt tower's
  ``CLIPImageProcessor`` (``convnext_encoder.cfg`` with ``size``/``crop_size`` set to the 1024 px
  input: shortest edge 1024, bicubic, centre crop, CLIP mean/std), which the multi-tower
  encoder hard-codes as the model's processor. Without ``pad`` the processor runs directly.
- Prompts follow ``eagle/conversation.py``: ``vicuna_v1`` (Eagle-X5-7B, Vicuna) or ``llama3``
  (Eagle-X4-8B-Plus), with ``<image>\\n`` before the question as ``eagle/eval/model_vqa.py`` does.
- Token ids follow ``eagle/mm_utils.tokenizer_image_token``: each ``<image>``-separated chunk is
  tokenized on its own, later chunks lose their BOS, and the placeholder id ``-200`` sits between
  them. encslim repeats the placeholder once per image token (the 32x32 grid) so the fused
  features can be written into those positions; the LLM then sees exactly Eagle's sequence.
  Under a token budget (``token_budget``: the model config's when built, or set by
  ``Adapter.token_budget``) it repeats it as often as the reducer leaves tokens (``image_token_count``).

``expand2square``, the templates and ``tokenizer_image_token`` are LLaVA's, shared with I-MoF and
Cambrian: :mod:`encslim.models.llava_processing`.
"""

import json
from pathlib import Path

import torch

from ....errors import ModelLoadError
from ...layout import TokenizerMixin, left_pad
from ...llava_processing import (CLIP_MEAN, CLIP_STD, IMAGE_PLACEHOLDER, chat_prompt, expand2square,
                                 guess_template, tokenizer_image_token)
from ...tokens import budget_of, square_grid_tokens
from .configuration import DEFAULT_GRID, DEFAULT_INPUT_SIZE

# encslim's record of the chat template and sizes (Eagle's own code hard-codes them and ignores it)
PROCESSOR_FILE = "processor_config.json"


class EagleProcessor(TokenizerMixin):
    """Images -> ``pixel_values`` (B, 3, S, S); prompts -> ids with the placeholder run expanded."""

    def __init__(self, tokenizer, image_size=DEFAULT_INPUT_SIZE, num_image_tokens=DEFAULT_GRID ** 2,
                 template=None, pad=True, tower_recipes=None):
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.num_image_tokens = int(num_image_tokens)
        self.template = template or guess_template(tokenizer)
        self.pad = pad
        self.image_token = IMAGE_PLACEHOLDER
        self.tower_recipes = tower_recipes  # front_end.tower_input_recipes: each tower's input (ONNX)
        self.token_budget = None  # a TokenBudget: fewer placeholders per image (image_token_count)
        self.image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": self.image_size}, crop_size={"height": self.image_size, "width": self.image_size},
            resample=3, do_center_crop=True, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD)

    @classmethod
    def from_config(cls, tokenizer, config):
        from .front_end import tower_input_recipes

        processor = cls(tokenizer, config.eagle_input_image_size, config.eagle_grid_size ** 2,
                        pad=getattr(config, "image_aspect_ratio", "pad") == "pad",
                        tower_recipes=tower_input_recipes(config))
        processor.token_budget = budget_of(config)
        return processor

    @classmethod
    def from_pretrained(cls, path, config):
        import importlib.util

        from transformers import AutoTokenizer

        folder = Path(path)
        if ((folder / "tokenizer.model").is_file() and not (folder / "tokenizer.json").is_file()
                and importlib.util.find_spec("sentencepiece") is None):
            raise ModelLoadError(f"{folder / 'tokenizer.model'} is a SentencePiece tokenizer (Eagle's Llama/Vicuna "
                                 "one) and sentencepiece is not installed; pip install 'encslim[eagle]'")
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        saved = Path(path) / PROCESSOR_FILE
        template = json.loads(saved.read_text()).get("template") if saved.is_file() else None
        processor = cls.from_config(tokenizer, config)
        processor.template = template or processor.template
        return processor

    def save_pretrained(self, folder):
        self.tokenizer.save_pretrained(str(folder))
        Path(folder, PROCESSOR_FILE).write_text(json.dumps(
            {"processor_class": "EagleProcessor", "template": self.template, "image_size": self.image_size,
             "pad": self.pad, "tower_inputs": self.tower_recipes}, indent=2) + "\n")

    # ------------------------------------------------------------------ images
    def pixel_values(self, images):
        """``process_images``: (B, 3, S, S) float tensor."""
        background = tuple(int(x * 255) for x in CLIP_MEAN)
        prepared = [expand2square(im.convert("RGB"), background) if self.pad else im.convert("RGB") for im in images]
        out = self.image_processor(prepared, return_tensors="pt")["pixel_values"]
        return torch.as_tensor(out)

    def tower_inputs(self, pixel_values):
        """Each tower's input from :meth:`pixel_values` (``{graph input name: tensor}``), as the model's
        forward makes it: what the ONNX vision front end takes (``onnx_config.json`` ``vision.tower_inputs``).

        Raises:
            ValueError: the processor was built without the model's config (no tower recipes).
        """
        from .front_end import make_tower_inputs

        if self.tower_recipes is None:
            raise ValueError("this EagleProcessor has no tower recipes; build it with from_config/from_pretrained")
        return make_tower_inputs(self.tower_recipes, pixel_values)

    # ------------------------------------------------------------------ text
    def build_prompt(self, question, with_image=True):
        return chat_prompt(self.template, question, with_image)

    @property
    def image_token_count(self):
        """Placeholders per image: ``num_image_tokens`` (the g x g grid), or what ``token_budget`` leaves of it."""
        return square_grid_tokens(self.num_image_tokens, self.token_budget)

    def prompt_ids(self, prompt):
        """``tokenizer_image_token`` with each placeholder repeated ``image_token_count`` times."""
        return tokenizer_image_token(self.tokenizer, prompt, self.image_token_count)

    def text_inputs(self, prompts):
        """LEFT-padded ``input_ids``/``attention_mask`` of ``prompts``."""
        return left_pad([self.prompt_ids(p) for p in prompts], self.pad_token_id)
