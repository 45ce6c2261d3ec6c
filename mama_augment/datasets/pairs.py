"""Files of plain (video, caption) pairs.

* ``mama``: this project's own captions file, ``.csv``, ``.jsonl`` or ``.parquet`` with
  ``video_id``, ``caption`` and optionally ``split`` and ``concept`` (read by
  :func:`read_pairs_file`).
* ``clip-vip``: CLIP-ViP's (and the MAMA release's) annotation files, JSON Lines or a
  JSON list of ``{"clip_id": "video7010", "text": "..."}``, ``text`` a string or a list
  of captions (``msrvtt_retrieval/train9k.jsonl``, ``test1ka.jsonl``). The layout of
  VindLU / UMT / LAVIS (``{"video": "video7010.mp4", "caption": ...}``,
  ``msrvtt_ret_train9k.json``) is read the same way. As in CLIP-ViP, the captions of a
  file whose path names ``didemo`` are joined into one paragraph. The split comes from
  the file name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mama_augment.datasets.base import (
    Part,
    Problems,
    Source,
    clip_text,
    header_fields,
    id_value,
    read_table,
    split_from_name,
    text_value,
    unusable,
)
from mama_augment.errors import UsageError

_KEY_PAIRS = (
    ("clip_id", "text"), ("video", "caption"), ("clip_name", "text"), ("clip_name", "caption"), ("video_id", "caption"),
)  # fmt: skip


def _first_record(source: Source):
    if source.is_json_lines():
        for line in source.first_lines(2):  # read whole: a line may be longer than the head
            try:
                return json.loads(line)
            except (ValueError, RecursionError):
                continue  # a bad first line of a JSON Lines file: the second decides
        return None
    data = source.json
    if isinstance(data, list):
        return data[0] if data else None
    return data if isinstance(data, dict) else None


def detect_clip_vip(source: Source) -> bool:
    if not source.looks_like_json():
        return False
    record = _first_record(source)
    return (
        isinstance(record, dict)
        and "answer" not in record  # a multiple-choice item (VindLU's msrvtt_mc_test.json)
        and any(a in record and b in record for a, b in _KEY_PAIRS)
    )


def read_clip_vip(source: Source) -> Part:
    records = source.records()
    split = split_from_name(source.name)
    paragraph = "didemo" in str(source.path).lower()
    part = Part(source.path, "clip-vip", paragraph=paragraph)
    for number, record in records:
        keys = next((pair for pair in _KEY_PAIRS if isinstance(record, dict) and pair[0] in record), None)
        if keys is None:
            source.problems.add("malformed_record", f"{source.name} record {number}: no clip_id/text (or video/caption)")
            continue
        video_id = id_value(record.get(keys[0]))
        value = record.get(keys[1])
        texts = [text_value(t) for t in (value if isinstance(value, list) else [value])]
        if video_id is None or any(t is None for t in texts):
            source.problems.add("malformed_record", f"{source.name} record {number}: no usable {keys[0]} or {keys[1]}")
            continue
        if paragraph:
            texts = [" ".join(t for t in texts if t)]
        own_split = text_value(record.get("split")) or split
        concept = text_value(record.get("concept")) or None
        for text in texts:
            part.add(video_id, text, own_split, concept)
    if not len(part):
        raise unusable(source, "records")
    return part


def detect_mama(source: Source) -> bool:
    if source.is_parquet():
        return True
    if source.looks_like_json():
        record = _first_record(source) if source.is_json_lines() else None
        return isinstance(record, dict) and "video_id" in record and "caption" in record
    fields = set(header_fields(source))
    return {"video_id", "caption"} <= fields


def read_mama(source: Source) -> Part:
    if source.path.suffix.lower() not in (".csv", ".jsonl", ".ndjson", ".parquet"):
        raise UsageError(
            f"{source.path}: a video_id/caption table must be named .csv, .jsonl or .parquet (the extension picks the reader)"
        )
    source.refuse_pickle()
    frame = _pairs_frame(source)
    part = Part(source.path, "mama")
    part.video_ids = frame["video_id"].tolist()
    part.captions = frame["caption"].tolist()
    part.splits = frame["split"].tolist() if "split" in frame.columns else [None] * len(frame)
    part.concepts = frame["concept"].tolist() if "concept" in frame.columns else [None] * len(frame)
    return part


def read_pairs_file(path: str | Path, problems: Problems | None = None) -> pd.DataFrame:
    """A user's captions file as a DataFrame with ``video_id``, ``caption`` (stripped
    strings) and, when present, ``split`` and ``concept`` (strings or None).

    The one reader of that file (``--captions``, ``--meta-set``, the report's original
    captions): ``.csv``, ``.jsonl`` / ``.ndjson``, ``.json`` (an array of records) or
    ``.parquet``. Missing captions read as empty strings. CSV and JSON Lines are read
    line by line, as the other annotation formats: a bad line or a byte that is not
    UTF-8 is counted in ``problems`` (``malformed_line``, ``non_utf8_text``), not fatal.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"captions file {path} does not exist")
    return _pairs_frame(Source(path, problems))


def _pairs_frame(source: Source) -> pd.DataFrame:
    path = source.path
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = read_table(source)
        elif suffix in (".jsonl", ".ndjson"):
            records = []
            for number, record in source.json_lines():
                if isinstance(record, dict):
                    records.append(record)
                else:
                    source.problems.add("malformed_line", f"{source.name} line {number}: not a JSON object")
            if not records:
                raise unusable(source, "JSON lines")
            frame = pd.DataFrame.from_records(records)
        elif suffix == ".json":
            data = source.json
            if isinstance(data, list):
                frame = pd.DataFrame.from_records([r for r in data if isinstance(r, dict)])
            else:
                frame = pd.DataFrame(data)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise UsageError(f"captions file must be .csv, .jsonl, .json or .parquet, not {path.name}")
    except UsageError:
        raise
    except Exception as exc:  # pandas raises many kinds for malformed files
        raise UsageError(f"cannot read captions file {path}: {clip_text(str(exc))}") from exc
    missing = [c for c in ("video_id", "caption") if c not in frame.columns]
    if missing:
        raise UsageError(
            f"captions file {path} needs the columns video_id and caption; missing: {', '.join(missing)} "
            f"(it has {clip_text(', '.join(map(str, frame.columns)))})"
        )
    frame = frame.copy()
    # The one rule for an id of this table, as every other reader of it applies it
    # (export streams it): stripped text, a whole number without ".0", and no id at all
    # for a missing value or a true/false.
    ids = [id_value(v) for v in frame["video_id"].tolist()]
    frame["video_id"] = ids
    missing = [number for number, video_id in enumerate(ids, 1) if video_id is None]
    if missing:
        source.problems.add("malformed_record", f"{source.name} row {missing[0]}: no video_id (left out)", len(missing))
        frame = frame[frame["video_id"].notna()].reset_index(drop=True)
    frame["caption"] = frame["caption"].map(_text_or_none).fillna("").astype(str).str.strip()
    for column in ("split", "concept"):
        if column in frame.columns:
            frame[column] = frame[column].map(_label_or_none)
    return frame


def _label_or_none(value) -> str | None:
    """A split or concept cell: stripped text, None when missing or blank."""
    text = _text_or_none(value)
    return text.strip() or None if text is not None else None


def _text_or_none(value) -> str | None:
    """A cell as text; None for a missing value (None, NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)
