"""vLLM model of the native family: serves ``model_type: encslim`` folders (any kept set, fusion A1/A2/B/C).

Registered by encslim's vLLM plugin (:mod:`encslim.models.vllm_plugin`, entry point
``vllm.general_plugins``) under ``EncslimForConditionalGeneration``, the architecture that
``save_pretrained`` writes into ``config.json``; ``vllm serve FOLDER`` then loads a native (pruned)
folder as it is. Imported only inside vLLM (it imports vllm).

One implementation of each part: the vision towers (:class:`VisionSlot`) and the fusion module are the
family's own (``modeling.py``), so vLLM computes the image embeddings with the same code as
transformers; the LLM is vLLM's own (Llama, Qwen2, ... by ``text_config.model_type``), loaded from
the checkpoint's ``language_model.*`` keys (the same names: no renaming). Each tower's backbone keys are the
checkpoint names transformers writes (``save_pretrained`` reverts its own renamings, e.g. DINOv2's
``attention.attention.query``); they are mapped onto the backbone module's names (DINOv2's ``attention.q_proj``)
by the renamings and conversions that transformers declares for that backbone class
(:func:`backbone_weights`), as ``from_pretrained`` maps them. The processor is the
family's :class:`EncslimProcessor`: it prepares one ``pixel_values_<slot>`` tensor per slot, and the
``<image>`` placeholder becomes exactly ``processor.num_image_tokens()`` image tokens.

A folder whose ``config.json`` carries a token budget (``token_budget``, ``models/tokens.py``) is served under
it: the processor writes the reduced count (its ``token_budget`` set from the config), and the fused tokens
pass through the reducer (:meth:`~encslim.models.vllm_serving.ImageTextModel.reduce_image_tokens`, each grid of
``EncslimConfig.token_grids``) before they reach the LLM, as in the transformers model.
"""

from collections.abc import Iterable, Mapping, Sequence
from copy import deepcopy

import torch
from torch import nn
from transformers import BatchFeature
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.model_executor.models.utils import AutoWeightsLoader
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import BaseMultiModalProcessor, PromptReplacement, PromptUpdate

from ...tokens import budget_of
from ...vllm_serving import (ImageDummyInputsBuilder, ImageProcessingInfo, ImageTextModel, folder_processor,
                             stack_images)
from .modeling import FUSIONS, PIXEL_PREFIX, VisionSlot
from .processing import EncslimProcessor


def _build_processor(folder, config):
    processor = EncslimProcessor.from_pretrained(folder)
    processor.token_budget = budget_of(config)  # vLLM's config (--hf-overrides included), as the model reduces
    return processor


def causal_lm_architecture(text_config):
    """The vLLM architecture name of a text config (its ``architectures``, else transformers' causal LM class).

    Args:
        text_config: the LLM's transformers config.

    Returns:
        ``["LlamaForCausalLM"]`` and the like.

    Raises:
        ValueError: the config names no architecture and transformers has no causal LM for its model_type.
    """
    if getattr(text_config, "architectures", None):
        return list(text_config.architectures)
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text_config.model_type)
    if name is None:
        raise ValueError(f"no causal LM class for text model_type '{text_config.model_type}'")
    return [name]


def backbone_weights(backbone, weights):
    """A backbone's checkpoint tensors under its module's names, mapped as transformers' ``from_pretrained`` maps them.

    The mapping is the one transformers declares for the backbone's class (its conversion mapping, legacy
    renamings included): renamed keys pass through at once; tensors that a conversion combines or splits (e.g.
    DINOv2's SwiGLU ``mlp.weights_in`` -> ``gate_proj``/``up_proj``) are converted after the last one is read.

    Args:
        backbone: the transformers ``PreTrainedModel`` the tensors belong to.
        weights: ``(name, tensor)`` pairs, names relative to the backbone (as its ``save_pretrained`` writes them).

    Yields:
        ``(module name, tensor)`` pairs.
    """
    transforms = get_model_conversion_mapping(backbone)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
    pending = {}
    for name, tensor in weights:
        target, pattern = rename_source_key(name, renamings, converters)
        if pattern is None:
            yield target, tensor
        else:  # each target gets its own converter, which collects all its sources
            pending.setdefault(target, deepcopy(by_pattern[pattern])).add_tensor(target, name, pattern, tensor)
    for target, converter in pending.items():
        yield from converter.convert(target, model=backbone, config=backbone.config).items()


class EncslimProcessingInfo(ImageProcessingInfo):
    """What vLLM asks about a native folder's inputs: its processor and image token count."""

    def get_hf_processor(self, **kwargs):
        """The folder's :class:`EncslimProcessor` (read once per folder)."""
        return folder_processor(_build_processor, self.ctx.model_config.model, self.get_hf_config())

    def get_num_image_tokens(self):
        """Image tokens one image gives (the same for every image size: each slot resizes to its own square), as the
        folder's processor counts them under the folder's token budget."""
        return self.get_hf_processor().num_image_tokens()

    def image_side(self):
        """The largest of the slots' square input sizes."""
        return max(e["image_size"] for e in self.get_hf_processor().encoders)


class EncslimMultiModalProcessor(BaseMultiModalProcessor[EncslimProcessingInfo]):
    """Images -> ``pixel_values_<slot>`` (the family's processor); ``<image>`` -> N image tokens."""

    def _call_hf_processor(self, hf_data, hf_kwargs):
        images = hf_data.get("images") or []
        pixels = self.info.get_hf_processor().preprocess_images(list(images))
        return BatchFeature({f"{PIXEL_PREFIX}{slot}": value for slot, value in pixels.items()})

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]):
        return {f"{PIXEL_PREFIX}{slot}": MultiModalFieldConfig.batched("image")
                for slot in self.info.get_hf_processor().slot_names}

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        image_token_id = self.info.get_hf_config().image_token_id
        tokens = [image_token_id] * self.info.get_num_image_tokens()
        return [PromptReplacement(modality="image", target=[image_token_id], replacement=tokens)]


@MULTIMODAL_REGISTRY.register_processor(EncslimMultiModalProcessor, info=EncslimProcessingInfo,
                                        dummy_inputs=ImageDummyInputsBuilder)
class EncslimForConditionalGeneration(ImageTextModel):
    """The native family in vLLM: encslim's towers and fusion, vLLM's LLM (the frame is :class:`ImageTextModel`).

    Checkpoint keys load under their own names: ``vision_towers.<slot>.backbone.*``, ``fusion.*``
    (encslim's modules) and ``language_model.model.*`` / ``language_model.lm_head.*`` (vLLM's LLM,
    which stacks its q/k/v and gate/up projections itself).
    """

    def text_config(self, config):
        """The LLM's config: ``config.text_config``."""
        return config.text_config

    def language_architectures(self, text_config):
        """vLLM's architecture for the LLM: :func:`causal_lm_architecture`."""
        return causal_lm_architecture(text_config)

    def image_token_id(self, vllm_config):
        """The ``<image>`` token's id in the model's config."""
        return vllm_config.model_config.hf_config.image_token_id

    def build_towers(self, vllm_config):
        """One :class:`VisionSlot` per slot (``self.vision_towers``) and the fusion module (``self.fusion``)."""
        self.vision_towers = nn.ModuleDict({s: VisionSlot(self.config, s) for s in self.config.slot_names})
        self.fusion = FUSIONS[self.config.fusion["type"]](self.config)

    def embed_multimodal(self, **kwargs) -> MultiModalEmbeddings:
        """One ``(image tokens, hidden)`` tensor per image, from ``pixel_values_<slot>`` inputs (the fused tokens
        reduced by the folder's token budget)."""
        pixels = {key[len(PIXEL_PREFIX):]: value for key, value in kwargs.items()
                  if key.startswith(PIXEL_PREFIX) and value is not None}
        if not pixels:
            return []
        features = {}
        for slot, tower in self.vision_towers.items():
            value = stack_images(pixels[slot])
            weight = next(tower.parameters())
            features[slot] = tower(value.to(device=weight.device, dtype=weight.dtype))
        fused = self.fusion(features, frozenset(), "removal", None)
        return tuple(self.reduce_image_tokens(fused).unbind(0))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load the checkpoint's tensors (see the class docstring): the towers' backbone keys mapped onto their
        modules' names by :func:`backbone_weights`, every other key by its own name.

        Returns:
            The names of the parameters loaded.
        """
        prefixes = {f"vision_towers.{slot}.backbone.": tower.backbone for slot, tower in self.vision_towers.items()}
        towers = {prefix: [] for prefix in prefixes}

        def others():
            for name, tensor in weights:
                prefix = next((p for p in prefixes if name.startswith(p)), None)
                if prefix is None:
                    yield name, tensor
                else:
                    towers[prefix].append((name[len(prefix):], tensor))
            for prefix, backbone in prefixes.items():
                for name, tensor in backbone_weights(backbone, towers.pop(prefix)):
                    yield prefix + name, tensor

        return AutoWeightsLoader(self).load_weights(others())


__all__ = ["EncslimForConditionalGeneration", "backbone_weights", "causal_lm_architecture"]
