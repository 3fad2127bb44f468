"""Standard answer scorers: pure functions, strings in, a score in ``[0, 1]`` out.

Each scorer mirrors the function VLMEvalKit scores its benchmark with (the newest VLMEvalKit,
main 2026, where versions differ), so that numbers compare with VLMEvalKit reports:

=========  ======================================================================  ==============
metric     definition (VLMEvalKit function)                                        used by
=========  ======================================================================  ==============
mcq        ``can_infer`` letter extraction equals the answer letter                MMBench, AI2D..
vqa        VQAv2 accuracy over ``process_answer``-normalised answers                TextVQA
anls       ``anls_compute`` + ``hit_calculate``: ``1 - NL``, 0 below 0.5            DocVQA, InfoVQA
relaxed    ``relaxed_correctness``: 5 % relative error, otherwise exact             ChartQA
strict     ``process_line(method='accuracy')``: stripped, lower-cased equality      GQA, OCRVQA
yesno      ``YOrN_Extraction`` equals the Yes/No answer                             MME
ocrbench   ``OCRBench.evaluate``: an answer occurs in the prediction                OCRBench
exact      encslim's lenient exact match (NFKC, trailing punctuation, quotes)       your own data
=========  ======================================================================  ==============
"""

import re
import unicodedata

METRICS = ("mcq", "vqa", "anls", "relaxed", "exact", "strict", "yesno", "ocrbench")

# ---------------------------------------------------------------- VQAv2 normalisation
# VLMEvalKit vlmeval/dataset/utils/vqa_eval.py::_process_digit_article (manualMap, articles,
# contractions) and vlmeval/smp/misc.py::process_punctuation, copied verbatim from the newest
# VLMEvalKit (main, 2026). Keys with capitals ("Im", "Ive", "Id've") are unreachable there
# because the text is lower-cased first; they are kept so the table stays a verbatim copy.
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_VQA_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# process_punctuation's periodStrip: a period with no digit on either side ("10." stays "10.").
_PERIOD_STRIP = re.compile(r"(?<!\d)\.(?!\d)")
# VLMEvalKit calls ``periodStrip.sub('', outText, re.UNICODE)``: re.UNICODE (32) lands in the
# ``count`` argument, so at most 32 periods are removed. Mirrored for parity.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def process_punctuation(text):
    """VLMEvalKit ``vlmeval/smp/misc.py::process_punctuation`` (the VQAv2 ``processPunctuation``).

    A mark from ``;/[]"{}()=+\\_-><@`,?!`` is deleted when the text holds it next to a space or
    holds a thousands separator (``1,000``), and replaced by a space otherwise
    (``black/white`` -> ``black white``). Periods go unless a digit stands right before or
    right after them (``3.5`` and ``10.`` keep theirs).
    """
    out = text
    has_separator = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _VQA_PUNCT:
        if f"{mark} " in text or f" {mark}" in text or has_separator:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text):
    """VLMEvalKit ``vqa_eval.py::_process_digit_article``: lower case, number words to digits,
    articles dropped, apostrophe-less contractions restored (``dont`` -> ``don't``)."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(text):
    """Normalise an answer the way VLMEvalKit's ``vqa_eval.py::process_answer`` does.

    Steps: newlines and tabs to spaces, outer whitespace stripped, :func:`process_punctuation`
    (marks removed or turned into spaces; a period survives only next to a digit, so ``3.5``
    and ``10.`` are kept as written), then :func:`process_digit_article` (lower case, number
    words to digits, articles dropped, contractions restored).

    Args:
        text: a prediction or a ground-truth answer.

    Returns:
        str, the normalised answer.
    """
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction, answers):
    """VQAv2 accuracy of one prediction against the annotators' answers.

    For each ground-truth answer in turn, the *other* answers are compared with the prediction
    and ``min(1, matches / 3)`` is taken; the result is the mean over the answers. With the
    usual ten answers this is "correct if at least three annotators said so", smoothed over
    the subsets of nine.

    This is VLMEvalKit ``vqa_eval.py::process_line(method='vqa_score')`` averaged by
    ``hit_calculate``. One deliberate deviation: leave-one-out over a single answer leaves
    nothing to match, which VLMEvalKit scores 0 for every prediction; encslim scores a sole
    answer by normalised equality (no shipped VQA benchmark has a single answer).

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


def anls_distance(answer, prediction):
    """VLMEvalKit ``vqa_eval.py::anls_compute``: the normalised Levenshtein distance ``NL``.

    The strings compared are lower-cased with whitespace collapsed, but the length divided by
    is ``max(len(answer.upper()), len(prediction.upper()))`` of the strings *as given*
    (VLMEvalKit's quirk: outer or doubled spaces count in the length, not in the distance).
    Two empty strings are at distance 0.
    """
    answer, prediction = str(answer), str(prediction)
    gt = " ".join(answer.strip().lower().split())
    det = " ".join(prediction.strip().lower().split())
    length = max(len(answer.upper()), len(prediction.upper()))
    return 0.0 if length == 0 else levenshtein(gt, det) / length


def anls(prediction, answers, threshold=0.5):
    """Average Normalised Levenshtein Similarity (DocVQA, InfoVQA) for one question.

    VLMEvalKit ``vqa_eval.py::hit_calculate`` (DocVQA branch): with ``NL`` the smallest
    :func:`anls_distance` over the answers, the score is ``1 - NL``, or 0 when
    ``1 - NL < threshold``. A similarity of exactly 0.5 keeps its 0.5.

    Args:
        prediction: the model's answer.
        answers: acceptable answers.
        threshold: the cut-off on the similarity (0.5 in the benchmarks).

    Returns:
        float in ``[0, 1]``; 0.0 when ``answers`` is empty.
    """
    if not answers:
        return 0.0
    similarity = 1 - min(anls_distance(a, prediction) for a in answers)
    return 0.0 if similarity < threshold else similarity


# ---------------------------------------------------------------- relaxed accuracy (ChartQA)
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")


def parse_number(text):
    """Read a number from a short answer leniently; ``None`` when it is not one.

    A helper for reading numbers from free text; :func:`relaxed_accuracy` does *not* use it
    (VLMEvalKit's ChartQA reads numbers with plain ``float``, see :func:`relaxed_correctness`).
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


def _relaxed_float(text):
    """``_to_float`` inside VLMEvalKit's ``relaxed_correctness``: Python ``float``; a trailing
    ``%`` divides by 100. ``None`` when it is not a number."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(target, prediction, max_relative_change=0.05):
    """VLMEvalKit ``vqa_eval.py::relaxed_correctness`` (from pix2struct), for one answer.

    When the prediction reads as a float and the target as a non-zero float,
    ``|p - t| / |t| <= max_relative_change``; otherwise case-insensitive string equality
    (so a target of 0 needs the string ``0``). ``45%`` reads as 0.45; ``1,000`` is no number.
    """
    prediction, target = str(prediction), str(target)
    p, t = _relaxed_float(prediction), _relaxed_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction, answers, tolerance=0.05):
    """ChartQA relaxed accuracy, as VLMEvalKit scores it.

    ``process_line(method='relaxed_accuracy')`` strips the prediction (not the answers) and
    ``hit_calculate`` takes the best answer: 1.0 when :func:`relaxed_correctness` holds for any.

    Args:
        prediction: the model's answer.
        answers: acceptable answers.
        tolerance: relative tolerance (0.05 in ChartQA / PlotQA).

    Returns:
        1.0 or 0.0.
    """
    pred = str(prediction).strip()
    return float(any(relaxed_correctness(a, pred, tolerance) for a in answers))


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
    """OCRBench: 1.0 when a ground-truth answer occurs inside the prediction (VLMEvalKit
    ``image_vqa.py::OCRBench.evaluate``; its final score is the count of hits out of 1000).

    Both are lower-cased and stripped with newlines turned into spaces. ``compact`` (used for
    handwritten mathematical expressions) removes every space instead and keeps the case.
    Deviation: an empty answer never matches (VLMEvalKit's ``'' in predict`` would).
    """
    if compact:
        pred = str(prediction).strip().replace("\n", " ").replace(" ", "")
        golds = [str(a).strip().replace("\n", " ").replace(" ", "") for a in answers]
    else:
        pred = str(prediction).lower().strip().replace("\n", " ")
        golds = [str(a).lower().strip().replace("\n", " ") for a in answers]
    return float(any(g and g in pred for g in golds))


def strict_accuracy(prediction, answers):
    """VLMEvalKit ``process_line(method='accuracy')`` (GQA, OCRVQA), averaged by ``hit_calculate``.

    Each answer matches when ``answer.strip().lower() == prediction.strip().lower()`` (no
    punctuation removed: ``paris.`` is not ``paris``); the score is the mean over the answers.
    """
    if not answers:
        return 0.0
    pred = str(prediction).strip().lower()
    return sum(1.0 for a in answers if str(a).strip().lower() == pred) / len(answers)


def extract_yes_no(prediction):
    """VLMEvalKit ``vlmeval/dataset/utils/yorn.py::YOrN_Extraction``: ``Yes``, ``No`` or ``Unknown``.

    The lower-cased prediction goes through :func:`process_punctuation` and is split on
    whitespace; ``Yes`` when the word ``yes`` occurs and ``no`` does not, ``No`` the other way
    round, otherwise ``Unknown``.
    """
    words = process_punctuation(str(prediction).lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "yes" not in words and "no" in words:
        return "No"
    return "Unknown"


def yes_no_accuracy(prediction, answers):
    """MME / POPE-style yes-no: 1.0 when :func:`extract_yes_no` equals the answer (``Yes``/``No``).

    VLMEvalKit compares ``answer == extracted`` case-sensitively (MME answers are ``Yes``/``No``).
    """
    return float(bool(answers) and extract_yes_no(prediction) == str(answers[0]).strip())


# ---------------------------------------------------------------- multiple choice
# VLMEvalKit vlmeval/utils/matching_util.py (newest, main 2026: can_infer_option gained the
# "answer is X" fallback in #1552 and the last-tokens rule in #1175).
REFUSAL_LETTER = "Z"
_API_FAILURE = "Failed to obtain answer via API"
# can_infer_option's reject_to_answer, verbatim (case-sensitive substrings)
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_OPTION_SEPARATORS = ".()[],:;!*#{}"
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def infer_option(prediction, options):
    """VLMEvalKit ``matching_util.py::can_infer_option``: the option letter, or ``None``.

    1. An API failure message infers nothing; a refusal from :data:`REFUSALS` is ``Z``.
    2. ``.()[],:;!*#{}`` become spaces and the text is split on whitespace. When exactly one
       option letter occurs as a token (upper case only), it is the answer if its first
       occurrence has index ``> len(tokens) - 5``, i.e. it is among the last four tokens.
       When no option letter occurs but the token ``Z`` does, the answer is ``Z``.
    3. Otherwise ``(correct) answer is X`` (case-insensitive, X in A-D, optional ``**``)
       names the letter, when it is an option.
    """
    text = str(prediction)
    if _API_FAILURE in text:
        return None
    if any(refusal in text for refusal in REFUSALS):
        return REFUSAL_LETTER
    for mark in _OPTION_SEPARATORS:
        text = text.replace(mark, " ")
    tokens = text.split()
    present = [letter for letter in options if letter in tokens]
    if len(present) == 1:
        if tokens.index(present[0]) > len(tokens) - 5:
            return present[0]
    elif not present and REFUSAL_LETTER in tokens:
        return REFUSAL_LETTER
    match = _VERBOSE_ANSWER.search(str(prediction))
    if match and match.group(1).upper() in options:
        return match.group(1).upper()
    return None


def infer_option_by_text(prediction, options):
    """VLMEvalKit ``matching_util.py::can_infer_text``: the one option whose text occurs in the
    lower-cased prediction, or ``None``. A prediction longer than twice the options' total
    text length infers nothing; two or more options found infer nothing."""
    text = str(prediction).lower()
    if len(text) > 2 * sum(len(str(v)) for v in options.values()):
        return None
    hits = [k for k, v in options.items() if str(v).lower() in text]
    return hits[0] if len(hits) == 1 else None


def extract_choice(prediction, options):
    """The option letter a free-form answer picks: VLMEvalKit ``matching_util.py::can_infer``.

    :func:`infer_option` first, then :func:`infer_option_by_text` (VLMEvalKit's exact-matching
    policy; no LLM judge). A lone lower-case ``b`` is no option letter, and ``A red circle``
    picks ``A`` as VLMEvalKit does.

    Args:
        prediction: the model's answer.
        options: ``{"A": "text", ...}``.

    Returns:
        str: an option letter, ``"Z"`` for a refusal, or ``None`` when nothing is inferred
        (VLMEvalKit then records ``Z`` as well; either way it never equals the answer).
    """
    return infer_option(prediction, options) or infer_option_by_text(prediction, options)


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
    if metric == "strict":
        return strict_accuracy(prediction, answers)
    if metric == "yesno":
        return yes_no_accuracy(prediction, answers)
    if metric == "ocrbench":
        return ocrbench_match(prediction, answers, compact=category == HANDWRITTEN_MATH)
    raise ValueError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
