"""Token budgets in the DeepSeek-VL hybrid, I-MoF and Cambrian families (issue 32, models/tokens.py).

Supported (deepseek_vl_hybrid: one grid after the A3 aligner; imof: each tower's projected grid, reduced
before the interleave; cambrian with ``connector_only``: the unpadded query grid after ``mm_projector``,
``image_newline`` ending each pooled row): the prompts hold the reduced placeholder count, the logits
under ``adapter.token_budget`` equal a computation written out here with plain tensor operations (2x2 means;
the attention method's first-layer scores and top half), budget 1 equals no budget, and the budget survives
config.json. Refused (Cambrian with its sampler layers inside the
LLM; attention on Cambrian's rows; stock exports): the exact one-line reason.
"""

import json

import pytest
import torch

import encslim
from encslim.errors import ConfigError
from encslim.models.tokens import TokenBudget

from ..conftest import make_image

POOL = TokenBudget("pool", 0.25)
ATTENTION = TokenBudget("attention", 0.5)
QUESTION = "What is shown in the image?"


def pool2x2(tokens, side_h, side_w):
    """``(B, h*w, D)`` row-major grid -> 2x2 means, ``ceil`` at odd edges, written out (no avg_pool2d)."""
    b, _, d = tokens.shape
    grid = tokens.reshape(b, side_h, side_w, d)
    rows = []
    for i in range(0, side_h, 2):
        for j in range(0, side_w, 2):
            rows.append(grid[:, i:i + 2, j:j + 2].reshape(b, -1, d).mean(1))
    return torch.stack(rows, 1)


def last_logits(model, embeds, mask):
    """The stock LLM call on left-padded ``inputs_embeds``: logits of the token after the prompt."""
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
    return out.logits[:, -1]


def placeholder_count(batch, token_id):
    return [int(n) for n in (batch["input_ids"] == token_id).sum(-1)]


def run_logits(adapter, model, processor, images, budget):
    with adapter.token_budget(model, processor, budget):
        batch = adapter.prepare_batch(processor, images, [adapter.build_prompt(processor, QUESTION)] * len(images))
        with torch.no_grad():
            logits = adapter.next_token_logits(model, adapter.encode(model, batch), batch)
    return batch, logits


# ---------------------------------------------------------------------------- DeepSeek-VL hybrid
@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    from encslim.models.families.deepseek_vl_hybrid.tiny import create_tiny_hybrid

    folder = create_tiny_hybrid(tmp_path_factory.mktemp("budgets") / "hybrid")
    model, processor, adapter = encslim.load_model(folder)
    return folder, model, processor, adapter


def test_hybrid_pool_budget_equals_manual(hybrid):
    from encslim.models.families.deepseek_vl_hybrid.adapter import hybrid_fuse

    _, model, processor, adapter = hybrid
    images = [make_image(1), make_image(2)]
    assert adapter.token_grids(model.config) == [(4, 4)]
    batch, logits = run_logits(adapter, model, processor, images, POOL)
    token_id = model.config.image_token_id
    assert placeholder_count(batch, token_id) == [4, 4]
    assert not hasattr(model.config, "token_budget") and processor.token_budget is None  # restored
    with torch.no_grad():
        fused = hybrid_fuse(model.model.aligner, adapter.encode(model, batch))
        assert fused.shape[1] == 16
        image = pool2x2(fused, 4, 4)
        ids = batch["input_ids"]
        embeds = model.get_input_embeddings()(ids)
        embeds[ids == token_id] = image.reshape(-1, image.shape[-1])
        expected = last_logits(model, embeds, batch["attention_mask"])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def top_half_by_first_layer_attention(tokens, llm):
    """The attention method written out: the first decoder layer's norm and q/k projections on the grid's tokens,
    softmax over keys, mean over heads and queries; the top half of the tokens in their original order."""
    layer, config = llm.layers[0], llm.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // heads
    hidden = layer.input_layernorm(tokens)
    b, n, _ = hidden.shape
    q = layer.self_attn.q_proj(hidden).view(b, n, heads, dim).transpose(1, 2)
    k = layer.self_attn.k_proj(hidden).view(b, n, kv_heads, dim).transpose(1, 2)
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    received = torch.softmax(q @ k.transpose(-1, -2) / dim ** 0.5, -1).mean(dim=(1, 2))  # (B, N)
    keep = [sorted(row.argsort(descending=True)[: n // 2].tolist()) for row in received]
    return torch.stack([tokens[i, idx] for i, idx in enumerate(keep)])


def test_hybrid_attention_budget_equals_manual(hybrid):
    from encslim.models.families.deepseek_vl_hybrid.adapter import hybrid_fuse

    _, model, processor, adapter = hybrid
    images = [make_image(8), make_image(9)]
    batch, logits = run_logits(adapter, model, processor, images, ATTENTION)
    token_id = model.config.image_token_id
    assert placeholder_count(batch, token_id) == [8, 8]
    with torch.no_grad():
        fused = hybrid_fuse(model.model.aligner, adapter.encode(model, batch))
        image = top_half_by_first_layer_attention(fused, model.model.language_model)
        ids = batch["input_ids"]
        embeds = model.get_input_embeddings()(ids)
        embeds[ids == token_id] = image.reshape(-1, image.shape[-1])
        expected = last_logits(model, embeds, batch["attention_mask"])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_hybrid_budget_one_is_no_budget_and_attention_counts(hybrid):
    _, model, processor, adapter = hybrid
    images = [make_image(3)]
    full_batch, full = run_logits(adapter, model, processor, images, None)
    one_batch, one = run_logits(adapter, model, processor, images, TokenBudget("pool", 1))
    assert torch.equal(full_batch["input_ids"], one_batch["input_ids"])
    assert torch.equal(full, one)
    assert placeholder_count(full_batch, model.config.image_token_id) == [16]
    batch, logits = run_logits(adapter, model, processor, images, ATTENTION)
    assert placeholder_count(batch, model.config.image_token_id) == [8]
    assert torch.isfinite(logits).all() and not torch.allclose(logits, full, atol=1e-4)


def test_hybrid_budget_in_config_json_and_stock_export_refused(hybrid, tmp_path):
    import shutil

    folder, _, _, _ = hybrid
    copy = tmp_path / "budgeted"
    shutil.copytree(folder, copy)
    data = json.loads((copy / "config.json").read_text())
    data["token_budget"] = POOL.to_dict()
    (copy / "config.json").write_text(json.dumps(data))
    model, processor, adapter = encslim.load_model(copy)
    assert model.config.token_budget == POOL.to_dict()
    assert processor.token_budget == POOL
    assert adapter.image_tokens(model.config) == 4
    batch = adapter.prepare_batch(processor, [make_image(4)], [adapter.build_prompt(processor, QUESTION)])
    assert placeholder_count(batch, model.config.image_token_id) == [4]
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    assert json.loads((saved / "config.json").read_text())["token_budget"] == POOL.to_dict()
    assert "token_budget" not in (saved / "processor_config.json").read_text()
    assert adapter.export_blockers(model.config, ["siglip"], "deepseek_vl") == [
        "transformers' DeepseekVLForConditionalGeneration has no token reducer: this model applies the token "
        "budget pool 0.25 (config.json token_budget) to its 4x4 image grid; export it as --format hf (loads "
        "with encslim), or remove the budget"]
    assert "deepseek_vl" not in adapter.export_targets(model.config, ["siglip"])
    assert adapter.export_notes(model.config) == [
        "token budget pool 0.25 (config.json token_budget): 4 of the 16 image tokens reach the LLM; transformers' "
        "deepseek_vl_hybrid classes have no reducer (they ignore the key and splice all of them), so this folder "
        "applies its budget when loaded with encslim only"]


# ---------------------------------------------------------------------------- I-MoF
@pytest.fixture(scope="module")
def imof(tmp_path_factory):
    from encslim.models.families.imof.tiny import create_tiny_imof

    folder = create_tiny_imof(tmp_path_factory.mktemp("budgets") / "imof")
    model, processor, adapter = encslim.load_model(folder)
    return folder, model, processor, adapter


def test_imof_pool_budget_reduces_each_tower_before_interleaving(imof):
    _, model, processor, adapter = imof
    images = [make_image(5), make_image(6)]
    assert adapter.token_grids(model.config) == [(4, 4), (4, 4)]
    assert adapter.token_grids(model.config, {"dinov2"}) == [(4, 4)]
    batch, logits = run_logits(adapter, model, processor, images, POOL)
    assert placeholder_count(batch, -200) == [8, 8]  # 2x2 per tower
    with torch.no_grad():
        features = adapter.encode(model, batch)
        clip = pool2x2(model.model.mm_projector(features["clip"]), 4, 4)
        dino = pool2x2(model.model.dino_mm_projector(features["dinov2"]), 4, 4)
        image = torch.stack([clip, dino], 2).reshape(2, 8, -1)  # c0 d0 c1 d1 ...
        assert torch.equal(image[:, 0], clip[:, 0]) and torch.equal(image[:, 1], dino[:, 0])
        ids = batch["input_ids"]
        embeds = model.get_input_embeddings()(ids.masked_fill(ids == -200, 0))
        embeds[ids == -200] = image.reshape(-1, image.shape[-1])
        expected = last_logits(model, embeds, batch["attention_mask"])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    with adapter.token_budget(model, processor, POOL):  # the model's own forward applies it too
        with torch.no_grad():
            own = model(input_ids=batch["input_ids"][:1], pixel_values=batch["pixel_values"][:1]).logits[:, -1]
    torch.testing.assert_close(own, expected[:1], rtol=0, atol=1e-5)


def test_imof_budget_one_removed_tower_and_attention(imof):
    _, model, processor, adapter = imof
    images = [make_image(7)]
    full_batch, full = run_logits(adapter, model, processor, images, None)
    one_batch, one = run_logits(adapter, model, processor, images, TokenBudget("attention", 1))
    assert torch.equal(full_batch["input_ids"], one_batch["input_ids"]) and torch.equal(full, one)
    assert placeholder_count(full_batch, -200) == [32]
    batch, logits = run_logits(adapter, model, processor, images, ATTENTION)
    assert placeholder_count(batch, -200) == [16]  # 8 per tower
    with torch.no_grad():  # each tower's own top half, then interleaved
        features = adapter.encode(model, batch)
        clip = top_half_by_first_layer_attention(model.model.mm_projector(features["clip"]), model.model)
        dino = top_half_by_first_layer_attention(model.model.dino_mm_projector(features["dinov2"]), model.model)
        ids = batch["input_ids"]
        embeds = model.get_input_embeddings()(ids.masked_fill(ids == -200, 0))
        embeds[ids == -200] = torch.stack([clip, dino], 2).reshape(-1, clip.shape[-1])
        expected = last_logits(model, embeds, batch["attention_mask"])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(logits, full, atol=1e-4)
    with adapter.token_budget(model, processor, POOL):
        prompts = [adapter.build_prompt(processor, QUESTION)]
        batch = adapter.prepare_batch(processor, images, prompts, masked={"dinov2"})
        assert placeholder_count(batch, -200) == [4]
        assert adapter.image_tokens(model.config, {"dinov2"}) == 4
        with torch.no_grad():
            logits = adapter.next_token_logits(model, adapter.encode(model, batch, ["clip"]), batch, {"dinov2"})
        assert torch.isfinite(logits).all()


def test_imof_budget_in_config_json_and_llava_refused(imof, tmp_path):
    import shutil

    folder, _, _, _ = imof
    copy = tmp_path / "budgeted"
    shutil.copytree(folder, copy)
    data = json.loads((copy / "config.json").read_text())
    data["token_budget"] = POOL.to_dict()
    (copy / "config.json").write_text(json.dumps(data))
    model, processor, adapter = encslim.load_model(copy)
    assert model.config.token_budget == POOL.to_dict() and processor.token_budget == POOL
    assert adapter.image_tokens(model.config) == 8
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    assert json.loads((saved / "config.json").read_text())["token_budget"] == POOL.to_dict()
    assert "token_budget" not in (saved / "processor_config.json").read_text()
    assert adapter.export_blockers(model.config, ["clip"], "llava") == [
        "LLaVA's stock class has no token reducer: this model applies the token budget pool 0.25 (config.json "
        "token_budget); export it as --format hf, or remove the budget"]
    assert adapter.export_notes(model.config)[-1] == (
        "token budget pool 0.25 (config.json token_budget): 8 of the 32 interleaved image tokens reach the LLM; "
        "MMVP's own code has no reducer (it ignores the key and splices all of them), so this folder applies its "
        "budget when loaded with encslim only")


def test_imof_cls_patch_refuses_a_budget(imof):
    import copy

    _, model, _, adapter = imof
    config = copy.deepcopy(model.config)
    config.mm_vision_select_feature = "cls_patch"
    assert adapter.token_grids(config) is None
    with pytest.raises(ConfigError) as err:
        adapter.check_token_budget(config, POOL)
    assert str(err.value) == (
        "token budget pool 0.25: I-MoF with mm_vision_select_feature 'cls_patch' keeps each tower's CLS token "
        "before its patch grid, so its tokens are no grid a reducer could shorten; only 'patch' (MMVP's) takes "
        "a budget")
    adapter.check_token_budget(config, TokenBudget("pool", 1))  # budget 1: nothing to refuse


# ---------------------------------------------------------------------------- Cambrian
def cambrian_images():
    return [make_image(1, 48).resize((60, 40)), make_image(2, 48)]  # a wide image (unpadded to 2x4), a square one


@pytest.fixture(scope="module")
def connector_only(tiny_cambrian, tmp_path_factory):
    """The tiny Cambrian without sampler layers inside the LLM (``connector_only``: their keys removed)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder, paths = tiny_cambrian
    copy = tmp_path_factory.mktemp("budgets") / "cambrian-connector-only"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("encoders"))
    data = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**data, "connector_only": True}))
    state = load_file(str(copy / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("model.vision_sampler_layers.")},
              str(copy / "model.safetensors"), metadata={"format": "pt"})
    return (copy, paths, *encslim.load_model(copy, encoders=paths))


def test_cambrian_connector_only_pools_each_unpadded_grid_before_the_newlines(connector_only):
    _, _, model, processor, adapter = connector_only
    images = cambrian_images()
    assert adapter.token_grids(model.config) == [(4, 4)]
    batch, logits = run_logits(adapter, model, processor, images, POOL)
    assert placeholder_count(batch, -200) == [1 * 3, 2 * 3]  # 2x4 -> 1x2 and 4x4 -> 2x2, plus a newline per row
    full_batch, _ = run_logits(adapter, model, processor, images, None)
    assert placeholder_count(full_batch, -200) == [2 * 5, 4 * 5]
    newline = model.model.image_newline
    with torch.no_grad():
        full = adapter.embed(model, adapter.encode(model, full_batch), full_batch)
        ids = batch["input_ids"]
        embeds = model.get_input_embeddings()(ids.masked_fill(ids == -200, 0))
        for row, (h, w) in enumerate([(2, 4), (4, 4)]):
            grid = full[row][full_batch["input_ids"][row] == -200].view(h, w + 1, -1)[:, :w]
            pooled = pool2x2(grid.reshape(1, h * w, -1), h, w).view(h // 2, w // 2, -1)
            rows = torch.cat([pooled, newline.view(1, 1, -1).expand(h // 2, 1, -1)], 1)
            embeds[row][ids[row] == -200] = rows.reshape(-1, rows.shape[-1])
        expected = last_logits(model, embeds, batch["attention_mask"])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    _, none = run_logits(adapter, model, processor, images, None)
    _, one = run_logits(adapter, model, processor, images, TokenBudget("pool", 1))
    assert torch.equal(none, one)


def test_cambrian_budget_refusals(connector_only, tiny_cambrian):
    _, paths, model, processor, adapter = connector_only
    with pytest.raises(ConfigError) as err:
        adapter.check_token_budget(model.config, ATTENTION)
    assert str(err.value) == (
        "token budget attention 0.5: Cambrian's image rows each end in an image_newline token, and the attention "
        "method keeps tokens whatever their rows, so the prompt could not know how many rows (newlines) remain; "
        "use --token-method pool")
    folder, _ = tiny_cambrian
    full_config = adapter.read_config(folder)
    assert adapter.token_grids(full_config) is None
    with pytest.raises(ConfigError) as err:
        adapter.check_token_budget(full_config, POOL)
    assert str(err.value) == (
        "token budget pool 0.25: Cambrian's sampler layers inside the LLM (after decoder layers [0, 2]) re-query "
        "every image token against its window of the 4x4 query grid, so a reduced grid has no windows to query; "
        "only a connector_only Cambrian takes a token budget")
    adapter.check_token_budget(full_config, TokenBudget("pool", 1))


def test_cambrian_budget_in_config_json(connector_only, tmp_path):
    import shutil

    folder, paths, _, _, _ = connector_only
    copy = tmp_path / "budgeted"
    shutil.copytree(folder, copy)
    data = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**data, "token_budget": POOL.to_dict()}))
    model, processor, adapter = encslim.load_model(copy, encoders=paths)
    assert model.config.token_budget == POOL.to_dict() and processor.token_budget == POOL
    assert adapter.image_tokens(model.config) == 2 * 3
    assert processor.image_tokens((60, 40)) == 3
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    assert json.loads((saved / "config.json").read_text())["token_budget"] == POOL.to_dict()
    assert "token_budget" not in (saved / "processor_config.json").read_text()
    assert adapter.export_notes(model.config)[-1] == (
        "token budget pool 0.25 (config.json token_budget): each image's query grid is pooled to 2x2 (square image) "
        "before the newlines; Cambrian's own code has no reducer (it ignores the key), so this folder applies its "
        "budget when loaded with encslim only")
