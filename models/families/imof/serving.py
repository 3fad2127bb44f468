"""vLLM model of I-MoF (``imof_llama``): serves I-MoF folders with both towers or one (class B).

Registered by encslim's vLLM plugin (:mod:`encslim.models.vllm_plugin`) under ``ImofLlamaForCausalLM``,
the architecture encslim writes into every I-MoF folder's ``config.json`` (``create-tiny``,
``export --format hf`` and ``prune``: :data:`.plan.ARCHITECTURE`, with ``model_type: imof_llama``), so
``vllm serve FOLDER`` loads a full or pruned folder as it is; no ``--hf-overrides`` and no config
change is needed. A pruned folder keeps its ``mm_vision_tower`` renamed (``encslim-imof:...``, which
MMVP's own loader refuses): only encslim's config class reads it, and it reads ``imof_towers``.
MMVP's original folders (``model_type: llava``, ``LlavaLlamaForCausalLM``) are not served: vLLM reads
``llava`` as transformers' stock LLaVA config. Imported only inside vLLM (it imports vllm).

One implementation of each part, tsb0601/MMVP's ``LLaVA/llava/model`` as the family follows it
(``modeling.py``): ``clip_encoder.CLIPVisionTower`` (:class:`~.modeling.CLIPVisionTower`),
``dino_encoder.DINOVisionTower`` (:class:`~.modeling.DINOVisionTower`, DINOv2 of :mod:`.dinov2`),
``multimodal_projector/builder.build_vision_projector`` (:func:`~.modeling.build_vision_projector`) and
``llava_arch.prepare_inputs_labels_for_multimodal_withdino``'s interleaving (``c0 d0 c1 d1 ...``,
:func:`~.modeling.interleave`); the LLM is vLLM's Llama. The DINO tower's unused CLIP copy
(``model.dino_tower.clip_vision_tower.*``; the original never runs it) is not built and its keys are
skipped. Checkpoint keys: ``model.vision_tower.*``, ``model.mm_projector.*``, ``model.dino_tower.*`` and
``model.dino_mm_projector.*`` load into those modules, ``model.*`` / ``lm_head.*`` into vLLM's Llama.

Prompts: MMVP's ``mm_utils.tokenizer_image_token`` splices the id ``-200`` where ``<image>`` stands, once
per image token (:meth:`~.processing.ImofProcessor.prompt_ids`); here the tokens of ``<image>`` (as the
tokenizer encodes it alone) become :meth:`~.processing.ImofProcessor.num_image_tokens` positions of
token id 0 that receive the interleaved image embeddings (the family's embed step also embeds id 0
there before writing the features). Images go through the family's processor
(:meth:`~.processing.ImofProcessor.pixel_values`: ``mm_utils.process_images``, pad to square with the
CLIP mean colour, CLIP-336's PIL image processor), the one tensor both towers see.
"""

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageSize
from vllm.multimodal.processing import (BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo,
                                        PromptReplacement, PromptUpdateDetails)

from ...llava_processing import IMAGE_PLACEHOLDER
from .configuration import DINO_CLIP_COPY
from .modeling import CLIPVisionTower, DINOVisionTower, build_vision_projector, interleave
from .plan import ARCHITECTURE
from .processing import ImofProcessor

IMAGE_FILL_ID = 0  # the token id at image positions (replaced by the image embeddings)
# checkpoint prefix -> this module's, first match wins
_PREFIXES = (("model.vision_tower.", "vision_tower."), ("model.mm_projector.", "mm_projector."),
             ("model.dino_tower.", "dino_tower."), ("model.dino_mm_projector.", "dino_mm_projector."),
             ("model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))
_TOWER_MODULES = {"clip": ("vision_tower", "mm_projector"), "dinov2": ("dino_tower", "dino_mm_projector")}

_PROCESSORS = {}  # folder -> its ImofProcessor


def _processor(folder, config):
    if folder not in _PROCESSORS:
        _PROCESSORS[folder] = ImofProcessor.from_pretrained(folder, config)
    return _PROCESSORS[folder]


def checkpoint_to_vllm(name):
    """The name a checkpoint key has in :class:`ImofLlamaForCausalLM`, or ``None`` for a skipped key.

    Args:
        name: a key of an I-MoF checkpoint (``model.dino_tower.vision_tower.blocks.0...``).

    Returns:
        The module path here (``dino_tower.vision_tower.blocks.0...``), ``None`` for the DINO tower's
        unused CLIP copy (``model.dino_tower.clip_vision_tower.*``).
    """
    if name.startswith(DINO_CLIP_COPY):
        return None
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


class ImofProcessingInfo(BaseProcessingInfo):
    """An I-MoF folder's inputs: one square image (CLIP's crop size), one token per kept tower's feature."""

    def get_hf_processor(self, **kwargs):
        """The folder's :class:`~.processing.ImofProcessor` (built once per folder)."""
        return _processor(self.ctx.model_config.model, self.get_hf_config())

    def get_supported_mm_limits(self):
        return {"image": None}

    def get_num_image_tokens(self):
        """Image tokens one image gives: the kept towers' token counts summed (interleaved)."""
        return self.get_hf_processor().num_image_tokens()

    def get_image_size_with_most_features(self):
        side = self.get_hf_config().image_size
        return ImageSize(width=side, height=side)

    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        return {"image": self.get_num_image_tokens()}


class ImofDummyInputsBuilder(BaseDummyInputsBuilder[ImofProcessingInfo]):
    """Profiling inputs: one ``<image>`` and one crop-size image per image."""

    def get_dummy_text(self, mm_counts):
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        size = self.info.get_image_size_with_most_features()
        return {"image": self._get_dummy_images(width=size.width, height=size.height,
                                                num_images=mm_counts.get("image", 0),
                                                overrides=(mm_options or {}).get("image"))}


class ImofMultiModalProcessor(BaseMultiModalProcessor[ImofProcessingInfo]):
    """Images -> ``pixel_values`` (MMVP's pad-to-square and CLIP processing); ``<image>`` -> image positions."""

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


@MULTIMODAL_REGISTRY.register_processor(ImofMultiModalProcessor, info=ImofProcessingInfo,
                                        dummy_inputs=ImofDummyInputsBuilder)
class ImofLlamaForCausalLM(nn.Module, SupportsMultiModal):
    """I-MoF in vLLM: encslim's kept towers and projectors, vLLM's Llama (keys: :func:`checkpoint_to_vllm`)."""

    @classmethod
    def get_placeholder_str(cls, modality, i):
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        raise ValueError("only images are supported")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.towers = list(config.imof_towers)
        self.configure_mm_token_handling(vocab_size=config.vocab_size, mm_token_ids=[IMAGE_FILL_ID])
        tower_config = copy.copy(config)
        tower_config.imof_dino_clip_copy = False  # the DINO tower's CLIP copy is never run: not built
        with self._mark_tower_model(vllm_config, "image"):
            if "clip" in self.towers:
                self.vision_tower = CLIPVisionTower(tower_config)
                self.mm_projector = build_vision_projector(tower_config)
            if "dinov2" in self.towers:
                self.dino_tower = DINOVisionTower(tower_config)
                self.dino_mm_projector = build_vision_projector(tower_config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config, prefix=maybe_prefix(prefix, "language_model"),
                architectures=["LlamaForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs) -> MultiModalEmbeddings:
        """One ``(image tokens, hidden)`` tensor per image from ``pixel_values`` (B, 3, S, S): each kept tower's
        features through its projector, interleaved in ``imof_towers`` order (:func:`~.modeling.fuse_towers`)."""
        pixels = kwargs.get("pixel_values")
        if pixels is None:
            return []
        pixels = torch.stack(list(pixels)) if isinstance(pixels, (list, tuple)) else pixels
        parts = []
        for tower in self.towers:
            encoder, projector = (getattr(self, name) for name in _TOWER_MODULES[tower])
            weight = next(projector.parameters())
            features = encoder(pixels.to(device=weight.device, dtype=weight.dtype))
            parts.append(projector(features.to(weight.dtype)))
        return tuple(interleave(parts).unbind(0))

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states):
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load an I-MoF checkpoint's tensors (names mapped by :func:`checkpoint_to_vllm`).

        Returns:
            The names of the parameters loaded.
        """
        mapped = ((checkpoint_to_vllm(name), tensor) for name, tensor in weights)
        return AutoWeightsLoader(self).load_weights((name, t) for name, t in mapped if name is not None)


__all__ = ["ARCHITECTURE", "ImofLlamaForCausalLM", "checkpoint_to_vllm"]
