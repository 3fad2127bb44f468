"""Training examples and batches: answer-only labels, eval-identical prompts, encoder dropout, bad data."""

import pytest
import torch

from encslim.data.prompts import build_question
from encslim.errors import DataError
from encslim.finetune.collator import IGNORE_INDEX, FinetuneCollator
from encslim.finetune.dropout import batch_seed, draw_masks, per_batch_masked, per_sample_keep
from encslim.finetune.examples import build_examples as _build_examples
from encslim.models.registry import get_adapter
from encslim.models.families.native.tiny import build_tiny

ADAPTER = get_adapter("encslim")


def build_examples(samples, processor, *args, **kwargs):
    return _build_examples(samples, processor, ADAPTER, processor.image_token_id, *args, **kwargs)


@pytest.fixture(scope="module")
def tiny_a1():
    return build_tiny("A1", seed=0)


def _collator(model, processor, examples, **kwargs):
    return FinetuneCollator(examples, processor, ADAPTER, model.config, processor.tokenizer.pad_token_id, **kwargs)


def test_prompt_is_the_evaluation_prompt_and_labels_cover_only_the_answer(tiny_a1, sample_factory):
    model, processor = tiny_a1
    samples = sample_factory(4)
    examples = build_examples(samples, processor, model.config.num_image_tokens())
    for sample, example in zip(samples, examples):
        eval_ids = processor(text=[processor.build_prompt(build_question(sample))])["input_ids"][0].tolist()
        assert example.prompt_ids == eval_ids
        assert processor.tokenizer.decode(example.answer_ids) == f" {sample.answers[0]}</s>"
    batch = _collator(model, processor, examples)([0, 1, 2, 3])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values_clip", "pixel_values_siglip",
                          "pixel_values_dinov2"}
    for row, example in enumerate(examples):
        n_prompt, n_answer = len(example.prompt_ids), len(example.answer_ids)
        labels = batch["labels"][row]
        assert (labels[:n_prompt] == IGNORE_INDEX).all()  # prompt and its image tokens
        assert labels[n_prompt:n_prompt + n_answer].tolist() == example.answer_ids
        assert (labels[n_prompt + n_answer:] == IGNORE_INDEX).all()  # right padding
        assert batch["attention_mask"][row].sum() == n_prompt + n_answer
        assert batch["input_ids"][row, :n_prompt].tolist() == example.prompt_ids


def test_class_b_batch_dropout_prompt_matches_processor_removal(sample_factory):
    model, processor = build_tiny("B", seed=0)
    examples = build_examples(sample_factory(6), processor, model.config.num_image_tokens())
    collator = _collator(model, processor, examples, encoder_dropout=0.5, seed=3)
    seen = set()
    for start in range(0, 6, 2):
        for epoch in range(6):
            collator.epoch = epoch
            batch = collator([start, start + 1])
            masked = batch.get("masked_slots", [])
            seen.add(tuple(masked))
            assert "slot_keep" not in batch and len(masked) < 3
            assert sorted(k[len("pixel_values_"):] for k in batch if k.startswith("pixel_values_")) == \
                sorted(set(model.slot_names) - set(masked))
            text = processor.build_prompt(build_question(sample_factory(6)[start]))
            expected = processor(text=[text], masked_slots=masked)["input_ids"][0].tolist()
            n = len(expected)
            assert batch["input_ids"][0, :n].tolist() == expected
            out = model(**batch)  # the model accepts the masked prompt (image-token count matches)
            assert torch.isfinite(out.loss)
    assert len(seen) > 2  # different batches and epochs draw different mask sets


def test_slot_keep_zeroes_one_sample_like_removal(tiny_a1, sample_factory):
    model, processor = tiny_a1
    examples = build_examples(sample_factory(2), processor, model.config.num_image_tokens())
    batch = _collator(model, processor, examples)([0, 1])
    keep = {"clip": torch.tensor([0.0, 1.0])}
    with torch.no_grad():
        dropped = model(**batch, slot_keep=keep).logits
        full = model(**batch).logits
        removed = model(**batch, masked_slots=["clip"]).logits
    assert torch.allclose(dropped[0], removed[0], atol=1e-6)
    assert torch.allclose(dropped[1], full[1], atol=1e-6)
    assert (dropped[0] - full[0]).abs().max() > 1e-4


def test_cached_features_give_the_same_loss_as_pixels(tiny_a1, sample_factory):
    from encslim.finetune.features import compute_features
    from encslim.models.registry import get_adapter

    model, processor = tiny_a1
    examples = build_examples(sample_factory(5), processor, model.config.num_image_tokens())
    features = compute_features(model, processor, get_adapter("encslim"), examples, batch_size=2)
    assert {k: tuple(v.shape) for k, v in features.items()} == {s: (5, 16, 32) for s in model.slot_names}
    pixels = _collator(model, processor, examples)([4, 1, 3])
    cached = _collator(model, processor, examples, features=features)([4, 1, 3])
    assert "pixel_values_clip" not in cached
    with torch.no_grad():
        assert abs(float(model(**pixels).loss) - float(model(**cached).loss)) < 1e-5


def test_dropout_draws_are_seeded_never_mask_everything_and_have_rate_p():
    gen = torch.Generator().manual_seed(0)
    masked = draw_masks(20000, 3, 0.3, gen)
    assert not masked.all(dim=1).any()
    rate = masked.float().mean(dim=0)
    assert ((rate > 0.26) & (rate < 0.31)).all(), rate  # 0.3 minus the rescued all-masked rows (0.9 %)
    keep = per_sample_keep(["a", "b"], 4, 0.9, torch.Generator().manual_seed(batch_seed(1, 0, [3, 1, 2, 0])))
    again = per_sample_keep(["a", "b"], 4, 0.9, torch.Generator().manual_seed(batch_seed(1, 0, [3, 1, 2, 0])))
    assert all(torch.equal(keep[s], again[s]) for s in keep)
    assert ((keep["a"] + keep["b"]) >= 1).all()
    assert batch_seed(1, 0, [3, 1]) != batch_seed(1, 1, [3, 1]) != batch_seed(2, 0, [3, 1])
    assert per_batch_masked(["a"], 0.99, torch.Generator().manual_seed(0)) == []


def test_bad_samples_raise_one_line_data_errors(tiny_a1, sample_factory):
    model, processor = tiny_a1
    expected = model.config.num_image_tokens()
    bad = sample_factory(3)
    bad[1].answers = []
    with pytest.raises(DataError, match=r"1 sample\(s\), first 's1' at mem:1 have no answer"):
        build_examples(bad, processor, expected)
    bad = sample_factory(3)
    bad[2].image = None
    with pytest.raises(DataError, match="have no image"):
        build_examples(bad, processor, expected)
    bad = sample_factory(3)
    bad[0].question = "<image>\nWhat colour is the square?"
    with pytest.raises(DataError, match="placeholder"):
        build_examples(bad, processor, expected)
    with pytest.raises(DataError, match="have 16 image tokens in the prompt but the model's fusion gives 9"):
        build_examples(sample_factory(2), processor, expected_image_tokens=9)
    with pytest.raises(DataError, match="longer than the model's 20 positions"):
        build_examples(sample_factory(2), processor, expected, max_length=20)


def test_reader_rejects_data_without_answers(tmp_path, jsonl_writer):
    from encslim.data.load import load_samples

    path = jsonl_writer(tmp_path, n=3, answers=False)
    with pytest.raises(DataError) as err:
        load_samples(path)
    assert "no answer" in str(err.value) and "\n" not in str(err.value)
