"""What an export is made of: videos with their captions, and the samples formats write.

A :class:`VideoItem` is one ``ok`` video of ``keyframes.parquet`` with the captions that
survived the filters (originals first, in file order, then generated ones by
``caption_index``). Formats whose unit is the pair write one sample per caption
(:class:`Sample` with ``caption`` set), the others one sample per video.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CaptionEntry:
    text: str
    source: str  # original | generated
    caption_index: int | None = None  # captions.parquet caption_index; None for originals
    model: str | None = None
    preset: str | None = None
    prompt_name: str | None = None
    prompt_sha256: str | None = None
    seed: int | None = None
    sampling: str | None = None  # JSON, as in captions.parquet
    weight: float | None = None  # the run's weight (mean 1 over its pairs); None: not in the run
    loss: float | None = None
    pair_id: int | None = None  # the caption's id in the run
    flags: list[str] | None = None  # raised quality flags; None: not checked (no filter run, or stale)
    duplicate_keep: bool | None = None  # representative of its near-duplicate group

    def provenance(self) -> dict[str, Any]:
        """The JSON form written into exports (keys stable, documented in the README)."""
        sampling = None
        if self.sampling:
            try:
                sampling = json.loads(self.sampling)
            except ValueError:
                sampling = self.sampling
        return {
            "caption": self.text,
            "source": self.source,
            "caption_index": self.caption_index,
            "model": self.model,
            "preset": self.preset,
            "prompt_name": self.prompt_name,
            "prompt_sha256": self.prompt_sha256,
            "seed": self.seed,
            "sampling": sampling,
            "weight": self.weight,
            "loss": self.loss,
            "flags": self.flags,
        }


@dataclass
class VideoItem:
    video_id: str
    grid_path: str | None  # relative to the work folder
    keyframe_paths: list[str]
    keyframe_times_s: list[float]
    grid_rows: int | None
    grid_cols: int | None
    media_type: str | None
    duration_s: float | None
    split: str | None = None  # the first split value of its original captions, as written
    concept: str | None = None
    captions: list[CaptionEntry] = field(default_factory=list)
    # Its original captions' splits as train reads them (train/val/test -> count): the
    # split train gives the video (export --split), not written to the export.
    split_votes: Counter = field(default_factory=Counter)

    def metadata(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "split": self.split,
            "concept": self.concept,
            "media_type": self.media_type,
            "duration_s": self.duration_s,
            "grid_rows": self.grid_rows,
            "grid_cols": self.grid_cols,
            "keyframe_times_s": self.keyframe_times_s,
        }


@dataclass
class Sample:
    """One unit a format writes: a video (``caption`` None) or one of its captions."""

    key: str  # zero-padded sample number: unique in the export, safe as a file name
    video: VideoItem
    caption: CaptionEntry | None = None

    @property
    def captions(self) -> list[CaptionEntry]:
        return [self.caption] if self.caption is not None else self.video.captions
