"""Eagle v1 (X2/X4/X5) in NVlabs/EAGLE's original checkpoint layout (class A1)."""

from ...registry import Family, TinyOption, register_family

register_family(Family(
    name="eagle",
    description="Eagle v1 (X2/X4/X5) in NVlabs/EAGLE's layout (channel concat, class A1)",
    adapters={"eagle_llama": "encslim.models.families.eagle.adapter:ADAPTER"},
    detect="encslim.models.families.eagle.configuration:is_eagle_config",
    tiny="encslim.models.families.eagle.tiny:create",
    tiny_options=(TinyOption("towers", "clip-448,convnext-1024,sam-1024,det-1024,pix2struct-1024",
                             "comma-separated Eagle towers, in checkpoint order."),),
    transformers="encslim.models.families.eagle.modeling:register_auto_classes",
    serving="encslim.models.families.eagle.serving:EagleVisionLlamaForCausalLM",
))
