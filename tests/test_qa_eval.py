"""VideoQA accuracy as the papers report it: overall and per question type."""

from __future__ import annotations

import math

import pytest

from mama_augment.datasets.qa import QAItem
from mama_augment.datasets.qa_eval import qa_accuracy, question_groups, score_credit

CANDIDATES = ("a", "b", "c", "d", "e")


def choice(qid: str, kind: str, answer: int) -> QAItem:
    return QAItem(qid, "v", "why?", CANDIDATES[answer], CANDIDATES, answer, kind, "val")


def test_next_qa_families_and_subtypes_with_tp_counted_as_tn():
    items = [choice("1", "CW", 0), choice("2", "CH", 1), choice("3", "TN", 2), choice("4", "TP", 3),
             choice("5", "TC", 4), choice("6", "DL", 0), choice("7", "DC", 0), choice("8", "DO", 0)]
    predictions = {"1": 0, "2": 0, "3": 2, "4": "d", "5": 0, "6": 0, "7": 1}  # 8 unanswered
    score = qa_accuracy(items, predictions)
    assert score.questions == 8 and score.unanswered == 1
    assert score.accuracy == pytest.approx(100 * 4 / 8)
    by = {name: (g.accuracy, g.questions) for name, g in score.by_type.items()}
    assert by["causal"] == (pytest.approx(50.0), 2)
    assert by["temporal"] == (pytest.approx(100 * 2 / 3), 3)
    assert by["descriptive"] == (pytest.approx(100 / 3), 3)
    assert by["TN"] == (pytest.approx(100.0), 2) and "TP" not in by
    assert by["CW"] == (pytest.approx(100.0), 1) and by["CH"] == (pytest.approx(0.0), 1)


def test_msrvtt_qa_types_from_the_first_word_and_exact_match():
    items = [QAItem(str(n), "video0", q, a, split="test") for n, (q, a) in enumerate([
        ("What is a man doing?", "sing"), ("who is singing", "man"), ("how many dogs", "two"),
        ("when is it", "night"), ("where is he", "stage"), ("is it raining", "yes")])]
    score = qa_accuracy(items, [" Sing ", "woman", "two", "night", None, "yes"])
    assert [question_groups(i)[0] for i in items] == ["what", "who", "how", "when", "where", "other"]
    assert score.accuracy == pytest.approx(100 * 4 / 6) and score.unanswered == 1
    assert score.by_type["who"].accuracy == 0.0 and score.by_type["what"].accuracy == 100.0


def test_shipped_types_are_used_as_given():
    items = [QAItem("1", "v", "is he running", "yes", question_type="yes/no"),
             QAItem("2", "v", "what color is it", "red", question_type="color")]
    score = qa_accuracy(items, {"1": "yes", "2": "blue"})
    assert {n: g.accuracy for n, g in score.by_type.items()} == {"color": 0.0, "yes/no": 100.0}


def test_tied_credit_and_empty_input():
    items = [choice("1", "CW", 0), choice("2", "CW", 1)]
    assert score_credit(items, [0.5, 1.0]).accuracy == pytest.approx(75.0)
    assert math.isnan(qa_accuracy([], {}).accuracy)
    with pytest.raises(ValueError):
        qa_accuracy(items, [0])
