"""The Eagle v1 family end to end on the tiny X5 checkpoint: checkpoint keys as NVlabs/EAGLE's modules
save them, shapes of the split forward, exact tower removal (``prune`` == zero mask), strict
loading errors, ``llava_llama`` detection, ``create-tiny --family eagle`` and the prompt ids of
``eagle/mm_utils.tokenizer_image_token``."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import encslim
from encslim.models.families.eagle.tiny import X5

from ...conftest import make_image, run_main

TOWER_PREFIX = "model.vision_tower.vision_towers."
PROJ = "model.mm_projector.0.weight"
IMAGE_TOKEN = -200
QUESTIONS = ["What is shown in the image?", "Which colour is the big shape on the left?"]
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

# ---------------------------------------------------------------------------- expected keys (literal)
# clip-448 = HRCLIPVisionTower: ``self.vision_tower = CLIPVisionModel.from_pretrained(...)``, whose
# transformers-4.37 state dict is ``vision_model.*``: embeddings (class_embedding, patch_embedding
# without bias, position_embedding; position_ids non-persistent), pre_layrnorm, encoder.layers.{i}
# (self_attn k/v/q/out_proj, layer_norm1, mlp.fc1/fc2, layer_norm2) and post_layernorm (kept in the
# checkpoint although Eagle never runs it). Tiny: 2 layers.
CLIP_LAYER = [
    "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
    "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "layer_norm1.weight", "layer_norm1.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
    "mlp.fc2.bias", "layer_norm2.weight", "layer_norm2.bias",
]
CLIP_KEYS = (
    ["vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
     "vision_model.embeddings.position_embedding.weight", "vision_model.pre_layrnorm.weight",
     "vision_model.pre_layrnorm.bias"]
    + [f"vision_model.encoder.layers.{i}.{k}" for i in (0, 1) for k in CLIP_LAYER]
    + ["vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"]
)
# convnext-1024 = ConvNextVisionTower: ``self.vision_tower = convnext_xxlarge(...)``, Eagle's copy of
# timm's ConvNeXt: stem (Conv2d 4x4 + LayerNorm2d), stages.{i} (downsample = LayerNorm2d + Conv2d for
# stages 1-3, Identity for stage 0; blocks.{j}: conv_dw, norm, mlp.fc1/fc2, layer scale ``weight``;
# shortcut/drop_path are Identity), norm_pre Identity, head = NormMlpClassifierHead (norm, fc).
# Tiny depths [1, 1, 2, 1].
CONVNEXT_BLOCK = ["conv_dw.weight", "conv_dw.bias", "norm.weight", "norm.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                  "mlp.fc2.weight", "mlp.fc2.bias", "weight"]
CONVNEXT_KEYS = (
    ["stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias"]
    + [f"stages.0.blocks.0.{k}" for k in CONVNEXT_BLOCK]
    + ["stages.1.downsample.0.weight", "stages.1.downsample.0.bias", "stages.1.downsample.1.weight",
       "stages.1.downsample.1.bias"]
    + [f"stages.1.blocks.0.{k}" for k in CONVNEXT_BLOCK]
    + ["stages.2.downsample.0.weight", "stages.2.downsample.0.bias", "stages.2.downsample.1.weight",
       "stages.2.downsample.1.bias"]
    + [f"stages.2.blocks.{j}.{k}" for j in (0, 1) for k in CONVNEXT_BLOCK]
    + ["stages.3.downsample.0.weight", "stages.3.downsample.0.bias", "stages.3.downsample.1.weight",
       "stages.3.downsample.1.bias"]
    + [f"stages.3.blocks.0.{k}" for k in CONVNEXT_BLOCK]
    + ["head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"]
)
# EagleLlamaForCausalLM: LlamaModel (embed_tokens, layers, norm; rotary inv_freq non-persistent) +
# vision_tower + mm_projector (mlp2x_gelu: Linear, GELU, Linear), untied lm_head.
LLAMA_LAYER = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
               "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
               "input_layernorm.weight", "post_attention_layernorm.weight"]
TOP_KEYS = (
    ["model.embed_tokens.weight"]
    + [f"model.layers.{i}.{k}" for i in (0, 1) for k in LLAMA_LAYER]
    + ["model.norm.weight", "lm_head.weight", "model.mm_projector.0.weight", "model.mm_projector.0.bias",
       "model.mm_projector.2.weight", "model.mm_projector.2.bias"]
)
TINY_WIDTHS = {"clip-448": 32, "convnext-1024": 64, "sam-1024": 64, "det-1024": 32, "pix2struct-1024": 32}


def _keys(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def _config(folder):
    return json.loads((folder / "config.json").read_text())


def _batch(adapter, processor, questions=QUESTIONS):
    images = [make_image(0, 40), make_image(1, 48)]
    prompts = [adapter.build_prompt(processor, q) for q in questions]
    return adapter.prepare_batch(processor, images, prompts)


def _logits(model, processor, adapter, masked=frozenset(), mask_mode="removal"):
    batch = _batch(adapter, processor)
    with torch.no_grad():
        features = adapter.encode(model, batch)
        return adapter.next_token_logits(model, features, batch, masked=masked, mask_mode=mask_mode)


@pytest.fixture(scope="module")
def x5(tiny_eagle_dir):
    """The tiny X5 folder, loaded once: (folder, model, processor, adapter, batch, features, logits)."""
    folder = tiny_eagle_dir(X5)
    model, processor, adapter = encslim.load_model(str(folder))
    batch = _batch(adapter, processor)
    with torch.no_grad():
        features = adapter.encode(model, batch)
        logits = adapter.next_token_logits(model, features, batch)
    return {"folder": folder, "model": model, "processor": processor, "adapter": adapter, "batch": batch,
            "features": features, "logits": logits}


# ------------------------------------------------------------------------------------------ 1. keys
def test_checkpoint_keys_are_the_original_modules_keys(x5):
    keys = _keys(x5["folder"])
    other = {i: {k for k in keys if k.startswith(f"{TOWER_PREFIX}{i}.vision_tower.")} for i in (2, 3, 4)}
    for i, found in other.items():
        assert len(found) > 0, f"no keys for tower {i} ({X5[i]})"
    expected = (set(TOP_KEYS)
                | {f"{TOWER_PREFIX}0.vision_tower.{k}" for k in CLIP_KEYS}
                | {f"{TOWER_PREFIX}1.vision_tower.{k}" for k in CONVNEXT_KEYS}
                | set().union(*other.values()))
    assert len(CLIP_KEYS) == 39 and len(CONVNEXT_KEYS) == 65 and len(TOP_KEYS) == 25
    assert sorted(keys - expected) == [] and sorted(expected - keys) == []
    assert not any("position_ids" in k or "inv_freq" in k for k in keys)  # non-persistent buffers
    assert not any(k.endswith(".gamma") for k in keys)  # Eagle's layer scale is ``weight``, not timm's gamma


# ---------------------------------------------------------------------------------------- 2. shapes
def test_encode_fuse_embed_shapes(x5):
    model, adapter, batch = x5["model"], x5["adapter"], x5["batch"]
    config = model.config
    assert config.tower_names == list(X5)
    assert {n: config.tower_width(n) for n in X5} == TINY_WIDTHS
    assert config.mm_hidden_size == sum(TINY_WIDTHS.values()) == 224
    features = x5["features"]
    assert list(features) == list(X5)
    for name, feature in features.items():
        assert tuple(feature.shape) == (2, 1024, config.tower_width(name)), name
    fused = adapter.fuse(model, features)
    assert tuple(fused.shape) == (2, 1024, 224)
    ids = batch["input_ids"]
    assert (ids == IMAGE_TOKEN).sum(dim=1).tolist() == [1024, 1024]
    assert batch["pixel_values"].shape == (2, 3, 256, 256)
    with torch.no_grad():
        embeds = adapter.embed(model, features, batch)
    assert tuple(embeds.shape) == (2, ids.shape[1], config.hidden_size)
    # the image positions hold the projected fused features, in order
    with torch.no_grad():
        projected = model.model.mm_projector(fused)
    for row in range(2):
        torch.testing.assert_close(embeds[row][ids[row] == IMAGE_TOKEN], projected[row], atol=0, rtol=0)
    assert x5["logits"].shape == (2, config.vocab_size)


# ------------------------------------------------------------------------- 3. zero mask == removal
@pytest.mark.parametrize("tower", X5)
def test_prune_equals_zero_mask(tower, x5, tmp_path, capsys):
    source = x5["folder"]
    out = tmp_path / "pruned"
    code, stdout, stderr = run_main(capsys, "prune", source, "--drop", tower, "--out", out)
    assert code == 0, stdout + stderr
    pruned, processor, adapter = encslim.load_model(str(out))
    assert adapter.model_type == "eagle_llama"
    got = _logits(pruned, processor, adapter)
    with torch.no_grad():
        want = x5["adapter"].next_token_logits(x5["model"], x5["features"], x5["batch"], masked={tower},
                                               mask_mode="zero")
    assert (want - x5["logits"]).abs().max() > 1e-3  # the tower matters, so the check below has teeth
    assert (got - want).abs().max() <= 1e-4

    dropped = X5.index(tower)
    kept = [n for n in X5 if n != tower]
    src, dst = load_file(str(source / "model.safetensors")), load_file(str(out / "model.safetensors"))
    expected = {}
    for key, value in src.items():
        if key.startswith(TOWER_PREFIX):
            index, rest = key[len(TOWER_PREFIX):].split(".", 1)
            index = int(index)
            if index == dropped:
                continue
            key = f"{TOWER_PREFIX}{index - (index > dropped)}.{rest}"
        expected[key] = value
    assert sorted(dst) == sorted(expected)
    for key, value in expected.items():
        if key != PROJ:
            assert torch.equal(dst[key], value), key
    start = sum(TINY_WIDTHS[n] for n in X5[:dropped])
    stop = start + TINY_WIDTHS[tower]
    sliced = torch.cat([src[PROJ][:, :start], src[PROJ][:, stop:]], dim=1)
    assert dst[PROJ].shape == (64, 224 - TINY_WIDTHS[tower])
    assert torch.equal(dst[PROJ], sliced)
    assert torch.equal(dst["model.mm_projector.0.bias"], src["model.mm_projector.0.bias"])

    config = _config(out)
    assert config["mm_vision_tower"] == ";".join(kept)
    assert config["mm_hidden_size"] == 224 - TINY_WIDTHS[tower]
    assert tower not in config.get("eagle_tower_specs", {})
    assert pruned.config.tower_names == kept


def test_prune_renumbers_later_towers(x5, tmp_path, capsys):
    """Dropping convnext-1024 (index 1): the old tower 2/3/4 tensors are now towers 1/2/3."""
    out = tmp_path / "pruned"
    code, stdout, stderr = run_main(capsys, "prune", x5["folder"], "--drop", "convnext-1024", "--out", out,
                                    "--no-verify")
    assert code == 0, stdout + stderr
    src, dst = load_file(str(x5["folder"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    old2 = {k[len(f"{TOWER_PREFIX}2."):]: v for k, v in src.items() if k.startswith(f"{TOWER_PREFIX}2.")}
    new1 = {k[len(f"{TOWER_PREFIX}1."):]: v for k, v in dst.items() if k.startswith(f"{TOWER_PREFIX}1.")}
    assert old2 and sorted(old2) == sorted(new1)
    assert all(torch.equal(old2[k], new1[k]) for k in old2)
    assert not any(".stages." in k or ".stem." in k for k in dst)  # no ConvNeXt key anywhere
    assert not any(k.startswith(f"{TOWER_PREFIX}4.") for k in dst)


def test_prune_keeps_the_chat_template(x5, tmp_path, capsys):
    source = tmp_path / "llama3"
    shutil.copytree(x5["folder"], source)
    record = json.loads((source / "processor_config.json").read_text())
    (source / "processor_config.json").write_text(json.dumps({**record, "template": "llama3"}))
    _, processor, _ = encslim.load_model(str(source))
    assert processor.template == "llama3"
    out = tmp_path / "pruned"
    code, stdout, stderr = run_main(capsys, "prune", source, "--drop", "sam-1024", "--out", out, "--no-verify")
    assert code == 0, stdout + stderr
    _, processor, _ = encslim.load_model(str(out))
    assert processor.template == "llama3"


def test_trainable_parts_name_each_tower(x5):
    model, adapter = x5["model"], x5["adapter"]
    parts = adapter.trainable_parts(model)
    towers = adapter.encoders(model)
    assert sorted(parts.encoders) == sorted(X5)
    for name, prefix in parts.encoders.items():
        assert model.get_submodule(prefix) is towers[name], (name, prefix)


# ------------------------------------------------------------------------------ 4. strict loading
def _edit_weights(folder, edit):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def _assert_one_line_error(code, stdout, stderr, *needles):
    assert code == 2, stdout + stderr
    text = stdout + stderr
    assert "Traceback" not in text
    assert len(stderr.strip().splitlines()) == 1, stderr
    for needle in needles:
        assert needle in text, (needle, text)


def test_renamed_layer_scale_is_refused(x5, tmp_path, capsys):
    folder = tmp_path / "gamma"
    shutil.copytree(x5["folder"], folder)
    old = f"{TOWER_PREFIX}1.vision_tower.stages.2.blocks.1.weight"
    new = old[:-len("weight")] + "gamma"  # as timm names the layer scale

    def rename(state):
        state[new] = state.pop(old)

    _edit_weights(folder, rename)
    _assert_one_line_error(*run_main(capsys, "inspect", folder), old, new)


def test_missing_clip_key_is_refused(x5, tmp_path, capsys):
    folder = tmp_path / "missing"
    shutil.copytree(x5["folder"], folder)
    key = f"{TOWER_PREFIX}0.vision_tower.vision_model.encoder.layers.1.self_attn.k_proj.bias"
    _edit_weights(folder, lambda state: state.pop(key))
    _assert_one_line_error(*run_main(capsys, "inspect", folder), key)


def test_wrong_mm_hidden_size_is_refused(x5, tmp_path, capsys):
    folder = tmp_path / "hidden"
    shutil.copytree(x5["folder"], folder)
    config = _config(folder)
    config["mm_hidden_size"] = 200
    (folder / "config.json").write_text(json.dumps(config))
    code, stdout, stderr = run_main(capsys, "inspect", folder)
    _assert_one_line_error(code, stdout, stderr, "mm_hidden_size", "200", "224")


# --------------------------------------------------------------------------------- 5. detection
def test_llava_llama_config_loads_as_eagle(x5, tmp_path):
    folder = tmp_path / "llava"
    shutil.copytree(x5["folder"], folder)
    config = _config(folder)
    config["model_type"] = "llava_llama"
    config["architectures"] = ["EagleLlamaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    model, processor, adapter = encslim.load_model(str(folder))
    assert adapter.model_type == "eagle_llama"
    assert model.config.tower_names == list(X5)
    torch.testing.assert_close(_logits(model, processor, adapter), x5["logits"], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------- 6. create-tiny
def test_create_tiny_eagle_cli(tmp_path, capsys):
    from encslim.models.families.eagle.towers import tiny_specs, tower_width

    out = tmp_path / "x2"
    code, stdout, stderr = run_main(capsys, "create-tiny", out, "--family", "eagle", "--towers", "clip-448,sam-1024")
    assert code == 0, stdout + stderr
    config = _config(out)
    assert config["mm_vision_tower"] == "clip-448;sam-1024"
    specs = tiny_specs()
    widths = tower_width("clip-448", specs["clip-448"]) + tower_width("sam-1024", specs["sam-1024"])
    assert config["mm_hidden_size"] == widths == 96
    keys = _keys(out)
    assert any(k.startswith(f"{TOWER_PREFIX}1.vision_tower.") for k in keys)
    assert not any(k.startswith(f"{TOWER_PREFIX}2.") for k in keys)
    model, _, adapter = encslim.load_model(str(out))
    assert adapter.model_type == "eagle_llama"
    assert adapter.slot_names(model.config) == ["clip-448", "sam-1024"]


def test_create_tiny_unknown_tower(tmp_path, capsys):
    code, stdout, stderr = run_main(capsys, "create-tiny", tmp_path / "bad", "--family", "eagle",
                                    "--towers", "clip-448,siglip-384")
    _assert_one_line_error(code, stdout, stderr, "siglip-384", *X5)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------ 7. prompt ids
def original_tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN):
    """eagle/mm_utils.tokenizer_image_token, re-derived: chunks split on <image>, tokenized one by one;
    when the first chunk starts with BOS, BOS is kept once and every chunk loses its first token; one
    image_token_index between chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(image_token_index)
        ids.extend(chunk[offset:])
    return ids


def _expand(ids, n):
    out = []
    for i in ids:
        out.extend([i] * n if i == IMAGE_TOKEN else [i])
    return out


def _with_bos(folder):
    """The tiny tokenizer with a BOS-adding post-processor (as Vicuna's Llama tokenizer adds BOS)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    assert tok("hello").input_ids[0] == tok.bos_token_id
    return tok


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
def test_prompt_ids_follow_tokenizer_image_token(x5, bos):
    from encslim.models.families.eagle.processing import EagleProcessor

    processor = x5["processor"]
    if bos:
        processor = EagleProcessor.from_config(_with_bos(x5["folder"]), x5["model"].config)
    tok = processor.tokenizer
    assert processor.template == "vicuna_v1" and processor.num_image_tokens == 1024
    question = "What is written on the sign?"
    prompt = processor.build_prompt(question)
    assert prompt == f"{VICUNA_SYSTEM} USER: <image>\n{question} ASSISTANT:"  # conv_vicuna_v1.get_prompt()
    original = original_tokenizer_image_token(prompt, tok)
    assert original.count(IMAGE_TOKEN) == 1
    assert (original[0] == tok.bos_token_id) == bos
    assert original.count(tok.bos_token_id) == (1 if bos else 0)
    assert processor.prompt_ids(prompt) == _expand(original, 1024)
    two = f"<image>\nfirst {VICUNA_SYSTEM} <image> second"
    assert processor.prompt_ids(two) == _expand(original_tokenizer_image_token(two, tok), 1024)
    text_only = processor.build_prompt(question, with_image=False)
    assert processor.prompt_ids(text_only) == tok(text_only).input_ids
    # prepare_batch LEFT-pads the rows and puts ``<image>\n`` before a prompt lacking it
    batch = x5["adapter"].prepare_batch(processor, [make_image(2), make_image(3)], [prompt, question])
    rows = [_expand(original, 1024), _expand(original_tokenizer_image_token(f"<image>\n{question}", tok), 1024)]
    for row, ids, mask in zip(rows, batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
        assert ids[len(ids) - len(row):] == row
        assert mask == [0] * (len(ids) - len(row)) + [1] * len(row)
