"""Cambrian-1 in cambrian-mllm/cambrian's original layout (SVA cross-attention, class C)."""

from ...registry import Family, register_family

register_family(Family(
    name="cambrian",
    description="Cambrian-1 in its original layout (SVA cross-attention, class C; encoders outside the checkpoint)",
    adapters={"cambrian_llama": "encslim.models.families.cambrian.adapter:ADAPTER"},
    detect="encslim.models.families.cambrian.configuration:is_cambrian_config",
    tiny="encslim.models.families.cambrian.tiny:create",
    transformers="encslim.models.families.cambrian.modeling:register_auto_classes",
    external_encoders="encslim.models.families.cambrian.configuration:external_slots",
))
