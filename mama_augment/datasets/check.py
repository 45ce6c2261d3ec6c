"""What ``mama-augment datasets`` prints: the formats, and a check of given files.

:func:`check_files` reads annotation files exactly as ``train --captions`` would and
describes the result: the format and role of each file, videos and captions per split,
captions per video, concepts, the protocol ``evaluate`` would pick, the counted
problems and, given the video ids of a work folder, how the ids matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mama_augment.datasets.protocol import choose_protocol
from mama_augment.datasets.reader import CaptionSet, load_captions
from mama_augment.datasets.registry import FORMATS

# Counted for information: the rows are kept.
INFORMATIONAL = frozenset({"duplicate_caption"})


@dataclass
class DatasetCheck:
    loaded: CaptionSet
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> videos, captions
    captions_per_video: tuple[int, float, int] = (0, 0.0, 0)
    concepts: int = 0
    protocol: str = ""

    @property
    def failed(self) -> bool:
        """Whether some rows or ids could not be used."""
        return any(kind not in INFORMATIONAL for kind in self.loaded.problems.counts)

    def lines(self, show: int = 10) -> list[str]:
        loaded = self.loaded
        out = []
        for info in loaded.files:
            what = f"{info.rows} ids of the {info.split} split" if info.role == "split_list" else (
                "category names" if info.role == "categories" else f"{info.rows} rows ({info.role})")
            out.append(f"{info.path}: {info.format}, {what}")
        frame = loaded.frame
        out.append(f"captions: {len(frame)} of {frame['video_id'].nunique()} videos")
        for split, counts in self.splits.items():
            out.append(f"  {split}: {counts['videos']} videos, {counts['captions']} captions")
        low, median, high = self.captions_per_video
        out.append(f"captions per video: min {low}, median {median:g}, max {high}")
        if self.concepts:
            out.append(f"concepts: {self.concepts}")
        out.append(f"evaluate --protocol auto would use: {self.protocol}")
        out += loaded.notes
        if loaded.match is not None:
            out += loaded.match.summary(show)
        if loaded.problems:
            out.append("problems:")
            out += [f"  {line}" for line in loaded.problems.lines()]
        return out


def check_files(paths: Sequence[str | Path], formats=None, video_ids: Sequence[str] | None = None) -> DatasetCheck:
    # A file without caption rows is reported as a problem here, not refused as in train.
    loaded = load_captions([str(p) for p in paths], formats, video_ids=video_ids, allow_empty=True)
    frame = loaded.frame
    check = DatasetCheck(loaded)
    if "split" in frame.columns:
        for split, group in frame.groupby(frame["split"].fillna("(none)"), sort=False):
            check.splits[str(split)] = {"videos": int(group["video_id"].nunique()), "captions": int(len(group))}
    per_video = frame.groupby("video_id").size().to_numpy() if len(frame) else np.zeros(1, dtype=int)
    check.captions_per_video = (int(per_video.min()), float(np.median(per_video)), int(per_video.max()))
    if "concept" in frame.columns:
        check.concepts = int(frame["concept"].nunique())
    test = frame[frame["split"] == "test"] if "split" in frame.columns and (frame["split"] == "test").any() else frame
    codes = test["video_id"].astype("category").cat.codes.to_numpy()
    check.protocol = choose_protocol(codes, loaded.paragraph)
    return check


def format_listing() -> list[str]:
    """One block per format: name, benchmark, files, an example command."""
    lines = []
    width = max(len(name) for name in FORMATS)
    for name, fmt in FORMATS.items():
        lines.append(f"{name:<{width}}  {fmt.benchmark}: {fmt.files}")
        lines.append(f"{'':<{width}}  $ {fmt.example}")
    return lines
