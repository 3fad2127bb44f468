"""The DeepSeek-VL family: transformers' ``deepseek_vl_hybrid`` and stock ``deepseek_vl``, unmodified.

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

The stock classes load as they are: the adapter computes the fused image embeddings itself
(:func:`hybrid_fuse`) and hands the LLM ``inputs_embeds``, which the stock forward accepts.

Token budgets (:mod:`encslim.models.tokens`): the A3 aligner gives one ``side x side`` grid
(``vision_config.image_size / patch_size``: 24x24 for the released models; SAM's features are
brought to the same grid), row-major as both towers emit it; the reducer runs on that grid after
``proj``, in :meth:`DeepseekVLHybridAdapter.embed`, and the prompts hold as many image tokens as it
leaves (:func:`.processing.image_token_count`). transformers' own classes have no reducer: a folder whose
``config.json`` carries a ``token_budget`` applies it when loaded with encslim only (the export notes say so),
and the stock ``deepseek_vl`` export refuses it.
The removal plan is in :mod:`.plan`, the prompt and input helpers in :mod:`.processing`.
"""

import torch

from ....errors import ConfigError
from ...adapter import Adapter, Slot
from ...loading import load_pretrained
from ...masking import FusionClass, check_mask_set, mask_feature
from ...plan import check_drop
from ...tokens import budget_of, reduce_grids, scorer_for
from .plan import SAM, SIGLIP, removal_plan
from .processing import build_prompt, model_inputs
from .export import DEEPSEEK_VL, stock_export, stock_notes

PIXEL_KEYS = {SIGLIP: "pixel_values", SAM: "high_res_pixel_values"}


def _low_res_tokens(config):
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


def _grid(config):
    """The aligner's one token grid ``(side, side)`` (SigLIP's patch grid; SAM's features are brought to it)."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return side, side


def _budget_blockers(config, fmt):
    """Why ``fmt`` cannot hold the model's token budget (``hf``: it can, with the export note)."""
    budget = budget_of(config)
    if budget is None or fmt != DEEPSEEK_VL.format:
        return []
    return [f"transformers' DeepseekVLForConditionalGeneration has no token reducer: this model applies the token "
            f"budget {budget.label} (config.json token_budget) to its {'x'.join(map(str, _grid(config)))} image "
            "grid; export it as --format hf (loads with encslim), or remove the budget"]


def _budget_notes(config):
    budget = budget_of(config)
    if budget is None:
        return []
    grid = _grid(config)
    return [f"token budget {budget.label} (config.json token_budget): {budget.tokens_out(grid)} of the "
            f"{grid[0] * grid[1]} image tokens reach the LLM; transformers' {config.model_type} classes have no "
            "reducer (they ignore the key and splice all of them), so this folder applies its budget when loaded "
            "with encslim only"]


def _count(*modules):
    return sum(p.numel() for m in modules for p in (m.parameters() if hasattr(m, "parameters") else [m]))


def _load(model_class, processor_class, path, device, dtype, device_map):
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = load_pretrained(model_class, path, **kwargs)
    if device_map is None:
        model.to(device)
    processor = processor_class.from_pretrained(path)
    processor.token_budget = budget_of(model.config)  # the placeholder count (not saved: no __init__ argument)
    return model.eval(), processor


def reduce_image_embeds(model, image_embeds):
    """The aligner's ``(B, side*side, H)`` output under ``config.token_budget`` (none: as it is): pooled, or
    the top-k tokens by the attention of the LLM's first decoder layer (:mod:`encslim.models.tokens`)."""
    budget = budget_of(model.config)
    if budget is None:
        return image_embeds
    scorer = scorer_for(model.model.language_model) if budget.method == "attention" else None
    return reduce_grids(image_embeds, [_grid(model.config)], budget, scorer)


def _merge(model, image_embeds, batch):
    """Text embeddings with ``image_embeds`` (B, T, H), reduced to the model's token budget, in the image-token
    positions."""
    input_ids = batch["input_ids"].to(model.device)
    embeds = model.get_input_embeddings()(input_ids)
    if image_embeds is None:  # a text-only prompt
        return embeds
    image_embeds = reduce_image_embeds(model, image_embeds)
    positions = input_ids == model.config.image_token_id
    if int(positions.sum()) != image_embeds.shape[0] * image_embeds.shape[1]:
        budget = budget_of(model.config)
        raise ConfigError(f"the prompts hold {int(positions.sum())} image tokens but {image_embeds.shape[0]} "
                          f"image(s) give {image_embeds.shape[1]} each (token budget "
                          f"{budget.label if budget else '1'}): the processor's token_budget differs from the model's")
    return embeds.masked_scatter(positions.unsqueeze(-1), image_embeds.to(embeds.device, embeds.dtype))


def encode_hybrid(model, batch, slots=None):
    """``{"siglip": (B, N, D_low), "sam": (B, N, D_high)}`` for the pixel inputs present in ``batch``."""
    inner, features = model.model, {}
    dtype = inner.vision_model.dtype
    wanted = {SIGLIP, SAM} if slots is None else set(slots)
    if SIGLIP in wanted and batch.get("pixel_values") is not None:
        pixels = batch["pixel_values"].to(model.device, dtype)
        features[SIGLIP] = inner.get_low_res_image_features(pixels).last_hidden_state
    if SAM in wanted and batch.get("high_res_pixel_values") is not None:
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
    masked = check_mask_set([SIGLIP, SAM], masked, mask_mode, mask_values)
    if not features:
        raise ValueError("at least one slot's features are needed (for the batch and token shape)")
    ref = next((v for k, v in features.items() if k not in masked), next(iter(features.values())))
    dims = {SIGLIP: aligner.vision_proj.in_features, SAM: aligner.high_res_vision_proj.in_features}

    def feature(slot):
        if slot not in masked:
            return features[slot]
        return mask_feature(ref, dims[slot], mask_mode, (mask_values or {}).get(slot))

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
        return FusionClass.A3

    def token_grids(self, config, masked=frozenset(), mask_mode="removal"):
        """One ``side x side`` grid after the aligner (masking keeps it: a masked branch is a constant)."""
        return [_grid(config)]

    def load(self, path, device="cpu", dtype=None, device_map=None):
        from transformers import DeepseekVLHybridForConditionalGeneration, DeepseekVLHybridProcessor

        return _load(DeepseekVLHybridForConditionalGeneration, DeepseekVLHybridProcessor, path, device, dtype,
                     device_map)

    def build_prompt(self, processor, question, with_image=True):
        return build_prompt(processor, question, with_image)

    def prepare_batch(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        batch = model_inputs(processor, images, prompts)
        if mask_mode == "removal":
            for slot in masked:
                batch.pop(PIXEL_KEYS[slot], None)  # a removed encoder needs no pixels
        return batch

    def encode(self, model, batch, slots=None):
        return encode_hybrid(model, batch, slots)

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        fused = hybrid_fuse(model.model.aligner, features, masked, mask_mode, mask_values) if features else None
        return _merge(model, fused, batch)

    def encoders(self, model):
        return {SIGLIP: model.model.vision_model, SAM: model.model.high_res_vision_model}

    def parts(self, model):
        return {"fusion": model.model.aligner, "language_model": model.model.language_model}

    def slot_parameters(self, model):
        inner = model.model
        return {
            SIGLIP: {"vision": _count(inner.vision_model), "fusion": _count(inner.aligner.vision_proj)},
            SAM: {"vision": _count(inner.high_res_vision_model, inner.high_res_vision_neck,
                                   inner.high_res_vision_proj, inner.high_res_vision_alpha),
                  "fusion": _count(inner.aligner.high_res_vision_proj)},
        }

    def removal_plan(self, config, drop):
        return removal_plan(config, drop)

    def export_targets(self, config, kept):
        stock = list(kept) == [SIGLIP] and not _budget_blockers(config, DEEPSEEK_VL.format)
        return ["hf", DEEPSEEK_VL.format] if stock else ["hf"]

    def export_blockers(self, config, kept, fmt):
        return _budget_blockers(config, fmt) or super().export_blockers(config, kept, fmt)

    def export_notes(self, config):
        return _budget_notes(config)

    def stock_export(self, fmt):
        return stock_export(fmt)

    def stock_notes(self, fmt, drop, gap):
        return stock_notes(fmt, drop, gap)


class DeepseekVLAdapter(Adapter):
    """Stock ``deepseek_vl``: one slot, ``siglip`` (what removing ``sam`` from the hybrid leaves)."""

    model_type = "deepseek_vl"

    def slots(self, config):
        low = config.vision_config
        return [Slot(SIGLIP, low.model_type, low.image_size, _low_res_tokens(config), low.hidden_size, False)]

    def fusion_class(self, config):
        return FusionClass.SINGLE

    def token_grids(self, config, masked=frozenset(), mask_mode="removal"):
        """One ``side x side`` grid after the aligner."""
        return [_grid(config)]

    def load(self, path, device="cpu", dtype=None, device_map=None):
        from transformers import DeepseekVLForConditionalGeneration, DeepseekVLProcessor

        return _load(DeepseekVLForConditionalGeneration, DeepseekVLProcessor, path, device, dtype, device_map)

    def build_prompt(self, processor, question, with_image=True):
        return build_prompt(processor, question, with_image)

    def prepare_batch(self, processor, images, prompts, masked=frozenset(), mask_mode="removal"):
        return model_inputs(processor, images, prompts)

    def encode(self, model, batch, slots=None):
        if (slots is not None and SIGLIP not in slots) or batch.get("pixel_values") is None:
            return {}
        vision = model.model.vision_model
        pixels = batch["pixel_values"].to(model.device, vision.dtype)
        return {SIGLIP: vision(pixels, return_dict=True).last_hidden_state}

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        self.check_mask(model.config, masked, mask_mode, mask_values)
        return _merge(model, model.model.aligner(features[SIGLIP]) if features else None, batch)

    def encoders(self, model):
        return {SIGLIP: model.model.vision_model}

    def parts(self, model):
        return {"fusion": model.model.aligner, "language_model": model.model.language_model}

    def removal_plan(self, config, drop):
        check_drop([SIGLIP], drop)  # always raises: the only slot cannot go

    def export_targets(self, config, kept):
        return ["hf"] + ([] if _budget_blockers(config, DEEPSEEK_VL.format) else [DEEPSEEK_VL.format])

    def export_blockers(self, config, kept, fmt):
        return _budget_blockers(config, fmt) or super().export_blockers(config, kept, fmt)

    def export_notes(self, config):
        return _budget_notes(config)

    def stock_export(self, fmt):
        return stock_export(fmt)

    def stock_notes(self, fmt, drop, gap):
        return stock_notes(fmt, drop, gap)


HYBRID_ADAPTER = DeepseekVLHybridAdapter()
STOCK_ADAPTER = DeepseekVLAdapter()
