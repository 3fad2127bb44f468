"""The speed scripts' shared model builder (``encslim.bench.perf.models``) and the scripts built on it."""

import json

import torch
from safetensors import safe_open

from encslim.bench.perf import eval_speed, finetune_speed, models, prune_speed
from encslim.models.families.native.tiny import build_tiny
from encslim.models.tokenizer import build_tokenizer

TWO = {"clip": (models.vision("clip"), 32), "siglip": (models.vision("siglip"), 32)}


def saved_checkpoint_shapes(folder):
    shapes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return shapes


def test_tiny_sizes_build_the_tiny_model():
    encoders = ("clip", "siglip", "dinov2", "convnext")
    tokenizer = build_tokenizer()
    model, processor = models.build_model(
        models.build_config(finetune_speed.scale_encoders(encoders, "tiny"), models.text(), tokenizer=tokenizer),
        tokenizer, seed=3)
    tiny, _ = build_tiny("A1", encoders, seed=3)
    assert model.config.to_dict() == tiny.config.to_dict()
    ours, theirs = model.state_dict(), tiny.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not model.training and processor.tokenizer.pad_token_id == model.generation_config.pad_token_id


def test_write_model_saves_a_loadable_folder_whose_layout_is_saved_shapes(tmp_path):
    from encslim.models.loading import load_model

    folder = models.write_model(tmp_path / "m", TWO, models.text(num_hidden_layers=1), grid=2, seed=1)
    assert folder == tmp_path / "m"
    config = json.loads((folder / "config.json").read_text())
    assert config["fusion"]["grid"] == 2 and config["text_config"]["num_hidden_layers"] == 1
    model, processor, _ = load_model(folder)
    assert model.slot_names == ["clip", "siglip"] and processor is not None
    assert saved_checkpoint_shapes(folder) == models.saved_shapes(model.config)


def test_prune_speed_writes_a_checkpoint_that_fits_its_config(tmp_path, monkeypatch):
    from encslim.models.registry import get_adapter
    from encslim.prune.verify import check_structure

    big = prune_speed.synthetic_config(1)  # the real one: config only, on the meta device
    assert [e["name"] for e in big.encoders] == ["clip", "siglip", "dinov2"]
    assert len(models.saved_shapes(big)) > 1000
    small = models.build_config(TWO, models.text(vocab_size=64), image_token_id=3)
    monkeypatch.setattr(prune_speed, "synthetic_config", lambda layers: small)
    size = prune_speed.write_synthetic(tmp_path / "src", layers=1)
    shapes = saved_checkpoint_shapes(tmp_path / "src")
    assert shapes == models.saved_shapes(small)
    assert size == 2 * sum(torch.Size(s).numel() for s in shapes.values())  # bf16
    adapter = get_adapter("encslim")
    config = adapter.read_config(tmp_path / "src")
    assert adapter.slot_names(config) == ["clip", "siglip"]
    check_structure(adapter, config, shapes, "the synthetic checkpoint")  # raises when they do not fit


def test_eval_speed_compare_end_to_end():
    tokenizer = build_tokenizer()
    model, processor = models.build_model(models.build_config(TWO, models.text(), tokenizer=tokenizer), tokenizer)
    result = eval_speed.compare(model, processor, eval_speed.synthetic_samples(2, size=32), batch_size=2,
                                max_new_tokens=1)
    assert result["encoders"] == 2 and result["mask_sets"] == 3 and result["identical_predictions"]
    assert result["passes_cached"] == 2 and result["passes_separate"] == 6
