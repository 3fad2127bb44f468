"""DeepSeek-VL hybrid against transformers 4.54.0 (the release that introduced ``deepseek_vl_hybrid``), as saved there.

``hybrid/`` was made by ``make_goldens.py`` beside this file in a venv with transformers 4.54.0
(README.md here): a small random hybrid at the real input sizes (SigLIP 384 px, SAM 1024 px) saved by
4.54's ``save_pretrained``, plus 4.54's outputs on a 320x200 image. CI only reads it: the folder is
loaded AS SAVED with ``encslim.load_model`` (transformers 5 classes) and compared within 1e-4 (fp32):
the processor's pixels at both resolutions, each tower's features, the logits of the full model and
of each single-tower zero mask (``mask_mode="zero"``), and encslim's ``sam`` removal (a stock
``deepseek_vl`` folder) against 4.54's stock ``DeepseekVLForConditionalGeneration`` with SAM folded out.
"""

import json
from pathlib import Path

import pytest
import torch

from ..conftest import encode_golden_image, read_golden

HERE = Path(__file__).parent / "hybrid"
ATOL = 1e-4
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


def normalised(raw, mean, std):
    return (raw.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_folder_is_the_original_save(golden):
    config = json.loads((HERE / "model" / "config.json").read_text())
    assert config["model_type"] == "deepseek_vl_hybrid"
    assert config["architectures"] == ["DeepseekVLHybridForConditionalGeneration"]
    assert config["transformers_version"] == "4.54.0" == golden[1]["transformers"]
    assert config["vision_config"]["image_size"] == 384 and config["high_res_vision_config"]["image_size"] == 1024
    assert golden[0]["source_image"].shape == (200, 320, 3)  # non-square: the processor pads it


def test_pixels_equal_the_original_processor(golden, run):
    tensors, _ = golden
    batch = run[0]
    assert batch["pixel_values"].shape == (1, 3, 384, 384)
    assert batch["high_res_pixel_values"].shape == (1, 3, 1024, 1024)
    assert diff(batch["pixel_values"], normalised(tensors["pixels_uint8"], (0.5,) * 3, (0.5,) * 3)) < ATOL
    assert diff(batch["high_res_pixel_values"], normalised(tensors["high_res_pixels_uint8"], CLIP_MEAN, CLIP_STD)) \
        < ATOL
    assert torch.equal(batch["input_ids"], tensors["input_ids"])


def test_tower_features_equal_the_original(golden, run):
    tensors, _ = golden
    features = run[1]
    assert diff(features["siglip"], tensors["features_siglip"]) < ATOL
    assert diff(features["sam"], tensors["features_sam"]) < ATOL


@pytest.mark.parametrize("masked", [(), ("siglip",), ("sam",)], ids=["full", "zero-siglip", "zero-sam"])
def test_logits_equal_the_original(golden, loaded, run, masked):
    tensors, _ = golden
    model, _, adapter = loaded
    batch, features = run
    key = "logits_full" if not masked else f"logits_zero_{masked[0]}"
    with torch.no_grad():
        logits = adapter.decode(model, features, batch, masked=set(masked), mask_mode="zero").logits
        last = adapter.next_token_logits(model, features, batch, masked=set(masked), mask_mode="zero")
    assert diff(logits, tensors[key]) < ATOL
    assert diff(last, tensors[key][:, -1]) < ATOL
    if masked:  # the mask is visible: the test could fail
        assert diff(tensors[key], tensors["logits_full"]) > 0.1


def test_sam_removal_equals_the_original_stock_deepseek_vl(golden, tmp_path):
    """encslim's prune of 'sam' -> a stock deepseek_vl folder, whose logits are 4.54's stock class with the fold.

    4.54 saved SigLIP as ``model.vision_model.vision_model.*``; the family's ``legacy_keys`` give it 5.x's
    names when the headers are read, so the plan, the executor and the module-local check work on 5.x's
    names and the output is in 5.x's layout (the manifest says so)."""
    import encslim
    from encslim.models.folder import Checkpoint
    from encslim.prune.surgery import prune  # encslim.prune is the package once a test imported encslim.prune.*

    tensors, _ = golden
    out = tmp_path / "no-sam"
    manifest = prune(str(HERE / "model"), ["sam"], str(out), verify_method="module-local")
    assert manifest["verification"]["method"] == "module-local" and manifest["verification"]["passed"] is True
    assert manifest["legacy_keys"]["renamed"] == 48
    assert manifest["legacy_keys"]["prefixes"] == [["model.vision_model.vision_model.", "model.vision_model."]]
    written = Checkpoint.open(out).tensors
    assert not any(k.startswith("model.vision_model.vision_model.") for k in written)
    assert sum(k.startswith("model.vision_model.") for k in written) == 48
    model, processor, adapter = encslim.load_model(str(out))
    assert model.config.model_type == "deepseek_vl"
    batch = {"input_ids": tensors["input_ids"], "attention_mask": tensors["attention_mask"],
             "pixel_values": normalised(tensors["pixels_uint8"], (0.5,) * 3, (0.5,) * 3)}
    with torch.no_grad():
        logits = adapter.decode(model, adapter.encode(model, batch), batch).logits
    assert diff(logits, tensors["logits_stock_deepseek_vl"]) < ATOL


def test_original_stock_deepseek_vl_with_the_fold_is_the_zero_sam_hybrid(golden):
    """In 4.54's own classes, DESIGN §3's fold (linear1 = [0 ; vision_proj], bias [b_high ; b_low]) is exact."""
    tensors, _ = golden
    assert diff(tensors["logits_stock_deepseek_vl"], tensors["logits_zero_sam"]) < ATOL
    assert diff(tensors["logits_stock_deepseek_vl"], tensors["logits_full"]) > 0.1
