"""A batch's model inputs built on the CPU, in whichever process asks (the loader's
workers during training): frames from a frame source, captions tokenised.

What a builder returns is plain CPU tensors (the loader pins them when training on
CUDA); :func:`to_device` moves them, and the model finishes on its device what is
cheap there (normalising pixels, decoding JPEGs with ``--frame-source gpu``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mama_augment.errors import MamaError
from mama_augment.train.frames import FrameSource


def frames_of_video(frame_count: int, max_frames: int) -> list[int]:
    """Positions of the frames a video feeds the model: all of them, or ``max_frames``
    spread evenly over the video (first and last included)."""
    if frame_count <= max_frames:
        return list(range(frame_count))
    return np.linspace(0, frame_count - 1, max_frames).round().astype(int).tolist()


class ClipInputBuilder:
    """Inputs of the ``clip`` backbone: ``video(indices) -> (frames, counts)`` with
    frames ``uint8 (sum(counts), size, size, 3)`` (or, for the ``gpu`` source, a list of
    JPEG byte tensors), and ``text(indices) -> {input_ids, attention_mask}``.
    Picklable: the loader's workers each hold one."""

    def __init__(self, source: FrameSource, video_frames: Sequence[Sequence[int]], video_ids: Sequence[str],
                 tokenizer, texts: Sequence[str], max_length: int):
        self.source = source
        self.video_frames = [list(f) for f in video_frames]  # frame ids per video
        self.video_ids = list(video_ids)
        self.tokenizer = tokenizer
        self.texts = list(texts)
        self.max_length = int(max_length)

    def video(self, indices) -> tuple[Any, Any]:
        import torch

        frame_ids, counts = [], []
        for i in np.asarray(indices).reshape(-1).tolist():
            ids = self.video_frames[i]
            if not ids:
                raise MamaError(f"video {self.video_ids[i]} has no readable keyframe")
            frame_ids.extend(ids)
            counts.append(len(ids))
        return self.source.frames(frame_ids), torch.tensor(counts, dtype=torch.long)

    def text(self, indices) -> dict:
        batch = self.tokenizer(
            [self.texts[i] for i in np.asarray(indices).reshape(-1).tolist()],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def to_device(value, device, non_blocking: bool = False):
    """Tensors (in tuples, lists and dicts) moved to ``device``; anything else as is."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, dict):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, non_blocking) for v in value)
    return value
