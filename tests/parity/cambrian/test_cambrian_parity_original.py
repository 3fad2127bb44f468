"""Cambrian-1 against outputs of the ORIGINAL code (cambrian-mllm/cambrian, transformers 4.37.2), as saved there.

``full/model`` is the folder the original's ``CambrianLlamaForCausalLM`` saved (no encoder in it, no encslim
key: ``model_type cambrian_llama``, Cambrian-8B's four hub ids, token lengths 576/576/576/9216, 576
queries, ten sampler layers after decoder layers 0, 3, ..., 27, ``image_position`` 91); ``full/encoders``
holds the four encoder folders as the original loads them from the hub (open_clip folders for SigLIP and
ConvNeXt with ``open_clip_pytorch_model.bin``, transformers folders for CLIP and DINOv2), widths and
depths shrunk, input sizes real (384, 336, 378, 1024); ``full/golden.safetensors`` holds what the
original computed on ``full/image.png`` (320x240: the 24x24 grid unpads to 18x24). Made by
``make_cambrian_goldens.py`` (README.md: how, and every patch); CI only reads them. Tolerance 1e-4, fp32.
The original ran in eval mode (it never calls ``eval()`` on its towers).
"""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import encslim

HERE = Path(__file__).parent / "full"
SLOTS = ["siglip", "clip", "dinov2", "convnext"]
STRIDES = {"siglip": (2, 1), "clip": (2, 1), "dinov2": (2, 1), "convnext": (4, 4)}  # as make_cambrian_goldens
ATOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(HERE / "golden.safetensors"), framework="pt") as handle:
        prompt = handle.metadata()["prompt"]
    return load_file(str(HERE / "golden.safetensors")), prompt


@pytest.fixture(scope="module")
def loaded():
    return encslim.load_model(str(HERE / "model"), encoders={s: str(HERE / "encoders" / s) for s in SLOTS})


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    return Image.open(HERE / "image.png").convert("RGB")


@pytest.fixture(scope="module")
def batch(golden, loaded, image):
    model, processor, adapter = loaded
    return adapter.prepare_batch(processor, [image], [golden[1]])


@pytest.fixture(scope="module")
def features(loaded, batch):
    model, _, adapter = loaded
    with torch.no_grad():
        return adapter.encode(model, batch)


def test_folder_is_as_the_original_saved_it():
    import json

    config = json.loads((HERE / "model" / "config.json").read_text())
    assert config["model_type"] == "cambrian_llama" and "encslim_encoder_paths" not in config
    assert "cambrian_encoder_specs" not in config
    from encslim.models.folder import Checkpoint

    keys = Checkpoint.open(HERE / "model").tensors
    assert not any("vision_tower" in k for k in keys)
    assert sorted({k.split(".")[2] for k in keys if k.startswith("model.vision_sampler_layers.")},
                  key=int) == [str(j) for j in range(10)]


def test_pixels_of_each_encoder(golden, batch):
    for slot in SLOTS:
        step = STRIDES[slot][0]
        pixels = batch[f"pixel_values_{slot}"][:, :, ::step, ::step]
        assert pixels.shape == golden[0][f"pixels_{slot}"].shape, slot
        assert (pixels - golden[0][f"pixels_{slot}"]).abs().max().item() < 1e-5, slot
    assert [batch[f"pixel_values_{s}"].shape[-1] for s in SLOTS] == [384, 336, 378, 1024]


def test_features_of_each_tower(golden, features):
    for slot in SLOTS:
        ours = features[slot][:, ::STRIDES[slot][1]]
        assert ours.shape == golden[0][f"features_{slot}"].shape, slot
        assert (ours - golden[0][f"features_{slot}"]).abs().max().item() < ATOL, slot


def test_input_ids_are_the_originals_with_the_image_run_expanded(golden, batch):
    ids = golden[0]["input_ids"][0].tolist()
    at = ids.index(-200)
    assert at == 91
    assert batch["input_ids"][0].tolist() == ids[:at] + [-200] * (18 * 25) + ids[at + 1:]


def _logits(loaded, batch, features, masked=frozenset(), mode="removal"):
    model, _, adapter = loaded
    feats = {k: v for k, v in features.items() if not (mode == "removal" and k in masked)}
    with torch.no_grad():
        embeds = adapter.embed(model, feats, batch, masked=frozenset(masked), mask_mode=mode)
        return adapter.lm_forward(model, inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits


def test_logits_of_the_full_model(golden, loaded, batch, features):
    logits = _logits(loaded, batch, features)
    assert logits.shape == golden[0]["logits"].shape == (1, 91 + 450 + 6, 256)
    assert (logits - golden[0]["logits"]).abs().max().item() < ATOL


@pytest.mark.parametrize("slot", SLOTS)
def test_zero_mask_is_the_papers(golden, loaded, batch, features, slot):
    logits = _logits(loaded, batch, features, {slot}, "zero")
    assert (logits - golden[0][f"logits_zero_{slot}"]).abs().max().item() < ATOL


@pytest.mark.parametrize("slot", SLOTS)
def test_removal_mask_is_the_original_without_the_encoder(golden, loaded, batch, features, slot):
    """The original built from a config without ``slot`` (it builds only the listed towers) is what the mask gives;
    the zero mask is not (its zeros still enter as keys)."""
    logits = _logits(loaded, batch, features, {slot}, "removal")
    assert (logits - golden[0][f"logits_removed_{slot}"]).abs().max().item() < ATOL
    assert (golden[0][f"logits_zero_{slot}"] - golden[0][f"logits_removed_{slot}"]).abs().max().item() > 1e-3
