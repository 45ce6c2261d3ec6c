"""The filters of an export, applied caption by caption, every drop counted by reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mama_augment.export.config import ALL_FLAGS, SOURCE_GENERATED, ExportConfig
from mama_augment.export.records import CaptionEntry, VideoItem
from mama_augment.datasets.splits import normalize_split, split_of_video


@dataclass(frozen=True)
class SplitRule:
    """Which videos ``--split`` keeps (``--split-by``, config.SPLIT_BY).

    ``train``: the split training gives the video, by the very rule of training
    (``datasets.splits.split_of_video``): ``has_split`` says whether the original
    captions name a split at all, the fractions are the run's hash split.
    ``column``: the first split value of the video's original captions, as written.
    """

    split: str
    by: str = "train"
    has_split: bool = False
    test_fraction: float = 0.1
    val_fraction: float = 0.1

    def keeps(self, item: VideoItem) -> bool:
        if self.by == "column":
            return item.split == self.split
        placed = split_of_video(item.video_id, item.split_votes, self.has_split, self.test_fraction,
                                self.val_fraction)
        return placed == normalize_split(self.split)

    def describe(self) -> str:
        if self.by == "column":
            return f"{self.split} (the captions' split column as written)"
        if self.has_split:
            return f"{normalize_split(self.split)} (as train: the captions' split column)"
        return (f"{normalize_split(self.split)} (as train: a hash of video_id, test fraction "
                f"{self.test_fraction:g}, val fraction {self.val_fraction:g})")


@dataclass(frozen=True)
class FlagFilter:
    """``--drop-flags`` and ``--dedupe``: which generated captions the quality flags of
    ``caption_flags.parquet`` drop. The one rule, shared by ``export`` and ``train``."""

    drop_flags: tuple[str, ...] = ()  # flag names, or ("all",)
    dedupe: bool = False

    @classmethod
    def from_option(cls, drop_flags: str | None, dedupe: bool) -> "FlagFilter":
        """From the comma-separated ``--drop-flags`` text."""
        return cls(tuple(f.strip() for f in (drop_flags or "").split(",") if f.strip()), dedupe)

    @property
    def active(self) -> bool:
        return bool(self.drop_flags) or self.dedupe

    def reason(self, flags: list[str], duplicate_keep: bool | None) -> str | None:
        """Why a caption with these (current) flags is dropped, or None to keep it."""
        raised = flags if ALL_FLAGS in self.drop_flags else [f for f in flags if f in self.drop_flags]
        if raised:
            return f"flag:{sorted(raised)[0]}"
        if self.dedupe and "near_duplicate" in flags and duplicate_keep is False:
            return "duplicate"
        return None


@dataclass
class SelectionCounts:
    videos_in: int = 0
    videos_out: int = 0
    videos_without_captions: int = 0  # every caption filtered out (or none to begin with)
    captions_in: Counter = field(default_factory=Counter)  # by source
    captions_out: Counter = field(default_factory=Counter)  # by source
    dropped: Counter = field(default_factory=Counter)  # by reason
    kept_without_weight: int = 0  # a weight filter was on but the pair was not in the run
    kept_without_flags: int = 0  # flag filters were on but the caption had no (current) flags

    def as_dict(self) -> dict:
        return {
            "videos_in": self.videos_in,
            "videos_out": self.videos_out,
            "videos_without_captions": self.videos_without_captions,
            "captions_in": dict(self.captions_in),
            "captions_out": dict(self.captions_out),
            "dropped": dict(sorted(self.dropped.items())),
            "kept_without_weight": self.kept_without_weight,
            "kept_without_flags": self.kept_without_flags,
        }


class Selector:
    """Applies the filters of ``config`` to each video's captions, in place."""

    def __init__(self, config: ExportConfig, dropped_pair_ids: np.ndarray | None = None,
                 split_rule: SplitRule | None = None):
        self.config = config
        self.dropped_pair_ids = dropped_pair_ids  # bool mask by pair_id: the least trusted pairs
        if config.split is not None and split_rule is None:
            raise ValueError("--split needs its SplitRule (stage._split_rule), made once the captions are read")
        self.split_rule = split_rule
        self.sources = set(config.sources)
        self.flag_filter = FlagFilter(tuple(config.drop_flags), config.dedupe)
        self.use_flags = self.flag_filter.active
        self.counts = SelectionCounts()

    def select(self, item: VideoItem) -> VideoItem | None:
        counts = self.counts
        counts.videos_in += 1
        for entry in item.captions:
            counts.captions_in[entry.source] += 1
        if self.split_rule is not None and not self.split_rule.keeps(item):
            counts.dropped["split"] += len(item.captions)
            counts.videos_without_captions += 1
            return None
        kept = []
        for entry in item.captions:
            reason = self._drop_reason(entry)
            if reason is None:
                kept.append(entry)
                counts.captions_out[entry.source] += 1
            else:
                counts.dropped[reason] += 1
        item.captions = kept
        if not kept:
            counts.videos_without_captions += 1
            return None
        counts.videos_out += 1
        return item

    def _drop_reason(self, entry: CaptionEntry) -> str | None:
        if entry.source not in self.sources:
            return "source"
        dropped = self.dropped_pair_ids
        if dropped is not None and entry.pair_id is not None and entry.pair_id < len(dropped) and dropped[entry.pair_id]:
            return "least_trusted"
        if self.config.min_weight is not None:
            if entry.weight is None:
                self.counts.kept_without_weight += 1
            elif entry.weight < self.config.min_weight:
                return "min_weight"
        if self.use_flags and entry.source == SOURCE_GENERATED:
            if entry.flags is None:
                self.counts.kept_without_flags += 1
                return None
            return self.flag_filter.reason(entry.flags, entry.duplicate_keep)
        return None
