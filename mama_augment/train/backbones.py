"""Retrieval backbones (``--backbone``): a registry of name -> :class:`Backbone`.

Adding a backbone is adding one entry to ``BACKBONES``: the training recipe, the
evaluation, ``TrainConfig.validate`` and the CLI's ``--backbone`` choices and help
all read it. This module imports no torch (factories import their models lazily), so
the CLI and the option checks stay fast.

* ``features``: frozen keyframe embeddings from ``keyframes.parquet`` -> a light
  temporal pooling -> projection; captions -> a frozen sentence encoder (cached) ->
  projection. Fast on a CPU.
* ``clip``: a Hugging Face CLIP fine-tuned end to end on the keyframe JPEGs, frames
  mean-pooled, the realistic GPU setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mama_augment.errors import UsageError


@dataclass(frozen=True)
class Backbone:
    """A registry entry. ``build(config, videos, workdir, device) -> RetrievalModel``;
    ``needs`` names the ``keyframes.parquet`` column the model reads;
    ``caption_embedder(config, workdir, device)``, when given, returns the function
    ``embed(texts, rows=None, dtype=float32)`` that embeds captions to group and score
    the meta set, the pairs and the caption sources (else TF-IDF vectors are used): the
    embeddings of ``texts[rows]`` (every text when None), cached as those of all ``texts``,
    so one cache file serves every caller that passes the run's whole list."""

    build: Callable[..., Any]
    needs: str  # keyframe_embeddings | keyframe_paths
    help: str
    caption_embedder: Callable[..., Callable[[Sequence[str]], Any]] | None = None
    needs_model: str = ""  # what --backbone-model must name, when the backbone needs one


def _build_features(config, videos, workdir: Path, device):
    from mama_augment.train.models import build_features_model

    return build_features_model(config, videos, workdir, device)


def _features_caption_embedder(config, workdir: Path, device) -> Callable[[Sequence[str]], Any]:
    from mama_augment.train.text import cached_text_embeddings, get_text_encoder, text_cache_dir

    encoder = get_text_encoder(config.text_model, "cuda" if device.type == "cuda" else "cpu")
    cache = text_cache_dir(workdir)
    def embed(texts, rows=None, dtype=np.float32):
        return cached_text_embeddings(encoder, list(texts), cache, rows=rows, dtype=dtype)

    return embed


def _build_clip(config, videos, workdir: Path, device):
    from mama_augment.train.models import build_clip_model

    return build_clip_model(config, videos, workdir, device)


BACKBONES: dict[str, Backbone] = {
    "features": Backbone(
        _build_features, "keyframe_embeddings",
        "frozen keyframe + sentence embeddings, trained heads (CPU-friendly)",
        caption_embedder=_features_caption_embedder,
    ),
    "clip": Backbone(_build_clip, "keyframe_paths", "Hugging Face CLIP fine-tuned on keyframe JPEGs",
                     needs_model="a Hugging Face CLIP id or folder"),
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UsageError(f"--backbone must be one of {', '.join(BACKBONES)}, not {name!r}") from None


def build_model(config, videos, workdir: str | Path, device):
    """The model of ``config.backbone`` for ``videos``, on ``device``."""
    return get_backbone(config.backbone).build(config, videos, Path(workdir), device)


def backbone_help() -> str:
    """``features = ...; clip = ...`` for the CLI's --help."""
    return "; ".join(f"{name} = {entry.help}" for name, entry in BACKBONES.items())
