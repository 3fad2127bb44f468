"""Prompts and a small greedy evaluator for the demo model (used while training and in its tests).

The general evaluator with feature cache, scorers and records is ``encslim.bench.evaluate``;
this one only needs what the demo needs: exact-match scoring of greedy answers, per category,
with each requested set of slots masked (removal mask), encoders run once per sample.
"""

import torch

from ..bench.demo_data import DEMO_CATEGORIES, MCQ_INSTRUCTION, SHORT_ANSWER

# Prompt templates seen in training, so that the model answers the prompts of common
# evaluators (VLMEvalKit's VQA suffix and MCQ layouts, LLaVA's MCQ instruction, bare questions).
OPEN_TEMPLATES = ("{q}\n" + SHORT_ANSWER, "{q}", "{q}\nAnswer the question directly.")
MCQ_TEMPLATES = (
    "Question: {q}\nOptions:\n{options}\n" + MCQ_INSTRUCTION,
    "{q}\n{options}\n" + MCQ_INSTRUCTION,
    "Question: {q}\nOptions:\n{options}\nPlease select the correct answer from the options above. \n",
    "{q}\n{options}",
)


def format_question(sample, rng=None):
    """The question text of a demo sample (before the chat template).

    Args:
        sample: a demo record (``question``, ``options``).
        rng: a ``random.Random`` to draw a training template; ``None`` gives the first (canonical)
            template, which is the default of ``encslim.bench.prompts`` (MMBench layout with
            LLaVA's instructions).
    """
    if sample["options"]:
        options = "\n".join(f"{k}. {v}" for k, v in sample["options"].items())
        template = MCQ_TEMPLATES[0] if rng is None else rng.choice(MCQ_TEMPLATES)
        return template.format(q=sample["question"], options=options)
    template = OPEN_TEMPLATES[0] if rng is None else rng.choice(OPEN_TEMPLATES)
    return template.format(q=sample["question"])


def normalise(text):
    """Lower-case, strip spaces and a trailing full stop: the demo's exact-match rule."""
    return text.strip().rstrip(".").strip().lower()


def mask_label(masked):
    """``"full"`` or ``"-slot"``/``"-a-b"`` for a tuple of masked slots."""
    return "full" if not masked else "-" + "-".join(masked)


@torch.no_grad()
def predict_demo(model, processor, samples, mask_sets, batch_size=50, max_new_tokens=6):
    """Greedy answers per mask set: ``{masked tuple: [prediction, ...]}`` in sample order."""
    predictions = {tuple(m): [] for m in mask_sets}
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        prompts = [processor.build_prompt(format_question(s)) for s in batch]
        inputs = processor(text=prompts, images=[s["image"] for s in batch])
        pixels = {k[len("pixel_values_"):]: v for k, v in inputs.items() if k.startswith("pixel_values_")}
        features = model.encode(pixels)
        width = inputs["input_ids"].shape[1]
        for masked in predictions:
            out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 image_features=features, masked_slots=list(masked), mask_mode="removal",
                                 max_new_tokens=max_new_tokens, do_sample=False)
            predictions[masked] += processor.batch_decode(out[:, width:], skip_special_tokens=True)
    return predictions


def accuracy_by_category(samples, predictions):
    """``{"overall": mean, category: mean}`` of exact matches (MCQ: the option letter)."""
    hits = {}
    for sample, pred in zip(samples, predictions):
        hits.setdefault(sample["category"], []).append(normalise(pred) == normalise(sample["answer"]))
    result = {"overall": round(sum(sum(h) for h in hits.values()) / max(1, len(samples)), 4)}
    for category in DEMO_CATEGORIES:
        if category in hits:
            result[category] = round(sum(hits[category]) / len(hits[category]), 4)
    return result


def evaluate_demo(model, processor, samples, mask_sets=((),), batch_size=50, max_new_tokens=6):
    """Per-category accuracy of ``model`` on demo samples under each mask set.

    Args:
        model: an ``EncslimForConditionalGeneration``.
        processor: its processor.
        samples: demo records (:func:`encslim.bench.demo_data.generate`).
        mask_sets: tuples of slot names to mask (removal mask); ``()`` is the full model.
        batch_size: samples per generation batch.
        max_new_tokens: greedy decoding length.

    Returns:
        ``{masked tuple: {"overall": acc, category: acc}}``.
    """
    model.eval()
    predictions = predict_demo(model, processor, samples, mask_sets, batch_size, max_new_tokens)
    return {m: accuracy_by_category(samples, p) for m, p in predictions.items()}


__all__ = ["format_question", "normalise", "mask_label", "predict_demo", "accuracy_by_category", "evaluate_demo",
           "OPEN_TEMPLATES", "MCQ_TEMPLATES"]
