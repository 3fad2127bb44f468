"""The I-MoF family's adapter (tsb0601/MMVP, slots ``clip`` and ``dinov2``, class B) and its strict loading.

Follows ``LLaVA/llava/model/llava_arch.py`` of tsb0601/MMVP (``prepare_inputs_labels_for_multimodal_withdino``:
the split forward is in :mod:`.modeling`); removal in :mod:`.plan`, the stock LLaVA conversion of a
CLIP-only model (:meth:`ImofAdapter.to_llava`) in :mod:`.llava`. Strict loading refuses any missing,
unexpected or mis-shaped key; the one tolerated difference is the DINO tower's unused CLIP copy.
"""

from torch import nn

from ....errors import ModelLoadError
from ...adapter import Slot, TrainableParts
from ...layout import ROTARY_INV_FREQ, LayoutAdapter, check_keys, from_pretrained, header_shapes, meta_shapes
from ...llava_processing import IMAGE_TOKEN_INDEX
from ...masking import FusionClass
from ...tokens import budget_of
from .configuration import (DINO_CLIP_COPY, DINO_PREFIX, MODEL_TYPE, PROJECTORS, PRUNED_TOWER_PREFIX, TOWER_PREFIXES,
                            TOWERS, read_imof_config)
from .llava import llava_blockers, llava_conversion
from .modeling import ImofLlamaForCausalLM, embed_towers, encode_towers, fuse_towers, register_auto_classes
from .plan import removal_plan
from .processing import ImofProcessor


def expected_shapes(config):
    tied = ("lm_head.weight",) if config.tie_word_embeddings else ()
    return meta_shapes(ImofLlamaForCausalLM, config, skip=tied)


def strict_load(path, config, dtype=None, device_map=None):
    """``from_pretrained`` refusing any missing, unexpected or mis-shaped key (naming them).

    Tolerated: the DINO tower's unused CLIP copy (``model.dino_tower.clip_vision_tower.*``) is built exactly
    when the checkpoint holds it, and transformers 4.3x's ``rotary_emb.inv_freq`` keys (MMVP trains with 4.31)
    are named in the load's log and not loaded (:data:`~encslim.models.layout.ROTARY_INV_FREQ`).
    """
    shapes = header_shapes(path, "I-MoF")
    if "dinov2" in config.imof_towers:
        if not any(k.startswith(DINO_PREFIX) for k in shapes):
            raise ModelLoadError(f"{path} holds no DINOv2 tower ({DINO_PREFIX}vision_tower.*): a LLaVA-1.5 "
                                 "checkpoint without it is not I-MoF (or set imof_towers to [\"clip\"])")
        config.imof_dino_clip_copy = any(k.startswith(DINO_CLIP_COPY) for k in shapes)
    check_keys(path, shapes, expected_shapes(config), f"I-MoF config (towers {', '.join(config.imof_towers)})",
               tolerated=ROTARY_INV_FREQ)
    return from_pretrained(ImofLlamaForCausalLM, path, config, dtype, device_map)


class ImofAdapter(LayoutAdapter):
    """I-MoF (``imof_llama``, or MMVP's ``llava``/``llava_llama`` configs): slots ``clip`` and ``dinov2``, class B."""

    model_type = MODEL_TYPE
    model_class = ImofLlamaForCausalLM

    def read_config(self, path):
        return read_imof_config(path)

    def slots(self, config):
        return [Slot(t, t, config.image_size, config.tower_tokens(t), config.tower_width(t), removal_exact=True)
                for t in config.imof_towers]

    def fusion_class(self, config):
        return FusionClass.B

    def token_grids(self, config, masked=frozenset(), mask_mode="removal"):
        """Each present tower's projected grid, in interleaving order (a tower masked in removal mode has no
        tokens); each is reduced on its own before the interleave (:func:`.modeling.reduce_tower`). ``None``
        with ``cls_patch``: the CLS token leads each tower's tokens, which are then no grid."""
        gone = set(masked) if mask_mode == "removal" else set()
        grids = [config.tower_grid(t) for t in config.imof_towers if t not in gone]
        return None if any(g is None for g in grids) else grids

    def token_budget_blockers(self, config):
        if self.token_grids(config) is not None:
            return []
        return ["I-MoF with mm_vision_select_feature 'cls_patch' keeps each tower's CLS token before its patch "
                "grid, so its tokens are no grid a reducer could shorten; only 'patch' (MMVP's) takes a budget"]

    def fusion_settings(self, config):
        return {"type": "token_interleave", "order": list(config.imof_towers), "projector": config.mm_projector_type,
                "mask": "removal drops the tower's tokens; zero/mean replace its features before its projector"}

    # ------------------------------------------------------------------ loading and inputs
    def load(self, path, device="cpu", dtype=None, device_map=None):
        register_auto_classes()
        config = self.read_config(path)
        model = strict_load(path, config, dtype, device_map)
        if device_map is None:
            model.to(device)
        return model.eval(), ImofProcessor.from_pretrained(path, config)

    def image_token_id(self, config):
        return IMAGE_TOKEN_INDEX

    def prompt_inputs(self, processor, prompts, masked=frozenset(), mask_mode="removal"):
        return processor.text_inputs(prompts, processor.num_image_tokens(masked, mask_mode))

    # ------------------------------------------------------------------ the split forward
    def encode(self, model, batch, slots=None):
        pixels = batch.get("pixel_values")
        if pixels is None:
            return {}
        return encode_towers(model, pixels, slots)

    def fuse(self, model, features, masked=frozenset(), mask_mode="removal", mask_values=None):
        """Each tower's projected tokens, interleaved (:func:`.modeling.fuse_towers`)."""
        return fuse_towers(model, features, masked, mask_mode, mask_values)

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        input_ids = batch["input_ids"].to(model.device)
        return embed_towers(model, input_ids, features, masked, mask_mode, mask_values)

    # ------------------------------------------------------------------ modules and parameters
    def encoders(self, model):
        return {t: model.model.tower(t) for t in model.config.imof_towers}

    def parts(self, model):
        inner = model.model
        llm = nn.ModuleList([inner.embed_tokens, inner.layers, inner.norm, model.lm_head])
        fusion = nn.ModuleList([inner.projector(t) for t in model.config.imof_towers])
        return {"fusion": fusion, "language_model": llm}

    def slot_parameters(self, model):
        return {t: {"vision": sum(p.numel() for p in model.model.tower(t).parameters()),
                    "fusion": sum(p.numel() for p in model.model.projector(t).parameters())}
                for t in model.config.imof_towers}

    def trainable_parts(self, model):
        towers = model.config.imof_towers
        return TrainableParts(language_model="model.layers", fusion=tuple(PROJECTORS[t][:-1] for t in towers),
                              encoders={t: TOWER_PREFIXES[t][:-1] for t in towers})

    # ------------------------------------------------------------------ removal and export
    def removal_plan(self, config, drop):
        return removal_plan(config, drop)

    def export_targets(self, config, kept):
        return ["hf"] + (["llava"] if not self.llava_blockers(config, kept) else [])

    def llava_blockers(self, config, kept):
        return llava_blockers(config, kept)

    def export_blockers(self, config, kept, fmt):
        if fmt == "hf":
            return []
        if fmt == "llava":
            return self.llava_blockers(config, kept)
        return [f"{fmt} export is not available for I-MoF; --format hf writes its own layout, --format llava "
                "a stock LlavaForConditionalGeneration once dinov2 is dropped"]

    def export_notes(self, config):
        notes = ["architecture written as ImofLlamaForCausalLM (model_type imof_llama): MMVP's own code names it "
                 "LlavaLlamaForCausalLM with model_type llava"]
        budget = budget_of(config)
        if budget is not None:
            kept = sum(budget.tokens_out(g) for g in self.token_grids(config) or [])
            full = sum(config.tower_tokens(t) for t in config.imof_towers)
            notes.append(f"token budget {budget.label} (config.json token_budget): {kept} of the {full} interleaved "
                         "image tokens reach the LLM; MMVP's own code has no reducer (it ignores the key and splices "
                         "all of them), so this folder applies its budget when loaded with encslim only")
        if list(config.imof_towers) != list(TOWERS):
            notes.append(f"MMVP's own loader (llava/model/builder.py load_pretrained_model) refuses this folder: its "
                         f"mm_vision_tower starts with '{PRUNED_TOWER_PREFIX}', which build_vision_tower rejects "
                         "('Unknown vision tower'); MMVP always builds both towers, so with the original name it "
                         "would rebuild the removed one from the hub with a random projector. Load it with encslim")
        return notes

    def to_llava(self, model, processor):
        """``(LlavaConfig, state_dict, LlavaProcessor)`` of a CLIP-only I-MoF: stock
        ``LlavaForConditionalGeneration`` computing exactly what this model computes."""
        return llava_conversion(model, processor)


register_auto_classes()
ADAPTER = ImofAdapter()
