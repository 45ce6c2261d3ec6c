"""MSR-VTT as it is distributed.

* ``train_val_videodatainfo.json`` / ``test_videodatainfo.json`` (the official release)
  and CLIP4Clip's ``MSRVTT_data.json`` (the same layout, all 10 000 videos): one JSON
  object ``{"info": ..., "videos": [...], "sentences": [...]}``; a video is
  ``{"video_id": "video0", "category": 9, "url": ..., "start time": ..., "end time": ...,
  "split": "train" | "validate" | "test", "id": 0}``, a sentence
  ``{"caption": "...", "video_id": "video0", "sen_id": 0}``. ``split`` gives the official
  6 513 / 497 / 2 990 split; ``category`` (0-19) becomes the ``concept``.
* ``MSRVTT_JSFUSION_test.csv`` (CLIP4Clip): the 1k-A test set, a header
  ``key,vid_key,video_id,sentence`` and one caption per video (``ret0,msr7579,video7579,...``).
  Its rows are the only test captions of its videos.
* ``category.txt`` (the official release): one ``name<whitespace>number`` per line,
  naming the categories; without it a concept reads ``category 9``.

The split lists ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv`` (header ``video_id``)
are read by :mod:`mama_augment.datasets.lists`.
"""

from __future__ import annotations

import re

from mama_augment.datasets.base import (
    ROLE_CATEGORIES,
    ROLE_QUERIES,
    Part,
    Source,
    header_fields,
    id_value,
    not_json,
    read_table,
    split_from_name,
    text_value,
    unusable,
)
from mama_augment.errors import UsageError

_OFFICIAL_SPLITS = {"train": "train", "validate": "val", "val": "val", "validation": "val", "test": "test"}
_CATEGORY_LINE = re.compile(r"^(.+?)\s+(\d+)\s*$")


def category_concept(number) -> str | None:
    if isinstance(number, bool) or not isinstance(number, (int, float, str)):
        return None
    text = str(number).strip()
    if isinstance(number, float) and number.is_integer():
        text = str(int(number))
    return f"category {text}" if text else None


def detect_json(source: Source) -> bool:
    if not source.looks_like_json() or source.is_json_lines():
        return False
    head = source.head.lstrip()
    if not head.startswith("{") or '"timestamps"' in head:  # ActivityNet has sentences too
        return False
    # The videos list comes first and may fill the whole head of a big file.
    return ('"videos"' in head and '"category"' in head) or ('"sentences"' in head and '"caption"' in head)


def read_json(source: Source) -> Part:
    data = source.json
    problems = source.problems
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise UsageError(
            f"{source.path} is not an MSR-VTT annotation file: expected a JSON object with a "
            "\"sentences\" list (and \"videos\"), as train_val_videodatainfo.json or MSRVTT_data.json"
        )
    split_of: dict[str, str | None] = {}
    concept_of: dict[str, str | None] = {}
    for number, video in enumerate(data.get("videos") or []):
        video_id = id_value(video.get("video_id")) if isinstance(video, dict) else None
        if video_id is None:
            problems.add("malformed_record", f"{source.name} videos[{number}]: no video_id")
            continue
        raw_split = video.get("split")
        split = _OFFICIAL_SPLITS.get(str(raw_split).strip().lower()) if raw_split is not None else None
        if raw_split is not None and split is None:
            problems.add("unknown_split", f"{source.name} {video_id}: split {raw_split!r}")
        split_of[video_id] = split
        concept_of[video_id] = category_concept(video.get("category"))
    part = Part(source.path, "msrvtt")
    without_video_entry = 0
    for number, sentence in enumerate(data["sentences"]):
        if not isinstance(sentence, dict):
            problems.add("malformed_record", f"{source.name} sentences[{number}]: not an object")
            continue
        video_id = id_value(sentence.get("video_id"))
        caption = text_value(sentence.get("caption"))
        if video_id is None or caption is None:
            missing = "video_id" if video_id is None else "caption"
            problems.add("malformed_record", f"{source.name} sentences[{number}]: no {missing}")
            continue
        if video_id not in split_of:
            without_video_entry += 1
        part.add(video_id, caption, split_of.get(video_id), concept_of.get(video_id))
    if split_of and without_video_entry:
        problems.add("sentence_without_video_entry", f"{source.name}: sentences of videos missing from \"videos\"",
                     without_video_entry)
    if not len(part):
        raise unusable(source, "sentences")
    return part


def detect_jsfusion(source: Source) -> bool:
    fields = set(header_fields(source))
    return {"video_id", "sentence"} <= fields and bool({"key", "vid_key"} & fields)


def read_jsfusion(source: Source) -> Part:
    table = read_table(source)
    columns = {c.strip().lower(): c for c in table.columns}
    if "video_id" not in columns or "sentence" not in columns:
        raise UsageError(
            f"{source.path}: a JSFusion test file needs the header key,vid_key,video_id,sentence "
            f"(has {', '.join(map(str, table.columns))})"
        )
    split = split_from_name(source.name) or "test"
    part = Part(source.path, "msrvtt-jsfusion", role=ROLE_QUERIES)
    for video_id, sentence in zip(table[columns["video_id"]].tolist(), table[columns["sentence"]].tolist()):
        video_id = video_id.strip()
        if not video_id:
            source.problems.add("malformed_record", f"{source.name}: a row without video_id")
            continue
        part.add(video_id, sentence.strip(), split)
    if not len(part):
        raise unusable(source, "rows")
    return part


def detect_categories(source: Source) -> bool:
    lines = [line for line in source.head.splitlines() if line.strip()]
    return 0 < len(lines) <= 1000 and source.size < 65536 and all(_CATEGORY_LINE.match(line) for line in lines)


def read_categories(source: Source) -> Part:
    not_json(source, "category.txt (name number lines)")
    part = Part(source.path, "msrvtt-categories", role=ROLE_CATEGORIES)
    for number, line in enumerate(source.lines(), 1):
        if not line.strip():
            continue
        match = _CATEGORY_LINE.match(line.strip())
        if not match:
            source.problems.add("malformed_line", f"{source.name} line {number}: {line[:60]!r}")
            continue
        part.category_names[f"category {int(match.group(2))}"] = match.group(1).strip()
    if not part.category_names:
        raise unusable(source, "category lines (name number)")
    return part
