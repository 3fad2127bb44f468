"""Eagle v1 X5 against NVlabs/EAGLE's ORIGINAL code (commit fef95f1, transformers 4.44.2), as saved there.

``x5/`` was made by ``make_goldens.py`` beside this file in a venv with EAGLE's pins (README.md here):
a small random Eagle-X5 built with the original classes and saved by the original
``save_pretrained``, plus the original's outputs on a 300x200 image. CI only reads it: the folder is
loaded AS SAVED with ``encslim.load_model`` and every stage is compared within 1e-4 (fp32): the
preprocessed pixels, each tower's 32x32 features, the logits of the full model and of every
single-tower zero mask (the paper's mask).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ..conftest import encode_golden_image, read_golden

HERE = Path(__file__).parent / "x5"
ATOL = 1e-4
TOWERS = ("clip-448", "convnext-1024", "sam-1024", "det-1024", "pix2struct-1024")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def golden():
    return read_golden(HERE / "golden.safetensors")


@pytest.fixture(scope="module")
def loaded():
    import encslim

    return encslim.load_model(str(HERE / "model"))


@pytest.fixture(scope="module")
def run(golden, loaded):
    """encslim's batch (prepare_batch on the golden image and prompt) and its per-tower features."""
    return encode_golden_image(loaded, *golden)


def golden_pixels(tensors):
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (tensors["pixels_uint8"].float() / 255 - mean) / std


def test_folder_is_the_original_save(golden):
    """What the test reads is what 4.44's save_pretrained wrote for the original class."""
    config = json.loads((HERE / "model" / "config.json").read_text())
    assert config["architectures"] == ["EagleLlamaForCausalLM"] and config["model_type"] == "eagle_llama"
    assert config["transformers_version"] == "4.44.2" == golden[1]["transformers"]
    assert config["mm_vision_tower"] == ";".join(TOWERS) and config["mm_hidden_size"] == 32 + 64 + 1024 + 32 + 32
    assert golden[1]["eagle_commit"] == "fef95f103b5e9899acbbe2c237e5b99147ab7e8e"
    with safe_open(str(HERE / "model" / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    eva = "model.vision_tower.vision_towers.3.vision_tower."  # the trainer's copies keep every RoPE alias
    assert {eva + "rope_win.freqs_cos", eva + "rope_glb.freqs_cos", eva + "blocks.0.attn.rope.freqs_cos",
            eva + "blocks.2.attn.rope.freqs_cos"} <= keys


def test_pixels_equal_the_original_processor(golden, run):
    tensors, _ = golden
    pixels = run[0]["pixel_values"]
    assert pixels.shape == (1, 3, 1024, 1024)  # 300x200 padded to 300x300, then 1024 px
    assert (pixels[..., ::8, ::8] - tensors["pixel_values_every_8th"]).abs().max().item() < ATOL
    assert (pixels - golden_pixels(tensors)).abs().max().item() < ATOL


def test_prompt_ids_equal_the_original_tokenizer_image_token(golden, loaded, run):
    tensors, meta = golden
    model, processor, adapter = loaded
    original = tensors["input_ids"][0].tolist()
    at = original.index(-200)
    expected = original[:at] + [-200] * 1024 + original[at + 1:]  # encslim expands the placeholder run
    assert run[0]["input_ids"][0].tolist() == expected
    processor.template = "vicuna_v1"
    assert adapter.build_prompt(processor, meta["question"]) == meta["prompt"]


@pytest.mark.parametrize("tower", TOWERS)
def test_tower_features_equal_the_original(golden, loaded, run, tower):
    tensors, _ = golden
    model, _, adapter = loaded
    with torch.no_grad():  # on the original's own pixels, so each tower is checked alone
        own = adapter.encode(model, {"pixel_values": golden_pixels(tensors)}, slots=[tower])[tower]
    expected = tensors[f"features.{tower}"]
    assert own.shape == expected.shape and own.shape[1] == 1024  # the 32x32 grid
    assert (own - expected).abs().max().item() < ATOL
    assert (run[1][tower] - expected).abs().max().item() < ATOL  # from encslim's own pixels


def test_full_model_logits_equal_the_original(golden, loaded, run):
    tensors, _ = golden
    model, _, adapter = loaded
    batch, features = run
    with torch.no_grad():
        logits = adapter.decode(model, features, batch).logits
        last = adapter.next_token_logits(model, features, batch)
    assert logits.shape == tensors["logits"].shape
    assert (logits - tensors["logits"]).abs().max().item() < ATOL
    assert (last - tensors["logits"][:, -1]).abs().max().item() < ATOL


@pytest.mark.parametrize("tower", TOWERS)
def test_zero_mask_logits_equal_the_original(golden, loaded, run, tower):
    tensors, meta = golden
    model, _, adapter = loaded
    batch, features = run
    expected = tensors[f"logits_zero.{tower}"]
    with torch.no_grad():
        logits = adapter.decode(model, features, batch, masked={tower}, mask_mode="zero").logits
        last = adapter.next_token_logits(model, features, batch, masked={tower}, mask_mode="zero")
    after = logits[:, int(meta["image_end"]):]
    assert after.shape == expected.shape
    assert (after - expected).abs().max().item() < ATOL
    assert (last - expected[:, -1]).abs().max().item() < ATOL
    # the mask changes the answer's logits: the golden is no copy of the full model's
    assert (expected[:, -1] - tensors["logits"][:, -1]).abs().max().item() > 100 * ATOL
