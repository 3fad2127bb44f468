"""``--format deepseek_vl`` (the DeepSeek-VL family's stock format, written by encslim.export.stock):
hybrid (sam removed here or by prune) -> stock DeepseekVLForConditionalGeneration."""

import pytest
import torch

from encslim.errors import ConfigError

from .conftest import leftovers


def _masked_hybrid(hybrid_dir, images, questions):
    from encslim.models.loading import load_model

    model, processor, adapter = load_model(hybrid_dir)
    batch = adapter.prepare_batch(processor, images, questions, masked={"sam"})
    with torch.no_grad():
        logits = adapter.decode(model, adapter.encode(model, batch), batch, masked={"sam"}).logits
    return batch, logits


def _stock(folder):
    from transformers import AutoProcessor, DeepseekVLForConditionalGeneration

    return DeepseekVLForConditionalGeneration.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def test_hybrid_directly_becomes_stock_deepseek_vl(tiny_hybrid_dir, tmp_path):
    from encslim.export import export_model
    from encslim.export.common import probe_images

    out = tmp_path / "dsvl"
    manifest = export_model(tiny_hybrid_dir, out, "deepseek_vl")
    assert manifest["removed_slots"] == ["sam"] and manifest["kept_slots"] == ["siglip"]
    assert manifest["source"]["path"] == str(tiny_hybrid_dir.resolve())
    assert manifest["source_stage"] == "prune" and manifest["source_verification"]["passed"]
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["dsvl"]

    model, processor = _stock(out)
    assert type(model).__name__ == "DeepseekVLForConditionalGeneration"
    assert not any("high_res" in k for k in model.state_dict())
    images, questions = probe_images(2, seed=4), ["What is in the image?", "What colour is the shape?"]
    batch, expected = _masked_hybrid(tiny_hybrid_dir, images, questions)
    with torch.no_grad():  # same pixels and tokens: the stock model computes the sam-masked hybrid
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
    assert (logits - expected).abs().max().item() <= 1e-4
    stock_batch = processor(text=[f"{processor.image_token}\n{q}" for q in questions], images=images,
                            return_tensors="pt", padding=True)
    assert torch.equal(stock_batch["input_ids"], batch["input_ids"])
    # transformers' hybrid processor resizes twice (SAM size, then SigLIP size), the stock one once:
    # the card reports the gap measured on the export's probe images
    assert (stock_batch["pixel_values"] - batch["pixel_values"]).abs().max().item() > 0.01
    assert manifest["export"]["processor_gap"]["pixel_max_abs_diff"] > 0.01
    card = (out / "README.md").read_text()
    assert "resizes once" in card and "as **stock transformers DeepseekVLForConditionalGeneration**" in card
    assert f"differ by up to {manifest['export']['processor_gap']['pixel_max_abs_diff']:.3g}" in card


def test_pruned_hybrid_reexported(tiny_hybrid_dir, tmp_path):
    from encslim.export import export_stock
    from encslim.prune.surgery import prune

    pruned = tmp_path / "pruned"
    prune(tiny_hybrid_dir, ["sam"], pruned)
    manifest = export_stock(pruned, tmp_path / "out", fmt="deepseek_vl")
    assert manifest["removed_slots"] == ["sam"] and manifest["verification"]["export"][0]["max_abs_diff"] == 0.0
    assert manifest["export"]["architecture"] == "DeepseekVLForConditionalGeneration"
    _stock(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "as **stock transformers DeepseekVLForConditionalGeneration**" in card
    assert "resizes once" not in card  # nothing was removed here: the pruned folder's processor is the stock one


def test_native_model_refused(tiny_model_dir, tmp_path):
    from encslim.export import export_stock

    with pytest.raises(ConfigError, match="needs a deepseek_vl_hybrid model .* holds model_type 'encslim'"):
        export_stock(tiny_model_dir(fusion="A1"), tmp_path / "out", fmt="deepseek_vl")
    assert not (tmp_path / "out").exists()


def test_unknown_formats_refused(tiny_model_dir, tmp_path):
    """A format no family declares is refused by the dispatcher and by the stock writer, listing what exists."""
    from encslim.export import export_model, export_stock

    with pytest.raises(ConfigError, match=r"unknown export format\(s\) 'deepseek-vl' \(did you mean 'deepseek_vl'\?\); "
                                          r"use hf, remote-code, onnx, ") as err:
        export_model(tiny_model_dir(fusion="A1"), tmp_path / "out", "deepseek-vl")
    assert sorted(str(err.value).split("; use ")[1].split(", ")[3:]) == ["deepseek_vl", "llava"]
    with pytest.raises(ConfigError, match=r"'llava' is not a stock format any family reaches by removing slots; "
                                          r"stock formats: deepseek_vl \(generic: hf, remote-code, onnx\)"):
        export_stock(tiny_model_dir(fusion="A1"), tmp_path / "out", fmt="llava")
    assert not (tmp_path / "out").exists()
