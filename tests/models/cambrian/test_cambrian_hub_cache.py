"""Cambrian-1's encoders found offline in the local Hugging Face cache, by the hub ids the original loads;
Cambrian-8B's own config spellings (``llava_llama``); ``create-tiny`` naming its encoder folders.

The cache is a folder laid out as ``huggingface_hub`` writes it (``models--org--name/snapshots/<hash>/`` and
``refs/main``) holding the encoder folders of tests/parity/cambrian/full (made by the original code), set
as ``HF_HUB_CACHE``; nothing is downloaded.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import encslim

from ...conftest import run_main

GOLDEN = Path(__file__).resolve().parents[2] / "parity" / "cambrian" / "full"
HUB = {"siglip": "timm/ViT-SO400M-14-SigLIP-384", "clip": "openai/clip-vit-large-patch14-336",
       "dinov2": "facebook/dinov2-giant", "convnext": "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup"}
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
# Cambrian-8B's config.json spellings (FAMILIES.md "Files as the original trainers wrote them"), Llama sizes tiny
CAMBRIAN_8B = {
    "architectures": ["CambrianLlamaForCausalLM"], "model_type": "llava_llama", "mm_projector_type": "sva",
    "mm_vision_tower_aux_list": ["siglip/CLIP-ViT-SO400M-14-384", "openai/clip-vit-large-patch14-336",
                                 "facebook/dinov2-giant-res378", "clip-convnext-XXL-multi-stage"],
    "mm_vision_tower_aux_token_len_list": [576, 576, 576, 9216], "image_token_len": 576, "query_num_list": [576],
    "num_query_group": 1, "connector_depth": 3, "connector_only": False, "vision_hidden_size": 32,
    "num_of_vision_sampler_layers": 10, "start_of_vision_sampler_layers": 0, "stride_of_vision_sampler_layers": 3,
    "image_position": 91, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
    "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    "mm_patch_merge_type": "flat", "use_mm_proj": True, "tune_mm_mlp_adapter": False,
    "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right", "torch_dtype": "float32",
    "transformers_version": "4.37.0"}


def fake_hub_cache(root, slots=tuple(HUB)):
    """A Hugging Face cache folder serving the golden's encoder folders under the original's hub ids."""
    for slot in slots:
        base = root / f"models--{HUB[slot].replace('/', '--')}"
        shutil.copytree(GOLDEN / "encoders" / slot, base / "snapshots" / SNAPSHOT)
        (base / "refs").mkdir()
        (base / "refs" / "main").write_text(SNAPSHOT)
    return root


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """``HF_HUB_CACHE`` at a fake cache holding all four encoders; ``HF_HOME`` and ``HOME`` at empty folders."""
    cache = fake_hub_cache(tmp_path / "hub")
    for name, value in (("HF_HUB_CACHE", cache), ("HF_HOME", tmp_path / "hf_home"), ("HOME", tmp_path / "home")):
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def cambrian_8b(tmp_path):
    """The golden's model folder with exactly Cambrian-8B's config keys (no encslim key, no unfreeze flag)."""
    folder = tmp_path / "cambrian-8b"
    shutil.copytree(GOLDEN / "model", folder)
    saved = json.loads((folder / "config.json").read_text())
    llama = {k: saved[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                   "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps",
                                   "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
                                   "hidden_act", "initializer_range", "pretraining_tp", "rope_scaling",
                                   "attention_bias", "attention_dropout", "use_cache")}
    (folder / "config.json").write_text(json.dumps({**llama, **CAMBRIAN_8B}, indent=2))
    return folder


def test_hub_ids_are_the_originals():
    from encslim.models.families.cambrian.hub import hub_repo

    assert [hub_repo(k, n) for k, n in zip(HUB, CAMBRIAN_8B["mm_vision_tower_aux_list"])] == list(HUB.values())
    assert hub_repo("dinov2", "facebook/dinov2-large-res518-interp576") == "facebook/dinov2-large"
    assert hub_repo("convnext", "clip-convnext-L-multi-stage") == \
        "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"


def test_inspect_finds_every_encoder_in_the_cache_with_no_flags(hub_env, cambrian_8b, capsys):
    code, out, err = run_main(capsys, "inspect", str(cambrian_8b))
    assert code == 0, err
    for slot in HUB:
        assert slot in out
    from encslim.models.folder import ModelFolder

    config = ModelFolder.open(cambrian_8b).adapter.read_config(cambrian_8b)
    assert config.encoder_paths == {s: str(hub_env / f"models--{HUB[s].replace('/', '--')}" / "snapshots" / SNAPSHOT)
                                    for s in HUB}
    assert {s: config.geometry(s)["width"] for s in HUB} == {"siglip": 32, "clip": 32, "dinov2": 48,
                                                            "convnext": 120}  # from the checkpoint's aux projectors


def test_encoder_flag_still_overrides_the_cache(hub_env, cambrian_8b, tmp_path):
    from encslim.models.folder import ModelFolder

    own = tmp_path / "my_dino"
    shutil.copytree(GOLDEN / "encoders" / "dinov2", own)
    folder = ModelFolder.open(cambrian_8b, encoders={"dinov2": str(own)})
    config = folder.adapter.read_config(cambrian_8b)
    assert config.encoder_paths["dinov2"] == str(own)
    assert config.encoder_paths["clip"].startswith(str(hub_env))


def test_a_missing_encoder_names_what_was_searched_and_the_fix(tmp_path, monkeypatch, cambrian_8b, capsys):
    cache = fake_hub_cache(tmp_path / "hub", ("siglip", "clip", "dinov2"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    code, out, err = run_main(capsys, "inspect", str(cambrian_8b))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "does not hold convnext" in err
    assert "clip-convnext-XXL-multi-stage -> hub id laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup" in err
    assert str(cache / "models--laion--CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup") in err
    assert str(tmp_path / "hf_home" / "hub" / "models--laion--CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup") in err
    assert "huggingface-cli download" in err and "--encoder convnext=PATH" in err
    assert "siglip" not in err.split("does not hold")[1].split(":")[0]


def test_cambrian_8b_spelling_loads_and_runs_as_the_original(hub_env, cambrian_8b):
    """``llava_llama`` with Cambrian-8B's keys and the encoders from the cache: the original's logits."""
    from PIL import Image
    from safetensors import safe_open

    model, processor, adapter = encslim.load_model(str(cambrian_8b))
    config = model.config
    assert config.sampler_layer_indices == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert config.window_sides(576) == [1, 1, 1, 4] and config.image_position == 91
    with safe_open(str(GOLDEN / "golden.safetensors"), framework="pt") as handle:
        prompt = handle.metadata()["prompt"]
    golden = load_file(str(GOLDEN / "golden.safetensors"))
    image = Image.open(GOLDEN / "image.png").convert("RGB")
    batch = adapter.prepare_batch(processor, [image], [prompt])
    with torch.no_grad():
        embeds = adapter.embed(model, adapter.encode(model, batch), batch)
        logits = adapter.lm_forward(model, inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    assert (logits - golden["logits"]).abs().max().item() < 1e-4


def test_create_tiny_names_its_encoder_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    out = tmp_path / "tiny"
    code, stdout, err = run_main(capsys, "create-tiny", "--family", "cambrian", str(out))
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())["encslim_encoder_paths"]
    assert saved == {s: str((out / "encoders" / s).resolve()) for s in ("siglip", "clip", "dinov2", "convnext")}
    code, stdout, err = run_main(capsys, "inspect", str(out))
    assert code == 0, err
