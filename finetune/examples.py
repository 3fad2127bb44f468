"""Samples -> tokenized training examples, checked before any training step.

A training example is the prompt the evaluation harness would show (``processor.build_prompt``
around the question text, the ``<image>`` placeholder expanded to the model's image tokens)
followed by the answer ``" {answer}</s>"``. The loss is taken on the answer tokens only.
Prompt and answer are tokenized separately, exactly as generation sees them: the prompt as
the processor tokenizes it, the answer as the tokens the model must produce after it.
"""

import logging
from dataclasses import dataclass

from ..data.prompts import build_question
from ..errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class TrainExample:
    """One tokenized training example.

    Attributes:
        id: the sample id.
        prompt_ids: prompt token ids with every slot present (image placeholder expanded).
        answer_ids: answer token ids, ending with the end-of-sequence token.
        image: the sample's PIL image.
        source: ``"file:row"`` for error messages.
    """

    id: str
    prompt_ids: list
    answer_ids: list
    image: object
    source: str = ""


def question_text(sample, prompt_format="eval"):
    """The user-turn text of ``sample``: the evaluation prompt (``eval``) or the bare question (``raw``)."""
    return build_question(sample) if prompt_format == "eval" else sample.question


def build_examples(samples, processor, adapter, image_token_id, expected_image_tokens=None, prompt_format="eval",
                   max_length=None):
    """Tokenize ``samples`` for training; every problem is found before any training step.

    Args:
        samples: :class:`encslim.data.samples.Sample` list, each with an image and an answer.
        processor: the model's processor.
        adapter: the model family's adapter (prompts and token ids go through it).
        image_token_id: the id of the image placeholder token in the prompt.
        expected_image_tokens: image tokens the model's fusion produces with every slot present.
        prompt_format: ``eval`` or ``raw`` (see :func:`question_text`).
        max_length: the model's maximum sequence length, or ``None``.

    Returns:
        list[TrainExample], in sample order.

    Raises:
        DataError: no samples, a sample without answer or image, a question holding its own
            ``<image>`` placeholder, an image-token count the model does not expect, or a sample
            longer than ``max_length``. The message names how many samples and the first one.
    """
    samples = list(samples)
    if not samples:
        raise DataError("no training samples; pass a data file with image-question-answer samples")
    tokenizer = adapter.tokenizer(processor)
    _check_samples(samples, adapter.image_placeholder(processor))
    examples = []
    for sample in samples:
        prompt = adapter.build_prompt(processor, question_text(sample, prompt_format))
        prompt_ids = adapter.prepare_batch(processor, None, [prompt])["input_ids"][0].tolist()
        answer_ids = tokenizer(" " + str(sample.answers[0]).strip(), add_special_tokens=False)["input_ids"]
        examples.append(TrainExample(sample.id, prompt_ids, answer_ids + [tokenizer.eos_token_id], sample.image,
                                     sample.source))
    _check_image_tokens(examples, image_token_id, expected_image_tokens)
    _check_lengths(examples, max_length)
    return examples


def _first(bad):
    sample = bad[0]
    where = f" at {sample.source}" if getattr(sample, "source", "") else ""
    return f"{len(bad)} sample(s), first '{sample.id}'{where}"


def _check_samples(samples, image_token):
    no_answer = [s for s in samples if not s.answers or not str(s.answers[0]).strip()]
    if no_answer:
        raise DataError(f"{_first(no_answer)} have no answer; fine-tuning needs an answer per sample "
                        "(give 'answer' in the data, or drop those samples)")
    no_image = [s for s in samples if s.image is None]
    if no_image:
        raise DataError(f"{_first(no_image)} have no image; fine-tuning trains image-question-answer samples, "
                        "so drop the text-only ones")
    own_placeholder = [s for s in samples if image_token in s.question or image_token in (s.hint or "")]
    if own_placeholder:
        raise DataError(f"{_first(own_placeholder)} hold their own '{image_token}' placeholder in the question; "
                        f"the prompt gets exactly one image placeholder, so remove '{image_token}' from the text")


def _check_image_tokens(examples, image_token_id, expected):
    counts = [sum(1 for t in e.prompt_ids if t == image_token_id) for e in examples]
    want = expected if expected is not None else counts[0]
    bad = [e for e, n in zip(examples, counts) if n != want]
    if bad:
        got = counts[examples.index(bad[0])]
        raise DataError(f"{_first(bad)} have {got} image tokens in the prompt but the model's fusion gives {want}; "
                        "the text holds an extra image token or the processor does not match the model "
                        "(save the processor together with the model)")


def _check_lengths(examples, max_length):
    if not max_length:
        return
    long = [e for e in examples if len(e.prompt_ids) + len(e.answer_ids) > max_length]
    if long:
        longest = max(len(e.prompt_ids) + len(e.answer_ids) for e in long)
        raise DataError(f"{_first(long)} are longer than the model's {max_length} positions (up to {longest} "
                        "tokens); shorten the questions or answers")
