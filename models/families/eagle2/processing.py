"""Eagle2's inputs: dynamic tiles per image, the ``qwen2-chat`` prompt and its ``<IMG_CONTEXT>`` runs.

Follows NVlabs/Eagle's Eagle2 inference code (``Eagle2/inference/inference.py`` before the Eagle2 folder
was removed, commit 5d7476c0c3f0656723df7088e9cb3bd52fc2f158) and Eagle2-9B's remote code
``modeling_eagle_chat.py`` (``Eagle2ChatModel.chat``: the template, ``<img>`` + ``<IMG_CONTEXT>`` *
``num_image_token * num_patches`` + ``</img>``; public-code index id 334094437), with ``qwen2-chat`` as
NVlabs/Eagle 783f656 ``Eagle2_5/eaglevl/conversation.py`` registers it:

- Tiles (``dynamic_preprocess``), when the config says ``dynamic_image_size``: among the grids ``(cols,
  rows)`` with ``min_dynamic_patch <= cols * rows <= max_dynamic_patch`` (ordered by tile count), the one
  with the best score ``min(cols * rows * S * S / (W * H), 0.6) * min(r / a, a / r)`` (``a`` the image's
  aspect ratio, ``r`` the grid's; Eagle2's ``find_closest_aspect_ratio``, which also weighs the area, unlike
  InternVL's); the image resized to ``(cols * S, rows * S)`` (PIL's default filter) and cut into S x S
  tiles, row by row; plus, when ``use_thumbnail`` and more than one tile, the whole image resized to S x S.
  800x600 at S 448: grid 3x2 -> 7 tiles at max 6; 4x3 -> 13 at max 12. Without ``dynamic_image_size``
  the image is one tile.
- Each tile as ``build_transform``: RGB, bicubic resize to S x S (a no-op for tiles), to [0, 1], SigLIP
  mean/std. A batch holds every image's tiles one after the other (``pixel_values`` (sum T_i, 3, S, S))
  and ``num_tiles`` (B,), as the original concatenates them.
- The prompt as ``conversation.py`` registers ``qwen2-chat`` (``SeparatorStyle.CHATML``); its ``<image>``
  becomes ``<img>`` + ``<IMG_CONTEXT>`` * (256 * T_i) + ``</img>`` (``Eagle2ChatModel.chat``:
  ``num_image_token * num_patches``).

Under a token budget (``token_budget``: the model config's when built, or set by ``Adapter.token_budget``)
each tile writes as many ``<IMG_CONTEXT>`` as the reducer leaves of its grid (:attr:`Eagle2Processor.tile_tokens`);
:meth:`Eagle2Processor.to_dict` stays budget-free (it keys the encoder features, which are).

``max_tiles`` (``max_dynamic_patch`` by default) may be overridden: in the folder's
``processor_config.json`` (key ``max_tiles``) or on a loaded processor (:meth:`Eagle2Processor.set_max_tiles`).
"""

import json
from pathlib import Path

import torch

from ....errors import ConfigError, ModelLoadError
from ...layout import IMAGE_PLACEHOLDER, TokenizerMixin, left_pad
from ...tokens import budget_of, square_grid_tokens
from .configuration import IMG_CONTEXT, IMG_END, IMG_START, SIGLIP_MEAN, SIGLIP_STD

SYSTEM_MESSAGE = "You are a helpful assistant."
TEMPLATES = ("qwen2-chat",)
PROCESSOR_FILE = "processor_config.json"
AREA_CAP = 0.6  # find_closest_aspect_ratio: "new area > 60% of original image area is enough"


def chat_prompt(template, question, with_image=True, system=SYSTEM_MESSAGE):
    """``conv_templates[template]`` (``qwen2-chat``, SeparatorStyle.CHATML) with one user turn, open assistant turn."""
    if template not in TEMPLATES:
        raise ConfigError(f"chat template '{template}' unknown; Eagle2 family knows {', '.join(TEMPLATES)}")
    text = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image else question
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
            "<|im_start|>assistant\n")


def tile_grid(width, height, tile_size, min_tiles=1, max_tiles=6):
    """The ``(cols, rows)`` grid Eagle2's ``dynamic_preprocess`` picks for a ``width`` x ``height`` image.

    Args:
        width, height: the image's size in pixels.
        tile_size: S, the tile side.
        min_tiles, max_tiles: the bounds on ``cols * rows``.

    Returns:
        ``(cols, rows)``; the first best-scoring grid in tile-count order (ties keep the earlier one).
    """
    aspect, area = width / height, width * height
    candidates = {(c, r) for n in range(min_tiles, max_tiles + 1) for c in range(1, n + 1) for r in range(1, n + 1)
                  if min_tiles <= c * r <= max_tiles}
    best, best_score = (1, 1), float("-inf")
    for cols, rows in sorted(candidates, key=lambda g: g[0] * g[1]):
        ratio = cols / rows
        score = min(cols * rows * tile_size * tile_size / area, AREA_CAP) * min(ratio / aspect, aspect / ratio)
        if score > best_score:
            best, best_score = (cols, rows), score
    return best


def count_tiles(width, height, tile_size, min_tiles=1, max_tiles=6, thumbnail=True):
    """How many tiles :func:`tile_grid` gives, thumbnail included (added only to a grid of several tiles)."""
    cols, rows = tile_grid(width, height, tile_size, min_tiles, max_tiles)
    return cols * rows + (1 if thumbnail and cols * rows != 1 else 0)


def split_tiles(image, tile_size, min_tiles=1, max_tiles=6, thumbnail=True):
    """The PIL tiles of ``image`` (row by row), then its thumbnail when there are several tiles."""
    cols, rows = tile_grid(image.width, image.height, tile_size, min_tiles, max_tiles)
    resized = image.resize((cols * tile_size, rows * tile_size))  # the original's default filter
    tiles = [resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
             for r in range(rows) for c in range(cols)]
    if thumbnail and len(tiles) != 1:
        tiles.append(image.resize((tile_size, tile_size)))
    return tiles


class Eagle2Processor(TokenizerMixin):
    """Images -> tiles ``pixel_values`` (sum T_i, 3, S, S) + ``num_tiles``; prompts -> ids whose ``<image>``
    is ``<img><IMG_CONTEXT>*(N*T_i)</img>``.

    Args:
        tokenizer: the folder's tokenizer (with ``<IMG_CONTEXT>``).
        image_size: S, the tile side (``force_image_size``).
        num_image_tokens: N, tokens per tile.
        template: the chat template name.
        dynamic: tile images (``dynamic_image_size``); False: one S x S tile per image.
        min_tiles, max_tiles: ``min_dynamic_patch``, ``max_dynamic_patch``.
        thumbnail: ``use_thumbnail``.
    """

    PAD_FALLBACKS = ("pad_token_id", "eos_token_id")

    def __init__(self, tokenizer, image_size, num_image_tokens, template="qwen2-chat", dynamic=False, min_tiles=1,
                 max_tiles=6, thumbnail=False):
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.num_image_tokens = int(num_image_tokens)
        self.template = template or "qwen2-chat"
        self.image_token = IMAGE_PLACEHOLDER
        self.image_mean, self.image_std = list(SIGLIP_MEAN), list(SIGLIP_STD)
        self.dynamic, self.thumbnail = bool(dynamic), bool(thumbnail)
        self.min_tiles = int(min_tiles)
        self.set_max_tiles(max_tiles)
        self.token_budget = None  # a TokenBudget: fewer <IMG_CONTEXT> per tile (tile_tokens)

    @classmethod
    def from_config(cls, tokenizer, config):
        processor = cls(tokenizer, config.tile_size, config.num_image_tokens, config.template,
                        dynamic=config.dynamic_image_size, min_tiles=config.min_dynamic_patch,
                        max_tiles=config.max_dynamic_patch, thumbnail=config.use_thumbnail)
        processor.token_budget = budget_of(config)
        return processor

    @classmethod
    def from_pretrained(cls, path, config):
        """The folder's tokenizer and the config's tiling; ``processor_config.json`` may set ``template`` and
        ``max_tiles``.

        Raises:
            ModelLoadError: the tokenizer lacks ``<IMG_CONTEXT>``.
            ConfigError: a ``max_tiles`` below the minimum.
        """
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if tokenizer.convert_tokens_to_ids(IMG_CONTEXT) in (None, tokenizer.unk_token_id):
            raise ModelLoadError(f"{path}: the tokenizer has no {IMG_CONTEXT} token; Eagle2's tokenizer adds it")
        processor = cls.from_config(tokenizer, config)
        saved = Path(path, PROCESSOR_FILE)
        if saved.is_file():
            data = json.loads(saved.read_text())
            processor.template = data.get("template") or processor.template
            if data.get("max_tiles") is not None:
                processor.set_max_tiles(data["max_tiles"])
        return processor

    def set_max_tiles(self, max_tiles):
        """Override ``max_dynamic_patch`` (the most tiles of the grid, thumbnail not counted).

        Raises:
            ConfigError: ``max_tiles`` is below ``min_dynamic_patch`` or not a whole number.
        """
        if isinstance(max_tiles, bool) or not isinstance(max_tiles, int) or max_tiles < max(1, self.min_tiles):
            raise ConfigError(f"max tiles {max_tiles!r} must be a whole number >= min_dynamic_patch "
                              f"({self.min_tiles})")
        self.max_tiles = max_tiles

    def save_pretrained(self, folder):
        self.tokenizer.save_pretrained(str(folder))
        Path(folder, PROCESSOR_FILE).write_text(json.dumps(
            {"processor_class": "Eagle2Processor", **self.to_dict()}, indent=2) + "\n")

    def to_dict(self):
        """What decides the inputs besides the tokenizer (the evaluator's record and feature keys)."""
        return {"template": self.template, "image_size": self.image_size, "image_mean": self.image_mean,
                "image_std": self.image_std, "num_image_tokens": self.num_image_tokens, "dynamic": self.dynamic,
                "min_tiles": self.min_tiles, "max_tiles": self.max_tiles, "thumbnail": self.thumbnail}

    @property
    def image_token_id(self):
        return self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)

    # ------------------------------------------------------------------ images
    def num_tiles(self, image):
        """How many tiles (thumbnail included) ``image`` gives; only its size matters."""
        if not self.dynamic:
            return 1
        return count_tiles(image.width, image.height, self.image_size, self.min_tiles, self.max_tiles,
                           self.thumbnail)

    def tiles(self, image):
        """``dynamic_preprocess``: the PIL tiles of one image (the image itself without dynamic tiling)."""
        if not self.dynamic:
            return [image]
        return split_tiles(image, self.image_size, self.min_tiles, self.max_tiles, self.thumbnail)

    def transform(self, image):
        """``build_transform``: RGB, bicubic resize to S x S, to [0, 1], normalised (SigLIP mean/std): (3, S, S)."""
        import numpy as np
        from PIL import Image

        image = image.convert("RGB") if image.mode != "RGB" else image
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (array - mean) / std

    def pixel_values(self, images, tiled=True):
        """Every image's tiles one after the other: ``(sum T_i, 3, S, S)``; ``tiled=False``: one S x S
        view per image (the whole image resized, the thumbnail)."""
        rows = [self.transform(t) for image in images for t in (self.tiles(image) if tiled else [image])]
        return torch.stack(rows)

    def image_inputs(self, images):
        """``{"pixel_values": (sum T_i, 3, S, S), "num_tiles": (B,) long}``."""
        images = list(images)
        return {"pixel_values": self.pixel_values(images),
                "num_tiles": torch.tensor([self.num_tiles(i) for i in images], dtype=torch.long)}

    # ------------------------------------------------------------------ text
    def build_prompt(self, question, with_image=True):
        return chat_prompt(self.template, question, with_image)

    @property
    def tile_tokens(self):
        """``<IMG_CONTEXT>`` per tile: N (``num_image_tokens``), or what ``token_budget`` leaves of the tile's grid."""
        return square_grid_tokens(self.num_image_tokens, self.token_budget)

    def expand(self, prompt, tiles=1):
        """The prompt's ``<image>`` as ``<img>`` + ``<IMG_CONTEXT>`` * (tile_tokens * tiles) + ``</img>``."""
        return prompt.replace(IMAGE_PLACEHOLDER, IMG_START + IMG_CONTEXT * (self.tile_tokens * tiles) + IMG_END)

    def text_inputs(self, prompts, tiles=None):
        """LEFT-padded ``input_ids``/``attention_mask``; ``tiles``: per prompt its image's tile count (default 1)."""
        tiles = [1] * len(prompts) if tiles is None else [int(t) for t in tiles]
        rows = [self.tokenizer(self.expand(p, t), add_special_tokens=False).input_ids for p, t in zip(prompts, tiles)]
        return left_pad(rows, self.pad_token_id)
