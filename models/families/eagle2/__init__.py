"""Eagle2 (9B: SigLIP + ConvNeXt, Qwen2) in NVlabs/Eagle's original layout (class A2); served by vLLM through
encslim's plugin (``serving.py``: full and pruned folders, dynamic tiles)."""

from ...registry import Family, register_family

register_family(Family(
    name="eagle2",
    description="Eagle2 in NVlabs/Eagle's layout (SigLIP + ConvNeXt, Qwen2; LayerNorm-first, class A2)",
    adapters={"eagle_chat": "encslim.models.families.eagle2.adapter:ADAPTER"},
    detect="encslim.models.families.eagle2.configuration:is_eagle2_config",
    tiny="encslim.models.families.eagle2.tiny:create_tiny_eagle2",
    transformers="encslim.models.families.eagle2.modeling:register_auto_classes",
    serving="encslim.models.families.eagle2.serving:Eagle2ChatModel",
))
