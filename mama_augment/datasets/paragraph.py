"""Paragraph-to-video benchmarks: every sentence of a video, joined in time order, is
one caption (as CLIP4Clip and CLIP-ViP evaluate DiDeMo and ActivityNet Captions).

* DiDeMo ``train_data.json`` / ``val_data.json`` / ``test_data.json``: a JSON list of
  moments ``{"video": "12090392@N02_13482799053_87ef417396.mov", "times": [[0, 0], [1, 1],
  ...], "description": "...", "annotation_id": ..., ...}``; ``times`` are the 5-second
  segments each annotator chose. Sentences are ordered by their mean start segment,
  then mean end segment, then file order.
* ActivityNet Captions ``train.json`` / ``val_1.json`` (/ ``val_2.json``): a JSON object
  ``{"v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], ...],
  "sentences": [...]}}``, ordered by (start, end). ``val_1`` is the test set of
  paragraph retrieval, so a ``val`` file is read as ``test``.
"""

from __future__ import annotations

import math

from mama_augment.datasets.base import Part, Source, id_value, split_from_name, text_value, unusable
from mama_augment.errors import UsageError


def _mean(values) -> float:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) / len(numbers) if numbers else math.inf


def _join(sentences: list[tuple[tuple, str]]) -> str:
    return " ".join(text for _, text in sorted(sentences, key=lambda item: item[0]))


def detect_didemo(source: Source) -> bool:
    head = source.head.lstrip()
    return head.startswith("[") and '"description"' in head and '"video"' in head


def read_didemo(source: Source) -> Part:
    data = source.json
    if not isinstance(data, list):
        raise UsageError(f"{source.path}: a DiDeMo file is a JSON list of {{video, times, description}} moments")
    split = split_from_name(source.name)
    moments: dict[str, list[tuple[tuple, str]]] = {}
    for number, item in enumerate(data):
        video_id = id_value(item.get("video")) if isinstance(item, dict) else None
        text = text_value(item.get("description")) if isinstance(item, dict) else None
        if video_id is None or text is None:
            problem = "no video" if video_id is None else "no description"
            source.problems.add("malformed_record", f"{source.name}[{number}]: {problem}")
            continue
        if not text:
            source.problems.add("empty_sentence", f"{source.name}[{number}] ({video_id})")
            continue
        times = item.get("times")
        pairs = [t for t in times if isinstance(t, list) and len(t) == 2] if isinstance(times, list) else []
        if not pairs:
            source.problems.add("moment_without_times", f"{source.name}[{number}] ({video_id}): kept in file order")
        key = (_mean(t[0] for t in pairs), _mean(t[1] for t in pairs), number)
        moments.setdefault(video_id, []).append((key, text))
    part = Part(source.path, "didemo", paragraph=True)
    for video_id, sentences in moments.items():
        part.add(video_id, _join(sentences), split)
    if not len(part):
        raise unusable(source, "moments")
    return part


def detect_activitynet(source: Source) -> bool:
    head = source.head.lstrip()
    return head.startswith("{") and '"timestamps"' in head and '"sentences"' in head and '"videos"' not in head


def read_activitynet(source: Source) -> Part:
    data = source.json
    if not isinstance(data, dict):
        raise UsageError(f"{source.path}: an ActivityNet Captions file is a JSON object {{video_id: {{timestamps, sentences}}}}")
    split = split_from_name(source.name)
    split = "test" if split == "val" else split
    part = Part(source.path, "activitynet", paragraph=True)
    for video_id, item in data.items():
        sentences = item.get("sentences") if isinstance(item, dict) else None
        if not isinstance(sentences, list):
            source.problems.add("malformed_record", f"{source.name} {video_id}: no sentences list")
            continue
        stamps = item.get("timestamps")
        if not isinstance(stamps, list) or len(stamps) != len(sentences):
            source.problems.add("timestamps_mismatch", f"{source.name} {video_id}: sentences kept in file order")
            stamps = [None] * len(sentences)
        ordered = []
        for number, (sentence, stamp) in enumerate(zip(sentences, stamps)):
            text = text_value(sentence)
            if not text:
                source.problems.add("empty_sentence", f"{source.name} {video_id} sentence {number}")
                continue
            start, end = (stamp if isinstance(stamp, list) and len(stamp) == 2 else (None, None))
            ordered.append(((_mean([start]), _mean([end]), number), text))
        part.add(str(video_id), _join(ordered), split)
    if not len(part):
        raise unusable(source, "videos")
    return part
