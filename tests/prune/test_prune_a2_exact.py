"""Class A2 (LayerNorm-first projector) removal is exact: the removed slot's channel block stays as
zeros in front of the LayerNorm, exactly what the zero mask fed it, so its statistics and the
projector are unchanged. Checked for every slot, for two removals in a row, and against a model
whose LayerNorm (wrongly) shrinks to the kept channels, which is not exact."""

import json

import pytest
import torch

from encslim.models.loading import load_model
from encslim.prune.surgery import prune

from ..conftest import make_image

SLOTS = ("clip", "siglip", "convnext")


def _logits(loaded, masked=()):
    model, processor, adapter = loaded
    images = [make_image(i, 48) for i in range(3)]
    prompts = [adapter.build_prompt(processor, q) for q in ("What is it?", "Which colour?", "How many?")]
    batch = adapter.prepare_batch(processor, images, prompts)
    with torch.no_grad():
        features = adapter.encode(model, batch, [s for s in adapter.slot_names(model.config) if s not in masked])
        return adapter.next_token_logits(model, features, batch, frozenset(masked), "zero")


@pytest.fixture(scope="module")
def a2(tiny_model_dir):
    folder = tiny_model_dir("A2", SLOTS)
    return folder, load_model(folder)


@pytest.mark.parametrize("slot", SLOTS)
def test_each_slot_prunes_exactly(a2, slot, tmp_path):
    folder, full = a2
    manifest = prune(folder, [slot], tmp_path / "out")
    assert manifest["plan"]["exact"] is True and manifest["verification"]["passed"] is True
    pruned = load_model(tmp_path / "out")
    masked = _logits(full, [slot])
    assert (masked - _logits(full)).abs().max() > 1e-3  # masking the slot matters
    assert (masked - _logits(pruned)).abs().max() <= 1e-4
    fusion = json.loads((tmp_path / "out" / "config.json").read_text())["fusion"]
    assert fusion["layout"] == list(SLOTS) and fusion["removed_dims"] == {slot: 32}  # every tiny backbone here delivers 32 channels
    assert not any(k.startswith(f"vision_towers.{slot}.") for k in pruned[0].state_dict())


def test_two_removals_in_a_row_stay_exact(a2, tmp_path):
    folder, full = a2
    prune(folder, ["siglip"], tmp_path / "one")
    prune(tmp_path / "one", ["clip"], tmp_path / "two")
    pruned = load_model(tmp_path / "two")
    assert pruned[2].slot_names(pruned[0].config) == ["convnext"]
    assert (_logits(full, ["siglip", "clip"]) - _logits(pruned)).abs().max() <= 1e-4


def test_a_layernorm_over_the_kept_channels_only_is_not_exact(a2):
    """Why the zero block stays: a LayerNorm sliced to the kept channels changes the statistics."""
    _, (model, _, adapter) = a2
    ln, first = model.fusion.projector[0], model.fusion.projector[1]
    torch.manual_seed(0)
    x = torch.randn(2, 16, sum(model.fusion.dims.values()))
    x[..., 32:64] = 0  # siglip zero-masked
    full = first(ln(x))
    keep = torch.cat([torch.arange(0, 32), torch.arange(64, x.shape[-1])])
    sliced = torch.nn.functional.layer_norm(x[..., keep], (len(keep),), ln.weight[keep], ln.bias[keep], ln.eps)
    shrunk = torch.nn.functional.linear(sliced, first.weight[:, keep], first.bias)
    assert (full - shrunk).abs().max() > 1e-2
