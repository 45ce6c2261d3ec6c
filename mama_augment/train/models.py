"""Video-text retrieval models behind one small interface (``--backbone``).

A model is a *trunk* that turns inputs into features and a :class:`Heads` module
that projects them, normalises them and owns the learnable log logit scale. The
split is what makes the meta step cheap: with ``meta_params="heads"`` only the heads
take the virtual step, so the second-order graph never enters the encoders.

The registry of backbones (name -> factory ``(config, videos, workdir, device) ->
model``) is ``train/backbones.py``; the factories here build:

* ``features``: frozen keyframe embeddings from ``keyframes.parquet`` -> a light
  temporal pooling -> MLP projection; captions -> a frozen sentence encoder (cached)
  -> MLP projection. Fast on a CPU.
* ``clip``: a Hugging Face CLIP fine-tuned end to end on the keyframe JPEGs, frames
  mean-pooled (CLIP4Clip's meanP), the realistic GPU setting.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mama_augment.errors import MamaError, MissingDependency, UsageError
from mama_augment.train.columns import FrameRows
from mama_augment.train.data import VideoTable
from mama_augment.train.frames import DecodedFrames, FrameSource, decode_on_device
from mama_augment.train.inputs import ClipInputBuilder, frames_of_video, to_device
from mama_augment.train.text import TextEncoder, cached_text_embeddings, get_text_encoder, text_cache_dir

log = logging.getLogger(__name__)


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

    def input_builder(self) -> Any:
        """A picklable object with ``video(indices)`` and ``text(indices)`` that builds
        CPU inputs in the loader's worker processes (train/inputs.py), or None when the
        inputs are a cheap lookup on the model's device (built in the training process)."""
        return None

    def inputs_to_device(self, video_inputs: Any, text_inputs: Any, non_blocking: bool = False) -> tuple[Any, Any]:
        """The builder's CPU inputs made ready for ``forward`` on the model's device."""
        return video_inputs, text_inputs

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
        self._tables: list[torch.Tensor] = []  # one a mapped embeddings file (CPU), else empty
        self._table_host: np.ndarray | None = None
        self._offsets_host: np.ndarray | None = None
        self._text_table = torch.zeros(0, text_encoder.dim)

    def set_videos(self, videos: VideoTable) -> None:
        rows = videos.keyframe_embeddings
        lengths = rows.counts.tolist() if isinstance(rows, FrameRows) else [len(e) for e in rows]
        if any(n == 0 for n in lengths):
            raise MamaError("a video without keyframe embeddings reached the features model")
        device = self.device
        self._tables, self._table_host, self._offsets_host = [], None, None
        if isinstance(rows, FrameRows) and len(rows.tables) > 1:
            # The feature cache maps the keyframes stage's embeddings files themselves.
            if rows.dim != self.video_dim:
                raise UsageError(f"keyframe embeddings have {rows.dim} dimensions, the model expects {self.video_dim}")
            if device.type == "cuda":  # one table on the device, each file's rows copied in turn
                frames, offsets = _stacked_tables(rows, device)
            else:
                # Left where they are: concatenated they were an anonymous copy of every
                # embedding (6 GB at 200 k videos). A batch gathers from each file it touches.
                self._tables = [torch.from_numpy(np.asarray(table)) for table in rows.tables]
                self._table_host = rows.table.copy()
                self._offsets_host = rows.offsets.copy()
                frames, offsets = torch.zeros(0, self.video_dim, dtype=self._tables[0].dtype), rows.offsets.copy()
        else:
            flat, offsets = _frame_table(videos.keyframe_embeddings, self.video_dim)
            if flat.shape[1] != self.video_dim:
                raise UsageError(f"keyframe embeddings have {flat.shape[1]} dimensions, the model expects {self.video_dim}")
            # Kept in the cache's float16 (half the memory); a batch is widened on use.
            frames = torch.from_numpy(flat).to(device)
        self._frames = frames
        self._lengths_host = np.asarray(lengths, dtype=np.int64)  # batch widths without a device sync
        lengths_t = torch.tensor(lengths, dtype=torch.long)
        self._offsets = torch.from_numpy(offsets).to(device)
        self._lengths = lengths_t.to(device)

    def set_texts(self, texts: Sequence[str]) -> None:
        # Held in float16, as the frames are (half the memory: 600 k captions x 512 were
        # 1.2 GB in float32); a batch is widened on use.
        table = cached_text_embeddings(self.text_encoder, list(texts), self.cache_dir, dtype=np.float16)
        self._text_table = torch.from_numpy(np.ascontiguousarray(table)).to(self.device)

    def _apply(self, fn, *args, **kwargs):  # keep the input tables on the model's device
        result = super()._apply(fn, *args, **kwargs)
        for name in ("_frames", "_offsets", "_lengths", "_text_table"):
            setattr(self, name, fn(getattr(self, name)))
        self._tables = [fn(table) for table in self._tables]
        return result

    def video_inputs(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        host = np.asarray(indices, dtype=np.int64)
        if self._tables:
            return self._inputs_from_tables(host)
        idx = _index_tensor(host, self._frames.device)
        lengths = self._lengths[idx]
        width = int(self._lengths_host[host].max()) if len(host) else 1
        steps = torch.arange(width, device=idx.device)
        mask = steps[None, :] < lengths[:, None]
        gather = self._offsets[idx][:, None] + torch.minimum(steps[None, :], (lengths - 1)[:, None])
        return self._frames[gather].float(), mask

    def _inputs_from_tables(self, host: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`video_inputs` from one table a file: the same padded frames (a short
        video's last frame repeated, masked), each file's videos gathered from it."""
        device = self._tables[0].device
        lengths = self._lengths_host[host]
        width = int(lengths.max()) if len(host) else 1
        steps = np.arange(width, dtype=np.int64)
        mask = torch.from_numpy(steps[None, :] < lengths[:, None]).to(device)
        rows = self._offsets_host[host][:, None] + np.minimum(steps[None, :], (lengths - 1)[:, None])
        frames = torch.empty((len(host), width, self.video_dim), dtype=torch.float32, device=device)
        tables = self._table_host[host]
        for t in np.unique(tables).tolist():
            mine = np.flatnonzero(tables == t)
            frames[torch.from_numpy(mine).to(device)] = self._tables[t][torch.from_numpy(rows[mine]).to(device)].float()
        return frames, mask

    def text_inputs(self, indices) -> torch.Tensor:
        return self._text_table[_index_tensor(np.asarray(indices, dtype=np.int64), self._text_table.device)].float()

    def video_features(self, video_inputs) -> torch.Tensor:
        frames, mask = video_inputs
        scores = self.frame_score(frames).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights.unsqueeze(1), frames).squeeze(1)

    def text_features(self, text_inputs) -> torch.Tensor:
        return text_inputs


def _frame_table(arrays: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """One (frames, dim) array holding every video's frames, and each video's first row.

    When the videos' arrays are row ranges of one array (the feature cache, mapped from
    disk: one embeddings file, or the cache's copy) that array is used as it is, in its
    own order, so nothing is copied and its pages are read as batches need them;
    otherwise they are concatenated. (Rows of several files: :meth:`FeaturesModel.set_videos`.)"""
    if isinstance(arrays, FrameRows) and len(arrays.tables) == 1 and len(arrays):
        # The cache's rows say where each video is: no view a video to walk.
        frames = arrays.tables[0]
        if frames.ndim == 2 and frames.shape[1] == dim and frames.dtype in (np.float16, np.float32):
            return np.asarray(frames), arrays.offsets.copy()
    root = arrays[0] if len(arrays) else None
    while root is not None and isinstance(root.base, np.ndarray):
        root = root.base
    if (root is not None and root.ndim == 2 and root.flags.c_contiguous and root.dtype in (np.float16, np.float32)
            and root.shape[1] == dim and root.strides[0] > 0):
        start = root.ctypes.data
        offsets = []
        for array in arrays:
            base = array
            while isinstance(base.base, np.ndarray):
                base = base.base
            delta = array.ctypes.data - start if base is root else -1
            if (delta < 0 or delta % root.strides[0] or array.ndim != 2 or not array.flags.c_contiguous
                    or array.dtype != root.dtype):
                break
            offsets.append(delta // root.strides[0])
        else:
            return np.asarray(root), np.asarray(offsets, dtype=np.int64)
    lengths = np.asarray([len(a) for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays, axis=0) if len(arrays) else np.zeros((0, dim), np.float32)
    if flat.dtype not in (np.float16, np.float32):
        flat = flat.astype(np.float32)
    return np.ascontiguousarray(flat), np.cumsum(lengths) - lengths


def _stacked_tables(rows: FrameRows, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """The tables of ``rows`` one after the other in one tensor on ``device``, and each
    video's first row in it. A file at a time: its pages go back to the kernel once
    copied, so the host never holds more than one file's."""
    from mama_augment.frame_embeddings import page_out

    sizes = [len(table) for table in rows.tables]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    dtype = torch.from_numpy(np.empty(0, rows.dtype)).dtype
    out = torch.empty((int(starts[-1]), rows.dim), dtype=dtype, device=device)
    for t, table in enumerate(rows.tables):
        if sizes[t]:
            out[int(starts[t]) : int(starts[t + 1])].copy_(torch.from_numpy(np.asarray(table)))
            page_out(table, 0, table.nbytes)
    return out, starts[rows.table] + rows.offsets


def _index_tensor(indices: np.ndarray, device: torch.device) -> torch.Tensor:
    """Indices on ``device``. To a GPU they go through pinned memory without blocking:
    a plain copy from pageable memory waits for every kernel queued before it."""
    cpu = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
    if device.type != "cuda":
        return cpu.to(device)
    return cpu.pin_memory().to(device, non_blocking=True)


def build_features_model(config, videos: VideoTable, workdir: Path, device: torch.device) -> FeaturesModel:
    rows = videos.keyframe_embeddings
    if isinstance(rows, FrameRows) and rows.read:
        dims = {rows.dim} if rows.counts.any() else set()
    else:
        dims = {e.shape[1] for e in rows if len(e)}
    if not dims:
        raise UsageError("no keyframe embeddings found; run `mama-augment keyframes` with an embedder first")
    if len(dims) > 1:
        raise UsageError(f"keyframe embeddings of several sizes {sorted(dims)}: rerun keyframes with one embedder")
    encoder = get_text_encoder(config.text_model, "cuda" if device.type == "cuda" else "cpu")
    model = FeaturesModel(dims.pop(), encoder, config, text_cache_dir(workdir))
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
        # Buffers follow the model to its device; not persistent, so not in checkpoints.
        self.register_buffer("_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._texts: list[str] = []
        self._builder = None

    def set_videos(self, videos: VideoTable) -> None:
        """Frame ids: every keyframe of ``videos`` in order; each video feeds the model at
        most ``max_frames`` of its own, spread evenly. Frames come from Pillow decoding
        until :meth:`set_frame_source` chooses another source."""
        self._video_ids = list(videos.video_ids)
        self.frame_paths: list[str] = []  # relative to the work folder, one per frame id
        self._video_frames: list[list[int]] = []
        for paths in videos.keyframe_paths:
            first = len(self.frame_paths)
            self.frame_paths.extend(paths)
            self._video_frames.append([first + k for k in frames_of_video(len(paths), self.max_frames)])
        self.set_frame_source(DecodedFrames([str(self.workdir / p) for p in self.frame_paths], self.image_size))

    def set_frame_source(self, source: FrameSource) -> None:
        """Read frames from ``source`` from now on (frame ids as in ``frame_paths``);
        keyframes the source found undecodable are left out of their video."""
        self.frame_source = source
        broken = set(source.broken(range(len(self.frame_paths)))) if hasattr(source, "broken") else set()
        frames = [[f for f in ids if f not in broken] for ids in self._video_frames]
        self._builder = ClipInputBuilder(source, frames, self._video_ids, self.tokenizer, self._texts, self.max_length)

    def set_texts(self, texts: Sequence[str]) -> None:
        self._texts = list(texts)
        if getattr(self, "_builder", None) is not None:
            self._builder.texts = self._texts

    def input_builder(self) -> ClipInputBuilder:
        return self._builder

    def inputs_to_device(self, video_inputs, text_inputs, non_blocking: bool = False):
        frames, counts = video_inputs
        if self.frame_source.on_device:
            frames = decode_on_device(frames, self.image_size, self.device)
        else:
            frames = frames.to(self.device, non_blocking=non_blocking)
        return (frames, counts.to(self.device, non_blocking=non_blocking)), to_device(text_inputs, self.device, non_blocking)

    def video_inputs(self, indices):
        return self.inputs_to_device(self._builder.video(indices), {})[0]

    def text_inputs(self, indices):
        return to_device(self._builder.text(indices), self.device)

    def video_features(self, video_inputs) -> torch.Tensor:
        frames, counts = video_inputs
        if frames.dtype == torch.uint8:  # (frames, size, size, 3) from a frame source: to CLIP's input here
            pixels = (frames.permute(0, 3, 1, 2).float() / 255.0 - self._mean) / self._std
        else:
            pixels = frames
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
