"""vLLM model of Eagle2 (``eagle_chat``, SigLIP + ConvNeXt, Qwen2): serves full and pruned Eagle2 folders.

Registered by encslim's vLLM plugin (:mod:`encslim.models.vllm_plugin`) under ``Eagle2ChatModel``, the
architecture nvidia/Eagle2-9B's ``config.json`` gives and encslim keeps when it prunes; vLLM registers no
model of that name (its ``Eagle2_5_VLForConditionalGeneration`` is the SigLIP-only Eagle2.5 layout), so
``vllm serve FOLDER`` loads a folder as it is, no ``--hf-overrides``. Imported only inside vLLM (it
imports vllm).

One implementation of each part: the towers (:class:`~.modeling.MultiBackboneChannelConcatenationVisionModel`),
the pixel shuffle and the fusion are the family's own: this class borrows ``slot_features``, ``fuse`` and
``extract_feature`` from :class:`~.modeling.Eagle2ChatModel`, so a removed tower's channel block
(``encslim_removed_dims``) enters the unchanged LayerNorm-first ``mlp1`` as zeros exactly as in
transformers. The LLM is vLLM's Qwen2. Checkpoint keys load under their own names
(``vision_model.vision_model.vision_towers.{i}.*``, ``mlp1.*``, ``language_model.model.*``,
``language_model.lm_head.*``); the unused ConvNeXt classifier and SigLIP pooling head are not built.

Inputs: each image is tiled by the family's :class:`~.processing.Eagle2Processor` (``dynamic_preprocess``:
the config's ``min/max_dynamic_patch``, ``use_thumbnail``, ``force_image_size``), a variable number of tiles
per image (``pixel_values`` sliced per image by ``num_tiles``); the prompt's ``<image>`` becomes ``<img>`` +
``<IMG_CONTEXT>`` * (tokens per tile * tiles) + ``</img>`` (the processor's ``expand``), and only the
``<IMG_CONTEXT>`` positions receive image embeddings. ``mm_processor_kwargs={"max_tiles": n}`` (per
engine, ``--mm-processor-kwargs``, or per request) overrides ``max_dynamic_patch`` as the processor's
``max_tiles`` does; vLLM sizes its encoder cache from the engine's setting at start-up, so a request may
lower it but one that raises it can be refused (vLLM names the encoder cache size).

A folder whose ``config.json`` carries a token budget (``token_budget``, ``models/tokens.py``) is served under
it: each tile keeps the tokens the reducer leaves of its grid (the processor, built from the config, writes that
many ``<IMG_CONTEXT>`` per tile), and each tile's projected tokens pass through the reducer
(:meth:`~encslim.models.vllm_serving.ImageTextModel.reduce_image_tokens`) as in the transformers model.
"""

import copy
import re
from collections.abc import Mapping

import torch
from torch import nn
from transformers import BatchFeature
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageSize
from vllm.multimodal.processing import BaseMultiModalProcessor, PromptReplacement, PromptUpdateDetails

from ....errors import ModelLoadError
from ...layout import IMAGE_PLACEHOLDER
from ...vllm_serving import ImageDummyInputsBuilder, ImageProcessingInfo, ImageTextModel, folder_processor
from .configuration import fit_to_checkpoint
from .modeling import Eagle2ChatModel, MultiBackboneChannelConcatenationVisionModel
from .processing import Eagle2Processor, tile_grid

ARCHITECTURE = "Eagle2ChatModel"
PROCESSOR_KWARGS = ("max_tiles",)  # the mm_processor_kwargs this model takes
# the unused heads a checkpoint carries (ConvNeXt classifier, SigLIP pooling head): not built here
_SKIP = re.compile(r"^vision_model\.vision_model\.vision_towers\.\d+\.vision_tower\.(head|vision_model\.head)\.")


def _processor(folder, config):
    """The folder's :class:`Eagle2Processor` with the config's tiling and token budget (built once per folder)."""
    return folder_processor(Eagle2Processor.from_pretrained, folder, config)


def processor_for(base, kwargs):
    """``base`` with the ``mm_processor_kwargs`` applied (``max_tiles``); ``base`` itself when none is given.

    Args:
        base: the folder's :class:`Eagle2Processor`.
        kwargs: vLLM's merged ``mm_processor_kwargs``.

    Returns:
        An :class:`Eagle2Processor` (a copy when ``max_tiles`` changes it).

    Raises:
        ValueError: a key other than ``max_tiles``.
        ConfigError: a ``max_tiles`` below ``min_dynamic_patch``.
    """
    unknown = sorted(set(kwargs) - set(PROCESSOR_KWARGS))
    if unknown:
        raise ValueError(f"Eagle2 takes mm_processor_kwargs {', '.join(PROCESSOR_KWARGS)}; got {', '.join(unknown)}")
    max_tiles = kwargs.get("max_tiles")
    if max_tiles is None or max_tiles == base.max_tiles:
        return base
    processor = copy.copy(base)
    processor.set_max_tiles(max_tiles)
    return processor


def tower_config(config, folder):
    """A copy of ``config`` that builds the towers as the folder's checkpoint holds them, less the heads nothing
    reads (the ConvNeXt classifier, the SigLIP pooling head: their keys are skipped at loading).

    Args:
        config: the folder's :class:`~.configuration.Eagle2ChatConfig` (vLLM's ``hf_config``; not changed).
        folder: the model folder (its safetensors headers are read, as encslim's loading does).

    Returns:
        The copy (sized by :func:`~.configuration.fit_to_checkpoint`; the config's sizes where the folder
        holds no local safetensors).
    """
    config = copy.copy(config)
    try:
        fit_to_checkpoint(folder, config)
    except ModelLoadError:
        pass  # no local weights (vLLM reports the missing ones when it loads them)
    config.convnext_head_classes, config.siglip_use_head = 0, False
    return config


class Eagle2ProcessingInfo(ImageProcessingInfo):
    """An Eagle2 folder's inputs: tiles per image from its size, tokens per tile from the config."""

    def get_hf_processor(self, **kwargs):
        """The folder's :class:`Eagle2Processor` (read once), with the engine's and ``kwargs``' ``max_tiles``."""
        base = _processor(self.ctx.model_config.model, self.get_hf_config())
        return processor_for(base, self.ctx.get_merged_mm_kwargs(kwargs))

    def get_num_image_tokens(self, size, processor=None):
        """The tokens ``<image>`` becomes for an image of ``size``: ``<img>``, its tiles' contexts, ``</img>``."""
        processor = processor or self.get_hf_processor()
        return self.budget_tokens(processor.num_image_tokens) * processor.num_tiles(size) + 2

    def get_image_size_with_most_features(self):
        """An image whose grid has the most tiles (``max_tiles`` in one row): the most image tokens."""
        processor = self.get_hf_processor()
        side = processor.image_size
        if not processor.dynamic:
            return ImageSize(width=side, height=side)
        cols, rows = tile_grid(processor.max_tiles * side, side, side, processor.min_tiles, processor.max_tiles)
        return ImageSize(width=cols * side, height=rows * side)

    def max_image_tokens(self):
        """The tokens of the image of the most tiles."""
        return self.get_num_image_tokens(self.get_image_size_with_most_features())


class Eagle2MultiModalProcessor(BaseMultiModalProcessor[Eagle2ProcessingInfo]):
    """Images -> every image's tiles (``pixel_values``) and ``num_tiles``; ``<image>`` -> its tiles' tokens."""

    def _call_hf_processor(self, hf_data, hf_kwargs):
        images = list(hf_data.get("images") or [])
        return BatchFeature(self.info.get_hf_processor(**hf_kwargs).image_inputs(images))

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]):
        tiles = hf_inputs.get("num_tiles", torch.empty(0, dtype=torch.long))
        return {"pixel_values": MultiModalFieldConfig.flat_from_sizes("image", tiles),
                "num_tiles": MultiModalFieldConfig.batched("image", keep_on_cpu=True)}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        tokenizer = self.info.get_tokenizer()
        tiles = out_mm_kwargs.get_data().get("num_tiles")
        tiles = [] if tiles is None else [int(t) for t in tiles]
        context_id = processor.image_token_id

        def replacement(item):
            ids = tokenizer.encode(processor.expand(IMAGE_PLACEHOLDER, tiles[item]), add_special_tokens=False)
            return PromptUpdateDetails.select_token_id(ids, embed_token_id=context_id)

        target = tokenizer.encode(IMAGE_PLACEHOLDER, add_special_tokens=False)
        return [PromptReplacement(modality="image", target=target, replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(Eagle2MultiModalProcessor, info=Eagle2ProcessingInfo,
                                        dummy_inputs=ImageDummyInputsBuilder)
class Eagle2ChatModel(ImageTextModel):
    """Eagle2 in vLLM: encslim's towers, pixel shuffle and fusion (zero blocks included), vLLM's Qwen2."""

    # the family's own feature path (transformers' Eagle2ChatModel): same attributes here (config, towers, mlp1)
    towers = Eagle2ChatModel.towers
    slot_features = Eagle2ChatModel.slot_features
    fuse = Eagle2ChatModel.fuse
    extract_feature = Eagle2ChatModel.extract_feature

    def text_config(self, config):
        """The Qwen2 config (``llm_config``)."""
        return config.llm_config

    def language_architectures(self, text_config):
        """vLLM's Qwen2."""
        return ["Qwen2ForCausalLM"]

    def image_token_id(self, vllm_config):
        """``<IMG_CONTEXT>``'s id (the folder's processor)."""
        return _processor(vllm_config.model_config.model, self.config).image_token_id

    def build_towers(self, vllm_config):
        """The towers as the folder holds them (:func:`tower_config`) and the LayerNorm-first ``mlp1``."""
        width, hidden = self.config.fusion_width(), self.config.llm_config.hidden_size
        self.vision_model = MultiBackboneChannelConcatenationVisionModel(
            tower_config(self.config, vllm_config.model_config.model))
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                                  nn.Linear(hidden, hidden))

    def checkpoint_name(self, name):
        """Keys load under their own names; the unused heads (:data:`_SKIP`) are skipped."""
        return None if _SKIP.search(name) else name

    def embed_multimodal(self, **kwargs) -> MultiModalEmbeddings:
        """One ``(tiles * tokens per tile, hidden)`` tensor per image, from ``pixel_values`` (all tiles) and
        ``num_tiles``; each tile's tokens reduced by the folder's token budget."""
        pixels, tiles = kwargs.get("pixel_values"), kwargs.get("num_tiles")
        if pixels is None:
            return []
        pixels = torch.cat(list(pixels)) if isinstance(pixels, (list, tuple)) else pixels
        tiles = [int(t) for t in (torch.as_tensor(tiles).flatten() if tiles is not None else [pixels.shape[0]])]
        weight = next(self.mlp1.parameters())
        features = self.reduce_image_tokens(self.extract_feature(pixels.to(device=weight.device, dtype=weight.dtype)))
        per_tile = features.shape[1]
        return features.reshape(-1, features.shape[-1]).split([t * per_tile for t in tiles])

__all__ = ["ARCHITECTURE", "Eagle2ChatModel", "processor_for", "tower_config"]
