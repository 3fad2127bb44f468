"""Question prompts following VLMEvalKit's conventions, overridable per data set.

Multiple choice (MMBench style, the LLaVA-1.5 instruction)::

    Hint: <hint>
    Question: <question>
    Options:
    A. <option A>
    B. <option B>
    Answer with the option's letter from the given choices directly.

Short-answer VQA (the LLaVA-1.5 instruction)::

    <question>
    Answer the question using a single word or phrase.

The text returned here is the user turn; the processor wraps it in the model's chat template
with the image placeholder (``processor.build_prompt``).
"""

import hashlib
from dataclasses import asdict, dataclass, fields

from ..errors import ConfigError

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class PromptStyle:
    """How a sample becomes prompt text. Every field is a ``str.format`` template or text.

    Attributes:
        mcq_format: MCQ layout; fields ``{hint}``, ``{question}``, ``{options}``, ``{instruction}``.
        open_format: open-question layout; fields ``{hint}``, ``{question}``, ``{instruction}``.
        hint_format: how a non-empty hint is shown (``{hint}``); empty hints show nothing.
        option_format: one option line; fields ``{letter}``, ``{text}``.
        mcq_instruction: the instruction closing an MCQ prompt ("" for none).
        open_instruction: the instruction closing an open prompt ("" for none).
    """

    mcq_format: str = "{hint}Question: {question}\nOptions:\n{options}\n{instruction}"
    open_format: str = "{hint}{question}\n{instruction}"
    hint_format: str = "Hint: {hint}\n"
    option_format: str = "{letter}. {text}"
    mcq_instruction: str = MCQ_INSTRUCTION
    open_instruction: str = SHORT_ANSWER_INSTRUCTION

    @classmethod
    def from_dict(cls, data):
        """Build a style from a dict (e.g. parsed YAML); unknown keys are rejected.

        Raises:
            ConfigError: an unknown key or a value that is not a string.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown prompt style key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            raise ConfigError(f"prompt style value(s) for {', '.join(bad)} must be strings")
        return cls(**data)

    def to_dict(self):
        return asdict(self)


DEFAULT_STYLE = PromptStyle()


def build_question(sample, style=DEFAULT_STYLE):
    """The user-turn text for ``sample`` in ``style``.

    Args:
        sample: a :class:`encslim.data.samples.Sample`; MCQ when it has options.
        style: a :class:`PromptStyle`.

    Returns:
        str, without trailing whitespace.
    """
    hint = style.hint_format.format(hint=sample.hint) if sample.hint else ""
    if sample.options:
        options = "\n".join(style.option_format.format(letter=k, text=v) for k, v in sample.options.items())
        text = style.mcq_format.format(hint=hint, question=sample.question, options=options,
                                       instruction=style.mcq_instruction)
    else:
        text = style.open_format.format(hint=hint, question=sample.question, instruction=style.open_instruction)
    return text.rstrip()


def style_for(sample, styles=None):
    """The style of ``sample``'s data set in ``styles`` (``{dataset: PromptStyle}``), else the default."""
    return (styles or {}).get(sample.dataset, DEFAULT_STYLE)


def prompt_id(text):
    """A short stable id of a prompt text (12 hex digits of its sha1), written in the records."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
