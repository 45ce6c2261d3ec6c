"""VATEX as it is distributed.

``vatex_training_v1.0.json``, ``vatex_validation_v1.0.json``,
``vatex_public_test_english_v1.1.json``: a JSON list of
``{"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": [10 English captions], "chCap": [...]}``.
Only ``enCap`` is read. The id is the YouTube id with the clip's start and end seconds;
the id matching also finds a video saved under the bare YouTube id. The split comes from
the file name (``training``, ``validation``, ``test``); the usual retrieval protocol
(1 500 / 1 500 validation videos as val / test) is given with split lists.
"""

from __future__ import annotations

from mama_augment.datasets.base import Part, Source, add_captions, id_value, split_from_name, unusable


def detect(source: Source) -> bool:
    head = source.head.lstrip()
    return head[:1] in ("[", "{") and '"videoID"' in head and '"enCap"' in head


def read(source: Source) -> Part:
    split = split_from_name(source.name)
    part = Part(source.path, "vatex")
    for number, item in source.records():
        video_id = id_value(item.get("videoID")) if isinstance(item, dict) else None
        captions = item.get("enCap") if isinstance(item, dict) else None
        if video_id is None or not isinstance(captions, list):
            problem = "no videoID" if video_id is None else "no enCap list"
            source.problems.add("malformed_record", f"{source.name}[{number}]: {problem}")
            continue
        add_captions(part, source, video_id, captions, split)
    if not len(part):
        raise unusable(source, "English captions (enCap)")
    return part
