"""Prompts of the demo model's training, and its accuracy per category through the project evaluator."""

from .data import MCQ_INSTRUCTION, SHORT_ANSWER

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
            template, which is the default of ``encslim.data.prompts`` (MMBench layout with
            LLaVA's instructions).
    """
    if sample["options"]:
        options = "\n".join(f"{k}. {v}" for k, v in sample["options"].items())
        template = MCQ_TEMPLATES[0] if rng is None else rng.choice(MCQ_TEMPLATES)
        return template.format(q=sample["question"], options=options)
    template = OPEN_TEMPLATES[0] if rng is None else rng.choice(OPEN_TEMPLATES)
    return template.format(q=sample["question"])


def mask_label(masked):
    """``"full"`` or ``"-slot"``/``"-a-b"`` for a tuple of masked slots."""
    return "full" if not masked else "-" + "-".join(masked)


def evaluate_demo(model, processor, samples, mask_sets=((),), batch_size=50, max_new_tokens=6, token_budget=None):
    """Per-category accuracy of ``model`` on demo records under each mask set.

    Runs the project evaluator (:func:`encslim.bench.evaluate.evaluate`: encoders once per
    sample, removal mask, the records' ``exact``/``mcq`` scorers) on the in-memory records.

    Args:
        model: an ``EncslimForConditionalGeneration``.
        processor: its processor.
        samples: demo records (:func:`encslim.demo.data.generate`).
        mask_sets: tuples of slot names to mask; ``()`` is the full model.
        batch_size: samples per generation batch.
        max_new_tokens: greedy decoding length.
        token_budget: a :class:`~encslim.models.tokens.TokenBudget` to run under (``None``: the model's own).

    Returns:
        ``{masked tuple: {"overall": acc, category: acc}}``.
    """
    from .data import to_samples
    from ..bench.evaluate import EvalSettings, evaluate
    from ..models.registry import get_adapter

    model.eval()
    result = evaluate((model, processor, get_adapter(model.config.model_type)), to_samples(samples),
                      mask_sets=[frozenset(m) for m in mask_sets],
                      settings=EvalSettings(batch_size=batch_size, max_new_tokens=max_new_tokens,
                                            token_budget=token_budget))
    return {tuple(m): {k: round(v, 4) for k, v in result.accuracy(frozenset(m)).items()} for m in mask_sets}


__all__ = ["format_question", "mask_label", "evaluate_demo", "OPEN_TEMPLATES", "MCQ_TEMPLATES"]
