"""vLLM serves native folders as written (encslim's plugin): greedy tokens equal encslim's forward.

Tiny native models (CLIP + SigLIP + DINOv2, LLaMA with head size 32) are served full (class A1, all three
towers: DINOv2's checkpoint keys are transformers' ``attention.attention.query``, its vLLM module's
``attention.q_proj``, mapped by transformers' own conversion mapping) and pruned to two towers (DINOv2
removed), a kept set no stock class holds: class A1 (channel concat) and class B (sequence concat, whose image
token count falls with the removed tower). vLLM loads each folder through ``EncslimForConditionalGeneration``
(models/families/native/serving.py: encslim's towers and fusion, vLLM's Llama), fp32. Reference: encslim's
transformers forward, greedy, on a non-square image. Checked: prompt token ids (the placeholder expanded to the
processor's count), greedy tokens, prompt and generated logprobs within 1e-4. The pruned A1 folder goes through
``vllm serve FOLDER`` (the command ``encslim export --format hf`` prints, with no ``--chat-template``: the
folder's own renders the processor's prompt; OpenAI chat request; its own process, stopped by its pid); the
full A1 and pruned B folders through the offline engine, both engines in one process.
Every backbone the native family supports maps its saved keys onto vLLM's modules (no engine needed).
"""

import json

import pytest

from .conftest import write_tiny_native
from .test_vllm_llava import (QUESTION, STEPS, assert_same_run, chat_through_server, native_greedy,
                              run_offline_in_one_process)

ENCODERS = ("clip", "siglip", "dinov2")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """``{fusion: (pruned folder, export summary lines)}`` for A1 and B, DINOv2 removed, exported as hf; and
    ``"A1-full"``: ``(the full A1 folder, all three towers, None)``."""
    from encslim.export import export_hf
    from encslim.export.commands import format_summary
    from encslim.prune.surgery import prune

    root = tmp_path_factory.mktemp("native")
    folders = {}
    for fusion in ("A1", "B"):
        prune(write_tiny_native(root / f"{fusion}-full", ENCODERS, fusion), ["dinov2"], root / f"{fusion}-pruned")
        out = root / fusion
        manifest = export_hf(root / f"{fusion}-pruned", out)
        folders[fusion] = (out, format_summary(manifest, "hf", out).splitlines())
    folders["A1-full"] = (root / "A1-full", None)
    return folders


# the native family's backbones (configuration.BACKBONES), tiny: the tests' own and a ViT
VIT = {"model_type": "vit", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 2, "patch_size": 8, "image_size": 32}


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2", "dinov2-swiglu", "vit", "convnext", "sam"])
def test_every_backbone_loads_its_saved_keys_into_the_vllm_module(kind, tmp_path):
    """What ``save_pretrained`` writes maps onto the module vLLM builds (names and tensors equal), by the mapping
    transformers declares for the class: DINOv2 and ViT rename (``attention.attention.query`` ->
    ``attention.q_proj``), DINOv2's SwiGLU MLP splits ``weights_in`` in two; the others keep their names."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    from encslim.models.families.native.configuration import BACKBONES
    from encslim.models.families.native.serving import backbone_weights
    from encslim.models.families.native.tiny import TINY_BACKBONES

    settings = dict(VIT) if kind == "vit" else dict(TINY_BACKBONES[kind.split("-")[0]][0])
    if kind == "dinov2-swiglu":
        settings["use_swiglu_ffn"] = True
    assert settings["model_type"] in BACKBONES
    torch.manual_seed(0)
    backbone = AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
    backbone.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    unlike = {"dinov2": 32, "dinov2-swiglu": 52, "vit": 64}.get(kind, 0)  # keys saved or built, not both
    assert len(set(saved) ^ set(backbone.state_dict())) == unlike
    got = dict(backbone_weights(backbone, saved.items()))
    expected = backbone.state_dict()
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_the_plugin_serves_the_native_architecture(pruned, tmp_path):
    from encslim.models.vllm_plugin import serve_command, serving_models

    assert serving_models()["EncslimForConditionalGeneration"] == \
        "encslim.models.families.native.serving:EncslimForConditionalGeneration"
    assert serve_command(pruned["B"][0]) == f"vllm serve {pruned['B'][0]}"  # the architecture the folder names
    assert serve_command(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    assert serve_command(tmp_path) is None  # no family's


@pytest.fixture(scope="module")
def offline(pruned, non_square_png, tmp_path_factory):
    """``{name: (vLLM's run, encslim's run, processor)}`` of the full A1 folder (DINOv2 kept) and the pruned B
    folder, the two engines one after another in one process."""
    from encslim.models.loading import load_model

    runs, expected = [], {}
    for name in ("A1-full", "B"):
        folder = pruned[name][0]
        processor = load_model(folder)[1]
        prompt = processor.build_prompt(QUESTION)
        expected[name] = (native_greedy(folder, prompt, non_square_png, STEPS), processor)
        runs.append((folder, {"prompt": prompt, "image": str(non_square_png), "max_tokens": STEPS,
                              "mm_processor_kwargs": {}}))
    got = run_offline_in_one_process(runs, tmp_path_factory.mktemp("native-vllm"))
    return {name: (run, *expected[name]) for name, run in zip(("A1-full", "B"), got)}


@pytest.mark.slow
def test_vllm_offline_full_with_dinov2_equals_encslim(offline):
    got, expected, processor = offline["A1-full"]
    assert processor.slot_names == ["clip", "siglip", "dinov2"]
    assert expected["prompt_token_ids"].count(processor.image_token_id) == processor.num_image_tokens()
    assert_same_run(got, expected)


@pytest.mark.slow
def test_vllm_offline_sequence_concat_equals_encslim(offline):
    got, expected, processor = offline["B"]
    assert processor.slot_names == ["clip", "siglip"] and processor.image_tokens is not None
    assert expected["prompt_token_ids"].count(processor.image_token_id) == processor.num_image_tokens()
    assert_same_run(got, expected)


@pytest.mark.slow
def test_vllm_serve_channel_concat_equals_encslim(pruned, non_square_png, tmp_path):
    from encslim.models.loading import load_model

    folder, summary = pruned["A1"]
    assert f"  serve with vLLM: vllm serve {folder}" in summary  # what `encslim export --format hf` prints
    processor = load_model(folder)[1]
    assert processor.slot_names == ["clip", "siglip"]
    prompt = processor.build_prompt(QUESTION)
    expected = native_greedy(folder, prompt, non_square_png, STEPS)
    # the folder's own chat template (chat_template.jinja, the processor's prompt format): no --chat-template
    got = chat_through_server(["vllm", "serve", str(folder)], non_square_png, tmp_path / "server.log")
    assert_same_run(got, expected)
