"""Scorers on hand-worked cases, edge cases included."""

import pytest

from encslim.data.scorers import (anls, exact_match, extract_choice, levenshtein, mcq_accuracy,
                                   normalize_vqa_answer, ocrbench_match, parse_number, relaxed_accuracy, score,
                                   vqa_accuracy)

OPTIONS = {"A": "red", "B": "blue", "C": "green"}


@pytest.mark.parametrize("text, expected", [
    ("Two.", "2"),                   # number word, trailing period
    ("the red car", "red car"),      # article dropped
    ("An apple", "apple"),
    ("dont", "don't"),               # contraction restored
    ("1,000", "1000"),               # thousands separator removed
    ("black/white", "black white"),  # glued punctuation becomes a space
    ("Hello, world", "hello world"),  # punctuation next to a space is removed
    ("yes!", "yes"),
    ("3.5", "3.5"),                  # decimal point kept
    ("3.", "3."),                    # VLMEvalKit keeps a period right after a digit
    ("Café\tCRÈME\n", "café crème"),  # unicode lower-cased, tabs/newlines to spaces
    ("", ""),
])
def test_vqa_normalisation(text, expected):
    assert normalize_vqa_answer(text) == expected


def test_vqa_accuracy_leave_one_out():
    # 3 annotators said 2, 7 said 3. Prediction "two" -> "2":
    # for each "2" answer the other nine hold two "2" -> 2/3; for each "3" answer they hold three -> 1.
    answers = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("two", answers) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 0.9
    # 2 said "2", 8 said "3": prediction "2" gets 1/3 twice and 2/3 eight times -> 0.6
    answers = ["2"] * 2 + ["3"] * 8
    assert vqa_accuracy("2", answers) == pytest.approx(0.6)
    assert vqa_accuracy("4", answers) == 0.0
    assert vqa_accuracy("3", ["3"] * 10) == 1.0


def test_vqa_accuracy_single_answer_and_edge_cases():
    assert vqa_accuracy("Paris.", ["paris"]) == 1.0
    assert vqa_accuracy("", ["paris"]) == 0.0
    assert vqa_accuracy("paris", []) == 0.0
    assert vqa_accuracy("1,000", ["1000"]) == 1.0


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0


@pytest.mark.parametrize("pred, answers, expected", [
    ("hallo", ["hello"], 0.8),          # 1 edit over 5 characters
    ("abxd", ["abcd"], 0.75),
    ("ax", ["ab"], 0.5),                # similarity 0.5 is not below the threshold: kept
    ("xyz", ["abc"], 0.0),
    ("HELLO  ", ["hello"], 1.0),        # case and whitespace ignored
    ("", ["a"], 0.0),                   # empty prediction
    ("", [""], 1.0),
    ("hello", ["zzz", "hello"], 1.0),   # the best answer counts
    ("naïve", ["naive"], 0.8),          # unicode: one substitution
])
def test_anls(pred, answers, expected):
    assert anls(pred, answers) == pytest.approx(expected)


@pytest.mark.parametrize("pred, answer, expected", [
    ("45", "46", 1.0),       # 1/46 = 2.2 % off
    ("45", "50", 0.0),       # 10 % off
    ("105", "100", 1.0),     # exactly 5 %
    ("106", "100", 0.0),
    ("1,000", "1020", 0.0),  # VLMEvalKit: float("1,000") fails, strings differ
    ("45%", "0.45", 1.0),    # percent as a fraction (ChartQA's reference)
    ("45%", "45", 0.0),      # VLMEvalKit reads 45% only as 0.45
    ("0.45", "45%", 1.0),
    ("12.", "12", 1.0),      # trailing period
    ("0", "0", 1.0),
    ("0.1", "0", 0.0),
    ("Yes", "yes", 1.0),     # non-numeric: exact, case-insensitive
    ("yes.", "yes", 0.0),    # VLMEvalKit: no punctuation removed
    ("", "12", 0.0),         # empty prediction
    ("twelve", "12", 0.0),
])
def test_relaxed_accuracy(pred, answer, expected):
    assert relaxed_accuracy(pred, [answer]) == expected


def test_parse_number():
    assert parse_number("1,234.5") == (1234.5,)
    assert parse_number("50%") == (0.5, 50.0)
    assert parse_number("1,23") is None  # not a thousands separator
    assert parse_number("nan") is None
    assert parse_number("") is None


@pytest.mark.parametrize("pred, expected", [
    ("Paris.", 1.0), ("  PARIS ", 1.0), ('"Paris"', 1.0), ("ｐａｒｉｓ", 1.0),  # full-width letters (NFKC)
    ("Pari", 0.0), ("", 0.0), ("Paris, France", 0.0),
])
def test_exact_match(pred, expected):
    assert exact_match(pred, ["paris"]) == expected


def test_ocrbench_substring():
    assert ocrbench_match("The text says HELLO world", ["hello"]) == 1.0
    assert ocrbench_match("", ["hello"]) == 0.0
    assert ocrbench_match("hel lo", ["hello"]) == 0.0
    assert ocrbench_match("x ^ 2", ["x^2"], compact=True) == 1.0
    assert ocrbench_match("x ^ 2", ["x^2"]) == 0.0
    assert ocrbench_match("anything", [""]) == 0.0  # an empty answer never matches
    assert score("ocrbench", "x ^ 2", ["x^2"], category="Handwritten Mathematical Expression Recognition") == 1.0


@pytest.mark.parametrize("pred, expected", [
    ("B", "B"), ("(B)", "B"), ("Answer: C.", "C"), ("b", None), ("The answer is B", "B"),
    ("A", "A"),
    ("A blue circle", "A"),   # VLMEvalKit takes the lone letter A (no article check)
    ("A circle", "A"),        # article-like but no option text named: the letter stands
    ("blue", "B"), ("I think it is green", "C"),
    ("A or B", None), ("blue or green", None), ("", None), ("D", None),
])
def test_extract_choice(pred, expected):
    assert extract_choice(pred, OPTIONS) == expected


def test_mcq_accuracy_and_unicode_options():
    assert mcq_accuracy("(B)", "B", OPTIONS) == 1.0
    assert mcq_accuracy("C", "B", OPTIONS) == 0.0
    assert mcq_accuracy("", "B", OPTIONS) == 0.0
    assert extract_choice("Café", {"A": "café", "B": "thé"}) == "A"


def test_dispatch_rejects_unknown_metric():
    assert score("exact", "Paris", ["paris"]) == 1.0
    assert score("mcq", "B", ["B"], OPTIONS) == 1.0
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        score("bleu", "a", ["a"])
