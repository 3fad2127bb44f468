"""The I-MoF family (tsb0601/MMVP) on a tiny checkpoint: keys as MMVP's modules save them, the CLIP/DINOv2
token interleaving of ``prepare_inputs_labels_for_multimodal_withdino`` (re-derived here line by line),
exact tower removal (``prune`` == removal mask), DINOv2 dropped -> a stock ``LlavaForConditionalGeneration``
that transformers alone loads, strict loading, detection, and inspect/eval/rank through the CLI."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import encslim
from encslim.models.registry import adapter_for_config
from encslim.models.families.imof.configuration import IMOF_KEYS, is_imof_config

from ..conftest import make_image, png_base64, run_main, write_tsv

IMAGE_TOKEN = -200
TOWERS = ("clip", "dinov2")
N_TOKENS = 16  # 56 px / patch 14 = 4x4 per tower
QUESTIONS = ["What is shown in the image?", "Which colour is the big shape on the left?"]
MC_HEADER = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]

# ---------------------------------------------------------------------------- expected keys (literal)
# clip_encoder.CLIPVisionTower: ``self.vision_tower = CLIPVisionModel`` (transformers 4.37: ``vision_model.*``).
# dino_encoder.DINOVisionTower: ``self.clip_vision_tower = CLIPVisionModel`` (never run) and
# ``self.vision_tower = torch.hub dinov2_vitl14`` (DinoVisionTransformer: patch_embed.proj, cls_token,
# pos_embed, mask_token, blocks.{i} = NestedTensorBlock(norm1, attn.qkv/proj, ls1.gamma, norm2,
# mlp.fc1/fc2, ls2.gamma), norm; head Identity, no registers). Tiny: CLIP 3 layers, DINOv2 2 blocks.
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
    + [f"vision_model.encoder.layers.{i}.{k}" for i in (0, 1, 2) for k in CLIP_LAYER]
    + ["vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"]
)
DINO_BLOCK = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
              "mlp.fc2.bias", "ls2.gamma"]
DINO_KEYS = (["cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias"]
             + [f"blocks.{i}.{k}" for i in (0, 1) for k in DINO_BLOCK] + ["norm.weight", "norm.bias"])
LLAMA_LAYER = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
               "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
               "input_layernorm.weight", "post_attention_layernorm.weight"]
PROJ = [f"{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]  # mlp2x_gelu: Linear, GELU, Linear
TOP_KEYS = (["model.embed_tokens.weight"] + [f"model.layers.{i}.{k}" for i in (0, 1) for k in LLAMA_LAYER]
            + ["model.norm.weight", "lm_head.weight"]
            + [f"model.mm_projector.{k}" for k in PROJ] + [f"model.dino_mm_projector.{k}" for k in PROJ])
EXPECTED_KEYS = (set(TOP_KEYS) | {f"model.vision_tower.vision_tower.{k}" for k in CLIP_KEYS}
                 | {f"model.dino_tower.clip_vision_tower.{k}" for k in CLIP_KEYS}
                 | {f"model.dino_tower.vision_tower.{k}" for k in DINO_KEYS})
TOWER_KEYS = {"clip": ("model.vision_tower.", "model.mm_projector."),
              "dinov2": ("model.dino_tower.", "model.dino_mm_projector.")}


def _keys(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def _config(folder):
    return json.loads((folder / "config.json").read_text())


def _images():
    return [make_image(0, 40), make_image(1, 48)]


def _batch(adapter, processor, masked=frozenset()):
    prompts = [adapter.build_prompt(processor, q) for q in QUESTIONS]
    return adapter.prepare_batch(processor, _images(), prompts, masked=masked)


def _logits(model, processor, adapter, masked=frozenset(), mask_mode="removal"):
    batch = _batch(adapter, processor, masked if mask_mode == "removal" else frozenset())
    with torch.no_grad():
        return adapter.next_token_logits(model, adapter.encode(model, batch), batch, masked=masked, mask_mode=mask_mode)


def _cli(*args):
    from encslim.cli import main

    try:
        main([str(a) for a in args])
        return 0
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny I-MoF folder, loaded once: folder, model, processor, adapter, batch, features, logits."""
    from encslim.models.families.imof.tiny import create_tiny_imof

    folder = create_tiny_imof(tmp_path_factory.mktemp("imof") / "tiny", seed=0)
    model, processor, adapter = encslim.load_model(str(folder))
    batch = _batch(adapter, processor)
    with torch.no_grad():
        features = adapter.encode(model, batch)
        logits = adapter.next_token_logits(model, features, batch)
    return {"folder": folder, "model": model, "processor": processor, "adapter": adapter, "batch": batch,
            "features": features, "logits": logits}


@pytest.fixture(scope="module")
def pruned(tiny, tmp_path_factory):
    """Factory: ``pruned(tower)`` -> the tiny folder with ``tower`` removed by ``encslim prune`` (cached)."""
    cache = {}

    def make(tower):
        if tower not in cache:
            out = tmp_path_factory.mktemp("pruned") / f"no-{tower}"
            assert _cli("prune", tiny["folder"], "--drop", tower, "--out", out) == 0
            cache[tower] = out
        return cache[tower]

    return make


# ------------------------------------------------------------------------------------------ 1. keys
def test_checkpoint_keys_are_the_original_modules_keys(tiny):
    assert len(CLIP_KEYS) == 55 and len(DINO_KEYS) == 35 and len(TOP_KEYS) == 29
    keys = _keys(tiny["folder"])
    assert sorted(keys - EXPECTED_KEYS) == [] and sorted(EXPECTED_KEYS - keys) == []
    config = _config(tiny["folder"])
    assert config["mm_vision_tower"] == "openai/clip-vit-large-patch14-336"
    assert (config["mm_projector_type"], config["mm_vision_select_layer"], config["mm_vision_select_feature"],
            config["image_aspect_ratio"]) == ("mlp2x_gelu", -2, "patch", "pad")
    assert tiny["adapter"].model_type == "imof_llama"
    assert tiny["adapter"].slot_names(tiny["model"].config) == list(TOWERS)


# ------------------------------------------------------------------------------ 2. interleaving
def original_tokenizer_image_token(prompt, tokenizer):
    """mm_utils.tokenizer_image_token: chunks split on <image>, one -200 between them (BOS kept once)."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN)
        ids.extend(chunk[offset:])
    return ids


def original_withdino_embeds(model, ids, image_features_clip, image_features_dino):
    """``prepare_inputs_labels_for_multimodal_withdino`` for one sample (no labels, no im_start/end):
    text before the placeholder, then ``merged[0::2] = clip; merged[1::2] = dino``, then the rest."""
    embed = model.model.embed_tokens
    cur_input_ids = torch.tensor(ids)
    cur_new_input_embeds = []
    image_token_indices = torch.where(cur_input_ids == IMAGE_TOKEN)[0]
    cur_image_idx = 0
    while image_token_indices.numel() > 0:
        cur_image_features_clip = image_features_clip[cur_image_idx]
        cur_image_features_dino = image_features_dino[cur_image_idx]
        image_token_start = image_token_indices[0]
        cur_new_input_embeds.append(embed(cur_input_ids[:image_token_start]))
        num_patches, clip_dim = cur_image_features_clip.shape
        merged_features = torch.empty(2 * num_patches, clip_dim, dtype=cur_image_features_clip.dtype)
        merged_features[0::2] = cur_image_features_clip
        merged_features[1::2] = cur_image_features_dino
        cur_new_input_embeds.append(merged_features)
        cur_image_idx += 1
        cur_input_ids = cur_input_ids[image_token_start + 1:]
        image_token_indices = torch.where(cur_input_ids == IMAGE_TOKEN)[0]
    if cur_input_ids.numel() > 0:
        cur_new_input_embeds.append(embed(cur_input_ids))
    return torch.cat(cur_new_input_embeds, dim=0)


def test_interleaving_equals_the_original(tiny):
    model, processor, adapter, batch = tiny["model"], tiny["processor"], tiny["adapter"], tiny["batch"]
    features = tiny["features"]
    assert {k: tuple(v.shape) for k, v in features.items()} == {t: (2, N_TOKENS, 32) for t in TOWERS}
    assert batch["pixel_values"].shape == (2, 3, 56, 56)  # one tensor, both towers
    with torch.no_grad():
        # encode_images_withclip / encode_images_withdino: each tower through its own projector
        clip = model.model.mm_projector(model.model.vision_tower(batch["pixel_values"]))
        dino = model.model.dino_mm_projector(model.model.dino_tower(batch["pixel_values"]))
        embeds = adapter.embed(model, features, batch)
        for row, question in enumerate(QUESTIONS):
            ids = original_tokenizer_image_token(adapter.build_prompt(processor, question), processor.tokenizer)
            assert ids.count(IMAGE_TOKEN) == 1
            want = original_withdino_embeds(model, ids, clip[row:row + 1], dino[row:row + 1])
            length = len(ids) - 1 + 2 * N_TOKENS
            assert want.shape[0] == length
            mask = batch["attention_mask"][row].bool()
            assert int(mask.sum()) == length
            torch.testing.assert_close(embeds[row][mask], want, atol=0, rtol=0)
            # and the LLM on the original's (unpadded) sequence gives the adapter's next-token logits
            original = model(inputs_embeds=want[None]).logits[0, -1]
            torch.testing.assert_close(tiny["logits"][row], original, atol=1e-5, rtol=0)
    image = batch["input_ids"] == IMAGE_TOKEN
    assert image.sum(dim=1).tolist() == [2 * N_TOKENS] * 2
    assert not torch.equal(clip, dino)


def test_prompt_and_forward(tiny):
    """Vicuna v1 prompt (LLaVA-1.5); the model's own forward (pixels + ids) equals the split forward."""
    from encslim.models.llava_processing import VICUNA_SYSTEM

    processor, model, adapter, batch = tiny["processor"], tiny["model"], tiny["adapter"], tiny["batch"]
    assert adapter.build_prompt(processor, "Q?") == f"{VICUNA_SYSTEM} USER: <image>\nQ? ASSISTANT:"
    with torch.no_grad():
        full = model(**batch).logits
        split = adapter.decode(model, tiny["features"], batch).logits
    torch.testing.assert_close(full, split, atol=1e-6, rtol=0)


# ------------------------------------------------------------------- 3. removal mask == prune
@pytest.mark.parametrize("tower", TOWERS)
def test_prune_equals_removal_mask(tower, tiny, pruned):
    out = pruned(tower)
    model, processor, adapter = encslim.load_model(str(out))
    assert adapter.model_type == "imof_llama" and adapter.slot_names(model.config) == [t for t in TOWERS if t != tower]
    want = _logits(tiny["model"], tiny["processor"], tiny["adapter"], masked={tower})
    assert (want - tiny["logits"]).abs().max() > 1e-3  # the tower matters, so the check below has teeth
    got = _logits(model, processor, adapter)
    assert (got - want).abs().max() <= 1e-4
    batch = _batch(adapter, processor)
    assert (batch["input_ids"] == IMAGE_TOKEN).sum(dim=1).tolist() == [N_TOKENS] * 2  # its tokens are gone
    # zero mode keeps the tokens (projector of zeros): not the pruned model
    zero = _logits(tiny["model"], tiny["processor"], tiny["adapter"], masked={tower}, mask_mode="zero")
    assert (zero - want).abs().max() > 1e-4
    src = load_file(str(tiny["folder"] / "model.safetensors"))
    dst = load_file(str(out / "model.safetensors"))
    expected = {k: v for k, v in src.items() if not k.startswith(TOWER_KEYS[tower])}
    assert sorted(dst) == sorted(expected)
    assert all(torch.equal(dst[k], v) for k, v in expected.items())
    assert _config(out)["imof_towers"] == [t for t in TOWERS if t != tower]


# ------------------------------------------------------------------ 4. DINOv2 dropped -> stock LLaVA
LOAD_WITHOUT_ENCSLIM = textwrap.dedent("""
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    folder, images, prompts, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    batch = processor(text=prompts, images=[Image.open(p) for p in images], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": json.loads(sys.argv[5])}]}]
    assert processor.apply_chat_template(turn, tokenize=False) == prompts[0], processor.apply_chat_template(turn)
    assert not any(name == "encslim" or name.startswith("encslim.") for name in sys.modules), "encslim imported"
    torch.save({"logits": logits, "input_ids": batch["input_ids"]}, out)
""")


def test_drop_dinov2_exports_stock_llava(tiny, pruned, tmp_path, capsys):
    out = tmp_path / "llava"
    code, stdout, stderr = run_main(capsys, "export", pruned("dinov2"), "--format", "llava", "--out", out)
    assert code == 0, stdout + stderr
    config = _config(out)
    assert config["model_type"] == "llava" and config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["vision_feature_layer"] == -2 and config["vision_feature_select_strategy"] == "default"
    assert config["image_seq_length"] == N_TOKENS
    paths = []
    for i, image in enumerate(_images()):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    processor, adapter = tiny["processor"], tiny["adapter"]
    prompts = [adapter.build_prompt(processor, q) for q in QUESTIONS]
    result = tmp_path / "logits.pt"
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_ENCSLIM)
    run = subprocess.run([sys.executable, str(script), str(out), json.dumps(paths), json.dumps(prompts), str(result),
                          json.dumps(QUESTIONS[0])],
                         capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(str(result))
    # the DINO-masked I-MoF (removal: its tokens leave the sequence), full logits over every position
    batch = _batch(adapter, processor, masked={"dinov2"})
    with torch.no_grad():
        want = adapter.decode(tiny["model"], adapter.encode(tiny["model"], batch), batch, masked={"dinov2"}).logits
    assert got["logits"].shape == want.shape
    image_id = config["image_token_index"]
    torch.testing.assert_close(got["input_ids"] == image_id, batch["input_ids"] == IMAGE_TOKEN, atol=0, rtol=0)
    assert (got["logits"] - want).abs().max() <= 1e-4


def test_llava_needs_dinov2_dropped(tiny, pruned, tmp_path, capsys):
    for source in (tiny["folder"], pruned("clip")):
        code, stdout, stderr = run_main(capsys, "export", source, "--format", "llava", "--out", tmp_path / "x")
        assert code == 2, stdout + stderr
        assert "drop dinov2" in stdout + stderr
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ 5. strict loading
def _edit_weights(folder, edit):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_renamed_key_is_refused(tiny, tmp_path, capsys):
    folder = tmp_path / "renamed"
    shutil.copytree(tiny["folder"], folder)
    old = "model.dino_tower.vision_tower.blocks.1.ls1.gamma"
    new = "model.dino_tower.vision_tower.blocks.1.layer_scale1.lambda1"  # as transformers' Dinov2 names it

    def rename(state):
        state[new] = state.pop(old)

    _edit_weights(folder, rename)
    code, stdout, stderr = run_main(capsys, "inspect", folder)
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert old in stderr and new in stderr


def test_llava15_without_dino_is_not_imof(tiny, tmp_path, capsys):
    folder = tmp_path / "llava15"
    shutil.copytree(tiny["folder"], folder)
    _edit_weights(folder, lambda state: [state.pop(k) for k in list(state) if k.startswith(TOWER_KEYS["dinov2"])])
    code, stdout, stderr = run_main(capsys, "inspect", folder)
    assert code == 2, stdout + stderr
    assert "no DINOv2 tower" in stderr


def test_unknown_tower_name_is_named(tiny, tmp_path, capsys):
    """An unknown name in ``imof_towers`` is a one-line error naming it and the known towers (it used to be
    dropped silently, and strict loading then blamed the tower's keys as unexpected)."""
    folder = tmp_path / "sam"
    shutil.copytree(tiny["folder"], folder)
    config = _config(folder)
    config["imof_towers"] = ["clip", "sam", "dinov2"]
    (folder / "config.json").write_text(json.dumps(config))
    code, stdout, stderr = run_main(capsys, "inspect", folder)
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "unknown tower(s) 'sam'" in stderr and "clip, dinov2" in stderr and "unexpected" not in stderr


# --------------------------------------------------------------------------------- 6. detection
def test_original_llava_config_is_detected(tiny, tmp_path):
    folder = tmp_path / "llava"
    shutil.copytree(tiny["folder"], folder)
    config = _config(folder)
    config["model_type"] = "llava"  # MMVP's LlavaConfig.model_type
    (folder / "config.json").write_text(json.dumps(config))
    model, processor, adapter = encslim.load_model(str(folder))
    assert adapter.model_type == "imof_llama"
    torch.testing.assert_close(_logits(model, processor, adapter), tiny["logits"], atol=1e-6, rtol=0)
    for model_type in ("llava", "llava_llama"):
        assert adapter_for_config({**config, "model_type": model_type}).model_type == "imof_llama"
    # Eagle (';'-joined towers), Cambrian (aux list) and stock transformers LLaVA are not I-MoF
    eagle = {**config, "model_type": "llava_llama", "mm_vision_tower": "clip-448;convnext-1024;",
             "mm_hidden_size": 1024 + 3072}
    assert adapter_for_config(eagle).model_type == "eagle_llama"
    cambrian = {**config, "model_type": "llava_llama", "mm_vision_tower_aux_list": ["siglip", "dino"]}
    stock = {"model_type": "llava", "vision_config": {}, "text_config": {}, **{k: config[k] for k in IMOF_KEYS}}
    assert is_imof_config(config) and not is_imof_config(cambrian) and not is_imof_config(stock)
    assert not is_imof_config(eagle)


# ------------------------------------------------------------------------- 7. inspect, eval, rank
@pytest.fixture(scope="module")
def mc_tsv(tmp_path_factory):
    rows = [[i, png_base64(make_image(100 + i)), f"Which option fits picture {i}?", "cat", "dog", "bird", "fish",
             "ABCD"[(7 * i) % 4], "General"] for i in range(8)]
    return write_tsv(tmp_path_factory.mktemp("mc") / "MC_TINY.tsv", MC_HEADER, rows)


def test_inspect_eval_rank(tiny, pruned, mc_tsv, tmp_path, capsys):
    code, stdout, stderr = run_main(capsys, "inspect", tiny["folder"], "--json")
    assert code == 0, stdout + stderr
    report = json.loads(stdout)
    text = json.dumps(report)
    assert "imof_llama" in text and "dinov2" in text and "token_interleave" in text

    out = tmp_path / "rank"
    code, stdout, stderr = run_main(capsys, "rank", tiny["folder"], "--data", mc_tsv, "--out", out,
                                    "--bootstrap", 20, "--seed", 0)
    assert code == 0, stdout + stderr
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking["slots"] == list(TOWERS) and set(ranking["cur"]) == set(TOWERS)
    rank_acc = {tuple(r["masked"]): r["accuracy"] for r in ranking["subsets"]}

    out = tmp_path / "eval"
    code, stdout, stderr = run_main(capsys, "eval", tiny["folder"], "--data", mc_tsv, "--mask", "dinov2", "--out", out)
    assert code == 0, stdout + stderr
    results = {tuple(r["masked"]): r["accuracy"] for r in json.loads((out / "eval.json").read_text())["results"]}
    assert results[()] == rank_acc[()] and results[("dinov2",)] == rank_acc[("dinov2",)]

    out = tmp_path / "eval-pruned"
    code, stdout, stderr = run_main(capsys, "eval", pruned("dinov2"), "--data", mc_tsv, "--out", out)
    assert code == 0, stdout + stderr
    assert json.loads((out / "eval.json").read_text())["results"][0]["accuracy"] == rank_acc[("dinov2",)]


def test_finetune_and_bench(tiny, pruned, tmp_path, capsys):
    """LoRA on the LLM + both projectors leaves the towers untouched; bench compares full and pruned."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(4):
        make_image(200 + i).save(images / f"{i}.png")
        rows.append(json.dumps({"id": f"t{i}", "image": f"images/{i}.png", "question": "What colour is it?",
                                "answer": "red", "category": "General"}))
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "tuned"
    code, stdout, stderr = run_main(capsys, "finetune", tiny["folder"], "--data", tmp_path / "train.jsonl",
                                    "--max-steps", 2, "--merge", "--out", out)  # one step would be the warm-up step (lr 0)
    assert code == 0, stdout + stderr
    before, after = _keys(tiny["folder"]), _keys(out)
    assert before == after
    src = load_file(str(tiny["folder"] / "model.safetensors"))
    tuned = load_file(str(out / "model.safetensors"))
    changed = {k for k in src if not torch.equal(src[k], tuned[k])}
    assert changed and all(k.startswith(("model.layers.", "model.mm_projector.", "model.dino_mm_projector."))
                           for k in changed)

    report = tmp_path / "bench"
    code, stdout, stderr = run_main(capsys, "bench", tiny["folder"], pruned("dinov2"), "--batch-sizes", 1,
                                    "--max-new-tokens", 2, "--out", report)
    assert code == 0, stdout + stderr
    models = json.loads((report / "bench.json").read_text())["models"]
    assert [m["encoders_run"] for m in models] == [list(TOWERS), ["clip"]]
