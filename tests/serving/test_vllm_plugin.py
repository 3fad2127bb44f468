"""encslim's vLLM plugin (encslim/models/vllm_plugin.py): found by vLLM, registers the families' vLLM models.

A family defined here declares one (``Family.serving``), registered lazily; the built-in ones are tested
with vLLM itself (test_vllm_native.py, test_vllm_eagle.py).
"""

import dataclasses

import pytest

from .. import toy_family

SERVING = "encslim_toy_serving.model:ToyvlmForConditionalGeneration"  # registered lazily: never imported here


@pytest.fixture
def serving_toy():
    from encslim.models.registry import register_family, unregister_family

    register_family(dataclasses.replace(toy_family.family(), serving=SERVING))
    try:
        yield
    finally:
        unregister_family(toy_family.TOY)


def test_vllm_finds_the_plugin_by_its_entry_point():
    from importlib.metadata import entry_points

    from encslim.models.vllm_plugin import register

    found = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "encslim"]
    assert [ep.value for ep in found] == ["encslim.models.vllm_plugin:register"]
    assert found[0].load() is register


def test_register_adds_each_family_vllm_model(serving_toy):
    from vllm import ModelRegistry

    from encslim.models.vllm_plugin import register, serving_models

    assert serving_models()["ToyvlmForConditionalGeneration"] == SERVING
    assert "ToyvlmForConditionalGeneration" not in ModelRegistry.get_supported_archs()
    assert "ToyvlmForConditionalGeneration" in register()
    assert "ToyvlmForConditionalGeneration" in ModelRegistry.get_supported_archs()
    assert "LlavaForConditionalGeneration" in ModelRegistry.get_supported_archs()  # vLLM's own are kept
    register()  # vLLM calls it in every process: again is harmless


def test_two_families_with_one_class_name_are_refused(serving_toy):
    from encslim.models.registry import register_family, unregister_family
    from encslim.models.vllm_plugin import serving_models

    other = dataclasses.replace(toy_family.family(), name="toyvlm_two", adapters={"toyvlm_two": toy_family.ADAPTER},
                                serving="other.module:ToyvlmForConditionalGeneration")
    register_family(other)
    try:
        with pytest.raises(ValueError, match="^families declare two vLLM models named ToyvlmForConditionalGeneration: "
                                             f"{SERVING} and other.module:ToyvlmForConditionalGeneration$"):
            serving_models()
    finally:
        unregister_family("toyvlm_two")
