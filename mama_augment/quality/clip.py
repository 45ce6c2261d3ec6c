"""Image-text agreement with a CLIP model (``filter --clip-model ID_OR_FOLDER``).

A video is the mean of the CLIP image embeddings of up to ``frames`` of its keyframes
(evenly spread, as CLIP4Clip pools frames); a caption is its CLIP text embedding. The
raw cosine (``clip_score``) depends on the model and on the caption's wording, so the
flag uses a relative measure: the caption's similarity to its own video against its
similarity to ``others`` other videos drawn at random, as a z-score
(``clip_zscore``). A caption that fits its video no better than other videos
(z below ``min_z``) is a ``clip_mismatch``.

Video embeddings are cached in ``WORKDIR/cache/clip/`` (Parquet parts written as they
are computed), so a killed run resumes and a rerun with the same model is quick.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mama_augment.errors import ItemError, MissingDependency, UsageError
from mama_augment.fileio import atomic_path
from mama_augment.workpaths import WorkFolder

log = logging.getLogger(__name__)
MIN_OTHERS = 8
UNREADABLE_FRAMES = "clip_unreadable_frames"  # error kind of a video whose keyframes cannot be read


def _slug(model_ref: str, frames: int) -> str:
    name = "".join(ch if ch.isalnum() else "-" for ch in Path(model_ref).name or model_ref)[:40]
    digest = hashlib.sha256(f"{model_ref}|{frames}".encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def spread(items: Sequence, count: int) -> list:
    """Up to ``count`` items evenly spread over ``items`` (first and last included)."""
    if len(items) <= count:
        return list(items)
    positions = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[p] for p in dict.fromkeys(positions.tolist())]


class ClipAgreement:
    def __init__(self, model_ref: str, device: str = "auto", batch_size: int = 32, frames: int = 4):
        from mama_augment.embed import get_embedder
        from mama_augment.embed.base import EmbedderOptions

        self.model_ref = model_ref
        self.frames = frames
        self.images = get_embedder("clip", EmbedderOptions(model=model_ref, device=device, batch_size=batch_size))
        try:
            import torch
            from transformers import AutoTokenizer, CLIPTextModelWithProjection
        except ImportError as exc:
            raise MissingDependency(exc.name or "transformers", purpose="the CLIP agreement check") from None
        local = Path(model_ref).is_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_ref, local_files_only=local)
            model = CLIPTextModelWithProjection.from_pretrained(model_ref, local_files_only=local)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise UsageError(f"cannot load the text tower of a CLIP model from {model_ref!r}: {exc}") from exc
        self.device = self.images.device
        self.text_model = model.to(self.device).eval()
        self.batch_size = batch_size
        self._torch = torch
        self.max_length = int(getattr(model.config, "max_position_embeddings", 77))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                embeds = self.text_model(**{k: v.to(self.device) for k, v in encoded.items()}).text_embeds.float()
            out.append(embeds.cpu().numpy())
        vectors = np.concatenate(out) if out else np.zeros((0, self.images.dim), np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def embed_videos(self, workdir: Path, videos: Sequence[tuple[str, Sequence[str]]],
                     progress: bool = False) -> tuple[np.ndarray, dict[str, tuple[str, str]]]:
        """Embeddings (row per video; zeros when failed) and ``{video_id: (error kind, error)}``
        of failures."""
        cache_dir = Path(workdir) / "cache" / "clip" / _slug(self.model_ref, self.frames)
        cached = _read_cache(cache_dir)
        dim = self.images.dim
        result = np.zeros((len(videos), dim), np.float32)
        errors: dict[str, tuple[str, str]] = {}
        work = WorkFolder(workdir)
        pending: list[int] = []
        for i, (video_id, paths) in enumerate(videos):
            key = _frames_key(paths, self.frames)
            vector = cached.get((video_id, key))
            if vector is not None and len(vector) == dim:
                result[i] = vector
            else:
                pending.append(i)
        bar = None
        if progress and pending:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(pending), unit="video", desc="clip", dynamic_ncols=True)
        chunk = 64
        for start in range(0, len(pending), chunk):
            rows = []
            for i in pending[start : start + chunk]:
                video_id, paths = videos[i]
                chosen = spread([p for p in paths if p], self.frames)
                try:
                    if not chosen:
                        raise OSError("no keyframes recorded")
                    checked = [work.file(p, "keyframe", missing_kind=UNREADABLE_FRAMES) for p in chosen]
                    frames = [np.asarray(Image.open(p).convert("RGB")) for p in checked]
                except ItemError as exc:  # a path that leads out of the work folder, or a missing file
                    errors[video_id] = (exc.kind, exc.message)
                    continue
                except OSError as exc:
                    errors[video_id] = (UNREADABLE_FRAMES, f"cannot read the keyframes: {exc}")
                    continue
                vector = self.images.embed(frames).mean(axis=0)
                vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
                result[i] = vector
                rows.append({"video_id": video_id, "frames_key": _frames_key(paths, self.frames),
                             "embedding": vector.astype(np.float32).tolist()})
            if rows:
                _write_cache_part(cache_dir, rows)
            if bar is not None:
                bar.update(len(pending[start : start + chunk]))
        if bar is not None:
            bar.close()
        return result, errors


def _frames_key(paths: Sequence[str], frames: int) -> str:
    return hashlib.sha256(("\n".join(spread([p for p in paths if p], frames))).encode()).hexdigest()[:16]


_CACHE_SCHEMA = pa.schema([("video_id", pa.string()), ("frames_key", pa.string()), ("embedding", pa.list_(pa.float32()))])


def _read_cache(directory: Path) -> dict:
    found = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("part-*.parquet")):
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException):
            continue  # a damaged cache part is recomputed, never trusted
        for video_id, key, vector in zip(*(table.column(c).to_pylist() for c in ("video_id", "frames_key", "embedding"))):
            found[(video_id, key)] = np.asarray(vector, dtype=np.float32)
    return found


def _write_cache_part(directory: Path, rows: list[dict]) -> None:
    with atomic_path(directory / f"part-{uuid.uuid4().hex}.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=_CACHE_SCHEMA), tmp)


def agreement(video_vectors: np.ndarray, text_vectors: np.ndarray, caption_video: np.ndarray,
              others: int = 64, seed: int = 0, usable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each caption with its video, and its z-score against ``others`` random videos.

    ``usable`` marks videos with an embedding; captions of unusable videos get NaN, and
    so does the z-score when fewer than ``MIN_OTHERS`` other videos exist.
    """
    n_videos = len(video_vectors)
    usable = np.ones(n_videos, bool) if usable is None else usable
    candidates = np.flatnonzero(usable)
    score = np.full(len(text_vectors), np.nan)
    zscore = np.full(len(text_vectors), np.nan)
    rng = np.random.default_rng(seed)
    count = min(others, len(candidates) - 1)
    for start in range(0, len(text_vectors), 1024):
        stop = min(start + 1024, len(text_vectors))
        t = text_vectors[start:stop]
        own = caption_video[start:stop]
        ok = usable[own]
        score[start:stop][ok] = np.einsum("bd,bd->b", t[ok], video_vectors[own[ok]])
        if count < MIN_OTHERS:
            continue
        picks = candidates[rng.integers(0, len(candidates), size=(stop - start, count))]
        # A caption's own video is never one of its "others": redraw those once, drop the rest.
        clash = picks == own[:, None]
        picks[clash] = candidates[rng.integers(0, len(candidates), size=int(clash.sum()))]
        sims = np.einsum("bd,bkd->bk", t, video_vectors[picks])
        sims[picks == own[:, None]] = np.nan
        mean = np.nanmean(sims, axis=1)
        std = np.nanstd(sims, axis=1)
        z = (score[start:stop] - mean) / np.maximum(std, 1e-6)
        zscore[start:stop] = np.where(ok, z, np.nan)
    return score, zscore
