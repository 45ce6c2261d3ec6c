"""MSVD (the Microsoft Research Video Description corpus) as it is distributed.

* ``AllVideoDescriptions.txt``: comment lines starting with ``#``, then one
  ``clip_id caption`` per line, the id first up to the first space
  (``-4wsuPCjDBc_5_15 a squirrel is eating a peanut in it's shell``); about 40 captions
  per clip.
* CLIP4Clip's ``raw-captions.pkl`` holds ``{clip_id: [[token, token, ...], ...]}``. A
  pickle is never read (see :data:`~mama_augment.datasets.base.PICKLE_HINT`); the same
  data saved as JSON is (format ``msvd-json``), token lists joined by spaces, plain
  strings accepted too.

The split comes from CLIP4Clip's ``train_list.txt`` / ``val_list.txt`` /
``test_list.txt`` (1 200 / 100 / 670 clips), read by :mod:`mama_augment.datasets.lists`.
Clip ids are also the video file names (``-4wsuPCjDBc_5_15.avi``).
"""

from __future__ import annotations

from mama_augment.datasets.base import Part, Source, add_captions, not_json, unusable
from mama_augment.errors import UsageError


def detect_descriptions(source: Source) -> bool:
    if source.looks_like_json() or "\t" in source.head[:4096]:
        return False
    lines = source.head_lines()
    comments = sum(1 for line in lines if line.startswith("#"))
    body = [line for line in lines if line.strip() and not line.startswith("#")]
    if not body or "," in body[0].split(" ", 1)[0]:
        return False
    if not all(len(line.split()) >= 2 for line in body):
        return False
    # a header line of a table ("video_id caption") is not a description
    return comments > 0 or body[0].split()[0].lower() not in ("video_id", "videoid", "clip_id", "id")


def read_descriptions(source: Source) -> Part:
    not_json(source, "AllVideoDescriptions.txt (clip_id caption lines)")
    part = Part(source.path, "msvd")
    for number, line in enumerate(source.lines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.strip().split(None, 1)
        part.add(fields[0], fields[1].strip() if len(fields) > 1 else "")
    if not len(part):
        raise unusable(source, "description lines (clip_id caption)")
    return part


def detect_json(source: Source) -> bool:
    if not source.looks_like_json() or not source.head.lstrip().startswith("{") or source.is_json_lines():
        return False
    data = source.json
    if not isinstance(data, dict) or not data:
        return False
    first = next(iter(data.values()))
    return isinstance(first, list) and all(isinstance(c, (list, str)) for c in first[:5])


def read_json(source: Source) -> Part:
    data = source.json
    if not isinstance(data, dict):
        raise UsageError(f"{source.path}: expected a JSON object {{clip_id: [caption, ...]}} (raw-captions saved as JSON)")
    part = Part(source.path, "msvd-json")
    for video_id, captions in data.items():
        if not isinstance(captions, list):
            source.problems.add("malformed_record", f"{source.name} {video_id}: captions are not a list")
            continue
        add_captions(part, source, str(video_id), captions)
    if not len(part):
        raise unusable(source, "captions")
    return part
