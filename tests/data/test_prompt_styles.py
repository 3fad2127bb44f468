"""Prompts: VLMEvalKit's MCQ and short-answer layouts, and per-data-set overrides."""

import pytest

from encslim.data.prompts import PromptStyle, build_question, prompt_id, style_for
from encslim.data.samples import Sample
from encslim.errors import ConfigError


def test_mcq_prompt_with_hint():
    sample = Sample(id="1", question="Which animal?", answers=["B"], options={"A": "cat", "B": "dog"}, hint="Pets.")
    assert build_question(sample) == (
        "Hint: Pets.\nQuestion: Which animal?\nOptions:\nA. cat\nB. dog\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_short_answer_prompt_without_hint():
    sample = Sample(id="1", question="What colour is it?", answers=["red"])
    assert build_question(sample) == "What colour is it?\nAnswer the question using a single word or phrase."


def test_override_per_dataset_and_rejects_unknown_keys():
    docs = Sample(id="1", question="What is the date?", answers=["x"], dataset="DocVQA_VAL")
    other = Sample(id="2", question="What is the date?", answers=["x"], dataset="TextVQA_VAL")
    styles = {"DocVQA_VAL": PromptStyle.from_dict({"open_instruction": ""})}
    assert build_question(docs, style_for(docs, styles)) == "What is the date?"
    assert build_question(other, style_for(other, styles)).endswith("single word or phrase.")
    assert prompt_id("a") == prompt_id("a") != prompt_id("b") and len(prompt_id("a")) == 12
    with pytest.raises(ConfigError, match="unknown prompt style key.*open_instrucion"):
        PromptStyle.from_dict({"open_instrucion": ""})
