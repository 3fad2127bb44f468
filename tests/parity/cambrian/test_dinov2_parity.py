"""Cambrian-1's DINOv2 tower against outputs of the original stack (transformers 4.37.2), as saved there.

The golden folder was made by ``make_dinov2_golden.py`` beside this file, in a venv with the
transformers Cambrian pins (README.md here); CI only reads it. Tolerance 1e-4 (fp32), as for every
parity test; the re-implementation is at 2.4e-7. transformers 5's own resampling is off by 1.2.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "dinov2"
ATOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return load_file(str(GOLDEN / "golden.safetensors"))


@pytest.fixture(scope="module")
def tower():
    from encslim.models.families.cambrian.configuration import CambrianConfig
    from encslim.models.families.cambrian.encoders import build_tower

    config = CambrianConfig(mm_vision_tower_aux_list=["facebook/dinov2-giant-res378"],
                            mm_vision_tower_aux_token_len_list=[576])
    return build_tower("dinov2", "dinov2", GOLDEN / "model", config).eval()


def test_dinov2_at_378_equals_transformers_437(golden, tower):
    assert golden["pixel_values"].shape[-2:] == (378, 378)  # 37x37 table resampled to 27x27
    with torch.no_grad():
        hidden = tower.vision_tower(golden["pixel_values"]).last_hidden_state
    assert hidden.shape == golden["last_hidden_state"].shape == (1, 1 + 27 * 27, 32)
    assert (hidden - golden["last_hidden_state"]).abs().max().item() < ATOL


def test_stock_transformers_5_resampling_differs(golden):
    """Why the tower installs the 4.37 formula: transformers 5's Dinov2Model misses the golden by O(1)."""
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(str(GOLDEN / "model")).eval()
    with torch.no_grad():
        hidden = model(pixel_values=golden["pixel_values"]).last_hidden_state
    assert (hidden - golden["last_hidden_state"]).abs().max().item() > 0.1


def test_tower_tokens_are_the_golden_patch_tokens_resampled(golden, tower):
    from encslim.models.families.cambrian.encoders import resample_tokens

    with torch.no_grad():
        tokens = tower(golden["pixel_values"])
    expected = resample_tokens(golden["last_hidden_state"][:, 1:], 576)  # CLS dropped, 27x27 -> 24x24
    assert tokens.shape == (1, 576, 32)
    assert (tokens - expected).abs().max().item() < ATOL
