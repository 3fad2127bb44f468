"""JSONL benchmark files and LLaVA conversation JSON.

JSONL, one sample a line::

    {"id": "q1", "image": "images/q1.png", "question": "What colour is the square?",
     "answer": "red", "category": "General", "metric": "vqa"}

``image`` is a path relative to the file's folder (it may not leave it) or base64; ``answers``
(a list) may replace ``answer``; optional ``options`` (a list or ``{"A": ...}``), ``hint``,
``category``, ``metric``. A line holding ``conversations`` is read as a LLaVA sample.

LLaVA conversation JSON (training data), a list of::

    {"id": "0001", "image": "images/0001.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A red square."}]}

The first human turn (``<image>`` placeholder removed) is the question and the gpt turn after
it the answer; later turns of a multi-turn conversation are not read.
"""

import json

from ..errors import DataError
from .fields import ImageLoader, check_metric, default_metric, is_missing, mcq_answer, parse_answers, \
    parse_options, text_of
from .samples import Sample

IMAGE_PLACEHOLDER = "<image>"


def jsonl_rows(path, dataset, default_category):
    """Yield ``(row label, build)`` per non-blank line of a JSONL file.

    Raises:
        DataError: the file holds no non-blank line.
    """
    loader = ImageLoader(path.parent)
    with open(path, encoding="utf-8-sig") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    if not lines:
        raise DataError(f"{path} holds no samples; write one JSON object per line")
    for number, line in lines:
        yield _label(number, line), _line_builder(line, number, loader, dataset, default_category, path.name)


def json_rows(path, dataset, default_category):
    """Yield ``(row label, build)`` per item of a JSON list (LLaVA conversations or JSONL-style samples).

    Raises:
        DataError: not valid JSON, not a list, or an empty list.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            items = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}); fix the file") from None
    if not isinstance(items, list):
        raise DataError(f"{path} must hold a JSON list of samples (LLaVA format), not a {type(items).__name__}")
    if not items:
        raise DataError(f"{path} holds an empty list; it has no samples")
    loader = ImageLoader(path.parent)
    for number, item in enumerate(items, 1):
        label = f"{number} (id {item['id']})" if isinstance(item, dict) and "id" in item else str(number)
        yield label, _item_builder(item, number, loader, dataset, default_category, path.name)


def _label(number, line):
    try:
        item = json.loads(line)
    except json.JSONDecodeError:
        return str(number)
    return f"{number} (id {item['id']})" if isinstance(item, dict) and "id" in item else str(number)


def _line_builder(line, number, loader, dataset, default_category, file_name):
    def build():
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None
        return _item_builder(item, number, loader, dataset, default_category, file_name)()
    return build


def _item_builder(item, number, loader, dataset, default_category, file_name):
    def build():
        if not isinstance(item, dict):
            raise ValueError(f"a sample must be a JSON object, not {type(item).__name__}")
        source = f"{file_name}:{number}"
        if "conversations" in item:
            return llava_sample(item, number, loader, dataset, default_category, source)
        return jsonl_sample(item, number, loader, dataset, default_category, source)
    return build


def jsonl_sample(item, number, loader, dataset, default_category, source):
    """A :class:`Sample` from one JSONL object (see the module docstring). Raises ValueError."""
    sample_id = _sample_id(item, number)
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("missing or empty 'question'")
    answers = parse_answers(item["answers"] if "answers" in item else item.get("answer"))
    options = parse_options(item.get("options"))
    metric = item.get("metric")
    metric = check_metric(str(metric).strip()) if not is_missing(metric) else default_metric(dataset, bool(options))
    if metric == "mcq":
        if not options:
            raise ValueError("metric 'mcq' needs 'options'")
        answers = [mcq_answer(answers, options)]
    hint = item.get("hint")
    return Sample(
        id=sample_id, question=question.strip(), answers=answers, image=_image(item, loader),
        options=options if metric == "mcq" else {}, hint="" if is_missing(hint) else str(hint).strip(),
        category=_category(item, default_category), metric=metric, source=source, dataset=dataset,
    )


def llava_sample(item, number, loader, dataset, default_category, source):
    """A :class:`Sample` from one LLaVA conversation record. Raises ValueError."""
    turns = item.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError("'conversations' must be a list of {\"from\", \"value\"} objects")
    human = next((i for i, t in enumerate(turns) if t.get("from") in ("human", "user")), None)
    if human is None:
        raise ValueError("conversation has no human turn")
    question = str(turns[human].get("value", "")).replace(IMAGE_PLACEHOLDER, "").strip()
    if not question:
        raise ValueError("the human turn holds no question")
    reply = next((t for t in turns[human + 1:] if t.get("from") in ("gpt", "assistant")), None)
    if reply is None or is_missing(reply.get("value")):
        raise ValueError("sample has no answer: no gpt turn after the question")
    return Sample(
        id=_sample_id(item, number), question=question, answers=[str(reply["value"]).strip()],
        image=_image(item, loader), category=_category(item, default_category),
        metric=check_metric(item["metric"]) if "metric" in item else "exact", source=source, dataset=dataset,
    )


def _sample_id(item, number):
    for key in ("id", "index", "question_id"):
        if key in item and not is_missing(item[key]):
            return text_of(item[key])
    return str(number)


def _category(item, default_category):
    value = item.get("category")
    return default_category if is_missing(value) else text_of(value)


def _image(item, loader):
    value = item.get("image", item.get("image_path"))
    if value is None:
        return None
    return loader.load(value)
