"""vLLM model of Eagle v1 (``eagle_llama``): serves Eagle folders with any kept set of towers (class A1).

Registered by encslim's vLLM plugin (:mod:`encslim.models.vllm_plugin`) under
``EagleVisionLlamaForCausalLM``, the architecture encslim's ``save_pretrained`` writes (its
transformers class, :class:`~.modeling.EagleVisionLlamaForCausalLM`). NVlabs/EAGLE's own name,
``EagleLlamaForCausalLM``, is vLLM's EAGLE speculative-decoding draft model: a folder whose
``config.json`` still says it (an original checkpoint, or one pruned from it) is served with
``vllm serve FOLDER --hf-overrides '{"architectures": ["EagleVisionLlamaForCausalLM"]}'``, which
leaves the folder as the original code reads it (:func:`encslim.models.vllm_plugin.serve_command`
prints that). Imported only inside vLLM (it imports vllm).

One implementation of each part: the multi-tower front end (resize per tower, features to the
32x32 grid, channel concat) and the projector are the family's own modules (``modeling.py``); the
LLM is vLLM's Llama. Checkpoint keys: ``model.vision_tower.*`` and ``model.mm_projector.*`` load into
those modules, ``model.*`` / ``lm_head.*`` into vLLM's Llama.

Prompts: Eagle splices its image features where ``tokenizer_image_token`` puts the id ``-200``; here
the tokens of ``<image>`` (as the tokenizer encodes it alone) become ``grid*grid`` positions of token id 0 that
receive the image embeddings (Eagle's own embed step also embeds id 0 there before writing the
features). A tokenizer that holds ``<image>`` as a special token gives Eagle's exact sequence from
a text prompt; with Eagle's Llama/Vicuna SentencePiece tokenizer, text around ``<image>`` may
tokenize differently than Eagle's chunk-wise tokenization: send token ids for Eagle's exact prompt.
"""

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from transformers import AutoTokenizer, BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageSize
from vllm.multimodal.processing import (BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo,
                                        PromptReplacement, PromptUpdateDetails)

from ...llava_processing import IMAGE_PLACEHOLDER
from .modeling import MultiBackboneChannelConcatenationVisionTower, build_vision_projector
from .processing import EagleProcessor

ARCHITECTURE = "EagleVisionLlamaForCausalLM"
IMAGE_FILL_ID = 0  # the token id at image positions (replaced by the image embeddings)
# EVA's RoPE tables stored under every block (the shared tables hold the same values): not parameters here
_SKIP = re.compile(r"\.vision_tower\.blocks\.\d+\.attn\.rope\.freqs_(cos|sin)$")
# checkpoint prefix -> this module's, first match wins
_PREFIXES = (("model.vision_tower.", "vision_tower."), ("model.mm_projector.", "mm_projector."),
             ("model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))


_PROCESSORS = {}  # folder -> its EagleProcessor


def _processor(folder, config):
    if folder not in _PROCESSORS:
        _PROCESSORS[folder] = EagleProcessor.from_config(AutoTokenizer.from_pretrained(folder), config)
    return _PROCESSORS[folder]


def checkpoint_to_vllm(name):
    """The name a checkpoint key has in :class:`EagleVisionLlamaForCausalLM`, or ``None`` for a skipped key.

    Args:
        name: a key of an Eagle checkpoint (``model.vision_tower.vision_towers.0...``).

    Returns:
        The module path here (``vision_tower.vision_towers.0...``), ``None`` for EVA's copied RoPE tables.
    """
    if _SKIP.search(name):
        return None
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


class EagleProcessingInfo(BaseProcessingInfo):
    """An Eagle folder's inputs: one square image (the model's input size), ``grid*grid`` tokens."""

    def get_hf_processor(self, **kwargs):
        """The folder's :class:`EagleProcessor` (built once per folder)."""
        return _processor(self.ctx.model_config.model, self.get_hf_config())

    def get_supported_mm_limits(self):
        return {"image": None}

    def get_num_image_tokens(self):
        return self.get_hf_config().eagle_grid_size ** 2

    def get_image_size_with_most_features(self):
        side = self.get_hf_config().eagle_input_image_size
        return ImageSize(width=side, height=side)

    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        return {"image": self.get_num_image_tokens()}


class EagleDummyInputsBuilder(BaseDummyInputsBuilder[EagleProcessingInfo]):
    """Profiling inputs: one ``<image>`` and one input-size image per image."""

    def get_dummy_text(self, mm_counts):
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        size = self.info.get_image_size_with_most_features()
        return {"image": self._get_dummy_images(width=size.width, height=size.height,
                                                num_images=mm_counts.get("image", 0),
                                                overrides=(mm_options or {}).get("image"))}


class EagleMultiModalProcessor(BaseMultiModalProcessor[EagleProcessingInfo]):
    """Images -> ``pixel_values`` (Eagle's pad-to-square and CLIP processing); ``<image>`` -> image positions."""

    def _call_hf_processor(self, hf_data, hf_kwargs):
        images = list(hf_data.get("images") or [])
        return BatchFeature({"pixel_values": self.info.get_hf_processor().pixel_values(images)})

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]):
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        tokens = [IMAGE_FILL_ID] * self.info.get_num_image_tokens()
        target = self.info.get_tokenizer().encode(IMAGE_PLACEHOLDER, add_special_tokens=False)
        return [PromptReplacement(modality="image", target=target,
                                  replacement=PromptUpdateDetails.from_seq(tokens))]


@MULTIMODAL_REGISTRY.register_processor(EagleMultiModalProcessor, info=EagleProcessingInfo,
                                        dummy_inputs=EagleDummyInputsBuilder)
class EagleVisionLlamaForCausalLM(nn.Module, SupportsMultiModal):
    """Eagle v1 in vLLM: encslim's towers and projector, vLLM's Llama (keys: :func:`checkpoint_to_vllm`)."""

    @classmethod
    def get_placeholder_str(cls, modality, i):
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        raise ValueError("only images are supported")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.configure_mm_token_handling(vocab_size=config.vocab_size, mm_token_ids=[IMAGE_FILL_ID])
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = MultiBackboneChannelConcatenationVisionTower(config)
            self.mm_projector = build_vision_projector(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config, prefix=maybe_prefix(prefix, "language_model"),
                architectures=["LlamaForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs) -> MultiModalEmbeddings:
        """One ``(grid*grid, hidden)`` tensor per image, from ``pixel_values`` (B, 3, S, S)."""
        pixels = kwargs.get("pixel_values")
        if pixels is None:
            return []
        pixels = torch.stack(list(pixels)) if isinstance(pixels, (list, tuple)) else pixels
        weight = next(self.mm_projector.parameters())
        features = self.vision_tower(pixels.to(device=weight.device, dtype=weight.dtype))
        return tuple(self.mm_projector(features.to(weight.dtype)).unbind(0))

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states):
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load an Eagle checkpoint's tensors (names mapped by :func:`checkpoint_to_vllm`).

        Returns:
            The names of the parameters loaded.
        """
        mapped = ((checkpoint_to_vllm(name), tensor) for name, tensor in weights)
        return AutoWeightsLoader(self).load_weights((name, t) for name, t in mapped if name is not None)


__all__ = ["ARCHITECTURE", "EagleVisionLlamaForCausalLM", "checkpoint_to_vllm"]
