"""The native multi-encoder model: every fusion class, round trips, encode/decode, masking."""

import pytest
import torch
from PIL import Image

from encslim.models.loading import load_model
from encslim.models.families.native.tiny import build_tiny

FUSIONS = ["A1", "A2", "B", "C"]
ENCODERS = ("clip", "siglip", "dinov2", "convnext", "sam")


def _images(n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(64, 64, 3, generator=gen) * 255).byte().numpy()) for _ in range(n)]


def _batch(processor, masked=(), n=2):
    prompts = [processor.build_prompt("What colour is the shape?"), processor.build_prompt("How many?")][:n]
    return processor(text=prompts, images=_images(n), masked_slots=masked)


@pytest.fixture(scope="module", params=FUSIONS)
def tiny(request):
    model, processor = build_tiny(request.param, ENCODERS, seed=1)
    return request.param, model, processor


def test_save_load_round_trip_gives_identical_logits(tiny, tmp_path):
    fusion, model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor, adapter = load_model(tmp_path)
    batch = _batch(loaded_processor)
    assert torch.equal(batch["input_ids"], _batch(processor)["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert adapter.fusion_class(loaded.config) == fusion
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]


def test_encode_then_decode_equals_forward(tiny):
    _, model, processor = tiny
    batch = _batch(processor)
    pixels = {k[len("pixel_values_"):]: v for k, v in batch.items() if k.startswith("pixel_values_")}
    with torch.no_grad():
        features = model.encode(pixels)
        split = model.decode(features, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        whole = model(**batch).logits
    assert set(features) == set(ENCODERS)
    assert torch.equal(split, whole)


def test_generate_matches_step_by_step_greedy(tiny):
    _, model, processor = tiny
    batch = _batch(processor, n=1)
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        ids = batch["input_ids"]
        pixels = {k: v for k, v in batch.items() if k.startswith("pixel_values_")}
        for _ in range(4):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **pixels).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, ids)


@pytest.mark.parametrize("mode", ["removal", "zero"])
def test_masking_a_slot_gives_finite_outputs_independent_of_its_pixels(tiny, mode):
    fusion, model, processor = tiny
    removed = ("sam",) if mode == "removal" else ()
    pixels = _batch(processor)  # pixels for every slot, including the masked one
    batch = dict(_batch(processor, masked=removed), pixel_values_sam=pixels["pixel_values_sam"])
    other = dict(batch, pixel_values_sam=torch.randn_like(pixels["pixel_values_sam"]))
    with torch.no_grad():
        out = model(**batch, masked_slots=["sam"], mask_mode=mode).logits
        changed = model(**other, masked_slots=["sam"], mask_mode=mode).logits
        unmasked = model(**pixels).logits
    assert torch.isfinite(out).all()
    assert torch.equal(out, changed)  # the masked slot's input no longer matters
    if out.shape == unmasked.shape:
        assert not torch.equal(out, unmasked)  # and masking does change the output


def test_class_b_removal_drops_exactly_that_slots_image_tokens():
    model, processor = build_tiny("B", ENCODERS, seed=1)
    image_token = model.config.image_token_id
    full = _batch(processor)["input_ids"]
    masked = _batch(processor, masked=("convnext",))["input_ids"]
    per_slot = {s: model.config.slot_num_tokens(s) for s in ENCODERS}
    assert int((full[0] == image_token).sum()) == sum(per_slot.values())
    assert int((masked[0] == image_token).sum()) == sum(per_slot.values()) - per_slot["convnext"]
    batch = _batch(processor)
    pixels = {k[len("pixel_values_"):]: v for k, v in batch.items() if k.startswith("pixel_values_")}
    with torch.no_grad():
        features = model.encode(pixels)
        embeds = model.fuse(features, masked_slots=["convnext"])
        reference = torch.cat([model.fusion.projectors[s](features[s]) for s in ENCODERS if s != "convnext"], 1)
    assert torch.equal(embeds, reference)


def test_class_c_removal_excludes_the_slots_keys():
    model, processor = build_tiny("C", ENCODERS, seed=1)
    batch = _batch(processor)
    pixels = {k[len("pixel_values_"):]: v for k, v in batch.items() if k.startswith("pixel_values_")}
    fusion = model.fusion
    with torch.no_grad():
        features = model.encode(pixels)
        masked = model.fuse(features, masked_slots=["clip", "sam"])
        # reference: an explicit attention mask over all keys, -inf on the masked slots' keys
        keys = torch.cat([fusion.k_proj[s](features[s]) for s in ENCODERS], 1)
        values = torch.cat([fusion.v_proj[s](features[s]) for s in ENCODERS], 1)
        allowed = torch.cat([torch.full((features[s].shape[1],), s not in ("clip", "sam")) for s in ENCODERS])
        queries = fusion.queries.unsqueeze(0).expand(2, -1, -1)
        attn = torch.nn.functional.scaled_dot_product_attention(
            fusion._heads(fusion.q_proj(queries)), fusion._heads(keys), fusion._heads(values), attn_mask=allowed[None, None, None, :])
        x = queries + fusion.o_proj(attn.transpose(1, 2).reshape(2, queries.shape[1], -1))
        reference = x + fusion.mlp(fusion.norm(x))
    torch.testing.assert_close(masked, reference, atol=1e-6, rtol=1e-5)


def test_masking_every_slot_in_removal_mode_is_refused():
    model, processor = build_tiny("A1", ("clip", "siglip"))
    batch = _batch(processor)
    with pytest.raises(ValueError, match="every encoder"):
        model(**batch, masked_slots=["clip", "siglip"])


def test_mean_mask_uses_the_given_constant():
    model, processor = build_tiny("A1", ("clip", "siglip"))
    batch = _batch(processor)
    pixels = {k[len("pixel_values_"):]: v for k, v in batch.items() if k.startswith("pixel_values_")}
    with torch.no_grad():
        features = model.encode(pixels)
        mean = features["siglip"].mean(dim=(0, 1))
        got = model.fuse(features, ["siglip"], "mean", {"siglip": mean})
        constant = dict(features, siglip=mean.expand_as(features["siglip"]))
        assert torch.equal(got, model.fuse(constant))


def test_load_options_dtype_and_device_map(tiny_model_dir):
    folder = tiny_model_dir("A1")
    model, processor, _ = load_model(folder, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(**_batch(processor)).logits.float()).all()
    mapped, _, _ = load_model(folder, device_map="auto")
    assert next(mapped.parameters()).device.type == "cpu"


def test_auto_classes_load_the_native_folder(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    import encslim.models.families.native.adapter  # noqa: F401  (registers the family)

    folder = tiny_model_dir("B")
    assert AutoConfig.from_pretrained(folder).model_type == "encslim"
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model).__name__ == "EncslimForConditionalGeneration"
    assert type(processor).__name__ == "EncslimProcessor"


def test_qwen2_text_model_works():
    model, processor = build_tiny("A1", ("clip",), text="qwen2")
    with torch.no_grad():
        out = model(**_batch(processor), labels=_batch(processor)["input_ids"])
    assert type(model.language_model).__name__ == "Qwen2ForCausalLM"
    assert torch.isfinite(out.loss)
