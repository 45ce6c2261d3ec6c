"""Multiple-choice test files (MSR-VTT MC style: a video, five candidate captions, the
index of the right one).

JSON Lines or a JSON list of objects with

* the video: ``video_id``, ``clip_name`` (ClipBERT / ALPRO / Frozen ``msrvtt_mc_test.jsonl``),
  ``clip_id``, ``video`` (VindLU / UMT ``msrvtt_mc_test.json``, ``video7010.mp4``) or ``videoID``;
* the candidates: ``candidates``, ``options`` or ``caption`` (a list of strings);
* the answer: ``answer``, the 0-based index of the right candidate, or its text.

A bad item is skipped and counted; a file with no usable item is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mama_augment.datasets.base import Problems, Source, id_value, text_value, too_deep
from mama_augment.errors import UsageError

_VIDEO_KEYS = ("video_id", "clip_name", "clip_id", "video", "videoID")
_CANDIDATE_KEYS = ("candidates", "options", "caption")


@dataclass(frozen=True)
class ChoiceItem:
    video_id: str
    candidates: tuple[str, ...]
    answer: int


def read_multiple_choice(path: str | Path, problems: Problems | None = None) -> list[ChoiceItem]:
    source = Source(path, problems)
    try:
        return _read_items(source)
    except RecursionError:
        raise too_deep(source.path) from None


def _read_items(source: Source) -> list[ChoiceItem]:
    source.refuse_pickle()
    if not source.looks_like_json():
        raise UsageError(f"{source.path}: a multiple-choice file is JSON Lines or a JSON list of "
                         "{video_id, candidates, answer} objects")
    records = source.records()
    items: list[ChoiceItem] = []
    seen = 0
    for number, record in records:
        seen += 1
        where = f"{source.name} item {number}"
        if not isinstance(record, dict):
            source.problems.add("malformed_record", f"{where}: not an object")
            continue
        video_key = next((k for k in _VIDEO_KEYS if k in record), None)
        candidate_key = next((k for k in _CANDIDATE_KEYS if isinstance(record.get(k), list)), None)
        if video_key is None or candidate_key is None or "answer" not in record:
            missing = "video id" if video_key is None else "candidates list" if candidate_key is None else "answer"
            source.problems.add("malformed_record", f"{where}: no {missing}")
            continue
        video_id = id_value(record[video_key])
        candidates = [text_value(c) for c in record[candidate_key]]
        if video_id is None or len(candidates) < 2 or any(not c for c in candidates):
            source.problems.add("malformed_record", f"{where}: needs a video id and at least two non-empty candidates")
            continue
        answer = record["answer"]
        if isinstance(answer, str) and answer.strip() in candidates:
            answer = candidates.index(answer.strip())
        if isinstance(answer, str) and answer.strip().isdigit():
            answer = int(answer.strip())
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(candidates):
            source.problems.add("malformed_record", f"{where}: answer {record['answer']!r} is not a candidate index "
                                                    f"(0 to {len(candidates) - 1}) or a candidate's text")
            continue
        items.append(ChoiceItem(video_id, tuple(candidates), int(answer)))
    if not items:
        first = next(iter(source.problems.examples.values()), "no items")
        raise UsageError(f"{source.path}: no usable multiple-choice item of {seen} ({first})")
    return items
