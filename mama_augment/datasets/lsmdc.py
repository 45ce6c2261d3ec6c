"""LSMDC (Large Scale Movie Description Challenge) as it is distributed.

``LSMDC16_annos_training.csv``, ``LSMDC16_annos_val.csv`` and
``LSMDC16_challenge_1000_publictect.csv`` (the 1 000-clip test set): no header, one clip
per line, six tab-separated fields ``clip_id, start_aligned, end_aligned,
start_extracted, end_extracted, sentence``
(``0001_American_Beauty_00.00.51.926-00.00.54.129\\t00.00.51.926\\t...\\tSomeone ...``).
A clip id may repeat with several sentences. The split comes from the file name. Clips
are stored as ``<movie>/<clip_id>.avi``, which the id matching finds by file name.
"""

from __future__ import annotations

import re

from mama_augment.datasets.base import Part, Source, not_json, split_from_name, unusable

_TIME = re.compile(r"^\d+([.:]\d+)*$")


def detect(source: Source) -> bool:
    if source.looks_like_json():
        return False
    for line in source.head_lines():
        if line.strip():
            fields = line.rstrip("\r\n").split("\t")
            return len(fields) == 6 and all(_TIME.match(f.strip()) for f in fields[1:5])
    return False


def read(source: Source) -> Part:
    not_json(source, "an LSMDC tab-separated file")
    split = split_from_name(source.name)
    part = Part(source.path, "lsmdc")
    for number, line in enumerate(source.lines(), 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 6 or not fields[0].strip():
            source.problems.add("malformed_line", f"{source.name} line {number}: {len(fields)} tab-separated fields, not 6")
            continue
        part.add(fields[0].strip(), fields[5].strip(), split)
    if not len(part):
        raise unusable(source, "lines (6 tab-separated fields)")
    return part
