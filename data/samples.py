"""The one sample type every reader produces and every stage consumes."""

from dataclasses import dataclass, field


@dataclass
class Sample:
    """One benchmark or training sample.

    Attributes:
        id: unique within its data set (VLMEvalKit ``index``, JSONL ``id``).
        question: the question text, without options or hint.
        answers: ground-truth answers (VQA data sets carry several; MCQ: the correct letter).
        image: a ``PIL.Image`` (RGB) or ``None`` for text-only samples.
        options: MCQ options, ``{"A": "text", ...}`` in letter order; empty for open questions.
        hint: optional context shown before the question (VLMEvalKit ``hint``).
        category: task category (e.g. ``OCR & Chart``); every sample has one.
        metric: scorer name (``mcq``, ``vqa``, ``anls``, ``relaxed``, ``exact``, ``ocrbench``).
        source: ``"file:row"`` for error messages and records.
        dataset: name of the data set (file stem) the sample came from.
    """

    id: str
    question: str
    answers: list
    image: object = None
    options: dict = field(default_factory=dict)
    hint: str = ""
    category: str = "default"
    metric: str = "exact"
    source: str = ""
    dataset: str = ""
