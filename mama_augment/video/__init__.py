"""Video decoding: one call turns a file into a few RGB thumbnails with their times.

    >>> from mama_augment.video import SamplingOptions, sample_frames
    >>> frames = sample_frames("clip.mp4", SamplingOptions(fps=2, max_frames=64))
    >>> frames.times_s, frames.images[0].shape  # doctest: +SKIP

Backends live in ``READERS`` (name -> factory). ``"auto"`` picks PyAV when it is
installed and OpenCV otherwise (logged once). Still images (by suffix, or by their
first bytes) are read with Pillow as one-frame videos whatever the backend.

Bad inputs raise ``mama_augment.errors.ItemError`` whose ``kind`` is one of
``ERROR_KINDS``; a file that decodes only partly (truncated, damaged packets) is
returned with a note in ``SampledFrames.warnings`` instead of failing.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Callable

from mama_augment.errors import MissingDependency, UsageError
from mama_augment.video.base import SampledFrames, SamplingOptions, VideoInfo, VideoReader
from mama_augment.inputs import IMAGE_EXTENSIONS
from mama_augment.video.image_reader import ImageReader
from mama_augment.video.opencv_reader import OpenCVReader
from mama_augment.video.probe import ERROR_KINDS, check_file, sniff
from mama_augment.video.pyav_reader import PyAVReader

__all__ = [
    "BACKEND_CHOICES",
    "ERROR_KINDS",
    "IMAGE_EXTENSIONS",
    "READERS",
    "SampledFrames",
    "SamplingOptions",
    "VideoInfo",
    "VideoReader",
    "available_backends",
    "is_image",
    "resolve_backend",
    "sample_frames",
]

logger = logging.getLogger(__name__)

READERS: dict[str, Callable[[], VideoReader]] = {
    "pyav": PyAVReader,
    "opencv": OpenCVReader,
}
BACKEND_CHOICES = ("auto", *READERS)

# The module each backend needs, and the pip package that provides it.
_REQUIRES = {"pyav": ("av", "av"), "opencv": ("cv2", "opencv-python-headless")}
_fallback_logged = False


def available_backends() -> list[str]:
    """Names in ``READERS`` whose library is installed."""
    return [name for name in READERS if importlib.util.find_spec(_REQUIRES[name][0]) is not None]


def resolve_backend(backend: str = "auto") -> str:
    """The concrete backend ``backend`` stands for; run-level errors if it cannot be used."""
    global _fallback_logged
    if backend not in BACKEND_CHOICES:
        raise UsageError(f"unknown decode backend {backend!r}; choose one of: {', '.join(BACKEND_CHOICES)}")
    installed = available_backends()
    if backend != "auto":
        if backend not in installed:
            module, package = _REQUIRES[backend]
            raise MissingDependency(package, purpose=f"the {backend} decode backend")
        return backend
    if "pyav" in installed:
        return "pyav"
    if "opencv" in installed:
        if not _fallback_logged:
            logger.warning("PyAV is not installed; decoding videos with OpenCV instead (pip install av to use PyAV)")
            _fallback_logged = True
        return "opencv"
    raise MissingDependency("av", purpose="decoding videos")


def is_image(path: Path, head: bytes | None = None) -> bool:
    """True for a still image: an image suffix, or an image's first bytes under another suffix."""
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
        return True
    sniffed = sniff(head) if head else None
    return sniffed is not None and sniffed.media_type == "image"


def _check_options(options: SamplingOptions) -> None:
    if not options.fps > 0:
        raise UsageError(f"sampling fps must be > 0, got {options.fps}")
    if options.max_frames < 1:
        raise UsageError(f"max_frames must be at least 1, got {options.max_frames}")
    if options.thumb_size < 8:
        raise UsageError(f"thumb_size must be at least 8 pixels, got {options.thumb_size}")
    if options.threads < 0:
        raise UsageError(f"threads must be >= 0, got {options.threads}")


def sample_frames(path: str | Path, options: SamplingOptions | None = None, backend: str = "auto") -> SampledFrames:
    """Decode ``path`` once and return thumbnails of the sampled frames.

    Raises ``ItemError`` for a bad input (see ``ERROR_KINDS``), ``UsageError`` /
    ``MissingDependency`` for bad options or a backend that is not installed.
    """
    options = options or SamplingOptions()
    _check_options(options)
    path = Path(path)
    name = resolve_backend(backend)
    head = check_file(path)
    if is_image(path, head):
        return ImageReader().sample(path, options)
    return READERS[name]().sample(path, options)
