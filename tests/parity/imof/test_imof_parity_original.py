"""I-MoF against outputs of the ORIGINAL code (tsb0601/MMVP with transformers 4.31), its checkpoint as saved.

``model/`` is the folder MMVP's classes saved (``pytorch_model-*.bin`` shards, their index, each layer's
``rotary_emb.inv_freq``, ``model_type: llava``, no encslim key); ``golden.safetensors`` holds what MMVP's
code computed on one non-square image. Both were made by ``make_imof_golden.py`` beside this file (README.md
says how, and every patch); CI only reads them. Tolerance 1e-4 (fp32), as for every parity test.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import encslim

HERE = Path(__file__).parent
FOLDER = HERE / "model"
ATOL = 1e-4
TOKENS = 576  # 336 px / patch 14 = 24x24 per tower


def _image():
    """The golden's image (make_imof_golden.image): seeded 300x200 RGB with a red block."""
    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    pixels[40:160, 60:140] = (250, 30, 30)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def golden():
    return load_file(str(HERE / "golden.safetensors"))


@pytest.fixture(scope="module")
def loaded():
    return encslim.load_model(str(FOLDER))


@pytest.fixture(scope="module")
def features(golden, loaded):
    model, _, adapter = loaded
    with torch.no_grad():
        return adapter.encode(model, {"pixel_values": golden["pixel_values"]})


def _logits(golden, loaded, features, masked=frozenset(), mode="removal"):
    """Logits of the golden's prompt, its one ``-200`` expanded to the towers' tokens (as encslim's processor does)."""
    model, _, adapter = loaded
    ids = golden["input_ids"][0].tolist()
    at = ids.index(-200)
    count = TOKENS * (2 - len(masked) if mode == "removal" else 2)
    input_ids = torch.tensor([ids[:at] + [-200] * count + ids[at + 1:]])
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    with torch.no_grad():
        embeds = adapter.embed(model, features, batch, masked=masked, mask_mode=mode)
        return model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits


def test_folder_is_as_mmvp_saved_it():
    names = sorted(p.name for p in FOLDER.iterdir())
    assert "pytorch_model.bin.index.json" in names and not any(n.endswith(".safetensors") for n in names)
    assert sum(n.startswith("pytorch_model-") and n.endswith(".bin") for n in names) == 3
    from encslim.models.folder import Checkpoint

    keys = Checkpoint.open(FOLDER).tensors
    assert sorted(k for k in keys if k.endswith("inv_freq")) == [
        f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in (0, 1)]


def test_preprocessing_of_a_non_square_image(golden, loaded):
    _, processor, _ = loaded
    pixels = processor.pixel_values([_image()])
    assert pixels.shape == golden["pixel_values"].shape == (1, 3, 336, 336)
    assert (pixels - golden["pixel_values"]).abs().max().item() < ATOL


@pytest.mark.parametrize("tower", ["clip", "dinov2"])
def test_tower_features(golden, features, tower):
    assert features[tower].shape == golden[f"features_{tower}"].shape == (1, TOKENS, 128)
    assert (features[tower] - golden[f"features_{tower}"]).abs().max().item() < ATOL


@pytest.mark.parametrize("case, masked, mode", [
    ("logits_full", frozenset(), "removal"),
    ("logits_zero_clip", frozenset({"clip"}), "zero"),
    ("logits_zero_dinov2", frozenset({"dinov2"}), "zero"),
    ("logits_removed_dinov2", frozenset({"dinov2"}), "removal"),
])
def test_logits(golden, loaded, features, case, masked, mode):
    logits = _logits(golden, loaded, features, masked, mode)
    assert logits.shape == golden[case].shape
    assert (logits - golden[case]).abs().max().item() < ATOL


def test_masks_have_teeth(golden):
    """Each mask moves the original's logits far beyond the tolerance, so the comparisons above can fail."""
    full = golden["logits_full"]
    for case in ("logits_zero_clip", "logits_zero_dinov2"):
        assert (golden[case] - full).abs().max().item() > 100 * ATOL
    assert (golden["logits_removed_dinov2"][:, -5:] - full[:, -5:]).abs().max().item() > 100 * ATOL
