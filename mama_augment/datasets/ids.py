"""Match the video ids of annotation files to the ids of ``keyframes.parquet``.

``keyframes`` names a video by its path relative to the input folder without the
extension (``TrainValVideo/video7010`` for ``videos/TrainValVideo/video7010.mp4``), while
benchmarks name it their own way. An annotation id is tried against the keyframes ids
in this order, the first rule that finds exactly one video wins:

1. ``exact``: the same string;
2. ``file name``: the same after dropping folders and a media extension on either side
   (``video7010`` = ``TrainValVideo/video7010``; DiDeMo's ``xyz.mov`` = ``xyz``;
   WebVid's ``page_dir/123`` = ``123``; LSMDC's ``movie/clip`` = ``clip``);
3. ``v_ prefix``: ActivityNet's ``v_QOlSCBRmfWY`` = ``QOlSCBRmfWY`` and back;
4. ``time suffix``: an id ending in ``_<start>_<end>`` (VATEX
   ``Ptf_2VRj-V0_000122_000132``, MSVD ``-4wsuPCjDBc_5_15``) = the bare YouTube id, for
   videos saved whole.

A rule that finds several videos, or a video found by a loose rule (2-4) for more than
one annotation id (two MSVD clips of one YouTube video), matches nothing: such ids are
reported as ambiguous, never guessed. Every id left unmatched is reported.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from mama_augment.inputs import MEDIA_EXTENSIONS

_TIME_SUFFIX = re.compile(r"^(.+?)_\d+(?:\.\d+)?_\d+(?:\.\d+)?$")


def _strip_extension(name: str) -> str:
    stem, ext = posixpath.splitext(name)
    return stem if ext.lower() in MEDIA_EXTENSIONS and stem else name


def _loose_keys(video_id: str) -> list[str]:
    """The forms of an id compared by the ``file name`` rule."""
    video_id = video_id.replace("\\", "/")
    base = video_id.rsplit("/", 1)[-1]
    keys = [video_id, _strip_extension(video_id), base, _strip_extension(base)]
    return list(dict.fromkeys(k for k in keys if k))


def _clip(video_id: str, limit: int = 80) -> str:
    """An id as echoed in a summary: an id read from a user's file may be a whole line."""
    return video_id if len(video_id) <= limit else f"{video_id[:limit]}... ({len(video_id) - limit} more characters)"


def _toggle_v(key: str) -> str:
    return key[2:] if key.startswith("v_") and len(key) > 2 else f"v_{key}"


@dataclass
class IdMatch:
    """How annotation ids map to keyframes ids."""

    mapping: dict[str, str] = field(default_factory=dict)  # annotation id -> keyframes id
    by_rule: Counter = field(default_factory=Counter)
    unmatched: list[str] = field(default_factory=list)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # annotation id -> candidate videos

    @property
    def total(self) -> int:
        return len(self.mapping) + len(self.unmatched) + len(self.ambiguous)

    def summary(self, show: int = 5) -> list[str]:
        lines = [f"video ids matched: {len(self.mapping)} of {self.total}"
                 + (" (" + ", ".join(f"{rule} {n}" for rule, n in self.by_rule.items() if n) + ")" if self.mapping else "")]
        if self.unmatched:
            shown = [_clip(v) for v in self.unmatched[:show]]
            lines.append(f"unmatched ids: {len(self.unmatched)} (e.g. {', '.join(shown)})")
        if self.ambiguous:
            shown = [f"{_clip(k)} -> {' | '.join(_clip(c) for c in v[:3])}" for k, v in list(self.ambiguous.items())[:show]]
            lines.append(f"ambiguous ids: {len(self.ambiguous)} (e.g. {'; '.join(shown)})")
        return lines


def match_video_ids(annotation_ids: Iterable[str], video_ids: Sequence[str]) -> IdMatch:
    """Map each distinct annotation id to one of ``video_ids`` (see the module doc)."""
    known = set(video_ids)
    index: dict[str, set[str]] = {}
    for video_id in video_ids:
        for key in _loose_keys(video_id):
            index.setdefault(key, set()).add(video_id)

    result = IdMatch()
    loose: dict[str, tuple[str, str]] = {}  # annotation id -> (video, rule)
    claimed_by: dict[str, list[str]] = {}  # video -> annotation ids matched to it loosely
    for annotation_id in dict.fromkeys(annotation_ids):
        if annotation_id in known:
            result.mapping[annotation_id] = annotation_id
            result.by_rule["exact"] += 1
            continue
        keys = _loose_keys(annotation_id)
        attempts = [("file name", keys), ("v_ prefix", [_toggle_v(k) for k in keys])]
        suffix = _TIME_SUFFIX.match(keys[-1])
        if suffix:
            attempts.append(("time suffix", [suffix.group(1)]))
        found = None
        for rule, candidates in attempts:
            hits = set().union(*(index.get(k, set()) for k in candidates))
            if len(hits) == 1:
                found = (hits.pop(), rule)
                break
            if len(hits) > 1:
                result.ambiguous[annotation_id] = sorted(hits)
                break
        if found is None:
            if annotation_id not in result.ambiguous:
                result.unmatched.append(annotation_id)
            continue
        loose[annotation_id] = found
        claimed_by.setdefault(found[0], []).append(annotation_id)

    exact_targets = set(result.mapping.values())
    for annotation_id, (video, rule) in loose.items():
        rivals = claimed_by[video]
        if video in exact_targets or len(rivals) > 1:
            others = [r for r in rivals if r != annotation_id] or [video]
            result.ambiguous[annotation_id] = [f"{video} (also claimed by {', '.join(others[:3])})"]
            continue
        result.mapping[annotation_id] = video
        result.by_rule[rule] += 1
    return result
