"""Which split a video is in: the one rule ``train`` places videos by and ``export --split``
selects them by (torch-free, so export and the dataset checks can use it)."""

from __future__ import annotations

import hashlib
from collections import Counter

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def hash_split(video_id: str, test_fraction: float, val_fraction: float) -> str:
    """train/val/test from a hash of the id: stable across runs, machines and data order."""
    u = int(hashlib.sha256(video_id.encode("utf-8")).hexdigest()[:16], 16) / float(1 << 64)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def normalize_split(raw) -> str | None:
    """A split column's value as one of SPLITS (``validation`` is ``val``), or None."""
    return SPLIT_ALIASES.get(str(raw).strip().lower()) if raw is not None else None


def split_of_video(video_id: str, votes: Counter | None, has_split: bool, test_fraction: float,
                   val_fraction: float) -> str:
    """The split training puts a video in; ``export --split`` asks the same.

    With a split column anywhere in the original captions (``has_split``), the split
    most of the video's captions name (``votes``: normalised split -> count; a video
    none of whose captions names one trains); without, the hash of its id.
    """
    if has_split:
        return votes.most_common(1)[0][0] if votes else "train"
    return hash_split(video_id, test_fraction, val_fraction)
