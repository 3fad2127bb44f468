"""DeepSeek-VL hybrid's removal plan: drop ``sam`` and land on a stock ``deepseek_vl`` checkpoint (class A3, exact).

Follows transformers' ``models/deepseek_vl_hybrid/modeling_deepseek_vl_hybrid.py``
(``DeepseekVLHybridAligner``: ``h = [high_res_vision_proj(sam) ; vision_proj(siglip)]``, then
``proj(GELU(h))``) and ``models/deepseek_vl/modeling_deepseek_vl.py`` (``DeepseekVLAligner``:
``linear2(GELU(linear1(siglip)))``). A zero-masked SAM makes its branch the constant bias of
``high_res_vision_proj``, which folds into ``linear1.bias``; ``linear1.weight = [0 ; vision_proj.weight]``
and ``linear2 = proj``. Removing ``siglip`` is refused (:data:`SIGLIP_REFUSAL`).
"""

from ....errors import PlanError
from ...masking import FusionClass
from ...plan import Delete, Fold, RemovalPlan, check_drop

SIGLIP, SAM = "siglip", "sam"
SIGLIP_REFUSAL = (
    "removing 'siglip' from deepseek_vl_hybrid has no exact loadable result: the hybrid class always runs its "
    "low-resolution SigLIP tower (whose grid also sets the SAM feature grid) and no stock transformers class "
    "holds SAM alone; keep siglip (drop 'sam' instead), or rank with masking to measure it"
)


def removal_plan(config, drop):
    """The plan dropping ``drop`` from a ``deepseek_vl_hybrid`` model: ``sam`` only.

    Args:
        config: the hybrid's ``DeepseekVLHybridConfig``.
        drop: the slots to drop.

    Returns:
        :func:`sam_removal_plan`'s plan.

    Raises:
        PlanError: ``drop`` names ``siglip`` (:data:`SIGLIP_REFUSAL`), or no slot or an unknown one.
    """
    drop = check_drop([SIGLIP, SAM], drop)
    if SIGLIP in drop:
        raise PlanError(SIGLIP_REFUSAL)
    return sam_removal_plan(config)


def sam_removal_plan(config):
    """The exact plan turning a ``deepseek_vl_hybrid`` checkpoint into a stock ``deepseek_vl`` one."""
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
              {"op": "set", "path": "image_processor.image_processor_type", "value": "DeepseekVLImageProcessor",
               "optional": True}]
    nested += [{"op": "delete", "path": f"image_processor.{k}", "optional": True} for k in high_res]
    flat = [{"op": "set", "path": "image_processor_type", "value": "DeepseekVLImageProcessor"},
            {"op": "set", "path": "processor_class", "value": "DeepseekVLProcessor"}]
    flat += [{"op": "delete", "path": k, "optional": True} for k in high_res]
    return RemovalPlan(
        model_type="deepseek_vl_hybrid", fusion_class=FusionClass.A3.value, slots=[SIGLIP, SAM], drop=[SAM],
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
