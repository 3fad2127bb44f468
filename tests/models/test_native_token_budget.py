"""Token budgets in the native family: the processor writes the reduced placeholder count and the model
reduces the fused tokens grid by grid (models/tokens.py) in embed, forward and generate, for every fusion."""

import json

import pytest
import torch
from PIL import Image

from encslim.errors import ConfigError
from encslim.models.families.native.adapter import ADAPTER, llava_blockers
from encslim.models.families.native.tiny import build_tiny
from encslim.models.loading import load_model
from encslim.models.tokens import TokenBudget, received_attention, reduce_grids, scorer_for

# fusion -> (encoders, the budget each test applies, the grids of one image, reduced tokens per image)
CASES = {
    "A1": (("clip", "siglip"), TokenBudget("pool", 0.25), [(4, 4)], 4),
    "A2": (("clip", "siglip"), TokenBudget("pool", 0.5), [(4, 4)], 8),
    "B": (("clip", "sam"), TokenBudget("pool", 0.25), [(4, 4), (2, 2)], 4 + 1),
    "C": (("clip", "siglip"), TokenBudget("attention", 0.25), [(1, 8)], 2),
}


def _images(n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(40, 48, 3, generator=gen) * 255).byte().numpy()) for _ in range(n)]


def _batch(processor, masked=()):
    prompts = [processor.build_prompt("What colour is the shape?"), processor.build_prompt("How many?")]
    return processor(text=prompts, images=_images(), masked_slots=masked)


def _pixels(batch):
    return {k[len("pixel_values_"):]: v for k, v in batch.items() if k.startswith("pixel_values_")}


def _manual_logits(model, batch, grids, budget, masked=()):
    """fuse -> reduce_grids by hand -> scatter into the <image> positions -> LLM: the last position's logits."""
    features = model.encode(_pixels(batch))
    fused = model.fuse(features, masked)
    scorer = scorer_for(model.language_model) if budget.method == "attention" else None
    reduced = reduce_grids(fused, grids, budget, scorer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    embeds = model.get_input_embeddings()(ids)
    embeds = embeds.masked_scatter((ids == model.config.image_token_id).unsqueeze(-1), reduced)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    return out.logits[:, -1], features


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny(request):
    encoders = CASES[request.param][0]
    model, processor = build_tiny(request.param, encoders, seed=1)
    return request.param, model, processor


def _placeholders(model, batch):
    return (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()


def test_reduced_count_and_logits_equal_a_manual_reduction(tiny):
    fusion, model, processor = tiny
    _, budget, grids, reduced = CASES[fusion]
    assert ADAPTER.token_grids(model.config) == grids
    with ADAPTER.token_budget(model, processor, budget), torch.no_grad():
        batch = _batch(processor)
        assert _placeholders(model, batch) == [reduced, reduced]
        assert ADAPTER.image_tokens(model.config) == reduced
        expected, features = _manual_logits(model, batch, grids, budget)
        got = ADAPTER.next_token_logits(model, features, batch)
        forward = model(**batch).logits[:, -1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(forward, expected, rtol=0, atol=1e-6)
    # the context restored the model's own (absent) budget
    assert getattr(model.config, "token_budget", None) is None and processor.token_budget is None
    assert _placeholders(model, _batch(processor))[0] == model.config.num_image_tokens() > reduced


def test_generate_reads_the_reduced_tokens(tiny):
    fusion, model, processor = tiny
    budget = CASES[fusion][1]
    with ADAPTER.token_budget(model, processor, budget), torch.no_grad():
        batch = _batch(processor)
        logits = model(**batch).logits[:, -1]
        new = model.generate(**batch, max_new_tokens=1, do_sample=False)[:, batch["input_ids"].shape[1]:]
    assert new[:, 0].tolist() == logits.argmax(-1).tolist()


def test_attention_keeps_the_k_most_attended_tokens(tiny):
    fusion, model, processor = tiny
    grids = CASES[fusion][2]
    budget = TokenBudget("attention", 0.25)
    with torch.no_grad():
        fused = model.fuse(model.encode(_pixels(_batch(processor))))
        with ADAPTER.token_budget(model, processor, budget):
            kept = model.reduce_tokens(fused)
    layer, llm_config = model.language_model.model.layers[0], model.language_model.config
    start, offset = 0, 0
    for h, w in grids:
        k = max(1, round(0.25 * h * w))
        part = fused[:, start:start + h * w]
        with torch.no_grad():
            top = received_attention(part, layer, llm_config).topk(k, dim=-1).indices.sort(-1).values
        for row in range(fused.shape[0]):
            assert torch.equal(kept[row, offset:offset + k], part[row, top[row]])
        start, offset = start + h * w, offset + k
    assert kept.shape[1] == offset


def test_budget_one_changes_nothing(tiny):
    _, model, processor = tiny
    with torch.no_grad():
        batch = _batch(processor)
        plain = model(**batch).logits
        with ADAPTER.token_budget(model, processor, TokenBudget("pool", 1.0)):
            same_batch = _batch(processor)
            same = model(**same_batch).logits
    assert torch.equal(same_batch["input_ids"], batch["input_ids"])
    assert torch.equal(same, plain)


def test_sequence_concat_removal_drops_the_masked_grid():
    model, processor = build_tiny("B", ("clip", "sam"), seed=1)
    budget = TokenBudget("pool", 0.25)
    with ADAPTER.token_budget(model, processor, budget), torch.no_grad():
        batch = _batch(processor, masked=("clip",))
        assert ADAPTER.token_grids(model.config, {"clip"}) == [(2, 2)]
        assert _placeholders(model, batch) == [1, 1] == [ADAPTER.image_tokens(model.config, {"clip"})] * 2
        expected, features = _manual_logits(model, batch, [(2, 2)], budget, masked=("clip",))
        got = ADAPTER.next_token_logits(model, features, batch, masked={"clip"})
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_saved_budget_round_trips_and_the_processor_writes_the_reduced_count(tmp_path):
    model, processor = build_tiny("A1", ("clip", "siglip"), seed=1)
    model.config.token_budget = {"method": "pool", "budget": 0.25}
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["token_budget"] == {"method": "pool", "budget": 0.25}
    assert "token_budget" not in json.loads((tmp_path / "processor_config.json").read_text())
    loaded, loaded_processor, adapter = load_model(tmp_path)
    assert loaded.config.token_budget == {"method": "pool", "budget": 0.25}
    batch = _batch(loaded_processor)
    assert _placeholders(loaded, batch) == [4, 4] == [adapter.image_tokens(loaded.config)] * 2
    with torch.no_grad():
        expected, _ = _manual_logits(loaded, batch, [(4, 4)], TokenBudget("pool", 0.25))
        got = loaded(**batch).logits[:, -1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # a budget-free processor dict: the encoder features do not depend on the budget
    del model.config.token_budget
    assert loaded_processor.to_dict() == processor.to_dict()
    # the adapter's context overrides the saved budget for one run, then restores it
    with adapter.token_budget(loaded, loaded_processor, None):
        assert _placeholders(loaded, _batch(loaded_processor)) == [16, 16]
    assert loaded.config.token_budget == {"method": "pool", "budget": 0.25}
    assert _placeholders(loaded, _batch(loaded_processor)) == [4, 4]


def test_pool_on_non_square_queries_and_llava_with_a_budget_are_refused():
    model, processor = build_tiny("C", ("clip", "siglip"), seed=1)
    with pytest.raises(ConfigError, match="8 cross-attention queries are no square grid.*--token-method attention"):
        with ADAPTER.token_budget(model, processor, TokenBudget("pool", 0.25)):
            pass
    one, _ = build_tiny("A1", ("clip",), seed=1)
    assert llava_blockers(one.config) == []
    one.config.token_budget = {"method": "pool", "budget": 0.5}
    reasons = llava_blockers(one.config)
    assert len(reasons) == 1 and reasons[0].startswith("LLaVA's stock class has no token reducer: ")
    assert "pool 0.5" in reasons[0]
    assert "llava" not in ADAPTER.export_targets(one.config, ["clip"])


def test_prune_keeps_the_source_budget(tmp_path):
    from encslim.prune.surgery import prune

    model, processor = build_tiny("B", ("clip", "sam"), seed=1)
    model.config.token_budget = {"method": "pool", "budget": 0.25}
    src = tmp_path / "src"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    prune(src, ["sam"], tmp_path / "out", verify=True, num_samples=2)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["token_budget"] == {"method": "pool", "budget": 0.25}
    pruned, pruned_processor, adapter = load_model(tmp_path / "out")
    assert _placeholders(pruned, _batch(pruned_processor)) == [4, 4] == [adapter.image_tokens(pruned.config)] * 2


@pytest.mark.slow  # about 45 s wall on 2 shared cores: the ONNX export traces and validates three graphs
def test_onnx_export_carries_a_pool_budget_and_refuses_attention(tmp_path):
    from encslim.export import export_onnx
    from encslim.export.ort_generate import OrtVlm

    model, processor = build_tiny("A1", ("clip", "siglip"), seed=1)
    model.config.token_budget = {"method": "pool", "budget": 0.25}
    model.save_pretrained(tmp_path / "src")
    processor.save_pretrained(tmp_path / "src")
    export_onnx(tmp_path / "src", tmp_path / "onnx")
    assert json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())["num_image_tokens"] == 4
    loaded, loaded_processor, _ = load_model(tmp_path / "src")
    image = _images(1)[0]
    batch = loaded_processor(text=[loaded_processor.build_prompt("What is it?")], images=[image])
    with torch.no_grad():
        expected = loaded.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1]:]
    assert OrtVlm(tmp_path / "onnx", threads=1).generate([image], ["What is it?"], max_new_tokens=4) == \
        expected.tolist()
    model.config.token_budget = {"method": "attention", "budget": 0.5}
    assert "onnx" not in ADAPTER.export_targets(model.config, ["clip", "siglip"])
    assert ADAPTER.export_blockers(model.config, ["clip", "siglip"], "onnx")[0].startswith(
        "the token budget attention 0.5 keeps its top-k tokens with a stable sort, which ONNX cannot express")


def test_a_slot_keeping_its_cls_token_takes_no_budget():
    from encslim.models.families.native.configuration import EncslimConfig
    from encslim.models.families.native.processing import EncslimProcessor

    model, processor = build_tiny("B", ("clip", "sam"), seed=1)
    data = model.config.to_dict()
    data["encoders"][0]["cls"] = "keep"  # clip: 16 grid tokens and its CLS token
    config = EncslimConfig(**{k: v for k, v in data.items() if k not in ("model_type", "transformers_version")})
    assert config.token_grids() is None and ADAPTER.token_grids(config) is None
    assert ADAPTER.token_budget_blockers(config) == [
        "slot(s) clip keep their CLS token, so their tokens are no grid a reducer could shorten; rebuild the model "
        "with cls 'drop'"]
    with pytest.raises(ConfigError, match="^token budget pool 0.5: slot\\(s\\) clip keep their CLS token"):
        ADAPTER.check_token_budget(config, TokenBudget("pool", 0.5))
    keeping = EncslimProcessor.from_config(processor.tokenizer, config, token_budget={"method": "pool", "budget": 0.5})
    assert keeping.token_grids() is None and keeping.num_image_tokens() == 17 + 4
