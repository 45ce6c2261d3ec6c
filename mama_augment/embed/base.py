"""The interface of frame embedders (``--embedder``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class EmbedderOptions:
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 32
    model: str | None = None  # --embed-model for embedders that take one
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # Numeric path of torch embedders (``cnn``): "auto" is the fastest one that gives
    # the same embeddings (CPU: float32 with batch norm folded into the convolutions;
    # CUDA: float16 autocast); "fp32" is the model exactly as loaded, in float32;
    # "fp16" is float16 autocast (CUDA only).
    precision: str = "auto"  # auto | fp32 | fp16


class Embedder(Protocol):
    """Turn RGB uint8 frames (H, W, 3) into L2-normalised float32 vectors."""

    name: str
    dim: int

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return an array of shape (len(images), dim), float32, rows of unit norm."""
        ...
