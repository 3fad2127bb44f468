"""The Eagle2 family (``eagle_chat``, MOB ConvNeXt + SigLIP, class A2) on a tiny seeded checkpoint: keys
as NVlabs' Eagle2 modules save them, the pixel shuffle and concat order of ``extract_feature``
re-derived independently, exact tower removal (pruned == zero mask, the zero block's channel
positions), strict loading, and the stage CLIs (inspect/eval/rank/prune/bench/finetune)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import encslim
from encslim.models.families.eagle2.modeling import pixel_shuffle
from encslim.models.families.eagle2.tiny import _create

from ..conftest import make_image, png_base64, run_main, write_jsonl, write_tsv

P = "vision_model.vision_model.vision_towers."
QUESTIONS = ["What is shown in the image?", "Which colour is the big shape on the left?"]
TOWERS = ("siglip", "convnext")
TINY = {"siglip": {"dim": 16, "grid": 8}, "convnext": {"dim": 64, "grid": 4}}

# ------------------------------------------------------------------------ expected keys (literal)
# vision_path "MOB:palisiglip;convnext-1024" -> vision_towers.0 = SiglipVisionTower, .1 = ConvNextVisionTower.
# SiglipVisionTower.vision_tower = SiglipVisionModel (transformers 4.37: everything under vision_model.;
# position_ids non-persistent; the pooling head ``head.*`` is built and saved though never used).
SIGLIP_LAYER = ["layer_norm1.bias", "layer_norm1.weight", "layer_norm2.bias", "layer_norm2.weight", "mlp.fc1.bias",
                "mlp.fc1.weight", "mlp.fc2.bias", "mlp.fc2.weight", "self_attn.k_proj.bias", "self_attn.k_proj.weight",
                "self_attn.out_proj.bias", "self_attn.out_proj.weight", "self_attn.q_proj.bias",
                "self_attn.q_proj.weight", "self_attn.v_proj.bias", "self_attn.v_proj.weight"]
SIGLIP_KEYS = (
    ["embeddings.patch_embedding.bias", "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight"]
    + [f"encoder.layers.{i}.{k}" for i in (0, 1) for k in SIGLIP_LAYER]
    + ["head.attention.in_proj_bias", "head.attention.in_proj_weight", "head.attention.out_proj.bias",
       "head.attention.out_proj.weight", "head.layernorm.bias", "head.layernorm.weight", "head.mlp.fc1.bias",
       "head.mlp.fc1.weight", "head.mlp.fc2.bias", "head.mlp.fc2.weight", "head.probe",
       "post_layernorm.bias", "post_layernorm.weight"]
)
# ConvNextVisionTower.vision_tower = convnext_xxlarge (Eagle's timm copy): stem.0/1, stages.{i}
# (downsample LayerNorm2d + Conv2d from stage 1; blocks.{j}: conv_dw, norm, mlp.fc1/fc2, layer scale
# ``weight`` where timm says ``gamma``), head.norm/fc. Tiny depths [1, 1, 2, 1].
BLOCK = ["conv_dw.bias", "conv_dw.weight", "mlp.fc1.bias", "mlp.fc1.weight", "mlp.fc2.bias", "mlp.fc2.weight",
         "norm.bias", "norm.weight", "weight"]
DOWN = ["downsample.0.bias", "downsample.0.weight", "downsample.1.bias", "downsample.1.weight"]
CONVNEXT_KEYS = (
    ["stem.0.bias", "stem.0.weight", "stem.1.bias", "stem.1.weight", "head.fc.bias", "head.fc.weight",
     "head.norm.bias", "head.norm.weight"]
    + [f"stages.0.blocks.0.{k}" for k in BLOCK]
    + [f"stages.{s}.{k}" for s in (1, 2, 3) for k in DOWN]
    + [f"stages.1.blocks.0.{k}" for k in BLOCK] + [f"stages.2.blocks.{j}.{k}" for j in (0, 1) for k in BLOCK]
    + [f"stages.3.blocks.0.{k}" for k in BLOCK]
)
# Qwen2ForCausalLM as language_model (q/k/v with bias, o_proj without; untied lm_head) + mlp1 (LayerNorm,
# Linear, GELU, Linear: indices 0, 1, 3).
QWEN_LAYER = ["input_layernorm.weight", "mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
              "post_attention_layernorm.weight", "self_attn.k_proj.bias", "self_attn.k_proj.weight",
              "self_attn.o_proj.weight", "self_attn.q_proj.bias", "self_attn.q_proj.weight", "self_attn.v_proj.bias",
              "self_attn.v_proj.weight"]
TOP_KEYS = (
    ["language_model.model.embed_tokens.weight", "language_model.model.norm.weight", "language_model.lm_head.weight"]
    + [f"language_model.model.layers.{i}.{k}" for i in (0, 1) for k in QWEN_LAYER]
    + ["mlp1.0.bias", "mlp1.0.weight", "mlp1.1.bias", "mlp1.1.weight", "mlp1.3.bias", "mlp1.3.weight"]
)
EXPECTED_KEYS = ({f"{P}0.vision_tower.vision_model.{k}" for k in SIGLIP_KEYS}
                 | {f"{P}1.vision_tower.{k}" for k in CONVNEXT_KEYS} | set(TOP_KEYS))


def _keys(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def _batch(adapter, processor):
    images = [make_image(0, 40), make_image(1, 52)]
    return adapter.prepare_batch(processor, images, [adapter.build_prompt(processor, q) for q in QUESTIONS])


def _mlp1_input(model, adapter, batch):
    """The tensor ``mlp1.0`` (the LayerNorm) receives, and the next-token logits."""
    seen = {}

    def hook(module, args, output):  # returns None: the output stays
        seen.setdefault("x", args[0].detach())

    handle = model.mlp1[0].register_forward_hook(hook)
    with torch.no_grad():
        logits = adapter.next_token_logits(model, adapter.encode(model, batch), batch)
    handle.remove()
    return seen["x"], logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eagle2") / "tiny"
    _create(folder, seed=0)
    model, processor, adapter = encslim.load_model(str(folder))
    batch = _batch(adapter, processor)
    with torch.no_grad():
        features = adapter.encode(model, batch)
        logits = adapter.next_token_logits(model, features, batch)
    return {"folder": folder, "model": model, "processor": processor, "adapter": adapter, "batch": batch,
            "features": features, "logits": logits}


@pytest.fixture(scope="module")
def pruned(tiny, tmp_path_factory):
    cache = {}

    def make(tower):
        if tower not in cache:
            out = tmp_path_factory.mktemp("pruned") / f"no-{tower}"
            from encslim.cli import main

            try:
                main(["prune", str(tiny["folder"]), "--drop", tower, "--out", str(out)])
            except SystemExit as exit_:
                assert exit_.code in (0, None)
            cache[tower] = out
        return cache[tower]

    return make


# ------------------------------------------------------------------------------------------ 1. keys
def test_checkpoint_keys_are_the_original_modules_keys(tiny):
    assert len(SIGLIP_KEYS) == 48 and len(CONVNEXT_KEYS) == 65 and len(TOP_KEYS) == 33
    assert _keys(tiny["folder"]) == EXPECTED_KEYS
    config = json.loads((tiny["folder"] / "config.json").read_text())
    assert config["model_type"] == "eagle_chat" and config["downsample_ratio"] == 0.5
    assert config["vision_config"]["model_type"] == "MOB"
    assert config["vision_config"]["moe_version_type"] == "convnext_512_siglip_448"
    assert config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert "encslim_removed_dims" not in config and "img_context_token_id" not in config


# ------------------------------------------------------------------- 2. shuffle and concat order
def _shuffle_by_hand(x, side):
    """``pixel_shuffle(scale 0.5)`` re-derived: token (R, C) of the half grid holds, in channel block
    2*dr + dc, the input token at row 2R+dr, column 2C+dc."""
    b, n, d = x.shape
    grid = x.reshape(b, side, side, d)
    half = side // 2
    out = torch.empty(b, half * half, 4 * d)
    for r in range(half):
        for c in range(half):
            for dr in (0, 1):
                for dc in (0, 1):
                    q = 2 * dr + dc
                    out[:, r * half + c, q * d:(q + 1) * d] = grid[:, 2 * r + dr, 2 * c + dc]
    return out


def test_pixel_shuffle_matches_a_hand_derivation():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 5)
    assert torch.equal(pixel_shuffle(x, 0.5), _shuffle_by_hand(x, 8))


def test_concat_is_shuffled_siglip_then_convnext(tiny):
    model, batch = tiny["model"], tiny["batch"]
    towers = model.vision_model.vision_model
    pixels = batch["pixel_values"]
    with torch.no_grad():
        siglip = towers.vision_towers[0](pixels)  # 112 px tile: no resize
        resized = torch.nn.functional.interpolate(pixels, size=(128, 128), mode="bilinear", align_corners=True)
        convnext = towers.vision_towers[1](resized)
        assert siglip.shape == (2, 64, 16) and convnext.shape == (2, 16, 64)
        want = model.mlp1(torch.cat([_shuffle_by_hand(siglip, 8), convnext], dim=-1))
        got = model.extract_feature(pixels)
    assert (got - want).abs().max() <= 1e-5
    x, _ = _mlp1_input(model, tiny["adapter"], batch)
    assert x.shape == (2, 16, 128)
    assert torch.allclose(x[..., :64], _shuffle_by_hand(siglip, 8), atol=1e-6)
    assert torch.allclose(x[..., 64:], convnext, atol=1e-6)


# ----------------------------------------------------------------- 3. removal == zero mask (exact)
@pytest.mark.parametrize("tower", TOWERS)
def test_prune_equals_zero_mask(tower, tiny, pruned):
    out = pruned(tower)
    model, processor, adapter = encslim.load_model(str(out))
    assert adapter.model_type == "eagle_chat" and model.config.slot_names == [t for t in TOWERS if t != tower]
    with torch.no_grad():
        want = tiny["adapter"].next_token_logits(tiny["model"], tiny["features"], tiny["batch"], masked={tower},
                                                 mask_mode="zero")
    assert (want - tiny["logits"]).abs().max() > 1e-3  # the tower matters, so the check has teeth
    x, got = _mlp1_input(model, adapter, _batch(adapter, processor))
    assert (got - want).abs().max() <= 1e-4
    # the zero block sits where the tower's channels were: SigLIP's shuffled 4 x 16 first, ConvNeXt's 64 after
    zero, kept = (slice(0, 64), slice(64, 128)) if tower == "siglip" else (slice(64, 128), slice(0, 64))
    assert x.shape[-1] == 128 and torch.equal(x[..., zero], torch.zeros_like(x[..., zero]))
    assert x[..., kept].abs().max() > 0
    config = json.loads((out / "config.json").read_text())
    assert config["encslim_removed_dims"] == {tower: 64}
    kept_name = "convnext-1024" if tower == "siglip" else "palisiglip"
    assert config["vision_config"]["vision_path"] == f"MOB:{kept_name}"
    src, dst = load_file(str(tiny["folder"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    gone = f"{P}{TOWERS.index(tower)}."
    expected = {}
    for key, value in src.items():
        if key.startswith(gone):
            continue
        if tower == "siglip" and key.startswith(f"{P}1."):
            key = f"{P}0." + key[len(f"{P}1."):]
        expected[key] = value
    assert sorted(dst) == sorted(expected) and all(torch.equal(dst[k], v) for k, v in expected.items())


def test_inspect_reports_both_removals_exact(tiny):
    from encslim.models.inspect import inspect_model

    report = inspect_model(str(tiny["folder"]))
    slots = {s["name"]: s for s in report["slots"]}
    assert sorted(slots) == sorted(TOWERS) and all(s["removal_exact"] for s in slots.values())
    assert slots["siglip"]["feature_shape"] == [16, 64] and slots["convnext"]["feature_shape"] == [16, 64]


# ---------------------------------------------------------------------------- 4. strict loading
def test_renamed_key_is_refused(tiny, tmp_path, capsys):
    folder = tmp_path / "gamma"
    shutil.copytree(tiny["folder"], folder)
    old = f"{P}1.vision_tower.stages.2.blocks.1.weight"
    new = old[:-len("weight")] + "gamma"  # timm's name of the layer scale
    state = load_file(str(folder / "model.safetensors"))
    state[new] = state.pop(old)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    code, stdout, stderr = run_main(capsys, "inspect", folder)
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr and old in stdout + stderr and new in stdout + stderr


# ------------------------------------------------------------------------------------- 5. stages
@pytest.fixture(scope="module")
def mc_tsv(tmp_path_factory):
    header = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]
    rows = [[i, png_base64(make_image(100 + i)), f"Which option fits picture {i}?", "cat", "dog", "bird", "fish",
             "ABCD"[(7 * i) % 4], ["General", "OCR"][i % 2]] for i in range(8)]
    return write_tsv(tmp_path_factory.mktemp("mc") / "MC_TINY.tsv", header, rows)


def test_stage_clis_run(tiny, pruned, mc_tsv, tmp_path, capsys):
    folder = tiny["folder"]
    code, stdout, stderr = run_main(capsys, "inspect", folder)
    assert code == 0 and "A2" in stdout, stdout + stderr
    code, stdout, stderr = run_main(capsys, "eval", folder, "--data", mc_tsv, "--mask", "siglip",
                                    "--out", tmp_path / "eval")
    assert code == 0, stdout + stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [r["masked"] for r in report["results"]] == [[], ["siglip"]]
    code, stdout, stderr = run_main(capsys, "rank", folder, "--data", mc_tsv, "--out", tmp_path / "rank",
                                    "--bootstrap", 20, "--seed", 0)
    assert code == 0, stdout + stderr
    assert json.loads((tmp_path / "rank" / "ranking.json").read_text())["slots"] == list(TOWERS)
    code, stdout, stderr = run_main(capsys, "bench", folder, pruned("convnext"), "--out", tmp_path / "bench",
                                    "--batch-sizes", 1, "--max-new-tokens", 2, "--min-iters", 1, "--min-seconds", 0,
                                    "--warmup", 0, "--no-memory", "--device", "cpu")
    assert code == 0, stdout + stderr


def test_finetune_lora_one_step(tiny, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    items = []
    for i in range(4):
        make_image(200 + i, 48).save(tmp_path / "images" / f"{i}.png")
        items.append({"id": f"t{i}", "image": f"images/{i}.png", "question": "What colour is the picture?",
                      "answer": ["red", "blue"][i % 2], "category": "General"})
    data = write_jsonl(tmp_path / "train.jsonl", items)
    out = tmp_path / "lora"
    code, stdout, stderr = run_main(capsys, "finetune", tiny["folder"], "--data", data, "--out", out, "--max-steps", 1,
                                    "--batch-size", 2, "--seed", 0)
    assert code == 0, stdout + stderr
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["steps"] == 1 and summary["parts"]["modules_to_save"] == ["mlp1"]
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any(".lora_" in k and "language_model.model.layers." in k for k in saved)
    assert not any("vision_towers" in k for k in saved)


# ------------------------------------------------------------------------------------------ dynamic tiles
def _image(seed, width, height):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 255, (height, width, 3), dtype=np.uint8))


def test_800x600_gives_the_originals_tile_counts():
    """Eagle2's find_closest_aspect_ratio (area-weighted): 3x2 grid + thumbnail at max 6, 4x3 + thumbnail at 12."""
    from encslim.models.families.eagle2.processing import count_tiles, split_tiles, tile_grid

    assert tile_grid(800, 600, 448, 1, 6) == (3, 2) and count_tiles(800, 600, 448, 1, 6) == 7
    assert tile_grid(800, 600, 448, 1, 12) == (4, 3) and count_tiles(800, 600, 448, 1, 12) == 13
    assert count_tiles(448, 448, 448, 1, 12) == 1  # one tile: no thumbnail
    assert tile_grid(1000, 1000, 448, 1, 12) == (2, 2)  # a large square is tiled too (the area term)
    tiles = split_tiles(_image(0, 800, 600), 448, 1, 6)
    assert [t.size for t in tiles] == [(448, 448)] * 7


def test_processor_tiles_and_expands_by_the_config(tiny):
    processor, adapter = tiny["processor"], tiny["adapter"]
    assert (processor.dynamic, processor.thumbnail, processor.max_tiles) == (True, True, 12)
    wide, square = _image(1, 200, 150), _image(2, 40, 40)  # tile 112: 4x3 + thumbnail; one tile
    batch = adapter.prepare_batch(processor, [wide, square], [adapter.build_prompt(processor, q) for q in QUESTIONS])
    assert batch["num_tiles"].tolist() == [13, 1] and tuple(batch["pixel_values"].shape) == (14, 3, 112, 112)
    context = adapter.image_token_id(tiny["model"].config)
    assert (batch["input_ids"] == context).sum(dim=1).tolist() == [13 * 16, 16]
    # the thumbnail (last tile of the wide image) is the whole image at 112 px, as one untiled view
    torch.testing.assert_close(batch["pixel_values"][12], processor.pixel_values([wide], tiled=False)[0])


def test_a_batch_of_different_tile_counts_equals_each_image_alone(tiny):
    model, processor, adapter = tiny["model"], tiny["processor"], tiny["adapter"]
    images = [_image(3, 200, 150), _image(4, 40, 40), _image(5, 90, 200)]
    prompts = [adapter.build_prompt(processor, q) for q in QUESTIONS + ["Why?"]]
    batch = adapter.prepare_batch(processor, images, prompts)
    with torch.no_grad():
        together = adapter.next_token_logits(model, adapter.encode(model, batch), batch)
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            alone = adapter.prepare_batch(processor, [image], [prompt])
            logits = adapter.next_token_logits(model, adapter.encode(model, alone), alone)
            assert (logits[0] - together[i]).abs().max().item() < 1e-5
        # the original's forward (all tiles concatenated, every <IMG_CONTEXT> replaced in order) agrees
        full = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                     attention_mask=batch["attention_mask"]).logits
        split = adapter.decode(model, adapter.encode(model, batch), batch).logits
    assert (full - split).abs().max().item() < 1e-5


def test_tiles_round_trip_through_the_feature_store(tiny):
    """Features kept per sample (different lengths) and text built from the images' sizes give the pixel
    path's logits; evaluate() with the store equals evaluate() without any cache, in every mask mode."""
    from encslim.bench.evaluate import EvalSettings, evaluate
    from encslim.bench.features import FeatureStore, mean_features
    from encslim.data.samples import Sample

    model, processor, adapter = tiny["model"], tiny["processor"], tiny["adapter"]
    sizes = [(200, 150), (40, 40), (90, 200), (160, 60), (48, 48)]
    samples = [Sample(id=f"s{i}", question="Which option?", answers=["A"], image=_image(10 + i, *size),
                      options={"A": "red", "B": "blue"}, metric="mcq", dataset="t") for i, size in enumerate(sizes)]
    assert [processor.num_tiles(s.image) for s in samples] == [13, 1, 3, 11, 1]
    values = mean_features(model, processor, adapter, samples, batch_size=3)
    for mode in ("removal", "zero", "mean"):
        masks = [frozenset(), frozenset({"siglip"})] + ([frozenset({"siglip", "convnext"})] if mode != "removal" else [])
        kwargs = dict(settings=EvalSettings(mask_mode=mode, batch_size=2, max_new_tokens=2,
                                             mask_values=values if mode == "mean" else None))
        store = FeatureStore()
        loaded = (model, processor, adapter)
        stored = [evaluate(loaded, samples, mask_sets=[m], features=store, **kwargs) for m in masks]
        assert len(store) == len(samples)
        for masked, result in zip(masks, stored):
            plain = evaluate(loaded, samples, mask_sets=[masked], feature_cache=False, **kwargs)
            assert plain.predictions[masked] == result.predictions[masked]
    # the mean counts each image's own tokens only (not the padding after a 1-tile image's row)
    batch = adapter.prepare_batch(processor, [s.image for s in samples], ["<image>"] * len(samples))
    with torch.no_grad():
        features = adapter.encode(model, batch)
    lengths = [processor.num_tiles(s.image) * 16 for s in samples]
    for slot, value in features.items():
        mean = torch.cat([row[:n] for row, n in zip(value, lengths)]).double().mean(dim=0).float()
        torch.testing.assert_close(values[slot], mean, atol=1e-5, rtol=0)


def test_cached_features_and_image_sized_text_equal_the_pixel_path(tiny):
    from encslim.bench.features import FeatureStore

    model, processor, adapter = tiny["model"], tiny["processor"], tiny["adapter"]
    images = [_image(20, 200, 150), _image(21, 40, 40)]
    prompts = [adapter.build_prompt(processor, q) for q in QUESTIONS]
    store = FeatureStore()
    with torch.no_grad():
        for key, image, prompt in zip("ab", images, prompts):  # stored one at a time: rows of 208 and 16 tokens
            store.batch([key], ["siglip", "convnext"], lambda rows, slots: adapter.encode(
                model, adapter.prepare_batch(processor, [image], [prompt]), slots), model.device)
        features = store.batch(["b", "a"], ["siglip", "convnext"], None, model.device)
        assert tuple(features["siglip"].shape[:2]) == (2, 13 * 16)
        text = adapter.image_text_inputs(processor, images[::-1], prompts[::-1])
        cached = adapter.next_token_logits(model, features, text)
        pixels = adapter.prepare_batch(processor, images[::-1], prompts[::-1])
        direct = adapter.next_token_logits(model, adapter.encode(model, pixels), pixels)
    assert (cached - direct).abs().max().item() < 1e-5


def test_max_tiles_override_in_processor_config(tiny, tmp_path):
    folder = tmp_path / "max2"
    shutil.copytree(tiny["folder"], folder)
    config_file = folder / "processor_config.json"
    data = json.loads(config_file.read_text())
    assert data["max_tiles"] == 12 and data["dynamic"] is True
    config_file.write_text(json.dumps({**data, "max_tiles": 2}))
    _, processor, _ = encslim.load_model(str(folder))
    assert processor.max_tiles == 2 and processor.num_tiles(_image(0, 200, 150)) == 3  # 2x1 + thumbnail
    from encslim.errors import ConfigError

    with pytest.raises(ConfigError, match="max tiles 0 must be"):
        processor.set_max_tiles(0)
