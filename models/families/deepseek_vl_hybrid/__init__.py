"""transformers' DeepSeek-VL (``deepseek_vl_hybrid``, class A3, and its SAM-free ``deepseek_vl``)."""

from ...registry import Family, register_family

register_family(Family(
    name="deepseek_vl_hybrid",
    description="transformers' DeepSeek-VL hybrid (SigLIP + SAM, class A3) and its stock deepseek_vl",
    adapters={"deepseek_vl_hybrid": "encslim.models.families.deepseek_vl_hybrid.adapter:HYBRID_ADAPTER",
              "deepseek_vl": "encslim.models.families.deepseek_vl_hybrid.adapter:STOCK_ADAPTER"},
    tiny="encslim.models.families.deepseek_vl_hybrid.tiny:create_tiny_hybrid",
    exports=("deepseek_vl",),
    # transformers 4.54 (the first with these model types) nests SigLIP's SiglipVisionModel one level deeper;
    # 5.x renames it on load (conversion_mapping: SiglipVisionModel -> PrefixChange(prefix_to_remove=
    # "vision_model"), scoped at model.vision_model). tests/models/test_legacy_keys.py checks this pair
    # against transformers' own renaming of a folder 4.54 saved.
    legacy_keys=(("model.vision_model.vision_model.", "model.vision_model."),),
))
