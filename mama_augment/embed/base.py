"""The interface of frame embedders (``--embedder``) and the helpers they share."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from mama_augment.errors import UsageError


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
    # What executes a CPU network (``cnn``): "auto" is OpenVINO when it is installed
    # (same float32 results, about 4x less CPU than PyTorch here), else PyTorch.
    runtime: str = "auto"  # auto | torch | openvino


class Embedder(Protocol):
    """Turn RGB uint8 frames (H, W, 3) into L2-normalised float32 vectors."""

    name: str
    dim: int

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return an array of shape (len(images), dim), float32, rows of unit norm."""
        ...


class ModelEmbedder(Embedder, Protocol):
    """An embedder whose model can run apart from its preprocessing: the registry's
    ``prepare`` turns frames into the model's input (N, ...) without torch, in the
    decoding processes; ``embed_prepared`` runs the model once per device on batches
    that may mix frames of many videos. ``embed(images)`` equals
    ``embed_prepared(prepare(images))``."""

    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray:
        """Unit-norm float32 rows (N, dim) of prepared inputs (N, ...)."""
        ...


# --------------------------------------------------------------------------- shared helpers
# (numpy only, so `pixels` stays torch-free)


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


def cpu_only(device: str) -> bool:
    """True when ``device`` can only mean the CPU: "cpu", or "auto" on a machine
    without an NVIDIA driver (CUDA cannot work there), decided without importing torch:
    no ``/proc/driver/nvidia``, no ``/dev/nvidiaN`` and no WSL GPU (``/dev/dxg``)."""
    device = (device or "auto").lower()
    if device == "cpu":
        return True
    if device != "auto":
        return False
    return (not os.path.exists("/proc/driver/nvidia/version") and not glob.glob("/dev/nvidia[0-9]*")
            and not os.path.exists("/dev/dxg"))


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
