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

A folder whose ``config.json`` carries a token budget (``token_budget``, ``models/tokens.py``) is served under
it: each kept tower's projected grid is reduced on its own before the interleave
(:meth:`~encslim.models.vllm_serving.ImageTextModel.reduce_image_tokens`, as ``modeling.reduce_tower``), and the
processor, built from the config, counts the tokens left.
"""

import copy

from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.multimodal import MULTIMODAL_REGISTRY

from ...vllm_serving import (FilledImageProcessor, ImageDummyInputsBuilder, ImageProcessingInfo, ImageTextModel,
                             folder_processor, rename_prefix, stack_images)
from .configuration import DINO_CLIP_COPY
from .modeling import CLIPVisionTower, DINOVisionTower, build_vision_projector, interleave
from .plan import ARCHITECTURE
from .processing import ImofProcessor

# checkpoint prefix -> this module's, first match wins
_PREFIXES = (("model.vision_tower.", "vision_tower."), ("model.mm_projector.", "mm_projector."),
             ("model.dino_tower.", "dino_tower."), ("model.dino_mm_projector.", "dino_mm_projector."),
             ("model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))
# tower -> (its encoder, its projector) attribute names, and the encoder's class
_TOWER_MODULES = {"clip": ("vision_tower", "mm_projector", CLIPVisionTower),
                  "dinov2": ("dino_tower", "dino_mm_projector", DINOVisionTower)}


def checkpoint_to_vllm(name):
    """The name a checkpoint key has in :class:`ImofLlamaForCausalLM`, or ``None`` for a skipped key.

    Args:
        name: a key of an I-MoF checkpoint (``model.dino_tower.vision_tower.blocks.0...``).

    Returns:
        The module path here (``dino_tower.vision_tower.blocks.0...``), ``None`` for the DINO tower's
        unused CLIP copy (``model.dino_tower.clip_vision_tower.*``).
    """
    return None if name.startswith(DINO_CLIP_COPY) else rename_prefix(name, _PREFIXES)


class ImofProcessingInfo(ImageProcessingInfo):
    """An I-MoF folder's inputs: one square image (CLIP's crop size), one token per kept tower's feature."""

    def get_hf_processor(self, **kwargs):
        """The folder's :class:`~.processing.ImofProcessor` (built once per folder)."""
        return folder_processor(ImofProcessor.from_pretrained, self.ctx.model_config.model, self.get_hf_config())

    def get_num_image_tokens(self):
        """Image tokens one image gives: the kept towers' token counts summed (interleaved)."""
        return self.get_hf_processor().num_image_tokens()

    def image_side(self):
        """CLIP's crop size (the one tensor both towers see)."""
        return self.get_hf_config().image_size


@MULTIMODAL_REGISTRY.register_processor(FilledImageProcessor, info=ImofProcessingInfo,
                                        dummy_inputs=ImageDummyInputsBuilder)
class ImofLlamaForCausalLM(ImageTextModel):
    """I-MoF in vLLM: encslim's kept towers and projectors, vLLM's Llama (keys: :func:`checkpoint_to_vllm`)."""

    def build_towers(self, vllm_config):
        """Each kept tower (``imof_towers``) and its projector; the DINO tower's CLIP copy is never run: not built."""
        self.towers = list(self.config.imof_towers)
        tower_config = copy.copy(self.config)
        tower_config.imof_dino_clip_copy = False
        for tower in ("clip", "dinov2"):
            if tower in self.towers:
                encoder, projector, build = _TOWER_MODULES[tower]
                setattr(self, encoder, build(tower_config))
                setattr(self, projector, build_vision_projector(tower_config))

    def checkpoint_name(self, name):
        """:func:`checkpoint_to_vllm`."""
        return checkpoint_to_vllm(name)

    def embed_multimodal(self, **kwargs) -> MultiModalEmbeddings:
        """One ``(image tokens, hidden)`` tensor per image from ``pixel_values`` (B, 3, S, S): each kept tower's
        features through its projector, reduced on its own under the folder's token budget, interleaved in
        ``imof_towers`` order (:func:`~.modeling.fuse_towers`)."""
        pixels = kwargs.get("pixel_values")
        if pixels is None:
            return []
        pixels = stack_images(pixels)
        parts = []
        for i, tower in enumerate(self.towers):
            encoder, projector = (getattr(self, name) for name in _TOWER_MODULES[tower][:2])
            weight = next(projector.parameters())
            features = encoder(pixels.to(device=weight.device, dtype=weight.dtype))
            grid = None if self.budget_grids is None else self.budget_grids[i:i + 1]  # this tower's
            parts.append(self.reduce_image_tokens(projector(features.to(weight.dtype)), grid))
        return tuple(interleave(parts).unbind(0))


__all__ = ["ARCHITECTURE", "ImofLlamaForCausalLM", "checkpoint_to_vllm"]
