"""The small interface every decoding backend implements.

A backend opens a file, decodes it in **one forward pass** (no per-frame seeking),
and keeps only small RGB thumbnails of the frames it samples, so memory stays
bounded by ``max_frames`` thumbnails whatever the video's length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class VideoInfo:
    """What the container and stream say about a video (None when unknown)."""

    media_type: str  # "video" or "image"
    duration_s: float | None
    fps: float | None
    width: int
    height: int
    codec: str | None = None
    num_frames: int | None = None  # from the header, when it has one


@dataclass
class SampledFrames:
    """Frames sampled from one video, in temporal order.

    ``images`` are RGB uint8 arrays (H, W, 3) whose longer side is at most the
    requested thumbnail size; ``times_s`` are presentation times in seconds from the
    stream's timestamps; ``indices`` are the frames' positions in decode order.
    """

    info: VideoInfo
    images: list[np.ndarray]
    times_s: np.ndarray
    indices: np.ndarray
    backend: str
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SamplingOptions:
    fps: float = 2.0
    max_frames: int = 256
    thumb_size: int = 320  # longer side of the kept thumbnails, in pixels
    threads: int = 0  # decoder threads; 0 lets the backend choose


class VideoReader(Protocol):
    """Decode ``path`` once and return the sampled frames.

    Raises ``mama_augment.errors.ItemError`` with a stable ``kind`` for bad inputs.
    """

    name: str

    def sample(self, path: Path, options: SamplingOptions) -> SampledFrames: ...
