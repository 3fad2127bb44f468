"""Field parsing shared by the benchmark readers: answers, options, metrics, images.

Every function raises :class:`ValueError` with a short reason for a bad value; the readers
turn it into a :class:`encslim.errors.DataError` naming the file and the row (or skip the row
under ``skip_bad``).
"""

import ast
import math
import string
from pathlib import Path

from .benchmarks import benchmark_for
from .images import decode_base64_image, load_image_file, looks_like_base64, resolve_image_path
from .scorers import METRICS

# values pandas (and so VLMEvalKit) writes for a missing cell
_MISSING_TEXT = {"", "nan", "NaN"}
LETTERS = string.ascii_uppercase

# data set name prefix (lower case) -> the metric VLMEvalKit / lmms-eval score it with
METRIC_BY_DATASET = (
    ("docvqa", "anls"), ("infovqa", "anls"), ("infographicvqa", "anls"), ("stvqa", "anls"), ("st-vqa", "anls"),
    ("chartqa", "relaxed"), ("plotqa", "relaxed"),
    ("ocrbench", "ocrbench"),
    ("textvqa", "vqa"), ("vqav2", "vqa"), ("okvqa", "vqa"), ("ok-vqa", "vqa"), ("vizwiz", "vqa"),
    ("gqa", "strict"), ("ocrvqa", "strict"),
)


def is_missing(value):
    """True for ``None``, NaN and the strings pandas writes for a missing cell."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip() in _MISSING_TEXT


def text_of(value):
    """A cell as text: integral floats lose their ``.0`` (``3.0`` -> ``"3"``), strings are stripped."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_answers(value):
    """Ground-truth answers from a cell: a string, a number, a list, or a list written as text.

    VLMEvalKit stores several answers as the text of a Python list (``"['2', 'two']"``).

    Returns:
        list[str], non-empty.

    Raises:
        ValueError: no answer.
    """
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, (list, tuple)):
            value = list(parsed)
    if isinstance(value, (list, tuple)):
        answers = [text_of(v) for v in value if not is_missing(v)]
    elif is_missing(value) or isinstance(value, dict):
        answers = []
    else:
        answers = [text_of(value)]
    if not answers:
        raise ValueError("sample has no answer; give 'answer' (or 'answers')")
    return answers


def parse_options(value):
    """MCQ options from ``{"A": text, ...}`` or a list of texts (lettered A, B, ...).

    Returns:
        dict letter -> text in letter order; ``{}`` for no options.

    Raises:
        ValueError: keys that are not single capital letters, gaps, or too many options.
    """
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        if len(value) > len(LETTERS):
            raise ValueError(f"{len(value)} options; at most {len(LETTERS)} are supported")
        value = dict(zip(LETTERS, value))
    if not isinstance(value, dict):
        raise ValueError("options must be a list of texts or a dict like {\"A\": \"...\"}")
    options = {}
    for key, text in value.items():
        key = str(key).strip()
        if len(key) != 1 or key not in LETTERS:
            raise ValueError(f"option key '{key}' is not a capital letter A-Z")
        if not is_missing(text):
            options[key] = text_of(text)
    options = dict(sorted(options.items()))
    if list(options) != list(LETTERS[: len(options)]):
        raise ValueError(f"options {', '.join(options)} skip a letter; use consecutive letters from A")
    return options


def mcq_answer(answers, options):
    """The correct option letter: the answer itself if it is a letter, else the option it names.

    Raises:
        ValueError: the answer is neither an option letter nor an option's text.
    """
    answer = answers[0].strip()
    if answer.upper() in options and len(answer) == 1:
        return answer.upper()
    named = [k for k, v in options.items() if v.casefold() == answer.casefold()]
    if len(named) == 1:
        return named[0]
    raise ValueError(f"answer '{answer[:40]}' is not one of the options {', '.join(options)}")


def default_metric(dataset, has_options):
    """The metric a data set is scored with: MCQ when it has options, else by its name.

    A study benchmark (:mod:`encslim.data.benchmarks`, e.g. ``MME`` -> yes/no) decides first.
    Otherwise names follow VLMEvalKit's prefixes (``DocVQA_VAL`` -> ANLS, ``ChartQA_TEST`` ->
    relaxed accuracy, ``OCRBench`` -> substring match, ``TextVQA_VAL`` -> VQA accuracy,
    ``GQA`` -> strict accuracy); other open questions get VQA accuracy.
    """
    benchmark = benchmark_for(dataset)
    if benchmark is not None:
        return benchmark.metric_for(has_options)
    if has_options:
        return "mcq"
    name = dataset.lower()
    for prefix, metric in METRIC_BY_DATASET:
        if name.startswith(prefix):
            return metric
    return "vqa"


def check_metric(metric):
    """Return ``metric`` if known. Raises ValueError listing the known metrics."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
    return metric


class ImageLoader:
    """Loads the images of one data file: base64 or paths inside the file's folder.

    Images named by the same path are read once and shared.
    """

    def __init__(self, root):
        self.root = Path(root)
        self._cache = {}

    def load(self, value):
        """Decode base64 or read a path; raises ValueError (broken data, missing file, escaping path)."""
        if isinstance(value, (list, tuple)):
            raise ValueError("several images per sample are not supported; give one image")
        if not isinstance(value, str) or not value.strip():
            raise ValueError("image must be a path or a base64 string")
        if looks_like_base64(value):
            return self.load_base64(value)
        path = resolve_image_path(value.strip(), self.root)
        if path not in self._cache:
            self._cache[path] = load_image_file(path)
        return self._cache[path]

    def load_base64(self, value):
        """Decode a base64 image; the same string is decoded once. Raises ValueError if broken."""
        if value not in self._cache:
            self._cache[value] = decode_base64_image(value)
        return self._cache[value]
