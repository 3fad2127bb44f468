"""Token budgets (models/tokens.py) in the Eagle v1 and Eagle2 families, on tiny seeded models (CPU).

Eagle v1 reduces its one fused 32x32 grid after ``mm_projector``; Eagle2 reduces every tile's 4x4 grid after
``mlp1`` on its own (thumbnail included), so an image of T tiles gets T * k placeholders. Each check compares
the family's path with a computation written out here: the towers, the concat, the projector, a 2x2 average
written as a reshape and mean, the placeholders' embeddings replaced row by row, the LLM.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import encslim
from encslim.errors import ConfigError
from encslim.models.families.eagle.processing import EagleProcessor
from encslim.models.families.eagle.tiny import build_tiny_eagle
from encslim.models.families.eagle2.processing import Eagle2Processor
from encslim.models.families.eagle2.tiny import _save, build_tiny_eagle2
from encslim.models.tokens import TokenBudget, budget_applied

from ..conftest import make_image, run_main

TOWERS = ["clip-448", "sam-1024"]
POOL = TokenBudget("pool", 0.25)
EAGLE_TOKEN = -200


def _pool_2x2(tokens, side):
    """``(B, side*side, D)`` row-major -> ``(B, (side/2)**2, D)``: each 2x2 window's mean, by hand."""
    b, _, d = tokens.shape
    return tokens.reshape(b, side // 2, 2, side // 2, 2, d).mean(dim=(2, 4)).reshape(b, -1, d)


def _positions(mask):
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _scatter(embed_tokens, input_ids, image, rows):
    """The prompt's embeddings with each row's image places holding ``rows[i]`` (in order)."""
    embeds = embed_tokens(input_ids.masked_fill(image, 0))
    for i, row in enumerate(rows):
        embeds[i, image[i]] = row.to(embeds.dtype)
    return embeds


# ================================================================================ Eagle v1
@pytest.fixture(scope="module")
def eagle():
    from encslim.models.families.eagle.adapter import ADAPTER

    model, processor = build_tiny_eagle(TOWERS, seed=3)
    return model, processor, ADAPTER


def _eagle_batch(adapter, processor):
    images = [make_image(1, 40), make_image(2, 52)]
    return adapter.prepare_batch(processor, images, [processor.build_prompt(q) for q in ("What?", "Which colour?")])


def test_eagle_grid_placeholders_follow_the_budget(eagle):
    model, processor, adapter = eagle
    assert adapter.token_grids(model.config) == [(32, 32)]
    assert adapter.token_grids(model.config, frozenset({"sam-1024"})) == [(32, 32)]
    assert processor.image_token_count == 1024 and processor.token_budget is None
    for budget, count in ((POOL, 256), (TokenBudget("pool", 0.5), 512), (TokenBudget("attention", 0.25), 256)):
        with adapter.token_budget(model, processor, budget):
            batch = _eagle_batch(adapter, processor)
            assert (batch["input_ids"] == EAGLE_TOKEN).sum(dim=1).tolist() == [count, count]
            assert adapter.image_tokens(model.config) == count
        assert processor.token_budget is None and getattr(model.config, "token_budget", None) is None
    assert (_eagle_batch(adapter, processor)["input_ids"] == EAGLE_TOKEN).sum().item() == 2048


def test_eagle_pool_logits_equal_the_computation_by_hand(eagle):
    model, processor, adapter = eagle
    with adapter.token_budget(model, processor, POOL), torch.no_grad():
        batch = _eagle_batch(adapter, processor)
        features = adapter.encode(model, batch)
        got = adapter.next_token_logits(model, features, batch)
    tower = model.model.vision_tower
    with torch.no_grad():
        concat = torch.cat([tower.tower_features(i, batch["pixel_values"]) for i in range(len(TOWERS))], dim=-1)
        pooled = _pool_2x2(model.model.mm_projector(concat), 32)
        image = batch["input_ids"] == EAGLE_TOKEN
        embeds = _scatter(model.get_input_embeddings(), batch["input_ids"], image, pooled)
        mask = batch["attention_mask"]
        want = model(inputs_embeds=embeds, attention_mask=mask, position_ids=_positions(mask)).logits[:, -1]
        full_batch = _eagle_batch(adapter, processor)
        full = adapter.next_token_logits(model, adapter.encode(model, full_batch), full_batch)
    assert pooled.shape == (2, 256, model.config.hidden_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - full).abs().max() > 1e-3  # the budget changes the answer


def test_eagle_attention_keeps_k_tokens_of_the_grid_in_order(eagle):
    model, processor, adapter = eagle
    with torch.no_grad():
        batch = _eagle_batch(adapter, processor)
        projected = model.model.mm_projector(adapter.fuse(model, adapter.encode(model, batch)))
        with adapter.token_budget(model, processor, TokenBudget("attention", 0.25)):
            reduced_batch = _eagle_batch(adapter, processor)
            embeds = adapter.embed(model, adapter.encode(model, reduced_batch), reduced_batch)
    image = reduced_batch["input_ids"] == EAGLE_TOKEN
    for row in range(2):
        kept = embeds[row, image[row]]
        assert kept.shape[0] == 256
        match = (kept[:, None, :] - projected[row][None, :, :]).abs().amax(-1) < 1e-6  # (256, 1024)
        assert match.sum(dim=1).tolist() == [1] * 256  # each kept token is one token of the grid
        index = match.float().argmax(dim=1)
        assert torch.all(index[1:] > index[:-1])  # in the grid's order, no repeats


def test_eagle_budget_1_equals_no_budget_exactly(eagle):
    model, processor, adapter = eagle
    with torch.no_grad():
        batch = _eagle_batch(adapter, processor)
        want = adapter.next_token_logits(model, adapter.encode(model, batch), batch)
        with adapter.token_budget(model, processor, TokenBudget("pool", 1.0)):
            same = _eagle_batch(adapter, processor)
            got = adapter.next_token_logits(model, adapter.encode(model, same), same)
    assert torch.equal(same["input_ids"], batch["input_ids"]) and torch.equal(got, want)


def test_eagle_prompts_of_another_budget_are_refused(eagle):
    model, processor, adapter = eagle
    batch = _eagle_batch(adapter, processor)  # 1024 places per image
    refused = r"hold 2048 image tokens but 2 image\(s\) give 256 each"
    with budget_applied(model.config, POOL), pytest.raises(ConfigError, match=refused):
        adapter.embed(model, adapter.encode(model, batch), batch)


def _save_eagle(model, processor, folder):
    model.save_pretrained(str(folder))
    processor.save_pretrained(folder)
    return folder


def test_eagle_folder_with_a_budget_reloads_with_it_in_force(eagle, tmp_path):
    model, processor, adapter = eagle
    with budget_applied(model.config, POOL):
        folder = _save_eagle(model, processor, tmp_path / "budget")
    assert json.loads((folder / "config.json").read_text())["token_budget"] == {"method": "pool", "budget": 0.25}
    loaded, loaded_processor, loaded_adapter = encslim.load_model(str(folder))
    assert loaded_processor.token_budget == POOL and loaded_adapter.image_tokens(loaded.config) == 256
    with torch.no_grad():
        batch = _eagle_batch(loaded_adapter, loaded_processor)
        assert (batch["input_ids"] == EAGLE_TOKEN).sum(dim=1).tolist() == [256, 256]
        got = loaded_adapter.next_token_logits(loaded, loaded_adapter.encode(loaded, batch), batch)
        assert loaded.encode_images(batch["pixel_values"]).shape == (2, 256, loaded.config.hidden_size)
        with adapter.token_budget(model, processor, POOL):
            want = adapter.next_token_logits(model, adapter.encode(model, batch), batch)
    assert torch.equal(got, want)
    notes = loaded_adapter.export_notes(loaded.config)
    assert any("a folder with a token budget loads with encslim only" in n and "256 of the 1024" in n for n in notes)
    assert "token budget pool 0.25" in loaded_adapter.how_to_load("out", loaded)
    assert EagleProcessor.from_config(loaded_processor.tokenizer, loaded.config).token_budget == POOL


def test_eagle_onnx_front_end_holds_the_pool_reducer(eagle, tmp_path, capsys):
    """A pool budget exports: the graph's tokens are the reduced ones (num_image_tokens 256) and equal the
    model's at the image places; an attention budget is refused in one line, nothing written."""
    import onnxruntime as ort

    model, processor, adapter = eagle
    with budget_applied(model.config, POOL):
        source = _save_eagle(model, processor, tmp_path / "pool")
    out = tmp_path / "onnx"
    code, stdout, stderr = run_main(capsys, "export", source, "--format", "onnx", "--out", out)
    assert code == 0, stdout + stderr
    config = json.loads((out / "onnx_config.json").read_text())
    assert all(r["matched"] for r in config["validation"])
    vision = config["vision"]
    assert (vision["num_image_tokens"], vision["token_grid"], vision["token_budget"]) == (
        256, [16, 16], {"method": "pool", "budget": 0.25})
    loaded, loaded_processor, loaded_adapter = encslim.load_model(str(source))
    batch = _eagle_batch(loaded_adapter, loaded_processor)
    with torch.no_grad():
        embeds = loaded_adapter.embed(loaded, loaded_adapter.encode(loaded, batch), batch)
    expected = embeds[batch["input_ids"] == EAGLE_TOKEN].reshape(2, 256, -1).numpy()
    session = ort.InferenceSession(str(out / "vision.onnx"), providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in loaded_processor.tower_inputs(batch["pixel_values"]).items()}
    got = session.run(None, feeds)[0]
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4

    with budget_applied(model.config, TokenBudget("attention", 0.25)):
        attention = _save_eagle(model, processor, tmp_path / "attention")
    capsys.readouterr()
    code, stdout, stderr = run_main(capsys, "export", attention, "--format", "onnx", "--out", tmp_path / "refused")
    lines = stderr.strip().splitlines()
    assert code == 2 and "Traceback" not in stdout + stderr and len(lines) == 1, stdout + stderr
    assert "attention token reducer" in lines[0] and "a pool budget exports" in lines[0]
    assert not (tmp_path / "refused").exists()


# ================================================================================ Eagle2
@pytest.fixture(scope="module")
def eagle2():
    from encslim.models.families.eagle2.adapter import ADAPTER

    model, processor = build_tiny_eagle2(seed=5)
    return model, processor, ADAPTER


def _picture(seed, width, height):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


IMAGES = ((11, 300, 120), (12, 112, 112), (13, 250, 200))  # 10 tiles + thumbnail, 1 tile, 12 + thumbnail


def _eagle2_batch(adapter, processor):
    images = [_picture(*spec) for spec in IMAGES]
    prompts = [processor.build_prompt(q) for q in ("What?", "Which colour is it?", "Where?")]
    return adapter.prepare_batch(processor, images, prompts)


def _context(model, batch):
    return batch["input_ids"] == model.config.img_context_token_id


def test_eagle2_each_tile_gets_the_reduced_count(eagle2):
    model, processor, adapter = eagle2
    assert adapter.token_grids(model.config) == [(4, 4)] and adapter.image_tokens(model.config) == 16
    batch = _eagle2_batch(adapter, processor)
    tiles = batch["num_tiles"].tolist()
    assert tiles == [11, 1, 13]
    assert _context(model, batch).sum(dim=1).tolist() == [16 * t for t in tiles]
    before = processor.to_dict()
    for budget, per_tile in ((POOL, 4), (TokenBudget("pool", 0.5), 8), (TokenBudget("attention", 0.25), 4)):
        with adapter.token_budget(model, processor, budget):
            assert processor.to_dict() == before  # the features' key: budget-free
            reduced = _eagle2_batch(adapter, processor)
            assert _context(model, reduced).sum(dim=1).tolist() == [per_tile * t for t in tiles]
            assert adapter.image_tokens(model.config) == per_tile
            assert adapter.feature_lengths(processor, [_picture(*s) for s in IMAGES]) == [16 * t for t in tiles]


def _eagle2_by_hand(model, batch):
    """Tiles -> extract_feature (fusion + mlp1) -> each tile's 4x4 grid pooled 2x2 -> rows -> the LLM."""
    tiles = model.extract_feature(batch["pixel_values"])  # (sum T, 16, H)
    pooled = _pool_2x2(tiles, 4)
    rows = [p.reshape(-1, p.shape[-1]) for p in torch.split(pooled, batch["num_tiles"].tolist())]
    embeds = _scatter(model.get_input_embeddings(), batch["input_ids"], _context(model, batch), rows)
    mask = batch["attention_mask"]
    out = model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=_positions(mask))
    return out.logits[:, -1]


def test_eagle2_pool_logits_equal_the_computation_by_hand(eagle2):
    model, processor, adapter = eagle2
    with torch.no_grad():
        full_batch = _eagle2_batch(adapter, processor)
        full = adapter.next_token_logits(model, adapter.encode(model, full_batch), full_batch)
        with adapter.token_budget(model, processor, POOL):
            batch = _eagle2_batch(adapter, processor)
            got = adapter.next_token_logits(model, adapter.encode(model, batch), batch)
            mask = batch["attention_mask"]
            forward = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=mask,
                            position_ids=_positions(mask)).logits[:, -1]  # the model's own forward
            want = _eagle2_by_hand(model, batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forward, want, atol=1e-5, rtol=1e-5)
    assert (got - full).abs().max() > 1e-3


def test_eagle2_rows_of_different_tile_counts_equal_each_image_alone(eagle2):
    model, processor, adapter = eagle2
    with adapter.token_budget(model, processor, POOL), torch.no_grad():
        batch = _eagle2_batch(adapter, processor)
        together = adapter.next_token_logits(model, adapter.encode(model, batch), batch)
        for row, spec in enumerate(IMAGES):
            alone = adapter.prepare_batch(processor, [_picture(*spec)], [processor.build_prompt(
                ("What?", "Which colour is it?", "Where?")[row])])
            logits = adapter.next_token_logits(model, adapter.encode(model, alone), alone)
            torch.testing.assert_close(logits[0], together[row], atol=1e-4, rtol=1e-4)


def test_eagle2_attention_keeps_k_tokens_of_each_tile(eagle2):
    model, processor, adapter = eagle2
    with torch.no_grad():
        batch = _eagle2_batch(adapter, processor)
        tiles = model.extract_feature(batch["pixel_values"])
        with adapter.token_budget(model, processor, TokenBudget("attention", 0.25)):
            reduced = _eagle2_batch(adapter, processor)
            embeds = adapter.embed(model, adapter.encode(model, reduced), reduced)
    per_image = torch.split(tiles, reduced["num_tiles"].tolist())
    image = _context(model, reduced)
    for row, own in enumerate(per_image):
        kept = embeds[row, image[row]].reshape(own.shape[0], 4, -1)  # 4 of each tile's 16
        for tile, tokens in zip(kept, own):
            match = (tile[:, None, :] - tokens[None, :, :]).abs().amax(-1) < 1e-6
            assert match.sum(dim=1).tolist() == [1] * 4
            index = match.float().argmax(dim=1)
            assert torch.all(index[1:] > index[:-1])


def test_eagle2_budget_1_equals_no_budget_exactly(eagle2):
    model, processor, adapter = eagle2
    with torch.no_grad():
        batch = _eagle2_batch(adapter, processor)
        want = adapter.next_token_logits(model, adapter.encode(model, batch), batch)
        with adapter.token_budget(model, processor, TokenBudget("attention", 1.0)):
            same = _eagle2_batch(adapter, processor)
            got = adapter.next_token_logits(model, adapter.encode(model, same), same)
    assert torch.equal(same["input_ids"], batch["input_ids"]) and torch.equal(got, want)


def test_eagle2_prompts_of_another_budget_are_refused(eagle2):
    model, processor, adapter = eagle2
    batch = _eagle2_batch(adapter, processor)
    with budget_applied(model.config, TokenBudget("attention", 1 / 3)), pytest.raises(
            ConfigError, match="holds 176 image tokens, not a whole number of tiles of 5"):
        adapter.embed(model, adapter.encode(model, batch), batch)


def test_eagle2_folder_with_a_budget_reloads_with_it_in_force(eagle2, tmp_path):
    model, processor, adapter = eagle2
    folder = tmp_path / "budget"
    folder.mkdir()
    with budget_applied(model.config, POOL):
        _save(model, folder)
    processor.save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    assert data["token_budget"] == {"method": "pool", "budget": 0.25} and "token_budget" not in data["llm_config"]
    loaded, loaded_processor, loaded_adapter = encslim.load_model(str(folder))
    assert loaded_processor.token_budget == POOL and loaded_adapter.image_tokens(loaded.config) == 4
    with torch.no_grad():
        batch = _eagle2_batch(loaded_adapter, loaded_processor)
        assert _context(loaded, batch).sum(dim=1).tolist() == [44, 4, 52]
        got = loaded_adapter.next_token_logits(loaded, loaded_adapter.encode(loaded, batch), batch)
        want = _eagle2_by_hand(model, batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    notes = loaded_adapter.export_notes(loaded.config)
    assert any("a folder with a token budget loads with encslim only" in n and "4 of the 16" in n for n in notes)
    assert Eagle2Processor.from_config(loaded_processor.tokenizer, loaded.config).token_budget == POOL


def test_eagle2_costs_count_every_tile_of_the_images(eagle2):
    """rank's analytic cost of an Eagle2 configuration is per image: one tile's vision, fusion and image tokens
    times the images' mean tile count (11, 1 and 13 tiles here: 25 / 3)."""
    from encslim.data.samples import Sample
    from encslim.models.costs import configuration_cost
    from encslim.prune.rank_budgets import configuration_costs

    model, processor, adapter = eagle2
    samples = [Sample(id=str(i), question="What?", answers=["a"], image=_picture(*spec), category="General",
                      metric="exact") for i, spec in enumerate(IMAGES)]
    assert [adapter.grids_per_image(processor, s.image) for s in samples] == [11, 1, 13]
    flops = {s: 1000.0 for s in adapter.slot_names(model.config)}
    costs = configuration_costs((model, processor, adapter), samples, [frozenset()], [1.0, 0.25], "pool", flops)
    one_tile = configuration_cost(model, adapter, (), POOL, costs[(frozenset(), 0.25)]["text_tokens"], flops)
    reduced, full = costs[(frozenset(), 0.25)], costs[(frozenset(), 1.0)]
    assert one_tile["image_tokens"] == 4 and reduced["image_tokens"] == pytest.approx(4 * 25 / 3, abs=1e-3)
    assert full["image_tokens"] == pytest.approx(16 * 25 / 3, abs=1e-3)
    assert reduced["cost"]["vision_flops"] == pytest.approx(2000.0 * 25 / 3)
    assert reduced["cost"]["fusion_flops"] == pytest.approx(one_tile["cost"]["fusion_flops"] * 25 / 3)
    assert reduced["cost"]["prefill_flops"] < full["cost"]["prefill_flops"]
