"""DeepSeek-VL hybrid: masking through the adapter, and removing SAM into a stock deepseek_vl folder."""

import pytest
import torch

from encslim.errors import PlanError
from encslim.prune.surgery import prune

PROMPTS = ["<image>\nWhat is it?", "<image>\nWhich colour?", "<image>\nHow many?", "<image>\nRead it."]


@pytest.fixture(scope="module")
def hybrid(hybrid_dir):
    from encslim.models.loading import load_model

    return load_model(hybrid_dir)


def test_adapter_encode_decode_matches_the_model_and_masking_sam_matters(hybrid, probe_images):
    model, processor, adapter = hybrid
    assert adapter.slot_names(model.config) == ["siglip", "sam"] and adapter.fusion_class(model.config) == "A3"
    batch = adapter.prepare_batch(processor, probe_images, ["What is it?"] * 4)
    with torch.no_grad():
        own = model(**batch).logits
        features = adapter.encode(model, batch)
        assert features["siglip"].shape == (4, 16, 32) and features["sam"].shape == (4, 16, 64)
        full = adapter.decode(model, features, batch).logits
        no_sam = adapter.decode(model, features, batch, masked={"sam"}).logits
    assert (own - full).abs().max().item() <= 1e-5
    assert (full - no_sam).abs().max().item() > 1e-2
    removal = adapter.prepare_batch(processor, probe_images, ["What is it?"] * 4, masked={"sam"})
    assert "high_res_pixel_values" not in removal  # a removed encoder is not run


def test_removing_sam_gives_a_stock_deepseek_vl_that_matches_the_masked_hybrid(hybrid, hybrid_dir, tmp_path,
                                                                               probe_images):
    from transformers import AutoProcessor, DeepseekVLForConditionalGeneration

    model, processor, adapter = hybrid
    manifest = prune(hybrid_dir, ["sam"], tmp_path / "stock")
    assert manifest["verification"]["passed"] is True and manifest["plan"]["target_model_type"] == "deepseek_vl"

    stock, info = DeepseekVLForConditionalGeneration.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert stock.config.model_type == "deepseek_vl" and not hasattr(stock.config, "high_res_vision_config")
    stock_processor = AutoProcessor.from_pretrained(tmp_path / "stock")
    assert type(stock_processor).__name__ == "DeepseekVLProcessor"

    # end to end, each model with its own processor: images at the high-res size give identical pixels
    hybrid_batch = processor(text=PROMPTS, images=probe_images, return_tensors="pt", padding=True)
    stock_batch = stock_processor(text=PROMPTS, images=probe_images, return_tensors="pt", padding=True)
    assert torch.equal(hybrid_batch["pixel_values"], stock_batch["pixel_values"])
    with torch.no_grad():
        masked = adapter.decode(model, adapter.encode(model, hybrid_batch), hybrid_batch, masked={"sam"}).logits
        got = stock.eval()(**stock_batch).logits
    assert (masked - got).abs().max().item() <= 1e-4

    # parameters: everything SAM-only goes; the aligner gains hidden/2 x D_low zero weights
    inner = model.model
    sam_only = sum(p.numel() for m in (inner.high_res_vision_model, inner.high_res_vision_neck, inner.high_res_vision_proj)
                   for p in m.parameters()) + inner.high_res_vision_alpha.numel()
    sam_only += inner.aligner.high_res_vision_proj.weight.numel()
    zero_rows = (model.config.text_config.hidden_size // 2) * model.config.vision_config.hidden_size
    n_hybrid, n_stock = (sum(p.numel() for p in m.parameters()) for m in (model, stock))
    assert n_hybrid - n_stock == sam_only - zero_rows == manifest["summary"]["removed_per_slot"]["sam"]["params"]
    assert torch.count_nonzero(stock.model.aligner.linear1.weight[: model.config.text_config.hidden_size // 2]) == 0


def test_masked_generation_through_the_adapter_equals_the_pruned_model(hybrid, hybrid_dir, tmp_path, probe_images):
    """What the evaluator calls (adapter decode/generate on the stock classes) gives the pruned model's answers."""
    from transformers import DeepseekVLHybridForConditionalGeneration

    from encslim.models.loading import load_model

    model, processor, adapter = hybrid
    assert type(model) is DeepseekVLHybridForConditionalGeneration  # stock class, unmodified
    prune(hybrid_dir, ["sam"], tmp_path / "stock", verify=False)
    stock, stock_processor, stock_adapter = load_model(tmp_path / "stock")
    questions = ("What is it?", "Which colour?", "How many?", "Read it.")
    prompts = [adapter.build_prompt(processor, q) for q in questions]
    assert prompts == [stock_adapter.build_prompt(stock_processor, q) for q in questions]
    batch = adapter.prepare_batch(processor, probe_images, prompts, masked={"sam"})
    stock_batch = stock_adapter.prepare_batch(stock_processor, probe_images, prompts)
    features = adapter.encode(model, batch)
    assert set(features) == {"siglip"}  # a removed encoder gets no pixels and does not run
    settings = dict(max_new_tokens=5, pad_token_id=processor.tokenizer.pad_token_id)
    with torch.no_grad():
        by_adapter = adapter.decode(model, features, batch, masked={"sam"}).logits
        stock_logits = stock(**stock_batch).logits
        masked_answers = adapter.generate(model, None, batch, masked={"sam"}, **settings)
        cached_answers = adapter.generate(model, features, batch, masked={"sam"}, **settings)
        stock_answers = stock.generate(**stock_batch, do_sample=False, **settings)
    assert (by_adapter - stock_logits).abs().max() < 1e-4
    new = stock_answers[:, stock_batch["input_ids"].shape[1]:]
    assert torch.equal(masked_answers, new) and torch.equal(cached_answers, new)


def test_hybrid_executors_agree_and_siglip_removal_is_refused(hybrid_dir, tmp_path):
    from safetensors.torch import load_file

    a = prune(hybrid_dir, ["sam"], tmp_path / "stream", streaming=True, verify=False)
    b = prune(hybrid_dir, ["sam"], tmp_path / "memory", streaming=False, verify=False)
    wa, wb = load_file(tmp_path / "stream" / "model.safetensors"), load_file(tmp_path / "memory" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["files"]["model.safetensors"] == b["files"]["model.safetensors"]
    assert not [k for k in wa if "high_res" in k] and "model.aligner.linear2.weight" in wa

    with pytest.raises(PlanError, match="removing 'siglip' from deepseek_vl_hybrid has no exact loadable result"):
        prune(hybrid_dir, ["siglip"], tmp_path / "never")
    with pytest.raises(PlanError, match="every encoder"):
        prune(hybrid_dir, ["siglip", "sam"], tmp_path / "never")
    assert not (tmp_path / "never").exists()
    # the stock result has one slot left, which cannot be removed
    with pytest.raises(PlanError, match="every encoder"):
        prune(tmp_path / "stream", ["siglip"], tmp_path / "never")
