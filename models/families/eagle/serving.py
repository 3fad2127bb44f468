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

from transformers import AutoTokenizer
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.multimodal import MULTIMODAL_REGISTRY

from ...vllm_serving import (FilledImageProcessor, ImageDummyInputsBuilder, ImageProcessingInfo, ImageTextModel,
                             folder_processor, rename_prefix, stack_images)
from .modeling import MultiBackboneChannelConcatenationVisionTower, build_vision_projector
from .processing import EagleProcessor

ARCHITECTURE = "EagleVisionLlamaForCausalLM"
# EVA's RoPE tables stored under every block (the shared tables hold the same values): not parameters here
_SKIP = re.compile(r"\.vision_tower\.blocks\.\d+\.attn\.rope\.freqs_(cos|sin)$")
# checkpoint prefix -> this module's, first match wins
_PREFIXES = (("model.vision_tower.", "vision_tower."), ("model.mm_projector.", "mm_projector."),
             ("model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))


def _build_processor(folder, config):
    return EagleProcessor.from_config(AutoTokenizer.from_pretrained(folder), config)


def checkpoint_to_vllm(name):
    """The name a checkpoint key has in :class:`EagleVisionLlamaForCausalLM`, or ``None`` for a skipped key.

    Args:
        name: a key of an Eagle checkpoint (``model.vision_tower.vision_towers.0...``).

    Returns:
        The module path here (``vision_tower.vision_towers.0...``), ``None`` for EVA's copied RoPE tables.
    """
    return None if _SKIP.search(name) else rename_prefix(name, _PREFIXES)


class EagleProcessingInfo(ImageProcessingInfo):
    """An Eagle folder's inputs: one square image (the model's input size), ``grid*grid`` tokens."""

    def get_hf_processor(self, **kwargs):
        """The folder's :class:`EagleProcessor` (built once per folder)."""
        return folder_processor(_build_processor, self.ctx.model_config.model, self.get_hf_config())

    def get_num_image_tokens(self):
        """``grid*grid``, or the tokens the folder's token budget leaves of that grid."""
        return self.budget_tokens(self.get_hf_config().eagle_grid_size ** 2)

    def image_side(self):
        """Eagle's input size (every tower resizes from it)."""
        return self.get_hf_config().eagle_input_image_size


@MULTIMODAL_REGISTRY.register_processor(FilledImageProcessor, info=EagleProcessingInfo,
                                        dummy_inputs=ImageDummyInputsBuilder)
class EagleVisionLlamaForCausalLM(ImageTextModel):
    """Eagle v1 in vLLM: encslim's towers and projector, vLLM's Llama (keys: :func:`checkpoint_to_vllm`)."""

    def build_towers(self, vllm_config):
        """The family's multi-tower front end (``vision_tower``) and projector (``mm_projector``)."""
        self.vision_tower = MultiBackboneChannelConcatenationVisionTower(self.config)
        self.mm_projector = build_vision_projector(self.config)

    def checkpoint_name(self, name):
        """:func:`checkpoint_to_vllm`."""
        return checkpoint_to_vllm(name)

    def embed_multimodal(self, **kwargs) -> MultiModalEmbeddings:
        """One ``(grid*grid, hidden)`` tensor per image, from ``pixel_values`` (B, 3, S, S); fewer tokens under the
        folder's token budget (the projected grid reduced)."""
        pixels = kwargs.get("pixel_values")
        if pixels is None:
            return []
        weight = next(self.mm_projector.parameters())
        features = self.vision_tower(stack_images(pixels).to(device=weight.device, dtype=weight.dtype))
        return tuple(self.reduce_image_tokens(self.mm_projector(features.to(weight.dtype))).unbind(0))


__all__ = ["ARCHITECTURE", "EagleVisionLlamaForCausalLM", "checkpoint_to_vllm"]
