"""Eagle2 (MOB: SigLIP-448 + ConvNeXt-512, Qwen2) against its ORIGINAL remote code (transformers 4.37.2), as saved.

``mob/`` was made by ``make_model_golden.py`` beside this file in a venv with the original's pins
(README.md here): a small random Eagle2 built with the original ``Eagle2ChatModel`` and saved by its
``save_pretrained``, plus the original's outputs on the 7 tiles of the 800x600 image ``tiles/`` holds.
CI only reads it: the folder is loaded AS SAVED with ``encslim.load_model`` and compared within 1e-4
(fp32): the tiles, the prompt ids, each tower's output, the logits of the full model and of each
single-tower zero mask. A pruned folder computes the original's zero mask, and the original loader
refuses it (recorded in ``mob/original_loader.json`` by the generator's ``load``).
"""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ...conftest import run_main
from ..conftest import read_golden

HERE = Path(__file__).parent
MOB = HERE / "mob"
ATOL = 1e-4
SLOTS = ("siglip", "convnext")
ORIGINAL_NAME = {"siglip": "palisiglip", "convnext": "convnext-1024"}


@pytest.fixture(scope="module")
def golden():
    return read_golden(MOB / "golden.safetensors")


@pytest.fixture(scope="module")
def loaded():
    import encslim

    return encslim.load_model(str(MOB / "model"))


@pytest.fixture(scope="module")
def run(golden, loaded):
    """encslim's batch for the 800x600 image and the golden's prompt, and its features."""
    model, processor, adapter = loaded
    image = Image.open(HERE / "tiles" / "image_800x600.png")
    batch = adapter.prepare_batch(processor, [image], [golden[1]["prompt"]])
    with torch.no_grad():
        return batch, adapter.encode(model, batch)


@pytest.fixture(scope="module")
def original_pixels():
    """The original's 7 tiles (``tiles/``: ``dynamic_preprocess``), normalised as ``build_transform`` does."""
    from safetensors.torch import load_file

    return (load_file(str(HERE / "tiles" / "golden.safetensors"))["tiles_max6"].float() / 255 - 0.5) / 0.5


def _logits(loaded, golden, run, **mask):
    model, _, adapter = loaded
    batch, features = run
    with torch.no_grad():
        return adapter.decode(model, features, batch, **mask).logits[:, golden[0]["logit_positions"]]


def test_folder_is_the_original_save(golden):
    """What the test reads is what the original's save_pretrained wrote: no encslim key, ConvNeXt shrunk."""
    text = (MOB / "model" / "config.json").read_text()
    config = json.loads(text)
    assert "encslim" not in text
    assert config["model_type"] == "eagle_chat" and config["architectures"] == ["Eagle2ChatModel"]
    vision = config["vision_config"]
    assert vision["model_type"] == "MOB" and vision["moe_version_type"] == "convnext_512_siglip_448"
    assert vision["vision_path"] == "MOB:convnext-1024;palisiglip" and vision["convnext_img_size"] == 512
    assert config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"] and config["downsample_ratio"] == 0.5
    assert golden[1]["transformers"] == "4.37.2" and golden[1]["tiles"] == "7"
    assert golden[1]["eagle_commit"] == "783f656d127ee498137b5ff52603ce36c292d317"


def test_convnext_sizes_come_from_the_headers(loaded):
    """The original config never records ConvNeXt's sizes (load_model builds xxlarge): encslim reads them."""
    model = loaded[0]
    assert model.config.convnext_spec()["dims"] == [8, 16, 32, 64]
    assert model.config.convnext_spec()["depths"] == [1, 1, 2, 1]
    assert model.config.fusion_layout() == [("siglip", 0, 128, False), ("convnext", 128, 192, False)]


def test_tiles_equal_the_original(run, original_pixels):
    batch = run[0]
    assert batch["num_tiles"].tolist() == [7]
    assert batch["pixel_values"].shape == original_pixels.shape == (7, 3, 448, 448)
    assert (batch["pixel_values"] - original_pixels).abs().max().item() < ATOL


def test_prompt_ids_equal_the_originals_chat(golden, loaded, run):
    tensors, meta = golden
    _, processor, adapter = loaded
    assert adapter.build_prompt(processor, meta["question"]) == meta["prompt"]
    assert run[0]["input_ids"].tolist() == tensors["input_ids"].tolist()
    context = processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert int((tensors["input_ids"] == context).sum()) == 7 * 256


@pytest.mark.parametrize("slot", SLOTS)
def test_tower_outputs_equal_the_original(golden, loaded, original_pixels, slot):
    model = loaded[0]
    with torch.no_grad():
        own = model.towers.tower_output(slot, original_pixels)
    expected = golden[0][f"features.{slot}"]
    assert own.shape == expected.shape == ((7, 1024, 32) if slot == "siglip" else (7, 256, 64))
    assert (own - expected).abs().max().item() < ATOL


def test_full_model_logits_equal_the_original(golden, loaded, run):
    logits = _logits(loaded, golden, run)
    assert logits.shape == golden[0]["logits"].shape == (1, 133, 262)
    assert (logits - golden[0]["logits"]).abs().max().item() < ATOL


@pytest.mark.parametrize("slot", SLOTS)
def test_zero_mask_logits_equal_the_original(golden, loaded, run, slot):
    expected = golden[0][f"logits_zero.{slot}"]
    logits = _logits(loaded, golden, run, masked={slot}, mask_mode="zero")
    assert (logits - expected).abs().max().item() < ATOL
    # the mask changes the logits, and masking the other tower does not give this golden
    assert (expected - golden[0]["logits"]).abs().max().item() > 100 * ATOL
    other = _logits(loaded, golden, run, masked={s for s in SLOTS if s != slot}, mask_mode="zero")
    assert (other - expected).abs().max().item() > 100 * ATOL


@pytest.mark.parametrize("slot", SLOTS)
def test_pruned_folder_is_the_originals_zero_mask_and_refused_by_it(golden, run, slot, tmp_path, capsys):
    """``prune --drop`` writes the kept tower alone in ``vision_path`` (so the original's ``__init__`` raises
    KeyError on the missing one, as recorded) and computes the original's zero-mask logits."""
    import encslim

    out = tmp_path / f"no-{slot}"
    code, stdout, stderr = run_main(capsys, "prune", MOB / "model", "--drop", slot, "--out", out)
    assert code == 0, stdout + stderr
    config = json.loads((out / "config.json").read_text())
    kept = [s for s in SLOTS if s != slot][0]
    assert config["vision_config"]["vision_path"] == f"MOB:{ORIGINAL_NAME[kept]}"
    assert config["vision_config"]["moe_version_type"] == "convnext_512_siglip_448"
    assert config["encslim_removed_dims"] == {slot: 128 if slot == "siglip" else 64}
    record = json.loads((MOB / "original_loader.json").read_text())[f"drop {slot}"]
    assert record["refused"] == f"KeyError: '{slot}'" and f"vit_hidden_size['{slot}']" in record["at"]
    pruned = encslim.load_model(str(out))
    with torch.no_grad():
        batch = run[0]
        features = pruned[2].encode(pruned[0], batch)
        logits = pruned[2].decode(pruned[0], features, batch).logits[:, golden[0]["logit_positions"]]
    assert set(features) == {kept}
    notes = " ".join(pruned[2].export_notes(pruned[0].config))  # what export writes into the model card
    assert f"own remote code refuses it (Eagle2ChatModel.__init__ raises KeyError on vit_hidden_size['{slot}']" in notes
    assert (logits - golden[0][f"logits_zero.{slot}"]).abs().max().item() < ATOL
