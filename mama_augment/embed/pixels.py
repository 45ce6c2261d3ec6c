"""``pixels``: a colour histogram plus a layout thumbnail, with numpy and OpenCV only.

Each frame is shrunk once (area interpolation) to 64 x 48 and described by two parts
of equal weight:

* an HSV joint histogram, 8 hue x 4 saturation x 4 value bins (128), as the square
  root of the bin frequencies (Hellinger form: Euclidean distance between such
  vectors behaves like a distance between distributions, and the vector has unit norm);
* a 16 x 12 grayscale thumbnail (192) with its mean removed and scaled to unit norm,
  so it describes layout; brightness is already in the histogram's value bins.

The concatenation is scaled to unit norm (a flat frame has no layout part, so it is
described by its histogram alone). 320 dimensions, deterministic, no torch.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from mama_augment.embed.base import EmbedderOptions, as_rgb_uint8, empty_embeddings, l2_normalize_rows

HIST_BINS = (8, 4, 4)  # hue, saturation, value
WORK_SIZE = (64, 48)  # (width, height) every frame is shrunk to first
THUMB_SIZE = (16, 12)  # (width, height) of the layout thumbnail


class PixelEmbedder:
    name = "pixels"
    dim = int(np.prod(HIST_BINS)) + THUMB_SIZE[0] * THUMB_SIZE[1]

    def __init__(self, options: EmbedderOptions | None = None):
        self.options = options or EmbedderOptions()

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return empty_embeddings(self.dim)
        return np.stack([embed_pixels(image) for image in images])


def embed_pixels(image: np.ndarray) -> np.ndarray:
    """The ``pixels`` vector of one RGB uint8 frame (float32, unit norm)."""
    rgb = as_rgb_uint8(image)
    small = cv2.resize(rgb, WORK_SIZE, interpolation=cv2.INTER_AREA)

    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)  # uint8 hue is 0..179
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(HIST_BINS), [0, 180, 0, 256, 0, 256])
    hist = np.sqrt(hist.ravel() / hist.sum())

    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(gray, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    # Below a fraction of one grey level of contrast, treat the frame as flat.
    thumb = thumb / norm if norm > 1e-3 * len(thumb) ** 0.5 else np.zeros_like(thumb)

    vector = np.concatenate([hist.astype(np.float32), thumb])
    return l2_normalize_rows(vector[None, :])[0]
