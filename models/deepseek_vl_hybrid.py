"""Adapters for transformers' DeepSeek-VL models: ``deepseek_vl_hybrid`` and stock ``deepseek_vl``.

The hybrid (class A3 of DESIGN §1) has two slots: ``siglip`` (low resolution, ``vision_model``)
and ``sam`` (high resolution: ``high_res_vision_model`` + ``high_res_vision_neck`` +
``high_res_vision_proj`` + ``high_res_vision_alpha``). Its aligner is::

    h = [high_res_vision_proj(sam) ; vision_proj(siglip)]      (high-res first, each hidden/2 wide)
    image_embeds = proj(GELU(h))

Masking a slot zeroes its encoder output, so its branch becomes the constant ``bias`` of its
first Linear. Removing ``sam`` is therefore exact and lands on a stock ``deepseek_vl`` model,
whose aligner is ``linear2(GELU(linear1(siglip)))``, with::

    linear1.weight = [0 ; W_vision_proj]        linear1.bias = [b_high_res_vision_proj ; b_vision_proj]
    linear2 = proj

Removing ``siglip`` is refused: the hybrid class always runs its low-resolution tower (its
``image_size / patch_size`` also sets the SAM feature grid), and no stock class has SAM alone.

``load`` returns the stock classes extended with encslim's keywords (``masked_slots``,
``image_features``..., see :mod:`.deepseek_vl_modeling`), so the evaluator and the ranking
drive these models as they drive native ones.
"""

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

from ..errors import PlanError
from . import deepseek_vl_modeling as modeling
from .adapter import Adapter, Slot, register_adapter
from .deepseek_vl_modeling import build_tiny_hybrid, create_tiny_hybrid  # noqa: F401 - public here too

SIGLIP, SAM = "siglip", "sam"
PIXEL_KEYS = {SIGLIP: "pixel_values", SAM: "high_res_pixel_values"}
SIGLIP_REFUSAL = (
    "removing 'siglip' from deepseek_vl_hybrid has no exact loadable result: the hybrid class always runs its "
    "low-resolution SigLIP tower (whose grid also sets the SAM feature grid) and no stock transformers class "
    "holds SAM alone; keep siglip (drop 'sam' instead), or rank with masking to measure it"
)


def _low_res_tokens(config):
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


def _image_embeds(model, pooled, batch):
    """Run the LLM with ``pooled`` (B, T, hidden) image embeddings in the image-token positions."""
    out = model(
        input_ids=batch["input_ids"].to(model.device), attention_mask=batch["attention_mask"].to(model.device),
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=pooled)},
    )
    return CausalLMOutputWithPast(logits=out.logits, past_key_values=out.past_key_values)


def _load(model_class, processor_class, path, device, dtype, device_map):
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = model_class.from_pretrained(path, **kwargs)
    if device_map is None:
        model.to(device)
    return model.eval(), processor_class.from_pretrained(path)


def encode_hybrid(model, batch):
    """``{"siglip": (B, N, D_low), "sam": (B, N, D_high)}`` for the pixel inputs present in ``batch``."""
    inner, features = model.model, {}
    dtype = inner.vision_model.dtype
    if batch.get("pixel_values") is not None:
        pixels = batch["pixel_values"].to(model.device, dtype)
        features[SIGLIP] = inner.get_low_res_image_features(pixels).last_hidden_state
    if batch.get("high_res_pixel_values") is not None:
        pixels = batch["high_res_pixel_values"].to(model.device, dtype)
        features[SAM] = inner.get_high_res_image_features(pixels).last_hidden_state
    return features


def hybrid_fuse(aligner, features, masked=frozenset(), mask_mode="removal", mask_values=None):
    """The hybrid aligner with ``masked`` slots' encoder outputs replaced by zeros (or constants).

    Args:
        aligner: a ``DeepseekVLHybridAligner``.
        features: ``{"siglip": (B, N, D_low), "sam": (B, N, D_high)}`` (masked slots may be absent).
        masked: slots to mask.
        mask_mode: ``removal``/``zero`` (zeros: the removal-consistent mask of class A3) or ``mean``.
        mask_values: ``{slot: (D,)}`` constants for ``mean``.

    Returns:
        image embeddings ``(B, N, hidden)``.
    """
    masked = set(masked)
    if masked - {SIGLIP, SAM}:
        raise ValueError(f"unknown slot(s) {sorted(masked - {SIGLIP, SAM})}; slots are siglip, sam")
    if masked >= {SIGLIP, SAM} and mask_mode == "removal":
        raise ValueError("cannot mask every encoder slot in removal mode")
    if not features:
        raise ValueError("at least one slot's features are needed (for the batch and token shape)")
    ref = next((v for k, v in features.items() if k not in masked), next(iter(features.values())))
    dims = {SIGLIP: aligner.vision_proj.in_features, SAM: aligner.high_res_vision_proj.in_features}

    def feature(slot):
        if slot not in masked:
            return features[slot]
        if mask_mode in ("removal", "zero"):
            return ref.new_zeros(*ref.shape[:2], dims[slot])
        return mask_values[slot].to(ref).expand(*ref.shape[:2], dims[slot])

    low = aligner.vision_proj(feature(SIGLIP))
    high = aligner.high_res_vision_proj(feature(SAM))
    return aligner.proj(aligner.act(torch.cat([high, low], dim=-1)))


class DeepseekVLHybridAdapter(Adapter):
    """``deepseek_vl_hybrid``: slots ``siglip`` and ``sam``, class A3."""

    model_type = "deepseek_vl_hybrid"

    def slots(self, config):
        low, high = config.vision_config, config.high_res_vision_config
        tokens = _low_res_tokens(config)
        return [
            # siglip: masking is exact, but physical removal is refused (see SIGLIP_REFUSAL)
            Slot(SIGLIP, low.model_type, low.image_size, tokens, low.hidden_size, removal_exact=False),
            Slot(SAM, high.model_type, high.image_size, tokens, high.output_channels * 4, removal_exact=True),
        ]

    def fusion_class(self, config):
        return "A3"

    def load(self, path, device="cpu", dtype=None, device_map=None):
        return _load(modeling.DeepseekVLHybridForConditionalGeneration, modeling.DeepseekVLHybridProcessor, path,
                     device, dtype, device_map)

    def encode(self, model, batch):
        return encode_hybrid(model, batch)

    def decode(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        pooled = hybrid_fuse(model.model.aligner, features, masked, mask_mode, mask_values)
        return _image_embeds(model, pooled, batch)

    def prepare_batch(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        batch = modeling.model_inputs(processor, images, prompts)
        if mask_mode == "removal":
            for slot in masked:
                batch.pop(PIXEL_KEYS[slot], None)  # a removed encoder needs no pixels
        return batch

    def removal_plan(self, config, drop):
        from ..prune.plan import check_drop

        drop = check_drop([SIGLIP, SAM], drop)
        if SIGLIP in drop:
            raise PlanError(SIGLIP_REFUSAL)
        return sam_removal_plan(config)

    def export_targets(self, config, kept):
        return ["hf", "deepseek_vl"] if list(kept) == [SIGLIP] else ["hf"]


def sam_removal_plan(config):
    """The exact plan turning a ``deepseek_vl_hybrid`` checkpoint into a stock ``deepseek_vl`` one."""
    from ..prune.plan import Delete, Fold, RemovalPlan

    hidden, low_dim = config.text_config.hidden_size, config.vision_config.hidden_size
    aligner = "model.aligner."
    why = "SAM masked = zero input to high_res_vision_proj, whose output is then its bias"
    folds = [
        Fold(aligner + "linear1.weight", 0, ({"zeros": [hidden // 2, low_dim]}, {"key": aligner + "vision_proj.weight"}),
             SAM, why),
        Fold(aligner + "linear1.bias", 0,
             ({"key": aligner + "high_res_vision_proj.bias"}, {"key": aligner + "vision_proj.bias"}), SAM, why),
    ]
    high_res = [f"high_res_{k}" for k in ("size", "resample", "image_mean", "image_std", "background_color")]
    nested = [{"op": "set", "path": "processor_class", "value": "DeepseekVLProcessor"},
              {"op": "set", "path": "image_processor.image_processor_type", "value": "DeepseekVLImageProcessor"}]
    nested += [{"op": "delete", "path": f"image_processor.{k}"} for k in high_res]
    flat = [{"op": "set", "path": "image_processor_type", "value": "DeepseekVLImageProcessor"},
            {"op": "set", "path": "processor_class", "value": "DeepseekVLProcessor"}]
    flat += [{"op": "delete", "path": k} for k in high_res]
    return RemovalPlan(
        model_type="deepseek_vl_hybrid", fusion_class="A3", slots=[SIGLIP, SAM], drop=[SAM],
        delete_keys=[Delete("model.high_res_vision_model.", SAM), Delete("model.high_res_vision_neck.", SAM),
                     Delete("model.high_res_vision_proj.", SAM), Delete("model.high_res_vision_alpha", SAM, False),
                     Delete(aligner + "high_res_vision_proj.", SAM)],
        folds=folds,
        renames={aligner + "proj.weight": aligner + "linear2.weight", aligner + "proj.bias": aligner + "linear2.bias"},
        config_patch=[{"op": "set", "path": "model_type", "value": "deepseek_vl"},
                      {"op": "set", "path": "architectures", "value": ["DeepseekVLForConditionalGeneration"]},
                      {"op": "delete", "path": "high_res_vision_config"}],
        processor_patch={"processor_config.json": nested, "preprocessor_config.json": flat},
        exact=True, target_model_type="deepseek_vl",
        notes=["A3: the SAM branch becomes the constant bias of high_res_vision_proj, folded into "
               "linear1.bias; linear1.weight = [0 ; vision_proj.weight], linear2 = proj",
               "stock DeepseekVLImageProcessor resizes the original image straight to `size`, the hybrid's "
               "low-res image was resized from the high-res one: pixels can differ slightly unless images "
               "already are high_res_size squares"],
    )


class DeepseekVLAdapter(Adapter):
    """Stock ``deepseek_vl``: one slot, ``siglip`` (what removing ``sam`` from the hybrid leaves)."""

    model_type = "deepseek_vl"

    def slots(self, config):
        low = config.vision_config
        return [Slot(SIGLIP, low.model_type, low.image_size, _low_res_tokens(config), low.hidden_size, False)]

    def fusion_class(self, config):
        return "single"

    def load(self, path, device="cpu", dtype=None, device_map=None):
        return _load(modeling.DeepseekVLForConditionalGeneration, modeling.DeepseekVLProcessor, path, device, dtype,
                     device_map)

    def encode(self, model, batch):
        pixels = batch["pixel_values"].to(model.device, model.model.vision_model.dtype)
        return {SIGLIP: model.model.vision_model(pixels, return_dict=True).last_hidden_state}

    def decode(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        if masked:
            raise ValueError("deepseek_vl has a single encoder slot; it cannot be masked")
        return _image_embeds(model, model.model.aligner(features[SIGLIP]), batch)

    def prepare_batch(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        return modeling.model_inputs(processor, images, prompts)

    def removal_plan(self, config, drop):
        from ..prune.plan import check_drop

        check_drop([SIGLIP], drop)  # always raises: the only slot cannot go


register_adapter(DeepseekVLHybridAdapter())
register_adapter(DeepseekVLAdapter())
