"""I-MoF (CLIP + DINOv2 interleaved, LLaVA-1.5 layout) as tsb0601/MMVP writes it (class B); served in vLLM
by :mod:`.serving` (encslim's vLLM plugin)."""

from ...registry import Family, register_family

register_family(Family(
    name="imof",
    description="I-MoF in MMVP's LLaVA-1.5 layout (CLIP + DINOv2 tokens interleaved, class B)",
    adapters={"imof_llama": "encslim.models.families.imof.adapter:ADAPTER"},
    detect="encslim.models.families.imof.configuration:is_imof_config",
    tiny="encslim.models.families.imof.tiny:create_tiny_imof",
    exports=("llava",),
    transformers="encslim.models.families.imof.modeling:register_auto_classes",
    serving="encslim.models.families.imof.serving:ImofLlamaForCausalLM",
))
