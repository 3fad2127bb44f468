"""Cambrian-1 in its original layout: detection, key names, the SVA's two masks, exact removal of every
encoder, the encoder folders (missing, wrong backbone), the SigLIP trunk against transformers, and the
stages (rank, prune, eval, finetune, export) through the CLI."""

import json

import pytest
import torch
from safetensors import safe_open

import encslim
from encslim.errors import ConfigError
from encslim.models.external import CONFIG_KEY

from ...conftest import make_image, run_main, write_jsonl

SLOTS = ["siglip", "clip", "dinov2", "convnext"]
ATOL = 1e-4


def encoder_args(paths):
    return [a for slot, path in paths.items() for a in ("--encoder", f"{slot}={path}")]


def keys(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def inputs(adapter, processor, masked=frozenset()):
    from PIL import Image

    images = [make_image(1, 48).resize((60, 40)), make_image(2, 48)]  # a wide image (unpadded) and a square one
    assert isinstance(images[0], Image.Image)
    prompts = [adapter.build_prompt(processor, "What colour is the shape?") for _ in images]
    return adapter.prepare_batch(processor, images, prompts, masked=frozenset(masked))


@pytest.fixture(scope="module")
def loaded(tiny_cambrian):
    folder, paths = tiny_cambrian
    return encslim.load_model(folder, encoders=paths)


def logits(model, adapter, batch, masked=frozenset(), mode="removal"):
    with torch.no_grad():
        return adapter.decode(model, adapter.encode(model, batch), batch, masked=frozenset(masked),
                              mask_mode=mode).logits


def test_detected_by_keys_with_the_real_key_names_and_no_encoders(tiny_cambrian, tmp_path):
    from encslim.models.registry import adapter_for_config

    folder, _ = tiny_cambrian
    config = json.loads((folder / "config.json").read_text())
    assert adapter_for_config({**config, "model_type": "llava_llama"}).model_type == "cambrian_llama"
    assert CONFIG_KEY not in config  # like Cambrian's own checkpoints: no encoder folders named
    names = keys(folder)
    for key in ("model.mm_projector_aux_3.0.weight", "model.mm_projector_aux_0.3.weight", "model.vision_query",
                "model.image_newline", "model.mm_projector.2.weight",
                "model.vision_sampler_0.layers.1.cross_attn.k_proj_3.1.weight",
                "model.vision_sampler_0.layers.0.pos_embed_3", "model.vision_sampler_layers.1.layers.0.proj_in.weight",
                "model.vision_sampler_layers.0.layers.0.cross_attn.v_proj_0.0.bias", "lm_head.weight"):
        assert key in names, key
    assert not [k for k in names if "vision_tower" in k]
    # windows of one token get no position embedding (576 -> 576 in the real model, 16 -> 16 here)
    assert "model.vision_sampler_0.layers.0.pos_embed_0" not in names


def test_token_counts_follow_unpadding(loaded):
    model, processor, adapter = loaded
    assert processor.image_tokens() == 4 * 5
    assert processor.image_tokens((60, 40)) == 2 * 5  # rows 0 and 3 of the 4x4 grid are padding
    batch = inputs(adapter, processor)
    counts = (batch["input_ids"] == -200).sum(-1).tolist()
    assert counts == [10, 20]
    assert batch["image_sizes"].tolist() == [[60, 40], [48, 48]]


def test_sampler_layers_in_the_llm_change_the_output_and_generation_uses_them(loaded):
    from encslim.models.families.native.modeling import CACHE_KWARG

    model, processor, adapter = loaded
    batch = inputs(adapter, processor)
    with torch.no_grad():
        features = adapter.encode(model, batch)
        embeds = adapter.embed(model, features, batch)
        with_samplers = adapter.lm_forward(model, inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
        without = model(inputs_embeds=embeds + 0, attention_mask=batch["attention_mask"]).logits
        assert float((with_samplers - without).abs().max()) > 1e-3
        generated = adapter.generate(model, features, batch, max_new_tokens=3)
        mask = batch["attention_mask"]
        out = adapter.lm_forward(model, inputs_embeds=embeds, attention_mask=mask,
                                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
        tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
        for _ in range(2):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            out = adapter.lm_forward(model, input_ids=tokens[-1], attention_mask=mask, use_cache=True,
                                     position_ids=mask.sum(-1, keepdim=True) - 1, **{CACHE_KWARG: getattr(out, CACHE_KWARG)})
            tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    assert torch.equal(generated[:, -3:], torch.cat(tokens, 1))


def test_zero_mask_is_not_the_removal_mask(loaded):
    model, processor, adapter = loaded
    full = logits(model, adapter, inputs(adapter, processor))
    for slot in SLOTS:
        removal = logits(model, adapter, inputs(adapter, processor, {slot}), {slot}, "removal")
        zero = logits(model, adapter, inputs(adapter, processor), {slot}, "zero")
        assert float((removal - full).abs().max()) > 1e-3, slot
        assert float((zero - removal).abs().max()) > 1e-3, slot  # zeros still enter as keys
    with pytest.raises(ConfigError, match="mean mask is not defined"):
        adapter.check_mask(model.config, {"clip"}, "mean", {"clip": torch.zeros(32)})


@pytest.mark.parametrize("slot", SLOTS)
def test_pruned_model_computes_the_removal_masked_one(loaded, tiny_cambrian, tmp_path, slot):
    from encslim.models.folder import ModelFolder
    from encslim.prune.surgery import prune

    folder, paths = tiny_cambrian
    model, processor, adapter = loaded
    out = tmp_path / f"no-{slot}"
    prune(ModelFolder.open(folder, encoders=paths), [slot], out, verify=False, streaming=True)
    # the pruned folder names its encoders itself
    config = json.loads((out / "config.json").read_text())
    kept = [s for s in SLOTS if s != slot]
    assert len(config["mm_vision_tower_aux_list"]) == 3 and len(config["mm_vision_tower_aux_token_len_list"]) == 3
    assert sorted(config[CONFIG_KEY]) == sorted(kept)
    names = keys(out)
    assert "model.mm_projector_aux_3.0.weight" not in names and "model.mm_projector_aux_2.0.weight" in names
    assert not [k for k in names if "k_proj_3" in k or "v_proj_3" in k]
    has_pos = slot != "convnext"  # ConvNeXt's 2x2 windows are the only ones with position embeddings
    assert ("model.vision_sampler_0.layers.0.pos_embed_2" in names) == has_pos
    assert len(names) < len(keys(folder))
    pruned, pruned_processor, pruned_adapter = encslim.load_model(out)
    assert pruned_adapter.slot_names(pruned.config) == kept
    got = logits(pruned, pruned_adapter, inputs(pruned_adapter, pruned_processor))
    want = logits(model, adapter, inputs(adapter, processor, {slot}), {slot}, "removal")
    assert float((got - want).abs().max()) <= ATOL


def test_removal_plan_of_the_global_context_source_says_what_moves(loaded):
    model, _, adapter = loaded
    plan = adapter.removal_plan(model.config, ["siglip"])
    assert plan.exact and any("global context" in n and "clip supplies it" in n for n in plan.notes)
    assert plan.prefix_renames["model.mm_projector_aux_1."] == "model.mm_projector_aux_0."
    assert plan.renames["model.vision_sampler_0.layers.0.pos_embed_3"] == "model.vision_sampler_0.layers.0.pos_embed_2"


def test_missing_and_wrong_encoder_folders_are_one_line_errors(tiny_cambrian, capsys, tmp_path, monkeypatch):
    folder, paths = tiny_cambrian
    for name in ("HF_HUB_CACHE", "HF_HOME", "HOME"):  # an empty Hugging Face cache: nothing found there
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    code, out, err = run_main(capsys, "inspect", folder)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "without its vision encoders" in err and "--encoder siglip=PATH" in err and "convnext" in err
    wrong = {**paths, "clip": paths["dinov2"]}
    code, out, err = run_main(capsys, "inspect", folder, *encoder_args(wrong))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "--encoder clip=" in err and "holds a dinov2 model" in err and "openai/clip-vit-large-patch14-336" in err
    wrong = {**paths, "siglip": paths["convnext"]}
    code, out, err = run_main(capsys, "inspect", folder, *encoder_args(wrong))
    assert code == 2 and "holds a convnext model" in err and "ViT-SO400M-14-SigLIP-384" in err
    code, out, err = run_main(capsys, "inspect", folder, "--encoder", "siglip")
    assert code == 2 and "is not NAME=PATH" in err


def test_siglip_trunk_equals_transformers_siglip_with_the_same_weights():
    """TimmViT (timm's SigLIP trunk, exact-erf GELU) against transformers' SiglipVisionModel set to the same
    activation: equal within 1e-5 on random weights."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from encslim.models.families.cambrian.encoders import TimmViT

    torch.manual_seed(0)
    trunk = TimmViT(embed_dim=32, depth=2, num_heads=2, mlp_hidden=64, patch_size=14, image_size=84).eval()
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=84, patch_size=14, hidden_act="gelu",
                                               layer_norm_eps=1e-6, vision_use_head=False)).eval()
    state = trunk.state_dict()
    mapped = {"embeddings.patch_embedding.weight": state["patch_embed.proj.weight"],
              "embeddings.patch_embedding.bias": state["patch_embed.proj.bias"],
              "embeddings.position_embedding.weight": state["pos_embed"][0],
              "post_layernorm.weight": state["norm.weight"], "post_layernorm.bias": state["norm.bias"]}
    for i in range(2):
        src, dst = f"blocks.{i}.", f"encoder.layers.{i}."
        for a, b in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                     ("attn.proj", "self_attn.out_proj")):
            for t in ("weight", "bias"):
                mapped[f"{dst}{b}.{t}"] = state[f"{src}{a}.{t}"]
        for t in ("weight", "bias"):
            q, k, v = state[f"{src}attn.qkv.{t}"].chunk(3, 0)
            mapped.update({f"{dst}self_attn.q_proj.{t}": q, f"{dst}self_attn.k_proj.{t}": k,
                           f"{dst}self_attn.v_proj.{t}": v})
    target = ref.state_dict()
    missing = set(target) - set(mapped)
    assert not [k for k in missing if "position_ids" not in k], missing
    target.update(mapped)
    ref.load_state_dict(target)
    pixels = torch.randn(2, 3, 84, 84)
    with torch.no_grad():
        ours, theirs = trunk.forward_features(pixels), ref(pixel_values=pixels).last_hidden_state
    assert float((ours - theirs).abs().max()) <= 1e-5


def test_rank_prune_eval_finetune_export_through_the_cli(tiny_cambrian, tmp_path, capsys):
    folder, paths = tiny_cambrian
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(8):
        make_image(i, 48).save(tmp_path / "images" / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"images/{i}.png", "question": "What colour is the shape?",
                     "answer": "red", "category": "General" if i % 2 else "OCR & Chart", "metric": "exact"})
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    for mode in ("removal", "zero"):
        code, out, err = run_main(capsys, "rank", folder, "--data", data, "--out", tmp_path / f"rank-{mode}",
                                  "--mask", mode, "--max-new-tokens", "2", *encoder_args(paths))
        assert code == 0, err
        ranking = json.loads((tmp_path / f"rank-{mode}" / "ranking.json").read_text())
        assert ranking["mask_mode"] == mode and ranking["slots"] == SLOTS
        assert f"{mode} mask" in out
    pruned = tmp_path / "pruned"
    code, out, err = run_main(capsys, "prune", folder, "--drop", "dinov2", "-o", pruned, *encoder_args(paths))
    assert code == 0, err
    assert "verification: passed" in out
    # from here on the pruned folder's own encslim_encoder_paths are enough
    code, out, err = run_main(capsys, "eval", pruned, "--data", data, "--out", tmp_path / "eval",
                              "--max-new-tokens", "2")
    assert code == 0, err
    code, out, err = run_main(capsys, "finetune", "train", pruned, "--data", data, "--out", tmp_path / "ft",
                              "--max-steps", "2", "--batch-size", "4")
    assert code == 0, err
    summary = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert summary["parts"]["trainable"] > 0 and summary["parts"]["lora_modules"] > 0
    assert "model.vision_sampler_layers.1" in summary["parts"]["modules_to_save"]
    with safe_open(str(tmp_path / "ft" / "adapter_model.safetensors"), framework="pt") as handle:
        saved = list(handle.keys())
    assert any("lora_A" in k for k in saved) and any("vision_sampler_layers" in k for k in saved)
    code, out, err = run_main(capsys, "export", pruned, "--format", "hf", "--out", tmp_path / "hf")
    assert code == 0, err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert sorted(config[CONFIG_KEY]) == ["clip", "convnext", "siglip"]
    assert "encoders are not in this folder" in (tmp_path / "hf" / "README.md").read_text()
    code, out, err = run_main(capsys, "export", pruned, "--format", "onnx", "--out", tmp_path / "onnx")
    assert code == 2 and "SVA runs inside the LLM" in err
