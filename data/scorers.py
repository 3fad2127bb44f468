"""Standard answer scorers: pure functions, strings in, a score in ``[0, 1]`` out.

Each scorer follows the definition its benchmark family publishes, so that numbers compare
with VLMEvalKit / lmms-eval reports:

=========  ======================================================================  ==========
metric     definition                                                              used by
=========  ======================================================================  ==========
mcq        the chosen option letter equals the answer letter                       MMBench...
vqa        VQAv2 accuracy: normalised answers, leave-one-out ``min(1, m/3)``       VQAv2...
anls       average normalised Levenshtein similarity, threshold 0.5                DocVQA...
relaxed    numbers within 5 % relative error, otherwise exact                      ChartQA
exact      normalised exact match with any answer                                  GQA-like
ocrbench   a ground-truth answer occurs in the prediction (case-insensitive)       OCRBench
=========  ======================================================================  ==========
"""

import re
import unicodedata

METRICS = ("mcq", "vqa", "anls", "relaxed", "exact", "ocrbench")

# ---------------------------------------------------------------- VQAv2 normalisation
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Contractions as VQAv2 writes them; annotators often dropped the apostrophe ("dont").
_CONTRACTED = (
    "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd "
    "how'll how's i'm i've isn't it'd it'll ma'am mightn't might've mustn't must've needn't o'clock "
    "shan't she'd she's should've shouldn't that's there's they'd they'll they're they've 'twas wasn't "
    "we'd we've weren't what'll what're what's what've when's where'd where's where've who'd who'll "
    "who's who've why'll why're why's won't would've wouldn't y'all you'd you'll you're you've"
).split()
_CONTRACTIONS = {form.replace("'", ""): form for form in _CONTRACTED}
_VQA_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")


def normalize_vqa_answer(text):
    """Normalise an answer the way the VQAv2 evaluation does.

    Steps: newlines and tabs to spaces; punctuation removed (or turned into a space when it
    glues two words together, e.g. ``black/white`` -> ``black white``); periods dropped unless a
    digit follows (``3.5`` stays); lower case; number words to digits (``two`` -> ``2``);
    articles dropped; apostrophe-less contractions restored (``dont`` -> ``don't``).

    Why the odd punctuation rule: VQAv2 deletes a mark outright when it touches a space or when
    the text holds a thousands separator (``1,000`` -> ``1000``), and otherwise replaces it by
    a space. Reproducing it keeps scores comparable with published numbers.

    Args:
        text: a prediction or a ground-truth answer.

    Returns:
        str, the normalised answer.
    """
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    has_separator = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _VQA_PUNCT:
        if has_separator or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    out = _PERIOD_NOT_DECIMAL.sub("", out)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction, answers):
    """VQAv2 accuracy of one prediction against the annotators' answers.

    For each ground-truth answer in turn, the *other* answers are compared with the prediction
    and ``min(1, matches / 3)`` is taken; the result is the mean over the answers. With the
    usual ten answers this is "correct if at least three annotators said so", smoothed over
    the subsets of nine.

    Why one answer is a special case: leave-one-out over a single answer leaves nothing to
    match, which would score every prediction 0; a sole answer is scored by normalised equality.

    Args:
        prediction: the model's answer.
        answers: the ground-truth answers (a list of strings, repeats kept).

    Returns:
        float in ``[0, 1]``; 0.0 when ``answers`` is empty.
    """
    gts = [normalize_vqa_answer(a) for a in answers]
    if not gts:
        return 0.0
    pred = normalize_vqa_answer(prediction)
    if len(gts) == 1:
        return float(pred == gts[0])
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, gt in enumerate(gts) if j != i and gt == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


# ---------------------------------------------------------------- ANLS
def levenshtein(a, b):
    """Edit distance (insertions, deletions, substitutions each cost 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction, answers, threshold=0.5):
    """Average Normalised Levenshtein Similarity (DocVQA, InfoVQA, ST-VQA) for one question.

    Both strings are lower-cased with whitespace collapsed. The normalised distance is
    ``NL = lev(gt, pred) / max(len(gt), len(pred))``; the similarity is ``1 - NL`` when
    ``NL < threshold`` and 0 otherwise (so near misses from OCR slips earn partial credit but
    unrelated answers earn nothing). The best ground-truth answer counts.

    Args:
        prediction: the model's answer.
        answers: acceptable answers.
        threshold: the cut-off on NL (0.5 in the benchmarks).

    Returns:
        float in ``[0, 1]``.
    """
    pred = " ".join(str(prediction).strip().lower().split())
    best = 0.0
    for answer in answers:
        gt = " ".join(str(answer).strip().lower().split())
        longest = max(len(gt), len(pred))
        if longest == 0:
            return 1.0
        dist = levenshtein(gt, pred) / longest
        best = max(best, 1.0 - dist if dist < threshold else 0.0)
    return best


# ---------------------------------------------------------------- relaxed accuracy (ChartQA)
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")


def parse_number(text):
    """Read a number from a short answer; ``None`` when it is not one.

    Accepts thousands separators (``1,234.5``), a trailing period (``12.``) and a trailing
    percent sign. A percentage is returned both as a fraction and as written (``45%`` ->
    ``(0.45, 45.0)``): ChartQA's reference reads ``45%`` as 0.45, while chart labels and many
    annotations write the bare 45.

    Returns:
        tuple of candidate floats, or ``None``.
    """
    text = unicodedata.normalize("NFKC", str(text)).strip().rstrip(".").strip()
    percent = text.endswith("%")
    text = text.rstrip("%").strip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return (value / 100.0, value) if percent else (value,)


def relaxed_accuracy(prediction, answers, tolerance=0.05):
    """ChartQA relaxed accuracy: a number within ``tolerance`` relative error, else exact.

    When both the prediction and an answer read as numbers (see :func:`parse_number`), the
    prediction is correct if ``|p - t| <= tolerance * |t|`` (for a target of 0: ``p == 0``).
    Otherwise the lower-cased, stripped strings must be equal. The best answer counts.

    Args:
        prediction: the model's answer.
        answers: acceptable answers.
        tolerance: relative tolerance (0.05 in ChartQA / PlotQA).

    Returns:
        1.0 or 0.0.
    """
    pred_numbers = parse_number(prediction)
    pred_text = _plain(prediction)
    for answer in answers:
        target_numbers = parse_number(answer)
        if pred_numbers is not None and target_numbers is not None:
            if any(abs(p - t) <= tolerance * abs(t) for p in pred_numbers for t in target_numbers):
                return 1.0
        elif pred_text == _plain(answer):
            return 1.0
    return 0.0


# ---------------------------------------------------------------- exact match, OCRBench
_TRAILING = ".,;:!?。，"
_QUOTES = "\"'`“”‘’"


def _plain(text):
    """NFKC, case-folded, whitespace collapsed, trailing punctuation and outer quotes removed."""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    text = " ".join(text.split()).rstrip(_TRAILING).strip().strip(_QUOTES).strip()
    return text


def exact_match(prediction, answers):
    """1.0 when the normalised prediction equals a normalised answer, else 0.0.

    Normalisation: Unicode NFKC, case folding, collapsed whitespace, trailing punctuation and
    surrounding quotes removed (``"Paris."`` equals ``paris``).
    """
    pred = _plain(prediction)
    return float(any(pred == _plain(a) for a in answers))


def ocrbench_match(prediction, answers, compact=False):
    """OCRBench: 1.0 when a ground-truth answer occurs inside the prediction.

    Both are lower-cased and stripped with newlines turned into spaces. ``compact`` (used for
    handwritten mathematical expressions) removes every space instead and keeps the case.
    """
    if compact:
        pred = str(prediction).strip().replace("\n", " ").replace(" ", "")
        golds = [str(a).strip().replace("\n", " ").replace(" ", "") for a in answers]
    else:
        pred = str(prediction).lower().strip().replace("\n", " ")
        golds = [str(a).lower().strip().replace("\n", " ") for a in answers]
    return float(any(g and g in pred for g in golds))


# ---------------------------------------------------------------- multiple choice
_CHOICE_PUNCT = re.compile(r"[.()\[\],:;!*#{}<>\"'`]")
_ARTICLE_A = re.compile(r"(?:^|\s)A\s+[a-z]")


def extract_choice(prediction, options):
    """The option letter a free-form answer picks, or ``None``.

    Rules, in order (VLMEvalKit's matching, without its LLM fallback):

    1. Punctuation such as ``.()[],:;`` becomes spaces; if exactly one distinct option letter
       stands alone among the tokens (``"(B)"``, ``"Answer: B."``), it is the choice. A whole
       answer that is a single lower-case letter (``"b"``) counts too.
    2. Otherwise the unique option whose text occurs in the answer (case-insensitive).

    Why the article check: in ``"A red circle"`` the lone ``A`` is an article. When ``A`` is
    the only letter and is followed by a lower-case word, the option text (rule 2) decides if
    it names exactly one option; otherwise ``A`` stands.

    Args:
        prediction: the model's answer.
        options: ``{"A": "text", ...}``.

    Returns:
        str (an option letter) or ``None``.
    """
    text = str(prediction).strip()
    tokens = _CHOICE_PUNCT.sub(" ", text).split()
    if len(tokens) == 1 and tokens[0].upper() in options:
        return tokens[0].upper()
    found = sorted({t for t in tokens if t in options})
    by_text = _choice_by_text(text, options)
    if len(found) == 1:
        if found[0] == "A" and _ARTICLE_A.search(text) and by_text is not None:
            return by_text
        return found[0]
    return by_text


def _choice_by_text(text, options):
    low = unicodedata.normalize("NFKC", text).casefold()
    hits = [k for k, v in options.items()
            if str(v).strip() and unicodedata.normalize("NFKC", str(v)).casefold().strip() in low]
    return hits[0] if len(hits) == 1 else None


def mcq_accuracy(prediction, answer, options):
    """1.0 when the letter :func:`extract_choice` finds equals the answer letter."""
    return float(extract_choice(prediction, options) == str(answer).strip().upper())


# ---------------------------------------------------------------- dispatch
HANDWRITTEN_MATH = "Handwritten Mathematical Expression Recognition"


def score(metric, prediction, answers, options=None, category=""):
    """Score one prediction with the named metric.

    Args:
        metric: one of :data:`METRICS`.
        prediction: the model's answer (or chosen letter).
        answers: ground-truth answers; for ``mcq`` the first is the correct letter.
        options: MCQ options (``mcq`` only).
        category: the sample's category (OCRBench scores handwritten maths without spaces).

    Returns:
        float in ``[0, 1]``.

    Raises:
        ValueError: unknown metric.
    """
    if metric == "mcq":
        return mcq_accuracy(prediction, answers[0] if answers else "", options or {})
    if metric == "vqa":
        return vqa_accuracy(prediction, answers)
    if metric == "anls":
        return anls(prediction, answers)
    if metric == "relaxed":
        return relaxed_accuracy(prediction, answers)
    if metric == "exact":
        return exact_match(prediction, answers)
    if metric == "ocrbench":
        return ocrbench_match(prediction, answers, compact=category == HANDWRITTEN_MATH)
    raise ValueError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
