"""Video question answering releases as they are distributed, read without converters.

Each file is read into a :class:`QAPart` of typed :class:`QAItem` (question id, video
id, question, answer text or candidates + answer index, question type, split); the
parts of one dataset are then put together by :func:`read_qa` (ids through the
release's mapping file, ActivityNet-QA's questions joined to their answers) and the
video ids matched to ``keyframes.parquet`` by :func:`load_qa` with the rules of
:mod:`~mama_augment.datasets.ids`. As with the caption readers, a bad record is skipped
and counted in :class:`~mama_augment.datasets.base.Problems`, and a file that gives
nothing usable is a :class:`~mama_augment.errors.UsageError`.

Layouts (the split comes from the file name: ``train_qa.json``, ``Test_frameqa_question.tsv``):

* ``msrvtt-qa`` (MSRVTT-QA and MSVD-QA, Xu et al. 2017): ``train_qa.json`` /
  ``val_qa.json`` / ``test_qa.json``, a JSON list of ``{question, answer, video_id, id}``.
  The ids are numbers: MSR-VTT's ``7010`` is ``video7010``; MSVD's ``1`` is ``vid1``,
  named through ``youtube_mapping.txt`` (``msvd-qa-map``, lines
  ``-4wsuPCjDBc_5_15 vid1``). The two releases look alike, so the mapping file decides:
  given with it (or named ``msvd-qa``), the ids are MSVD's.
* ``qa-jsonl``: the JSON Lines (or list) files later works ship: ``question``, ``answer``,
  ``video_id`` (or ``clip_name``, ``video``), optional ``answer_type`` and
  ``question_id``; with a ``candidates`` / ``options`` list the item is multiple-choice.
* ``tgif-qa``: ``Train_frameqa_question.tsv`` (``gif_name question answer vid_id key
  type``, type 0 object, 1 number, 2 color, 3 location); ``Train_action_question.csv`` /
  ``Train_transition_question.csv`` (``gif_name question a1 .. a5 answer vid_id key``,
  answer the 0-based index of the right candidate); ``Train_count_question.csv``
  (``gif_name question answer vid_id key``). Tab-separated despite the ``.csv``; a file
  re-saved with commas is read as well. The video is the GIF (``gif_name``).
* ``next-qa``: ``train.csv`` / ``val.csv`` / ``test.csv`` (``video, frame_count, width,
  height, question, answer, qid, type, a0 .. a4``; answer the index 0-4; without
  ``a0 .. a4`` the open-ended NExT-OE layout); the question id is ``<video>_<qid>`` as
  in the official evaluation. ``map_vid_vidorID.json`` (``next-qa-map``) names each
  video's file ``<folder>/<video>``.
* ``activitynet-qa``: ``train_q.json`` (``{question, question_id, video_name}``) and
  ``train_a.json`` (``{answer, question_id, type}``), joined by ``question_id``; type
  0 motion, 1 spatial, 2 temporal, 3 yes/no, 4 color, 5 object, 6 location, 7 number,
  8 other.
* ``causal-vidqa``: the ``QA`` folder, one folder per video holding ``text.json``
  (``descriptive``, ``explanatory``, ``predictive``, ``counterfactual``: each a
  ``question`` and five ``answer`` candidates; ``predictive`` and ``counterfactual``
  also five ``reason`` candidates) and ``answer.json`` (the right indices, same keys).
  A video gives six questions, ``<video>_0`` .. ``<video>_5`` as the official code names
  them, typed ``D``, ``E``, ``P-A``, ``P-R``, ``C-A``, ``C-R`` (the reason question
  is the same question asked for the reason). ``causal-vidqa-split``: the split lists,
  one video id per line (``split/train.txt``, ``valid.txt``, ``test.txt``); the release
  ships them pickled (``train.pkl``), which is refused with the one-line conversion.
  A list reads its videos from the ``QA`` folder given beside it, else from the
  release's own place, ``../QA`` of the list's folder.
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from mama_augment.datasets.base import (
    PICKLE_HINT,
    Problems,
    Source,
    annotation_limit_bytes,
    id_value,
    split_from_name,
    text_value,
)
from mama_augment.datasets.ids import IdMatch, match_video_ids
from mama_augment.errors import UsageError

# What a file contributes.
ROLE_ITEMS = "items"  # complete questions
ROLE_QUESTIONS = "questions"  # ActivityNet-QA's questions, answers in another file
ROLE_ANSWERS = "answers"  # ActivityNet-QA's answers
ROLE_VIDEO_MAP = "video_map"  # release video id -> the id of the video file
ROLE_QA_FOLDER = "video folders"  # Causal-VidQA's QA folder: the questions of each video
ROLE_SPLIT_LIST = "videos listed"  # Causal-VidQA's split list: the videos of one split

TGIF_FRAME_TYPES = {"0": "object", "1": "number", "2": "color", "3": "location"}
ACTIVITYNET_TYPES = {"0": "motion", "1": "spatial", "2": "temporal", "3": "yes/no", "4": "color",
                     "5": "object", "6": "location", "7": "number", "8": "other"}  # fmt: skip
_VIDEO_KEYS = ("video_id", "clip_name", "video", "video_name", "videoID")
_CANDIDATE_KEYS = ("candidates", "options")
_QUESTION_ID_KEYS = ("question_id", "qid", "id")
_MSVD_VID = re.compile(r"^vid(\d+)$")
_NUMBER = re.compile(r"^\d+$")
_VIDOR_PATH = re.compile(r"^[\w-]+/[\w-]+$")


@dataclass(frozen=True)
class QAItem:
    """One question about one video.

    Open-ended: ``answer`` is the answer text and ``candidates`` is empty.
    Multiple-choice: ``candidates`` are the choices, ``answer_index`` the right one and
    ``answer`` its text.
    """

    question_id: str
    video_id: str
    question: str
    answer: str
    candidates: tuple[str, ...] = ()
    answer_index: int | None = None
    question_type: str | None = None
    split: str | None = None

    @property
    def multiple_choice(self) -> bool:
        return bool(self.candidates)


@dataclass
class QAPart:
    """What one file gives."""

    path: Path
    format: str
    role: str = ROLE_ITEMS
    items: list[QAItem] = field(default_factory=list)
    video_map: dict[str, str] = field(default_factory=dict)  # ROLE_VIDEO_MAP
    answers: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # ROLE_ANSWERS: id -> (answer, type)
    numeric_ids: bool = False  # msrvtt-qa: video ids are numbers, named by the mapping (or video<N>)
    video_ids: list[str] = field(default_factory=list)  # ROLE_QA_FOLDER, ROLE_SPLIT_LIST
    split: str | None = None  # ROLE_SPLIT_LIST

    def __len__(self) -> int:
        return len(self.items) + len(self.video_map) + len(self.answers) + len(self.video_ids)


@dataclass(frozen=True)
class QAFormat:
    name: str
    benchmark: str
    files: str
    reader: Callable[[Source], QAPart]
    detect: Callable[[Source], bool]
    example: str


# ---- helpers ---------------------------------------------------------------------------


def _unusable(source: Source, what: str) -> UsageError:
    first = next(iter(source.problems.examples.values()), "")
    return UsageError(f"{source.path}: no usable {what}" + (f" ({first})" if first else ""))


def _is_json_lines(source: Source) -> bool:
    """One JSON object per line. Unlike the caption files' test, a bad second line does
    not make the file one JSON document: that line is counted by the reader instead."""
    import json

    lines = [line for line in source.head.splitlines()[:3] if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except (ValueError, RecursionError):  # a bad or hostile first line: not this format
        return False


def _json_records(source: Source) -> list | None:
    """The records of a JSON list or JSON Lines file; None when the file is neither."""
    if not source.looks_like_json():
        return None
    if _is_json_lines(source):
        return [record for _, record in source.json_lines()]
    data = source.json
    return data if isinstance(data, list) else None


def _head_records(source: Source) -> list[dict]:
    """The first complete records of a JSON list or JSON Lines file, for detection only
    (parses the head, never the whole file)."""
    import json

    head = source.head.lstrip()
    if _is_json_lines(source):
        out = []
        for line in head.splitlines()[:5]:
            try:
                out.append(json.loads(line))
            except (ValueError, RecursionError):
                continue  # a bad line (or the head's cut last line): the others decide
        return [r for r in out if isinstance(r, dict)]
    if not head.startswith("["):
        return []
    decoder = json.JSONDecoder()
    out, position = [], 1
    while len(out) < 5:
        while position < len(head) and head[position] in " \t\r\n,":
            position += 1
        if position >= len(head) or head[position] != "{":
            break
        try:
            value, position = decoder.raw_decode(head, position)
        except (ValueError, RecursionError):
            break
        out.append(value)
    return [r for r in out if isinstance(r, dict)]


def _answer_index(value, count: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = int(value.strip())
    return value if isinstance(value, int) and 0 <= value < count else None


def _delimiter(header_line: str) -> str:
    """Tab, comma or semicolon (a spreadsheet re-saving a file in some locales): the one
    that splits the header line most."""
    return max(("\t", ",", ";"), key=header_line.count)


def _table(source: Source) -> tuple[list[str], list[list[str]]]:
    """A header row and data rows of a tab- or comma-separated file (the delimiter is the
    header line's: TGIF-QA's ``.csv`` files hold tabs, and re-saved copies commas)."""
    lines = (line for line in source.lines() if line.strip())  # streamed: a file of any size
    first = next(lines, None)
    if first is None:
        raise UsageError(f"{source.path} is empty")
    delimiter = _delimiter(first)
    if delimiter == "\t":
        rows = [line.split("\t") for line in itertools.chain([first], lines)]
    else:
        rows = list(csv.reader((line + "\n" for line in itertools.chain([first], lines)), delimiter=delimiter))
    header = [h.strip().strip('"').lower() for h in rows[0]]
    return header, rows[1:]


def _table_rows(source: Source, header: list[str], column: dict[str, int], rows: list[list[str]]):
    """(line number, where, cell) of every data row with all its fields; blank rows are
    skipped and short ones counted (``malformed_line``). ``cell(name)`` is the stripped
    field of that column, empty when the file has no such column."""
    file_name = source.name  # once: the loop runs per question
    for number, row in enumerate(rows, 2):
        if not any(field.strip() for field in row):
            continue
        where = f"{file_name} line {number}"
        if len(row) < len(header):
            source.problems.add("malformed_line", f"{where}: {len(row)} fields, the header names {len(header)}")
            continue

        def cell(name: str, row: list[str] = row) -> str:
            return row[column[name]].strip() if name in column else ""

        yield number, where, cell


def _header(source: Source) -> list[str]:
    for line in source.head.splitlines():
        if line.strip():
            delimiter = _delimiter(line)
            return [h.strip().strip('"').lower() for h in line.split(delimiter)]
    return []


# ---- MSRVTT-QA / MSVD-QA ---------------------------------------------------------------


def detect_xu(source: Source) -> bool:
    records = [] if _is_json_lines(source) else _head_records(source)
    return bool(records) and all(
        # numeric video ids are what tells this layout apart (some copies drop "id")
        {"question", "answer", "video_id"} <= set(r) and _NUMBER.match(str(r["video_id"]).strip()) for r in records
    )


def _read_xu(source: Source, name: str) -> QAPart:
    records = _json_records(source)
    if records is None:
        raise UsageError(f"{source.path}: expected a JSON list of {{question, answer, video_id, id}} ({name} *_qa.json)")
    split = split_from_name(source.name)
    part = QAPart(source.path, name, numeric_ids=True)
    file_name = source.name  # once: the loop below runs per question
    for number, record in enumerate(records):
        where = f"{file_name} item {number}"
        if not isinstance(record, dict):
            source.problems.add("malformed_record", f"{where}: not an object")
            continue
        question, answer = text_value(record.get("question")), text_value(record.get("answer"))
        video_id = id_value(record.get("video_id"))
        if not question or not answer or video_id is None:
            missing = "question" if not question else "answer" if not answer else "video_id"
            source.problems.add("malformed_record", f"{where}: no {missing}")
            continue
        question_id = id_value(record.get("id")) or str(number)
        part.items.append(QAItem(question_id, video_id, question, answer, split=split))
    if not part.items:
        raise _unusable(source, "questions ({question, answer, video_id, id})")
    return part


def read_msrvtt_qa(source: Source) -> QAPart:
    return _read_xu(source, "msrvtt-qa")


def read_msvd_qa(source: Source) -> QAPart:
    return _read_xu(source, "msvd-qa")


def detect_youtube_mapping(source: Source) -> bool:
    if source.looks_like_json():
        return False
    lines = [line for line in source.head.splitlines() if line.strip()]
    if not source.head_is_whole():
        lines = lines[:-1]  # cut by the end of the head
    return bool(lines) and all(len(f := line.split()) == 2 and _MSVD_VID.match(f[1]) for line in lines)


def read_youtube_mapping(source: Source) -> QAPart:
    part = QAPart(source.path, "msvd-qa-map", role=ROLE_VIDEO_MAP)
    for number, line in enumerate(source.lines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        match = _MSVD_VID.match(fields[1]) if len(fields) == 2 else None
        if match is None:
            source.problems.add("malformed_line", f"{source.name} line {number}: not '<clip name> vid<N>'")
            continue
        part.video_map[match.group(1)] = fields[0]
    if not part.video_map:
        raise _unusable(source, "mapping lines (<clip name> vid<N>)")
    return part


# ---- JSON Lines variants ---------------------------------------------------------------


def detect_jsonl(source: Source) -> bool:
    records = _head_records(source)
    # one record without an answer is a bad record of this format, not another format
    return bool(records) and any("answer" in r for r in records) and all(
        "question" in r and any(k in r for k in _VIDEO_KEYS) for r in records
    )


def read_jsonl(source: Source) -> QAPart:
    records = _json_records(source)
    if records is None:
        raise UsageError(f"{source.path}: expected JSON Lines (or a JSON list) of {{question, answer, video_id}} objects")
    split = split_from_name(source.name)
    part = QAPart(source.path, "qa-jsonl")
    file_name = source.name  # once: the loop below runs per question
    for number, record in enumerate(records):
        where = f"{file_name} item {number}"
        if not isinstance(record, dict):
            source.problems.add("malformed_record", f"{where}: not an object")
            continue
        video_key = next((k for k in _VIDEO_KEYS if k in record), None)
        video_id = id_value(record[video_key]) if video_key else None
        question = text_value(record.get("question"))
        if video_id is None or not question:
            source.problems.add("malformed_record", f"{where}: no {'video id' if video_id is None else 'question'}")
            continue
        question_id = next((id_value(record[k]) for k in _QUESTION_ID_KEYS if id_value(record.get(k))), None) or str(number)
        kind = text_value(record.get("answer_type") or record.get("type"))
        candidate_key = next((k for k in _CANDIDATE_KEYS if isinstance(record.get(k), list)), None)
        if candidate_key:
            candidates = [text_value(c) for c in record[candidate_key]]
            answer = record.get("answer")
            index = candidates.index(answer.strip()) if isinstance(answer, str) and answer.strip() in candidates else (
                _answer_index(answer, len(candidates)))
            if len(candidates) < 2 or not all(candidates) or index is None:
                source.problems.add("malformed_record", f"{where}: needs two or more non-empty candidates and the "
                                                        "index or text of the right one")
                continue
            part.items.append(QAItem(question_id, video_id, question, candidates[index], tuple(candidates), index,
                                     kind or None, split))
            continue
        answer = text_value(record.get("answer"))
        if not answer:
            source.problems.add("malformed_record", f"{where}: no answer")
            continue
        part.items.append(QAItem(question_id, video_id, question, answer, question_type=kind or None, split=split))
    if not part.items:
        raise _unusable(source, "questions ({question, answer, video_id})")
    return part


# ---- TGIF-QA ---------------------------------------------------------------------------


def detect_tgif(source: Source) -> bool:
    return not source.looks_like_json() and _header(source)[:1] == ["gif_name"] and "question" in _header(source)


def read_tgif(source: Source) -> QAPart:
    header, rows = _table(source)
    column = {name: i for i, name in enumerate(header)}
    missing = [c for c in ("gif_name", "question", "answer") if c not in column]
    if missing:
        raise UsageError(f"{source.path}: a TGIF-QA file needs the columns gif_name, question, answer (missing {missing[0]})")
    choice = all(f"a{i}" in column for i in range(1, 6))
    lowered = source.name.lower()
    task = "action" if "action" in lowered else "transition" if "transition" in lowered else None
    split = split_from_name(source.name)
    part = QAPart(source.path, "tgif-qa")
    for number, where, cell in _table_rows(source, header, column, rows):
        video_id, question = cell("gif_name"), cell("question")
        if not video_id or not question:
            source.problems.add("malformed_record", f"{where}: no {'gif_name' if not video_id else 'question'}")
            continue
        question_id = cell("key") or f"{Path(source.name).stem}:{number}"
        if choice:
            candidates = [cell(f"a{i}") for i in range(1, 6)]
            index = _answer_index(cell("answer"), 5)
            if index is None or not all(candidates):
                source.problems.add("malformed_record", f"{where}: answer {cell('answer')!r} is not an index 0-4 "
                                                        "of five non-empty candidates")
                continue
            part.items.append(QAItem(question_id, video_id, question, candidates[index], tuple(candidates), index,
                                     task or "multiple-choice", split))
            continue
        answer = cell("answer")
        if not answer:
            source.problems.add("malformed_record", f"{where}: no answer")
            continue
        if "type" in column:
            kind = TGIF_FRAME_TYPES.get(cell("type"))
            if kind is None:
                source.problems.add("unknown_question_type", f"{where}: type {cell('type')!r} is not 0-3 (kept, no type)")
        else:
            kind = "count"
        part.items.append(QAItem(question_id, video_id, question, answer, question_type=kind, split=split))
    if not part.items:
        raise _unusable(source, "questions")
    return part


# ---- NExT-QA ---------------------------------------------------------------------------


def detect_next(source: Source) -> bool:
    header = _header(source)
    return not source.looks_like_json() and bool({"video", "video_id"} & set(header)) and {
        "question", "answer", "qid", "type"} <= set(header)


def read_next(source: Source) -> QAPart:
    header, rows = _table(source)
    column = {name: i for i, name in enumerate(header)}
    if "video" not in column and "video_id" in column:  # NExT-GQA and later copies name it so
        column["video"] = column["video_id"]
    missing = [c for c in ("video", "question", "answer", "qid") if c not in column]
    if missing:
        raise UsageError(f"{source.path}: a NExT-QA file needs the columns video, question, answer, qid "
                         f"(missing {missing[0]})")
    choice = all(f"a{i}" in column for i in range(5))
    split = split_from_name(source.name)
    part = QAPart(source.path, "next-qa")
    for _, where, cell in _table_rows(source, header, column, rows):
        video_id, question, qid = cell("video"), cell("question"), cell("qid")
        if not video_id or not question or not qid:
            source.problems.add("malformed_record", f"{where}: no {'video' if not video_id else 'question' if not question else 'qid'}")
            continue
        kind = cell("type") or None
        question_id = f"{video_id}_{qid}"  # as the official evaluation names a question
        if choice:
            candidates = [cell(f"a{i}") for i in range(5)]
            index = _answer_index(cell("answer"), 5)
            if index is None or not all(candidates):
                source.problems.add("malformed_record", f"{where}: answer {cell('answer')!r} is not an index 0-4 "
                                                        "of five non-empty candidates")
                continue
            part.items.append(QAItem(question_id, video_id, question, candidates[index], tuple(candidates), index,
                                     kind, split))
            continue
        if not cell("answer"):
            source.problems.add("malformed_record", f"{where}: no answer")
            continue
        part.items.append(QAItem(question_id, video_id, question, cell("answer"), question_type=kind, split=split))
    if not part.items:
        raise _unusable(source, "questions")
    return part


def detect_next_map(source: Source) -> bool:
    if not source.head.lstrip().startswith("{"):
        return False
    pairs = re.findall(r'"([^"]*)"\s*:\s*"([^"]*)"', source.head[:4096])
    return bool(pairs) and all(_NUMBER.match(k) and _VIDOR_PATH.match(v) for k, v in pairs)


def read_next_map(source: Source) -> QAPart:
    data = source.json
    if not isinstance(data, dict):
        raise UsageError(f"{source.path}: expected a JSON object {{video: 'folder/video'}} (map_vid_vidorID.json)")
    part = QAPart(source.path, "next-qa-map", role=ROLE_VIDEO_MAP)
    for key, value in data.items():
        path = id_value(value)
        if path is None:
            source.problems.add("malformed_record", f"{source.name} {key}: {str(value)[:60]!r} is not a video path")
            continue
        part.video_map[str(key).strip()] = path
    if not part.video_map:
        raise _unusable(source, "video paths")
    return part


# ---- ActivityNet-QA --------------------------------------------------------------------


def detect_activitynet(source: Source) -> bool:
    records = _head_records(source)
    if not records:
        return False
    questions = all({"question", "question_id", "video_name"} <= set(r) for r in records)
    answers = all({"answer", "question_id"} <= set(r) and "question" not in r for r in records)
    return questions or answers


def read_activitynet(source: Source) -> QAPart:
    records = _json_records(source)
    if records is None:
        raise UsageError(f"{source.path}: expected a JSON list (ActivityNet-QA train_q.json or train_a.json)")
    split = split_from_name(source.name.replace("_q.", ".").replace("_a.", "."))
    first = next((r for r in records if isinstance(r, dict)), {})
    answers = "question" not in first and "answer" in first
    part = QAPart(source.path, "activitynet-qa", role=ROLE_ANSWERS if answers else ROLE_QUESTIONS)
    file_name = source.name  # once: the loop below runs per question
    for number, record in enumerate(records):
        where = f"{file_name} item {number}"
        question_id = id_value(record.get("question_id")) if isinstance(record, dict) else None
        if question_id is None:
            source.problems.add("malformed_record", f"{where}: no question_id")
            continue
        if answers:
            answer = text_value(record.get("answer"))
            if not answer:
                source.problems.add("malformed_record", f"{where}: no answer")
                continue
            code = id_value(record.get("type"))
            kind = ACTIVITYNET_TYPES.get(code or "")
            if code is not None and kind is None:
                source.problems.add("unknown_question_type", f"{where}: type {code!r} is not 0-8 (kept, no type)")
            part.answers[question_id] = (answer, kind)
            continue
        question, video_id = text_value(record.get("question")), id_value(record.get("video_name"))
        if not question or video_id is None:
            source.problems.add("malformed_record", f"{where}: no {'question' if not question else 'video_name'}")
            continue
        part.items.append(QAItem(question_id, video_id, question, "", split=split))
    if not len(part):
        raise _unusable(source, "questions" if not answers else "answers")
    return part


# ---- Causal-VidQA ----------------------------------------------------------------------

CAUSAL_TEXT = "text.json"
CAUSAL_ANSWER = "answer.json"
# (question id suffix, text.json key, candidates key, type) in the official order.
CAUSAL_QUESTIONS = (
    (0, "descriptive", "answer", "D"), (1, "explanatory", "answer", "E"),
    (2, "predictive", "answer", "P-A"), (3, "predictive", "reason", "P-R"),
    (4, "counterfactual", "answer", "C-A"), (5, "counterfactual", "reason", "C-R"),
)
CAUSAL_SPLIT_HINT = (
    "Causal-VidQA's split lists ship pickled: convert each once, in an environment you trust, to a text list "
    "of one video id per line, e.g. python -c \"import pickle; print('\\n'.join(pickle.load(open('{name}', 'rb'))))\" "
    "> {stem}.txt, and pass {stem}.txt (with the QA folder, or from the release's split folder beside QA)"
)
_TOKEN_LINE = re.compile(r"^[^\s,;]+$")


def _is_causal_folder(path: Path) -> bool:
    """A folder of per-video folders holding text.json (looks at a few, not all)."""
    try:
        folders = [p for _, p in zip(range(20), path.iterdir()) if p.is_dir()]
    except OSError:
        return False
    return any((p / CAUSAL_TEXT).is_file() for p in folders)


def detect_causal_text(source: Source) -> bool:
    head = source.head.lstrip()
    return head.startswith("{") and source.name.lower() == CAUSAL_TEXT and all(
        f'"{key}"' in head for key in ("descriptive", "explanatory"))


def detect_causal_split(source: Source) -> bool:
    """One id per line, in the release's place beside the QA folder (an id list alone
    is also what caption releases ship: the folder tells this one apart)."""
    if source.looks_like_json() or split_from_name(source.name) is None:
        return False
    lines = [line.strip() for line in source.head.splitlines() if line.strip()]
    return bool(lines) and all(_TOKEN_LINE.match(line) for line in lines) and _is_causal_folder(
        source.path.parent.parent / "QA")


def _causal_video(folder: Path, video_id: str, split: str | None, problems: Problems) -> list[QAItem]:
    """The six questions of one video folder; none (counted) when its files are bad."""
    import json

    where = f"QA/{video_id}"
    try:
        for name in (CAUSAL_TEXT, CAUSAL_ANSWER):  # each is read whole: the cap of any annotation file
            if (folder / name).stat().st_size > annotation_limit_bytes():
                problems.add("malformed_record", f"{where}: {name} is over the annotation file size cap")
                return []
        text = json.loads((folder / CAUSAL_TEXT).read_text(encoding="utf-8-sig"))
        answer = json.loads((folder / CAUSAL_ANSWER).read_text(encoding="utf-8-sig"))
    except FileNotFoundError as exc:
        problems.add("video_not_in_folder", f"{where}: no {Path(exc.filename).name}")
        return []
    except (OSError, ValueError, RecursionError) as exc:
        problems.add("malformed_record", f"{where}: {type(exc).__name__}: {str(exc)[:80]}")
        return []
    items = []
    for number, key, candidates_key, kind in CAUSAL_QUESTIONS:
        entry, right = text.get(key) if isinstance(text, dict) else None, answer.get(key) if isinstance(answer, dict) else None
        question = text_value(entry.get("question")) if isinstance(entry, dict) else None
        candidates = entry.get(candidates_key) if isinstance(entry, dict) else None
        candidates = [text_value(c) for c in candidates] if isinstance(candidates, list) else []
        index = _answer_index(right.get(candidates_key), len(candidates)) if isinstance(right, dict) else None
        if not question or len(candidates) < 2 or not all(candidates) or index is None:
            problems.add("malformed_record", f"{where} {key} {candidates_key}: needs the question, two or more "
                                             "non-empty candidates and the index of the right one in answer.json")
            continue
        items.append(QAItem(f"{video_id}_{number}", video_id, question, candidates[index], tuple(candidates), index,
                            kind, split))
    return items


def read_causal_text(source: Source) -> QAPart:
    """One video's ``QA/<video>/text.json`` (its answer.json beside it); no split."""
    part = QAPart(source.path, "causal-vidqa")
    part.items = _causal_video(source.path.parent, source.path.parent.name, None, source.problems)
    if not part.items:
        raise _unusable(source, "questions (text.json with its answer.json)")
    return part


def read_causal_folder(path: Path, problems: Problems) -> QAPart:
    """The ``QA`` folder: its videos are read when combined, for the split lists given."""
    try:
        videos = sorted(p.name for p in path.iterdir() if (p / CAUSAL_TEXT).is_file())
    except OSError as exc:
        raise UsageError(f"cannot read the folder {path}: {exc.strerror or exc}") from None
    if not videos:
        raise UsageError(f"{path} holds no Causal-VidQA video folder (<video>/{CAUSAL_TEXT} and {CAUSAL_ANSWER})")
    return QAPart(path, "causal-vidqa", role=ROLE_QA_FOLDER, video_ids=videos)


def read_causal_split(source: Source) -> QAPart:
    split = split_from_name(source.name)
    part = QAPart(source.path, "causal-vidqa-split", role=ROLE_SPLIT_LIST, split=split)
    for number, line in enumerate(source.lines(), 1):
        token = line.strip()
        if not token:
            continue
        if not _TOKEN_LINE.match(token):
            source.problems.add("malformed_line", f"{source.name} line {number}: not one video id")
            continue
        part.video_ids.append(token)
    if not part.video_ids:
        raise _unusable(source, "video ids (one per line)")
    if split is None:
        raise UsageError(f"{source.path}: the split comes from the file name (train.txt, valid.txt, test.txt)")
    return part


def _causal_items(parts: list[QAPart], problems: Problems, notes: list[str]) -> list[QAItem]:
    """The questions of the videos each split list names, read from the QA folder given
    (or the release's own ``../QA`` of the list); without lists every video of the
    folder, without a split."""
    folders = [p for p in parts if p.role == ROLE_QA_FOLDER]
    lists = [p for p in parts if p.role == ROLE_SPLIT_LIST]
    if len(folders) > 1:
        raise UsageError("give one Causal-VidQA QA folder")
    items: list[QAItem] = []
    if not lists:
        for folder in folders:
            notes.append(f"{folder.path}: no split list given, so no split (give split/train.txt, valid.txt, test.txt)")
            for video_id in folder.video_ids:
                items += _causal_video(Path(folder.path) / video_id, video_id, None, problems)
        return items
    for listed in lists:
        root = Path(folders[0].path) if folders else Path(listed.path).parent.parent / "QA"
        if not root.is_dir():
            raise UsageError(f"{listed.path}: give the Causal-VidQA QA folder too (--questions path/to/QA); "
                             f"it is not at {root}")
        for video_id in listed.video_ids:
            items += _causal_video(root / video_id, video_id, listed.split, problems)
    if folders:
        listed_ids = {v for p in lists for v in p.video_ids}
        unlisted = sum(v not in listed_ids for v in folders[0].video_ids)
        if unlisted:
            notes.append(f"{folders[0].path}: {unlisted} videos in no split list given (not read)")
    return items


# ---- registry --------------------------------------------------------------------------


def _format(*args) -> tuple[str, QAFormat]:
    fmt = QAFormat(*args)
    return fmt.name, fmt


QA_FORMATS: dict[str, QAFormat] = dict([
    _format("msrvtt-qa", "MSRVTT-QA (and MSVD-QA with youtube_mapping.txt)", "train_qa.json, val_qa.json, test_qa.json",
            read_msrvtt_qa, detect_xu,
            "mama-augment datasets train_qa.json val_qa.json test_qa.json"),
    _format("msvd-qa", "MSVD-QA", "train_qa.json, val_qa.json, test_qa.json (+ youtube_mapping.txt)",
            read_msvd_qa, lambda source: False,  # looks like msrvtt-qa: the mapping file or the name decides
            "mama-augment datasets train_qa.json test_qa.json youtube_mapping.txt"),
    _format("msvd-qa-map", "MSVD-QA video names", "youtube_mapping.txt",
            read_youtube_mapping, detect_youtube_mapping,
            "mama-augment datasets train_qa.json test_qa.json youtube_mapping.txt"),
    _format("activitynet-qa", "ActivityNet-QA", "train_q.json + train_a.json, val_q/_a, test_q/_a",
            read_activitynet, detect_activitynet,
            "mama-augment datasets train_q.json train_a.json test_q.json test_a.json"),
    _format("next-qa-map", "NExT-QA video paths", "map_vid_vidorID.json",
            read_next_map, detect_next_map,
            "mama-augment datasets train.csv val.csv map_vid_vidorID.json"),
    _format("next-qa", "NExT-QA (multiple-choice; NExT-OE without a0-a4)", "train.csv, val.csv, test.csv",
            read_next, detect_next,
            "mama-augment datasets train.csv val.csv map_vid_vidorID.json"),
    _format("tgif-qa", "TGIF-QA (FrameQA, Action, Transition, Count)",
            "Train_frameqa_question.tsv, Test_action_question.csv, Train_transition_question.csv",
            read_tgif, detect_tgif,
            "mama-augment datasets Train_frameqa_question.tsv Test_frameqa_question.tsv"),
    _format("qa-jsonl", "VideoQA JSON Lines (ClipBERT / ALPRO / VindLU style)", "train.jsonl, test.jsonl",
            read_jsonl, detect_jsonl,
            "mama-augment datasets msrvtt_qa_train.jsonl msrvtt_qa_test.jsonl"),
    _format("causal-vidqa", "Causal-VidQA (D, E, P-A, P-R, C-A, C-R; P-AR and C-AR scored)",
            "the QA folder (QA/<video>/text.json + answer.json), or one text.json",
            read_causal_text, detect_causal_text,
            "mama-augment datasets data/QA data/split/train.txt data/split/valid.txt data/split/test.txt"),
    _format("causal-vidqa-split", "Causal-VidQA split lists", "split/train.txt, valid.txt, test.txt (one id a line; "
            "the shipped .pkl converted)", read_causal_split, detect_causal_split,
            "mama-augment datasets data/QA data/split/train.txt data/split/test.txt"),
])  # fmt: skip


def _blank(source: Source) -> bool:
    """Nothing but white space; judged from the head, so a large file is not read whole."""
    return source.head_is_whole() and not source.head.strip()


def detect_qa_format(source: Source) -> str | None:
    """The name of the first QA format that recognises ``source``; None when none does."""
    if _blank(source) or source.is_pickle() or source.is_parquet():
        return None
    for name, fmt in QA_FORMATS.items():
        if fmt.detect(source):
            return name
    return None


def is_qa_file(path: str | Path) -> bool:
    if Path(path).is_dir():
        return _is_causal_folder(Path(path))
    try:
        return detect_qa_format(Source(path)) is not None
    except UsageError:
        return False


# ---- combining -------------------------------------------------------------------------


@dataclass
class QAFileInfo:
    path: str
    format: str
    role: str
    rows: int


@dataclass
class QASet:
    """The questions of one or several files of one release."""

    items: list[QAItem]
    problems: Problems
    files: list[QAFileInfo]
    notes: list[str] = field(default_factory=list)
    match: IdMatch | None = None

    @property
    def formats(self) -> list[str]:
        return list(dict.fromkeys(f.format for f in self.files))

    def split(self, name: str) -> list[QAItem]:
        return [item for item in self.items if item.split == name]


def read_qa_file(path: str | Path, format: str | None = None, problems: Problems | None = None) -> QAPart:
    if Path(path).is_dir():  # Causal-VidQA ships its questions as a folder per video
        if format not in (None, "auto", "causal-vidqa") or not _is_causal_folder(Path(path)):
            raise UsageError(f"{path} is a folder: only Causal-VidQA's QA folder (<video>/{CAUSAL_TEXT}) is read as one")
        return read_causal_folder(Path(path), problems if problems is not None else Problems())
    source = Source(path, problems)
    if source.is_pickle():
        raise UsageError(f"{source.path} is a Python pickle. " + CAUSAL_SPLIT_HINT.format(
            name=source.path.name, stem=source.path.stem) + ". Otherwise: " + PICKLE_HINT.format(
            name=source.path.name, stem=source.path.stem))
    if format and format != "auto":
        if format not in QA_FORMATS:
            raise UsageError(f"unknown question-answering format {format!r}: one of {', '.join(QA_FORMATS)}")
        name = format
    else:
        if _blank(source):
            raise UsageError(f"{source.path} is empty")
        source.refuse_binary()
        name = detect_qa_format(source)
        if name is None:
            first = next((line for line in source.head.splitlines() if line.strip()), "")[:80]
            raise UsageError(f"cannot tell the question-answering format of {source.path} (it begins {first!r}); "
                             f"name it (--questions-format of qa, --captions-format of datasets), one of {', '.join(QA_FORMATS)}")
    return QA_FORMATS[name].reader(source)


def read_qa(paths: Sequence[str | Path], formats: Sequence[str | None] | str | None = None) -> QASet:
    """Read the files of one QA release and put them together (see the module doc)."""
    if not paths:
        raise UsageError("no question-answering file given")
    if isinstance(formats, str):
        names = [n.strip() or None for n in formats.split(",")]
        formats = names * len(paths) if len(names) == 1 else names
    if formats is not None and len(formats) != len(paths):
        raise UsageError(f"{len(formats)} formats named for {len(paths)} files: give one, or one per file")
    problems = Problems()
    parts = [read_qa_file(p, formats[i] if formats else None, problems) for i, p in enumerate(paths)]
    return combine_qa(parts, problems)


def combine_qa(parts: list[QAPart], problems: Problems) -> QASet:
    files = [QAFileInfo(str(p.path), p.format, p.role, len(p)) for p in parts]
    notes: list[str] = []
    youtube = {k: v for p in parts if p.format == "msvd-qa-map" for k, v in p.video_map.items()}
    next_paths = {k: v for p in parts if p.format == "next-qa-map" for k, v in p.video_map.items()}
    answers: dict[str, tuple[str, str | None]] = {}
    for part in parts:
        if part.role == ROLE_ANSWERS:
            answers.update(part.answers)

    items: list[QAItem] = _causal_items(parts, problems, notes)
    for part in parts:
        if part.role == ROLE_ITEMS:
            for item in part.items:
                items.append(_named_video(part, item, youtube, next_paths, problems))
        elif part.role == ROLE_QUESTIONS:
            for item in part.items:
                found = answers.get(item.question_id)
                if found is None:
                    problems.add("question_without_answer", f"{Path(part.path).name}: {item.question_id} (left out)")
                    continue
                items.append(QAItem(item.question_id, item.video_id, item.question, found[0],
                                    question_type=found[1], split=item.split))
    asked = {item.question_id for p in parts if p.role == ROLE_QUESTIONS for item in p.items}
    unasked = [q for q in answers if q not in asked]
    if unasked:
        problems.add("answer_without_question", f"{unasked[0]} (give the matching *_q.json)", len(unasked))
    if any(p.format == "msvd-qa" or (p.numeric_ids and youtube) for p in parts):
        files = [QAFileInfo(f.path, "msvd-qa" if f.format == "msrvtt-qa" else f.format, f.role, f.rows) for f in files]
    if not items:
        raise UsageError("the question-answering files hold no questions: only mapping files, answers or "
                         "split lists of no video were given")
    seen: set[tuple[str | None, str]] = set()
    duplicates = []
    for item in items:
        key = (item.split, item.question_id)
        if key in seen:
            duplicates.append(item)
        seen.add(key)
    if duplicates:
        problems.add("duplicate_question_id", f"{duplicates[0].question_id} (kept: benchmarks count every row)",
                     len(duplicates))
    return QASet(items, problems, files, notes)


def _named_video(part: QAPart, item: QAItem, youtube: dict[str, str], next_paths: dict[str, str],
                 problems: Problems) -> QAItem:
    """The item with its video named as the files are: through the release's mapping."""
    video_id = item.video_id
    if part.numeric_ids and _NUMBER.match(video_id):
        if part.format == "msvd-qa" or youtube:
            name = youtube.get(str(int(video_id)))
            if name is None:
                problems.add("video_not_in_mapping", f"{Path(part.path).name}: vid{video_id} is not in youtube_mapping.txt "
                                                     "(kept as vid<N>)")
                name = f"vid{video_id}"
            video_id = name
        else:
            video_id = f"video{int(video_id)}"
    elif part.format == "next-qa" and next_paths:
        path = next_paths.get(video_id)
        if path is None:
            problems.add("video_not_in_mapping", f"{Path(part.path).name}: {video_id} is not in map_vid_vidorID.json "
                                                 "(kept as is)")
        else:
            video_id = path
    if video_id == item.video_id:
        return item
    return QAItem(item.question_id, video_id, item.question, item.answer, item.candidates, item.answer_index,
                  item.question_type, item.split)


def load_qa(paths: Sequence[str | Path], formats=None, video_ids: Sequence[str] | None = None) -> QASet:
    """:func:`read_qa`, then map the video ids to ``video_ids`` (keyframes ids) when given;
    ids that match no video keep their own id and are counted (``unmatched_video_id``,
    ``ambiguous_video_id``)."""
    result = read_qa(paths, formats)
    if video_ids is None:
        return result
    distinct = list(dict.fromkeys(item.video_id for item in result.items))
    match = match_video_ids(distinct, video_ids)
    result.match = match
    if not match.mapping:
        raise UsageError(
            f"none of the {len(distinct)} video ids of the question-answering files names a video in keyframes.parquet "
            f"(questions: {', '.join(repr(v) for v in distinct[:3])}; keyframes: "
            f"{', '.join(repr(v) for v in list(video_ids)[:3])})"
        )
    if match.unmatched:
        result.problems.add("unmatched_video_id", ", ".join(match.unmatched[:5]), len(match.unmatched))
    if match.ambiguous:
        first = next(iter(match.ambiguous.items()))
        result.problems.add("ambiguous_video_id", f"{first[0]} -> {' | '.join(first[1][:3])}", len(match.ambiguous))
    result.items = [
        QAItem(i.question_id, match.mapping[i.video_id], i.question, i.answer, i.candidates, i.answer_index,
               i.question_type, i.split) if match.mapping.get(i.video_id, i.video_id) != i.video_id else i
        for i in result.items
    ]
    return result


# ---- what `mama-augment datasets` prints -----------------------------------------------

# Counted for information: the questions are kept.
INFORMATIONAL = frozenset({"duplicate_question_id"})


def qa_files_given(paths: Sequence[str | Path], formats=None) -> bool:
    """Whether ``paths`` are question-answering files (named so by ``formats``, or each
    recognised as one); a mix of QA and caption files is a usage error."""
    names = [n.strip() for n in formats.split(",")] if isinstance(formats, str) else list(formats or [])
    names = [n for n in names if n and n != "auto"]  # "auto": recognised from content, either kind
    if names and all(n in QA_FORMATS for n in names):
        return True
    if names and any(n in QA_FORMATS for n in names):
        raise UsageError("--captions-format mixes question-answering and caption formats: check them in separate calls")
    if names:
        return False
    # A pickle is refused by either reader, each with its own hint: it sides with the rest
    # (Causal-VidQA's split/train.pkl next to its QA folder is a question file).
    paths = [p for p in paths if not _is_pickle(p)]
    kinds = [is_qa_file(p) for p in paths]
    if any(kinds) and not all(kinds):
        qa = next(p for p, k in zip(paths, kinds) if k)
        other = next(p for p, k in zip(paths, kinds) if not k)
        raise UsageError(f"{qa} is a question-answering file but {other} is not: check them in separate calls")
    return bool(kinds) and all(kinds)


def _is_pickle(path: str | Path) -> bool:
    try:
        return Path(path).is_file() and Source(path).is_pickle()
    except UsageError:
        return False


def qa_failed(qa: QASet) -> bool:
    return any(kind not in INFORMATIONAL for kind in qa.problems.counts)


def describe_qa(qa: QASet, show: int = 10) -> list[str]:
    """Files, questions per split (open-ended / multiple-choice, answers), question types,
    id matching and counted problems."""
    from collections import Counter

    out = [f"{f.path}: {f.format}, {f.rows} {'questions' if f.role in (ROLE_ITEMS, ROLE_QUESTIONS) else f.role}"
           for f in qa.files]
    out.append(f"questions: {len(qa.items)} about {len({i.video_id for i in qa.items})} videos")
    for split in dict.fromkeys(i.split for i in qa.items):
        items = [i for i in qa.items if i.split == split]
        choice = sum(i.multiple_choice for i in items)
        answers = len({i.answer.lower() for i in items if not i.multiple_choice})
        out.append(f"  {split or '(no split)'}: {len(items)} questions ({len(items) - choice} open-ended, "
                   f"{answers} distinct answers; {choice} multiple-choice)")
    kinds = Counter(i.question_type or "(none)" for i in qa.items)
    out.append("question types: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common(show)))
    out += qa.notes
    if qa.match is not None:
        out += qa.match.summary(show)
    if qa.problems:
        out.append("problems:")
        out += [f"  {line}" for line in qa.problems.lines()]
    return out


def qa_format_listing() -> list[str]:
    width = max(len(name) for name in QA_FORMATS)
    lines = []
    for name, fmt in QA_FORMATS.items():
        lines.append(f"{name:<{width}}  {fmt.benchmark}: {fmt.files}")
        lines.append(f"{'':<{width}}  $ {fmt.example}")
    return lines
