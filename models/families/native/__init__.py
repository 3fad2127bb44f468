"""The native encslim family (``model_type: encslim``): any transformers vision backbones, fusion A1/A2/B/C."""

from ...registry import Family, TinyOption, register_family

register_family(Family(
    name="native",
    description="encslim's own architecture (any transformers backbones; fusion A1, A2, B or C)",
    adapters={"encslim": "encslim.models.families.native.adapter:ADAPTER"},
    plan="encslim.models.families.native.plan",
    tiny="encslim.models.families.native.tiny:create",
    tiny_options=(
        TinyOption("fusion", "channel_concat", "channel_concat (A1), A2, sequence_concat (B) or cross_attention (C)."),
        TinyOption("encoders", "clip,siglip,dinov2", "comma-separated tiny backbones: clip, siglip, dinov2, convnext, sam."),
        TinyOption("text", "llama", "tiny LLM, llama or qwen2."),
    ),
    exports=("llava",),
    transformers="encslim.models.families.native.adapter:register_auto_classes",
    serving="encslim.models.families.native.serving:EncslimForConditionalGeneration",
))
