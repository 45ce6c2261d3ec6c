"""Video QA accuracy as the papers report it: top-1 accuracy (percent) over all questions
and per question type, each with its number of questions.

The types are the benchmark's own:

* NExT-QA: the families ``causal`` (CW why, CH how), ``temporal`` (TN before/after, TC
  when) and ``descriptive`` (DC count, DL location, DO other), and each sub-type by its
  code. As in the official evaluation, TP (previous) counts as TN: the paper's
  "Bef&Aft" column is both.
* ActivityNet-QA and TGIF-QA: the type the release gives (motion, spatial, ... / object,
  number, color, location, action, transition, count).
* Causal-VidQA: ``D`` (description), ``E`` (explanation), and for prediction and the
  counterfactual the answer and the reason questions ``P-A``, ``P-R``, ``C-A``, ``C-R``
  and, as the paper reports, ``P-AR`` and ``C-AR``: a video's answer and reason both
  right. Its overall accuracy is the official one: the mean over D, E, P-AR and C-AR
  (an answer or reason question without its pair counts alone).
* MSRVTT-QA and MSVD-QA (no type shipped): the question's first word, ``what``, ``who``,
  ``how``, ``when``, ``where``, else ``other``; a shipped ``answer_type`` (the JSON Lines
  variants) is used as given.

An open-ended answer is right when it equals the reference after lower-casing and
collapsing white space (exact match, as MSRVTT-QA / ActivityNet-QA evaluate); a
multiple-choice prediction is the candidate's index (or its text). A question without a
prediction counts as wrong and is counted (``unanswered``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Sequence

from mama_augment.datasets.qa import QAItem

NEXT_FAMILIES = {"C": "causal", "T": "temporal", "D": "descriptive"}
NEXT_SUBTYPES = {"CW": "why", "CH": "how", "TN": "before/after", "TC": "when",
                 "DC": "count", "DL": "location", "DO": "other"}  # fmt: skip
FIRST_WORDS = ("what", "who", "how", "when", "where")
# Causal-VidQA: answer type -> (reason type, the type of both right)
ANSWER_REASON = {"P-A": ("P-R", "P-AR"), "C-A": ("C-R", "C-AR")}
_WORD = re.compile(r"[a-z]+")


def normalise_answer(text: str) -> str:
    return " ".join(str(text).lower().split())


def question_groups(item: QAItem) -> tuple[str, ...]:
    """The type names an item counts in (see the module doc)."""
    kind = (item.question_type or "").strip()
    code = "TN" if kind.upper() == "TP" else kind.upper()
    if code in NEXT_SUBTYPES:
        return NEXT_FAMILIES[code[0]], code
    if kind:
        return (kind,)
    word = _WORD.match(item.question.strip().lower())
    return (word.group(0) if word and word.group(0) in FIRST_WORDS else "other",)


def is_correct(item: QAItem, prediction) -> bool:
    if prediction is None:
        return False
    if item.multiple_choice:
        if isinstance(prediction, str):
            texts = [normalise_answer(c) for c in item.candidates]
            wanted = normalise_answer(prediction)
            return wanted in texts and texts.index(wanted) == item.answer_index
        return not isinstance(prediction, bool) and int(prediction) == item.answer_index
    return normalise_answer(prediction) == normalise_answer(item.answer)


@dataclass
class GroupScore:
    accuracy: float  # percent
    questions: int


@dataclass
class QAScore:
    accuracy: float  # percent; NaN for no question
    questions: int
    unanswered: int = 0
    by_type: dict[str, GroupScore] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "questions": self.questions,
            "unanswered": self.unanswered,
            "by_type": {name: {"accuracy": g.accuracy, "questions": g.questions} for name, g in self.by_type.items()},
        }


def _mean_percent(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else math.nan


def score_credit(items: Sequence[QAItem], credit: Sequence[float], unanswered: int = 0) -> QAScore:
    """Accuracy from each item's credit (1 right, 0 wrong, a share when tied)."""
    if len(items) != len(credit):
        raise ValueError(f"{len(items)} questions but {len(credit)} credits")
    groups: dict[str, list[float]] = {}
    for item, value in zip(items, credit):
        for name in question_groups(item):
            groups.setdefault(name, []).append(float(value))
    units = [float(c) for c in credit]
    paired = _answer_reason_pairs(items)
    if paired:
        in_pair = {row for pair in paired for row in pair[1:]}
        units = [float(c) for row, c in enumerate(credit) if row not in in_pair]
        for name, answer_row, reason_row in paired:
            both = float(credit[answer_row]) * float(credit[reason_row])  # ties: the chance both are drawn right
            groups.setdefault(name, []).append(both)
            units.append(both)
    order = sorted(groups, key=lambda n: (-len(groups[n]), n))
    return QAScore(_mean_percent(units), len(items), unanswered,
                   {name: GroupScore(_mean_percent(groups[name]), len(groups[name])) for name in order})


def _answer_reason_pairs(items: Sequence[QAItem]) -> list[tuple[str, int, int]]:
    """(combined type, answer row, reason row) of each video's Causal-VidQA answer and
    reason questions (see the module doc)."""
    reasons: dict[tuple[str, str], list[int]] = {}
    for row, item in enumerate(items):
        reasons.setdefault((item.video_id, item.question_type or ""), []).append(row)
    out = []
    for row, item in enumerate(items):
        pair = ANSWER_REASON.get(item.question_type or "")
        waiting = reasons.get((item.video_id, pair[0])) if pair else None
        if waiting:
            out.append((pair[1], row, waiting.pop(0)))
    return out


def qa_accuracy(items: Sequence[QAItem], predictions: Mapping[str, object] | Sequence[object]) -> QAScore:
    """Top-1 accuracy overall and per question type.

    ``predictions``: answer text (open-ended) or candidate index (multiple-choice), either
    by question id or one per item in order; None or a missing id is unanswered.
    """
    if isinstance(predictions, Mapping):
        predicted = [predictions.get(item.question_id) for item in items]
    else:
        predicted = list(predictions)
        if len(predicted) != len(items):
            raise ValueError(f"{len(items)} questions but {len(predicted)} predictions")
    credit = [1.0 if is_correct(item, p) else 0.0 for item, p in zip(items, predicted)]
    return score_credit(items, credit, sum(p is None for p in predicted))
