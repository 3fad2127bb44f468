"""``--format llava``: one-encoder native models -> stock LlavaForConditionalGeneration, logits within 1e-4."""

import pytest
import torch

from encslim.errors import ConfigError

from .conftest import leftovers, native_logits

ATOL = 1e-4


def _load_llava(folder):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(folder)


def _llava_logits(folder, prompts, images):
    model, processor = _load_llava(folder)
    batch = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        return batch, model(**batch).logits


CASES = {
    # name: (write_native kwargs, expected strategy, expected layer, image tokens)
    "A1-clip": (dict(fusion="A1", encoders=("clip",)), "default", -1, 16),
    "A1-siglip": (dict(fusion="A1", encoders=("siglip",)), "full", -1, 16),
    "B-clip-cls-keep": (dict(fusion="B", encoders=("clip",), cls="keep"), "full", -1, 17),
    "A1-clip-layer-2": (dict(fusion="A1", encoders=("clip",), feature_layer=-2), "default", -2, 16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_llava_logits_equal_source(custom_native, tmp_path, name):
    from encslim.export import export_llava
    from encslim.export.common import probe_images
    from encslim.models.loading import load_model

    kwargs, strategy, layer, tokens = CASES[name]
    src = custom_native(name, **kwargs)
    out = tmp_path / "llava"
    manifest = export_llava(src, out)

    model, llava_processor = _load_llava(out)
    assert model.config.vision_feature_select_strategy == strategy
    assert model.config.vision_feature_layer == layer and model.config.image_seq_length == tokens
    keys = set(model.state_dict())
    assert "model.multi_modal_projector.linear_1.weight" in keys and "lm_head.weight" in keys
    assert "model.vision_tower.embeddings.patch_embedding.weight" in keys
    assert any(k.startswith("model.language_model.layers.0.") for k in keys)

    native, processor, _ = load_model(src)
    images = probe_images(3, seed=7)
    prompts = [processor.build_prompt(q) for q in ("What is in the image?", "Count them.", "What number is printed?")]
    batch, expected = native_logits(src, prompts, images)
    llava_batch, logits = _llava_logits(out, prompts, images)
    assert torch.equal(llava_batch["input_ids"], batch["input_ids"])
    assert (logits - expected).abs().max().item() <= ATOL
    assert manifest["verification"]["export"][0]["matched"]

    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    assert llava_processor.apply_chat_template(chat, add_generation_prompt=True) == prompts[0]
    with torch.no_grad():
        ref = native.generate(**batch, max_new_tokens=6, do_sample=False)
        got = model.generate(**llava_batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(got[:, llava_batch["input_ids"].shape[1]:], ref[:, batch["input_ids"].shape[1]:])


def test_pruned_three_encoder_model_becomes_llava(tiny_model_dir, tmp_path):
    from encslim.export import export_llava
    from encslim.prune.surgery import prune

    src = tiny_model_dir(fusion="A1", encoders=("clip", "siglip", "dinov2"))
    pruned = tmp_path / "pruned"
    prune(src, ["clip", "dinov2"], pruned)
    manifest = export_llava(pruned, tmp_path / "llava")
    assert manifest["removed_slots"] == ["clip", "dinov2"] and manifest["kept_slots"] == ["siglip"]
    assert manifest["export"]["architecture"] == "LlavaForConditionalGeneration"
    card = (tmp_path / "llava" / "README.md").read_text()
    assert "LlavaForConditionalGeneration.from_pretrained" in card and "`clip`, `dinov2`" in card


BLOCKED = {
    "three-encoders": (dict(fusion="A1", encoders=("clip", "siglip", "dinov2")), "LLaVA holds one vision encoder but"),
    "dinov2": (dict(fusion="A1", encoders=("dinov2",)), "slot 'dinov2' is a dinov2 backbone; LLaVA needs CLIP or SigLIP"),
    "layernorm-first": (dict(fusion="A2", encoders=("clip",)), "fusion class A2 (channel_concat, layernorm_first)"),
    "cross-attention": (dict(fusion="C", encoders=("siglip",)), "fusion class C (cross_attention) is not"),
    "pooled": (dict(fusion="A1", encoders=("clip",), grid=2), "pooled from its 4x4 token grid to 2x2"),
}


@pytest.mark.parametrize("name", list(BLOCKED))
def test_structure_llava_cannot_hold_is_named(custom_native, tmp_path, name):
    from encslim.export import export_llava

    kwargs, message = BLOCKED[name]
    with pytest.raises(ConfigError, match="cannot be exported as LLaVA") as err:
        export_llava(custom_native(f"blocked-{name}", **kwargs), tmp_path / "out")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_non_native_model_is_refused(tiny_hybrid_dir, tmp_path):
    from encslim.export import export_llava

    with pytest.raises(ConfigError, match="needs a model with one encoder slot and a projector that LLaVA holds; "
                                          ".* model_type 'deepseek_vl_hybrid'"):
        export_llava(tiny_hybrid_dir, tmp_path / "out")


LLAVA_HF_PARTS = ("vision_tower.vision_model.", "multi_modal_projector.", "language_model.model.",
                  "language_model.lm_head.")


def test_weights_are_written_in_the_llava_hf_layout(custom_native, tmp_path):
    """The layout transformers 4.4x/5 and vLLM all load; sharded, so the index follows the shards."""
    import json

    from safetensors import safe_open

    from encslim.export import export_llava

    src = custom_native("A1-clip", **CASES["A1-clip"][0])
    out = tmp_path / "llava"
    manifest = export_llava(src, out, max_shard_size="100KB")
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1
    keys = {}
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            keys.update({k: shard.name for k in f.keys()})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == keys
    assert {k for k in keys if not k.startswith(LLAVA_HF_PARTS)} == set()
    assert all(any(k.startswith(p) for k in keys) for p in LLAVA_HF_PARTS)
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    # transformers 5 loads it back (the export's own verification reloads the folder)
    assert manifest["verification"]["export"][0]["matched"]
    assert manifest["verification"]["export"][0]["max_abs_diff"] <= ATOL

    serve = f"vllm serve {out} --mm-processor-kwargs '{{\"backend\": \"pil\"}}'"
    assert manifest["export"]["key_layout"] == "llava-hf" and manifest["export"]["image_processor_backend"] == "pil"
    assert manifest["export"]["serve"] == serve
    card = (out / "README.md").read_text()
    assert f'AutoProcessor.from_pretrained("{out}", backend="pil")' in card
    assert "Images are prepared by the PIL image processor" in card and f"Serve with vLLM: `{serve}`" in card
    # `encslim export` prints it last
    from encslim.export.commands import format_summary

    assert format_summary(manifest, "llava", out).splitlines()[-1] == f"  serve with vLLM: {serve}"


@pytest.mark.parametrize("key, expected", [
    ("model.vision_tower.embeddings.class_embedding", "vision_tower.vision_model.embeddings.class_embedding"),
    ("vision_tower.encoder.layers.0.mlp.fc1.weight", "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"),
    ("vision_tower.vision_model.post_layernorm.bias", "vision_tower.vision_model.post_layernorm.bias"),
    ("model.multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.weight"),
    ("model.language_model.norm.weight", "language_model.model.norm.weight"),
    ("language_model.model.norm.weight", "language_model.model.norm.weight"),
    ("lm_head.weight", "language_model.lm_head.weight"),
    ("language_model.lm_head.weight", "language_model.lm_head.weight"),
])
def test_llava_hf_key(key, expected):
    from encslim.export.llava import llava_hf_key

    assert llava_hf_key(key) == expected


def test_llava_hf_key_refuses_a_foreign_weight():
    from encslim.export.llava import llava_hf_key

    with pytest.raises(ConfigError, match="^weight 'model.fusion.gate' is not part of a "
                                          "LlavaForConditionalGeneration$"):
        llava_hf_key("model.fusion.gate")
