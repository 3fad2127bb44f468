"""The evaluator: the feature cache gives the same scores as separate evaluations, resumes, aggregates."""

import json

import pytest
import torch

from encslim.data.load import load_samples
from encslim.bench.evaluate import EvalSettings, evaluate
from encslim.bench.features import encode_images, mean_features
from encslim.bench.answering import option_token_ids
from encslim.bench.results import EvalResult
from encslim.data.samples import Sample
from encslim.errors import ConfigError, DataError
from encslim.models.loading import load_model

SLOTS = ("clip", "siglip", "dinov2")
MASKS = [frozenset()] + [frozenset({s}) for s in SLOTS]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    cache = {}

    def get(fusion):
        if fusion not in cache:
            cache[fusion] = load_model(tiny_model_dir(fusion))
        return cache[fusion]

    return get


@pytest.mark.parametrize("fusion, mode", [("A1", "removal"), ("B", "removal"), ("C", "zero"), ("A2", "mean")])
def test_cache_equals_separate_evaluations(models, mixed_jsonl, fusion, mode):
    loaded = model, processor, adapter = models(fusion)
    samples = load_samples(mixed_jsonl)
    values = mean_features(model, processor, adapter, samples, batch_size=5) if mode == "mean" else None
    kwargs = dict(settings=EvalSettings(mask_mode=mode, batch_size=5, max_new_tokens=4, mask_values=values))
    cached = evaluate(loaded, samples, mask_sets=MASKS, **kwargs)
    assert cached.encoder_passes == 3.0  # each encoder once per sample, for 4 mask sets
    separate_passes = 0.0
    for masked in MASKS:
        alone = evaluate(loaded, samples, mask_sets=[masked], feature_cache=False, **kwargs)
        assert alone.predictions[masked] == cached.predictions[masked]
        assert alone.scores[masked] == cached.scores[masked]
        separate_passes += alone.encoder_passes
    # without the cache every mask set runs its encoders again: N(N+1) passes, fewer when removal skips the masked
    assert separate_passes == (3 + 3 * 2 if mode == "removal" else 3 * 4)
    assert len(set(map(tuple, (sorted(p.values()) for p in cached.predictions.values())))) > 1  # masks matter


def test_mean_features_are_the_data_mean(models, mixed_jsonl):
    model, processor, adapter = models("A1")
    samples = load_samples(mixed_jsonl)
    values = mean_features(model, processor, adapter, samples, batch_size=5)
    prompts = [processor.build_prompt("") for _ in samples]
    features = encode_images(model, processor, adapter, [s.image for s in samples], prompts, SLOTS)
    for slot in SLOTS:
        torch.testing.assert_close(values[slot], features[slot].double().mean(dim=(0, 1)).float(), atol=1e-5, rtol=0)


def test_mcq_logits_choose_argmax_over_option_tokens(models, mixed_jsonl):
    loaded = model, processor, adapter = models("B")
    samples = [s for s in load_samples(mixed_jsonl) if s.metric == "mcq"]
    batched = evaluate(loaded, samples, mask_sets=MASKS[:2], settings=EvalSettings(batch_size=4))
    ids = option_token_ids(processor.tokenizer, ["A", "B", "C"])
    for sample in samples:
        prompt = processor.build_prompt(
            "Question: " + sample.question + "\nOptions:\nA. red\nB. blue\nC. green\n"
            "Answer with the option's letter from the given choices directly.")
        for masked in MASKS[:2]:
            inputs = processor(text=[prompt], images=[sample.image], masked_slots=masked)
            with torch.no_grad():
                logits = model(**inputs, masked_slots=masked).logits[0, -1]
            expected = "ABC"[int(logits[[ids["A"], ids["B"], ids["C"]]].argmax())]
            assert batched.predictions[masked][sample.id] == expected


def test_resume_skips_what_is_done(models, mixed_jsonl, tmp_path):
    loaded = model, processor, adapter = models("A1")
    samples = load_samples(mixed_jsonl)
    records = tmp_path / "records.jsonl"
    first = evaluate(loaded, samples[:6], mask_sets=MASKS, records_path=records,
                     settings=EvalSettings(max_new_tokens=3))
    assert first.evaluated == 6 and len(records.read_text().splitlines()) == 6 * 4
    with open(records, "a") as f:
        f.write('{"key": "trunc')  # an interrupted write
    second = evaluate(loaded, samples, mask_sets=MASKS, records_path=records, settings=EvalSettings(max_new_tokens=3))
    assert second.evaluated == 6 and second.encoder_passes == 3.0
    third = evaluate(loaded, samples, mask_sets=MASKS, records_path=records, settings=EvalSettings(max_new_tokens=3))
    assert third.evaluated == 0 and third.encoder_passes == 0.0 and third.scores == second.scores
    fresh = evaluate(loaded, samples, mask_sets=MASKS, settings=EvalSettings(max_new_tokens=3))
    assert fresh.predictions == third.predictions
    other = evaluate(loaded, samples, mask_sets=MASKS, records_path=records, settings=EvalSettings(max_new_tokens=2))
    assert other.evaluated == 12  # other settings: nothing reused
    lines = [json.loads(x) for x in records.read_text().splitlines() if x.startswith('{"key": "') and x.endswith("}")]
    record = lines[0]
    assert {"key", "sample_id", "masked", "prompt_id", "prediction", "score", "mask_mode"} <= set(record)
    assert record["masked"] == [] and len(record["prompt_id"]) == 12


def test_text_only_sample_scores_the_same_under_every_mask(models):
    loaded = model, processor, adapter = models("B")
    sample = Sample(id="t", question="Capital of France?", answers=["Paris"], metric="exact", category="Knowledge")
    result = evaluate(loaded, [sample], mask_sets=MASKS, settings=EvalSettings(max_new_tokens=3))
    assert len({result.predictions[m]["t"] for m in MASKS}) == 1 and result.encoder_passes == 0.0


def test_bad_arguments(models, mixed_jsonl):
    loaded = model, processor, adapter = models("A1")
    samples = load_samples(mixed_jsonl)[:2]
    with pytest.raises(ConfigError, match="unknown slot.*sam; this model's slots are clip, siglip, dinov2"):
        evaluate(loaded, samples, mask_sets=[{"sam"}])
    with pytest.raises(ConfigError, match="masks every encoder"):
        evaluate(loaded, samples, mask_sets=[set(SLOTS)])
    with pytest.raises(ConfigError, match="needs mask_values for clip"):
        evaluate(loaded, samples, mask_sets=[{"clip"}], settings=EvalSettings(mask_mode="mean"))
    with pytest.raises(DataError, match="sample id 'q0' appears twice"):
        evaluate(loaded, [samples[0], samples[0]])


def test_aggregation_overall_is_mean_over_samples():
    full, masked = frozenset(), frozenset({"a"})
    result = EvalResult(
        mask_sets=[full, masked],
        scores={full: {"1": 1.0, "2": 0.0, "3": 1.0, "4": 1.0}, masked: {"1": 0.0, "2": 0.0, "3": 1.0, "4": 0.5}},
        predictions={full: {}, masked: {}}, categories={"1": "OCR", "2": "OCR", "3": "OCR", "4": "General"},
        encoder_passes=1.0,
    )
    assert result.accuracy() == {"overall": 0.75, "OCR": pytest.approx(2 / 3), "General": 1.0}
    assert result.macro() == pytest.approx((2 / 3 + 1.0) / 2)
    assert result.accuracy({"a"})["overall"] == pytest.approx(0.375)
    summary = result.to_dict()
    assert summary["overall_is"] == "mean over samples" and summary["counts"] == {"OCR": 3, "General": 1}
    table = result.table().splitlines()
    assert table[0].split() == ["category", "n", "full", "-a"]
    assert table[1].split() == ["overall", "4", "75.0", "37.5"]


def test_scores_follow_predictions(models, mixed_jsonl):
    loaded = model, processor, adapter = models("B")
    samples = load_samples(mixed_jsonl)
    first = evaluate(loaded, samples, mask_sets=MASKS, settings=EvalSettings(max_new_tokens=3))
    for sample in samples:  # make the full model's answers the ground truth
        sample.answers = [first.predictions[frozenset()][sample.id]]
    second = evaluate(loaded, samples, mask_sets=MASKS, settings=EvalSettings(max_new_tokens=3))
    assert second.accuracy()["overall"] == 1.0
    for masked in MASKS[1:]:
        agree = [float(second.predictions[masked][s.id] == first.predictions[frozenset()][s.id]) for s in samples]
        assert second.accuracy(masked)["overall"] == pytest.approx(sum(agree) / len(agree))
    assert min(second.accuracy(m)["overall"] for m in MASKS[1:]) < 1.0


@pytest.mark.parametrize("fusion, mode", [("A1", "removal"), ("B", "removal"), ("C", "zero")])
def test_feature_store_spans_calls(models, mixed_jsonl, fusion, mode):
    from encslim.bench.features import FeatureStore

    loaded = model, processor, adapter = models(fusion)
    samples = load_samples(mixed_jsonl)
    store = FeatureStore()
    kwargs = dict(settings=EvalSettings(mask_mode=mode, batch_size=5, max_new_tokens=3))
    first = evaluate(loaded, samples, mask_sets=MASKS[:2], features=store, **kwargs)
    assert first.encoder_passes_total == 3 * len(samples) and len(store) == len(samples)
    later = [frozenset({"clip", "siglip"}), frozenset({"dinov2"})]
    # a later call reuses every feature (stacked back from the store): no encoder runs
    second = evaluate(loaded, samples, mask_sets=later, features=store, **kwargs)
    assert second.encoder_passes_total == 0 and second.encoder_passes == 0.0
    plain = evaluate(loaded, samples, mask_sets=MASKS[:2] + later, **kwargs)
    for masked in MASKS[:2]:
        assert first.predictions[masked] == plain.predictions[masked]
    for masked in later:
        assert second.predictions[masked] == plain.predictions[masked]
    # a store too small for the second sample: the rest is encoded again, with the same answers
    tiny = FeatureStore(max_bytes=store.nbytes // len(samples))
    evaluate(loaded, samples, mask_sets=MASKS[:2], features=tiny, **kwargs)
    again = evaluate(loaded, samples, mask_sets=later, features=tiny, **kwargs)
    assert tiny.refused > 0 and 0 < again.encoder_passes_total < 3 * len(samples)
    assert again.predictions == {m: plain.predictions[m] for m in later}
