"""Eagle2's dynamic tiles against the ORIGINAL preprocessing (NVlabs/Eagle ``Eagle2/inference/inference.py``).

The golden folder was made by ``make_tiles_golden.py`` beside this file from the original file itself
(README.md here); CI only reads it. A non-square 800x600 image at tile size 448: 7 tiles at max 6, 13 at
max 12 (the grid plus the thumbnail). The old encslim processor sent the thumbnail alone.
"""

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "tiles"
ATOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return load_file(str(GOLDEN / "golden.safetensors"))


def _processor(max_tiles):
    from encslim.models.families.eagle2.processing import Eagle2Processor

    return Eagle2Processor(None, 448, 256, dynamic=True, min_tiles=1, max_tiles=max_tiles, thumbnail=True)


def test_800x600_at_max_6_is_the_originals_7_tiles(golden):
    image = Image.open(GOLDEN / "image_800x600.png")
    assert image.size == (800, 600)
    pixels = _processor(6).image_inputs([image])
    expected = golden["tiles_max6"].float() / 255 * 2 - 1
    assert pixels["num_tiles"].tolist() == [7]
    assert pixels["pixel_values"].shape == expected.shape == (7, 3, 448, 448)
    assert (pixels["pixel_values"] - expected).abs().max().item() < ATOL


def test_800x600_at_max_12_is_the_originals_13_tiles(golden):
    image = Image.open(GOLDEN / "image_800x600.png")
    processor = _processor(12)
    assert processor.num_tiles(image) == 13
    sums = processor.pixel_values([image]).double().sum(dim=(1, 2, 3))
    assert sums.shape == golden["sums_max12"].shape == (13,)
    assert (sums - golden["sums_max12"]).abs().max().item() < 1e-6  # the same float32 values summed in float64


def test_the_thumbnail_alone_is_not_the_original(golden):
    """What encslim sent before: one S x S view of the whole image (the original's last tile only)."""
    image = Image.open(GOLDEN / "image_800x600.png")
    single = _processor(6).pixel_values([image], tiled=False)
    expected = golden["tiles_max6"].float() / 255 * 2 - 1
    assert single.shape[0] == 1 and (single[0] - expected[-1]).abs().max().item() < ATOL
    assert single.shape[0] != expected.shape[0]
