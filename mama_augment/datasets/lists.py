"""Split lists: the video ids of one split, one file per split.

* plain text, one id per line: MSVD's and DiDeMo's ``train_list.txt`` / ``val_list.txt``
  / ``test_list.txt`` (CLIP4Clip), VATEX or any other benchmark's id lists;
* a CSV with a ``video_id`` column: MSR-VTT's ``MSRVTT_train.9k.csv`` and
  ``MSRVTT_train.7k.csv`` (CLIP4Clip);
* a JSON list of ids: ActivityNet Captions' ``train_ids.json`` / ``val_ids.json``
  (CLIP4Clip) - format ``activitynet-ids``, where ``val`` means the ``val_1`` videos,
  the test set of paragraph retrieval, so it is read as ``test``.

The split comes from the file name (``train``, ``val``, ``test`` and their usual
spellings); a list whose name says none of them is an error.
"""

from __future__ import annotations

from mama_augment.datasets.base import (
    ROLE_SPLIT_LIST,
    Part,
    Source,
    add_ids,
    header_fields,
    not_json,
    read_table,
    split_from_name,
)
from mama_augment.errors import UsageError

_HEADER_WORDS = {"video_id", "videoid", "video", "clip_id", "clip_name", "id", "vid", "name"}
_TEXT_COLUMNS = {"caption", "sentence", "text", "name", "description", "captions"}


def _split_of(source: Source, mapping: dict[str, str] | None = None) -> str:
    split = split_from_name(source.name)
    if split is None:
        raise UsageError(
            f"cannot tell which split {source.path} lists: name it after the split "
            "(train_list.txt, val_list.txt, test_list.txt, MSRVTT_train.9k.csv ...)"
        )
    return (mapping or {}).get(split, split)


def detect_text_list(source: Source) -> bool:
    if source.looks_like_json():
        return False
    lines = [line.strip() for line in source.head_lines() if line.strip() and not line.startswith("#")]
    if not lines:
        return False
    fields = header_fields(source)
    if "video_id" in fields and not (_TEXT_COLUMNS & set(fields)) and len(fields) <= 2:
        return True  # MSRVTT_train.9k.csv, with or without an index column
    return all(len(line.split()) == 1 and "," not in line for line in lines)


def read_text_list(source: Source) -> Part:
    not_json(source, "a list of video ids, one per line")
    part = Part(source.path, "split-list", role=ROLE_SPLIT_LIST, list_split=_split_of(source))
    first = next((line for line in source.head.splitlines() if line.strip()), "")
    if "," in first and "video_id" in header_fields(source):
        table = read_table(source)
        column = next(c for c in table.columns if c.strip().lower() == "video_id")
        ids = [v.strip() for v in table[column].tolist()]
    else:
        ids = [line.strip() for line in source.lines() if line.strip() and not line.lstrip().startswith("#")]
        if ids and ids[0].lower() in _HEADER_WORDS:
            ids = ids[1:]
    add_ids(part, source, ids, "malformed_line")
    return part


def detect_json_ids(source: Source) -> bool:
    head = source.head.lstrip()
    return head.startswith("[") and head[1:].lstrip().startswith('"') and '"v_' in head[:200]


def read_json_ids(source: Source) -> Part:
    data = source.json
    if not isinstance(data, list):
        raise UsageError(f"{source.path}: expected a JSON list of video ids")
    part = Part(source.path, "activitynet-ids", role=ROLE_SPLIT_LIST, list_split=_split_of(source, {"val": "test"}))
    add_ids(part, source, data)
    return part
