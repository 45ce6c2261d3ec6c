"""The per-video work of the ``keyframes`` stage, run in worker processes.

A video is two halves around its embeddings:

* :func:`decode_video` - probe and decode the input, keep thumbnails of the sampled
  frames and prepare them for the embedder's model (``Prepared``), or the video's
  ``failed`` row for a bad input;
* :func:`finish_video` - pick keyframes by DPC-KNN from the embeddings, write their
  JPEGs and the grid, and return the video's ``keyframes.parquet`` row.

With a model embedder (``cnn``, ``clip``: the registry gives a ``prepare``),
:func:`keyframes_model_task` hands both halves to an engine's ``map_model_items``:
worker processes decode and finish videos under ``--timeout`` while the model runs
once per device (:func:`load_model`) on batches mixing many videos. Otherwise
(``pixels``) :func:`keyframes_task` runs :func:`process_video`, the whole
video in one worker, which keeps its embedder across videos (:func:`cached_embedder`).
:func:`process_video` is also the one-video reference the pipeline is tested against.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import time
import traceback
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from mama_augment.engines.base import ItemTask, ModelTask, Prepared
from mama_augment.errors import ItemError, MamaError
from mama_augment.keyframes.config import KeyframesConfig
from mama_augment.manifest import STATUS_FAILED, STATUS_OK, utc_now
from mama_augment.workpaths import writable_folder

FRAMES_DIR = "frames"
GRIDS_DIR = "grids"


@dataclass(frozen=True)
class Job:
    """One input to process, in a form that crosses process boundaries cheaply."""

    video_id: str
    path: str
    size_bytes: int | None
    mtime: float | None


_WORKER_STATE: dict = {}


def worker_setup(threads: int) -> None:
    """Runs once in every worker process, before torch is imported there."""
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    _WORKER_STATE["threads"] = threads
    logging.getLogger("libav").setLevel(logging.CRITICAL)


def cached_embedder(cfg: KeyframesConfig):
    """The embedder of ``cfg``, loaded once per worker process and kept across videos."""
    from mama_augment.embed import get_embedder
    from mama_augment.embed.base import EmbedderOptions

    key = (cfg.embedder, cfg.embed_model, cfg.device, cfg.batch_size)
    cached = _WORKER_STATE.get("embedder")
    if cached is None or cached[0] != key:
        options = EmbedderOptions(
            device=cfg.device,
            batch_size=cfg.batch_size,
            model=cfg.embed_model,
            threads=_WORKER_STATE.get("threads", 0),
        )
        _WORKER_STATE["embedder"] = (key, get_embedder(cfg.embedder, options))
    return _WORKER_STATE["embedder"][1]


def _base_row(job: Job, cfg: KeyframesConfig, config_hash: str) -> dict:
    return {
        "video_id": job.video_id,
        "path": job.path,
        "input_size_bytes": job.size_bytes,
        "input_mtime": job.mtime,
        "config_hash": config_hash,
        "embedder": cfg.embedder,
        "created_at": utc_now(),
    }


def failed_row(job: Job, cfg: KeyframesConfig, config_hash: str, kind: str, message: str) -> dict:
    row = _base_row(job, cfg, config_hash)
    row.update(status=STATUS_FAILED, error_kind=kind, error=message)
    return row


def _guarded(job: Job, cfg: KeyframesConfig, config_hash: str, work) -> dict | object:
    """``work()``, with a bad input turned into the video's failed row. A ``MamaError``
    (a bad option or a missing package, which every video would hit) is raised: it
    stops the run instead of failing every row."""
    try:
        return work()
    except MamaError:
        raise
    except ItemError as exc:
        return failed_row(job, cfg, config_hash, exc.kind, exc.message)
    except MemoryError:
        return failed_row(job, cfg, config_hash, "out_of_memory", "ran out of memory while processing")
    except Exception as exc:  # a bug or an unforeseen library error: keep the run going
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return failed_row(job, cfg, config_hash, "internal_error", detail)


@dataclass
class Decoded:
    """A decoded video on its way to its row: what ``finish_video`` needs."""

    job: Job
    sampled: object  # mama_augment.video.SampledFrames
    started: float  # time.perf_counter() when the video's work began


def decode_video(job: Job, cfg: KeyframesConfig, config_hash: str, prepare=None) -> Prepared:
    """Decode ``job`` and prepare its frames with ``prepare`` (frames -> model inputs);
    ``Prepared(failed row)`` for a bad input. Without ``prepare`` the inputs are the
    thumbnails themselves (a list)."""
    started = time.perf_counter()

    def work() -> Prepared:
        sampled = _decode(job, cfg)
        inputs = prepare(sampled.images) if prepare is not None else sampled.images
        return Prepared(Decoded(job, sampled, started), inputs)

    result = _guarded(job, cfg, config_hash, work)
    if isinstance(result, dict):
        result["seconds"] = time.perf_counter() - started
        return Prepared(result)
    return result


def finish_video(decoded: Decoded, embeddings, cfg: KeyframesConfig, workdir: str, config_hash: str) -> dict:
    """The row of a decoded video from its frame embeddings: keyframes, JPEGs, grid."""
    row = _guarded(decoded.job, cfg, config_hash,
                   lambda: _finish(decoded.job, decoded.sampled, embeddings, cfg, Path(workdir), config_hash))
    row["seconds"] = time.perf_counter() - decoded.started
    return row


def process_video(job: Job, cfg: KeyframesConfig, workdir: str, config_hash: str) -> dict:
    """Decode, embed, pick keyframes and write the JPEGs of one input; return its row.

    Never raises for a bad input: the failure comes back as a ``failed`` row. A
    ``MamaError`` (a bad option or a missing package, which every video would hit)
    is raised: it stops the run instead of failing every row.
    """
    prepared = decode_video(job, cfg, config_hash)
    if prepared.inputs is None:
        return prepared.state
    decoded = prepared.state
    embeddings = _guarded(job, cfg, config_hash, lambda: cached_embedder(cfg).embed(decoded.sampled.images))
    if isinstance(embeddings, dict):
        embeddings["seconds"] = time.perf_counter() - decoded.started
        return embeddings
    return finish_video(decoded, embeddings, cfg, workdir, config_hash)


def _decode(job: Job, cfg: KeyframesConfig):
    from mama_augment.video import sample_frames
    from mama_augment.video.base import SamplingOptions

    if job.size_bytes is None and not Path(job.path).exists():
        raise ItemError("not_found", f"file not found: {job.path}")
    options = SamplingOptions(fps=cfg.fps, max_frames=cfg.max_frames, thumb_size=cfg.thumb_size)
    sampled = sample_frames(Path(job.path), options, backend=cfg.decoder)
    if not sampled.images:
        raise ItemError("undecodable", "no frame could be decoded")
    return sampled


def _finish(job: Job, sampled, embeddings, cfg: KeyframesConfig, workdir: Path, config_hash: str) -> dict:
    import numpy as np
    from PIL import Image

    from mama_augment.inputs import output_name
    from mama_augment.keyframes.dpc import select_keyframes
    from mama_augment.keyframes.grid import make_grid, parse_grid, parse_size, save_jpeg

    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape[0] != len(sampled.images):
        raise MamaError(f"the embedder returned {embeddings.shape[0]} vectors for {len(sampled.images)} frames")

    num = None if cfg.num_keyframes is None else cfg.num_keyframes
    chosen = select_keyframes(
        embeddings,
        num if num is not None else "auto",
        knn=cfg.knn,
        min_keyframes=cfg.min_keyframes,
        max_keyframes=cfg.max_keyframes,
        selection=cfg.selection,
    )
    chosen = [int(i) for i in chosen]

    rows, cols = parse_grid(cfg.grid)
    tile_w, tile_h = parse_size(cfg.tile_size)
    rel = output_name(job.video_id)
    # A linked frames/<id> or grids/ folder would have old files deleted and new ones
    # written wherever it points: the video fails instead (path_outside_workdir).
    frames_dir = writable_folder(workdir, f"{FRAMES_DIR}/{rel}")
    writable_folder(workdir, posixpath.dirname(f"{GRIDS_DIR}/{rel}.jpg"))
    remove_keyframe_files(frames_dir)  # stale keyframes of an earlier run of this video
    keyframe_paths = []
    for rank, index in enumerate(chosen):
        name = f"{rank:02d}_f{int(sampled.indices[index]):06d}.jpg"
        save_jpeg(Image.fromarray(sampled.images[index]), frames_dir / name, quality=cfg.jpeg_quality)
        keyframe_paths.append(f"{FRAMES_DIR}/{rel}/{name}")
    grid = make_grid([sampled.images[i] for i in chosen], rows, cols, tile_size=(tile_w, tile_h))
    grid_rel = f"{GRIDS_DIR}/{rel}.jpg"
    save_jpeg(grid, workdir / grid_rel, quality=cfg.jpeg_quality)

    info = sampled.info
    row = _base_row(job, cfg, config_hash)
    row.update(
        status=STATUS_OK,
        error_kind=None,
        error="; ".join(sampled.warnings) if sampled.warnings else None,
        media_type=info.media_type,
        decode_backend=sampled.backend,
        codec=info.codec,
        duration_s=info.duration_s,
        fps=info.fps,
        width=info.width,
        height=info.height,
        num_sampled=len(sampled.images),
        keyframe_indices=[int(sampled.indices[i]) for i in chosen],
        keyframe_times_s=[float(sampled.times_s[i]) for i in chosen],
        keyframe_paths=keyframe_paths,
        grid_path=grid_rel,
        grid_rows=rows,
        grid_cols=cols,
        embedding_dim=int(embeddings.shape[1]),
        keyframe_embeddings=[embeddings[i].tolist() for i in chosen],
    )
    return row


# A keyframe JPEG's name: rank in time order, then the frame index.
KEYFRAME_FILE = re.compile(r"^\d{2,}_f\d{6,}\.jpg$")


def remove_keyframe_files(frames_dir: Path) -> None:
    """Delete the keyframe JPEGs directly in ``frames_dir``, nothing else: in a work
    folder written before ids got one folder each, another id's keyframes may sit in
    a subfolder of it (``frames/a/b/`` of id ``a/b`` inside ``frames/a/``)."""
    try:
        entries = list(os.scandir(frames_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if KEYFRAME_FILE.match(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


# --------------------------------------------------------------------------- for an engine


def run_item(item: dict, cfg: KeyframesConfig, workdir: str, config_hash: str) -> dict:
    """``process_video`` of an engine's item (a :class:`Job` as a dict)."""
    return process_video(Job(**item), cfg, workdir, config_hash)


def failed_item_row(item: dict, kind: str, exc: BaseException, cfg: KeyframesConfig, config_hash: str) -> dict:
    """The row of a video whose worker gave no answer (see ``ItemTask.failed``)."""
    if kind == "timeout":
        message = f"gave up after {cfg.timeout_s:g} s (--timeout)"
    elif kind == "crashed":
        message = f"the decoder process died (exit code {getattr(exc, 'exitcode', None)})"
    else:
        message = f"{type(exc).__name__}: {exc}"
    return failed_row(Job(**item), cfg, config_hash, kind, message)


def warm_up(cfg: KeyframesConfig) -> None:
    """Load the embedder before the first video (a model that cannot load fails each
    video's row with the reason, as without a warm-up)."""
    cached_embedder(cfg)


def keyframes_task(cfg: KeyframesConfig, workdir: str | os.PathLike) -> ItemTask:
    """The stage's per-video work for an engine; items are ``asdict(Job)``."""
    config_hash = cfg.config_hash()
    workdir = str(Path(workdir).absolute())
    return ItemTask(
        run=partial(run_item, cfg=cfg, workdir=workdir, config_hash=config_hash),
        failed=partial(failed_item_row, cfg=cfg, config_hash=config_hash),
        setup=worker_setup,
        warm_up=partial(warm_up, cfg),
        timeout_s=cfg.timeout_s,
    )


def job_item(job: Job) -> dict:
    return asdict(job)


# --------------------------------------------------------------------------- model embedders

# Frames per model call on a GPU at least: large batches of many videos keep it busy.
CUDA_MIN_BATCH = 256


class EmbedderModel:
    """A model embedder loaded on one device, as an engine's ``DeviceModel``:
    prepared frames of many videos in, unit-norm embeddings out."""

    def __init__(self, cfg: KeyframesConfig, device: str, threads: int):
        from mama_augment.embed import get_embedder
        from mama_augment.embed.base import EmbedderOptions

        cuda = device.startswith("cuda")
        self.batch_size = max(cfg.batch_size, CUDA_MIN_BATCH) if cuda else cfg.batch_size
        options = EmbedderOptions(device=device, batch_size=self.batch_size, model=cfg.embed_model, threads=threads)
        self.embedder = get_embedder(cfg.embedder, options)
        self.device = device

    def __call__(self, inputs):
        return self.embedder.embed_prepared(inputs)


def model_devices(device: str) -> list[str]:
    """The devices ``--device`` stands for: every GPU for "auto" (when CUDA works) and
    "cuda", one for "cuda:N", else the CPU. Imports torch only when CUDA may be used."""
    from mama_augment.embed.base import cpu_only, resolve_device

    if cpu_only(device):  # no NVIDIA driver: no need to import torch to know
        return ["cpu"]
    import torch

    resolved = resolve_device(device)  # UsageError for "cuda" without CUDA
    if resolved == "cpu":
        return ["cpu"]
    if resolved == "cuda":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [resolved]


def load_model(cfg: KeyframesConfig, device: str, threads: int) -> EmbedderModel:
    """The embedder's model on ``device`` ("auto", "cpu", "cuda" or "cuda:N"), once per
    device (``ModelTask.load``); ``--device`` decides the first device."""
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
    logging.getLogger("libav").setLevel(logging.CRITICAL)
    return EmbedderModel(cfg, device, threads)


def prepare_item(item: dict, cfg: KeyframesConfig, config_hash: str) -> Prepared:
    """``decode_video`` of an engine's item, frames prepared for the model."""
    key = (cfg.embedder, cfg.embed_model)
    cached = _WORKER_STATE.get("preparer")
    if cached is None or cached[0] != key:
        _WORKER_STATE["preparer"] = (key, _preparer(cfg))
    return decode_video(Job(**item), cfg, config_hash, _WORKER_STATE["preparer"][1])


def _preparer(cfg: KeyframesConfig):
    from mama_augment.embed import EmbedderOptions, get_preparer

    try:
        return get_preparer(cfg.embedder, EmbedderOptions(model=cfg.embed_model))
    except MamaError:
        raise
    except Exception as exc:  # every video would fail the same way: a run-level error
        raise MamaError(f"cannot prepare frames for the {cfg.embedder} embedder: {exc}") from exc


def finish_item(decoded: Decoded, embeddings, cfg: KeyframesConfig, workdir: str, config_hash: str) -> dict:
    return finish_video(decoded, embeddings, cfg, workdir, config_hash)


def keyframes_model_task(cfg: KeyframesConfig, workdir: str | os.PathLike) -> ModelTask | None:
    """The stage's work as decode -> a model once per device -> finish, for an
    embedder with a model (``cnn``, ``clip``); None for one that runs whole in each worker."""
    from mama_augment.embed import EMBEDDERS

    if EMBEDDERS[cfg.embedder].prepare is None:
        return None
    config_hash = cfg.config_hash()
    workdir = str(Path(workdir).absolute())
    return ModelTask(
        prepare=partial(prepare_item, cfg=cfg, config_hash=config_hash),
        finish=partial(finish_item, cfg=cfg, workdir=workdir, config_hash=config_hash),
        failed=partial(failed_item_row, cfg=cfg, config_hash=config_hash),
        load=partial(load_model, cfg),
        device=cfg.device,
        devices=model_devices,
        setup=worker_setup,
        timeout_s=cfg.timeout_s,
    )
