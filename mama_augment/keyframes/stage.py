"""The ``keyframes`` stage: inputs -> sampled frames -> embeddings -> DPC-KNN -> grid.

``run_keyframes`` is the one-call library API. Each video is processed in a worker
process (so a hung decoder can be stopped by ``timeout_s``) and its result row is
written to ``keyframes.parquet`` as soon as it arrives; a killed run loses only the
videos in flight and the next run resumes. ``engine="ray"`` runs the same per-video
work on Ray Data actors (``mama_augment.engines.ray_engine``); planning, writing and
the report stay here, so both engines share one manifest and one resume logic.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from mama_augment.configfile import record_run_config
from mama_augment.errors import ItemError
from mama_augment.keyframes.config import KeyframesConfig
from mama_augment.manifest import (
    KEYFRAMES,
    STATUS_FAILED,
    STATUS_OK,
    PartWriter,
    compact,
    ensure_workdir,
    read_manifest,
    remove_manifest,
    utc_now,
    workdir_lock,
)
from mama_augment.stage import StageReport

log = logging.getLogger(__name__)

FRAMES_DIR = "frames"
GRIDS_DIR = "grids"


@dataclass(frozen=True)
class Job:
    """One input to process, in a form that crosses process boundaries cheaply."""

    video_id: str
    path: str
    size_bytes: int | None
    mtime: float | None


# --------------------------------------------------------------------------- worker

_WORKER_STATE: dict = {}


def _worker_init(threads: int) -> None:
    """Runs once in every worker process, before torch is imported there."""
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    _WORKER_STATE["threads"] = threads
    logging.getLogger("libav").setLevel(logging.CRITICAL)


def _get_embedder(cfg: KeyframesConfig):
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


def process_video(job: Job, cfg: KeyframesConfig, workdir: str, config_hash: str) -> dict:
    """Decode, embed, pick keyframes and write the JPEGs of one input; return its row.

    Never raises for a bad input: the failure comes back as a ``failed`` row.
    """
    started = time.perf_counter()
    try:
        row = _process_video(job, cfg, Path(workdir), config_hash)
    except ItemError as exc:
        row = failed_row(job, cfg, config_hash, exc.kind, exc.message)
    except MemoryError:
        row = failed_row(job, cfg, config_hash, "out_of_memory", "ran out of memory while processing")
    except Exception as exc:  # a bug or an unforeseen library error: keep the run going
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        row = failed_row(job, cfg, config_hash, "internal_error", detail)
    row["seconds"] = time.perf_counter() - started
    return row


def _process_video(job: Job, cfg: KeyframesConfig, workdir: Path, config_hash: str) -> dict:
    import numpy as np
    from PIL import Image

    from mama_augment.inputs import safe_relpath
    from mama_augment.keyframes.dpc import select_keyframes
    from mama_augment.keyframes.grid import make_grid, parse_grid, parse_size, save_jpeg
    from mama_augment.video import sample_frames
    from mama_augment.video.base import SamplingOptions

    if job.size_bytes is None and not Path(job.path).exists():
        raise ItemError("not_found", f"file not found: {job.path}")

    options = SamplingOptions(fps=cfg.fps, max_frames=cfg.max_frames, thumb_size=cfg.thumb_size)
    sampled = sample_frames(Path(job.path), options, backend=cfg.decoder)
    if not sampled.images:
        raise ItemError("undecodable", "no frame could be decoded")

    embedder = _get_embedder(cfg)
    embeddings = np.asarray(embedder.embed(sampled.images), dtype=np.float32)

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
    rel = safe_relpath(job.video_id)
    frames_dir = workdir / FRAMES_DIR / rel
    if frames_dir.exists():
        shutil.rmtree(frames_dir)  # stale keyframes of an earlier run of this video
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


def row_from_future(future, job: Job, cfg: KeyframesConfig, config_hash: str) -> dict:
    """The row of a ``process_video`` call run in a pebble pool (local or inside a Ray actor)."""
    from pebble import ProcessExpired

    try:
        return future.result()
    except concurrent.futures.TimeoutError:
        return failed_row(job, cfg, config_hash, "timeout", f"gave up after {cfg.timeout_s:g} s (--timeout)")
    except ProcessExpired as exc:
        return failed_row(job, cfg, config_hash, "crashed", f"the decoder process died (exit code {exc.exitcode})")
    except Exception as exc:  # pickling or pool errors
        return failed_row(job, cfg, config_hash, "internal_error", f"{type(exc).__name__}: {exc}")


def record_row(report: StageReport, row: dict) -> None:
    """Count one written row in the stage report."""
    if row["status"] == STATUS_OK:
        report.done += 1
    else:
        report.add_failure(row["error_kind"], row["error"] or "", row["video_id"])


# --------------------------------------------------------------------------- planning


@dataclass
class Plan:
    pending: list[Job]
    skipped_ok: int
    skipped_failed: list[tuple[str, str, str]]  # (video_id, kind, error) kept as failed
    redo_reasons: dict[str, int]


def plan_jobs(items: Sequence, workdir: Path, cfg: KeyframesConfig) -> Plan:
    """Decide which inputs still need work, from what the manifest already holds."""
    config_hash = cfg.config_hash()
    existing = read_manifest(
        workdir,
        KEYFRAMES,
        columns=["status", "error_kind", "error", "input_size_bytes", "input_mtime", "config_hash"],
    ).to_pylist()
    by_id = {row["video_id"]: row for row in existing}
    pending: list[Job] = []
    skipped_ok = 0
    skipped_failed = []
    reasons: dict[str, int] = {}
    for item in items:
        job = Job(item.video_id, str(item.path), item.size_bytes, item.mtime)
        row = by_id.get(item.video_id)
        reason = None
        if row is None:
            reason = "new"
        elif row["config_hash"] != config_hash:
            reason = "config changed"
        elif row["input_size_bytes"] != item.size_bytes or not _same_mtime(row["input_mtime"], item.mtime):
            reason = "input changed"
        elif row["status"] != STATUS_OK:
            if cfg.retry_failed:
                reason = "retry failed"
            else:
                skipped_failed.append((item.video_id, row["error_kind"] or "failed", row["error"] or ""))
                continue
        if reason is None:
            skipped_ok += 1
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
        pending.append(job)
    return Plan(pending, skipped_ok, skipped_failed, reasons)


def _same_mtime(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) < 1e-6


# --------------------------------------------------------------------------- run


def run_keyframes(
    sources: Sequence[str | os.PathLike],
    workdir: str | os.PathLike,
    config: KeyframesConfig | None = None,
    progress: bool = True,
) -> StageReport:
    """Run the keyframes stage over ``sources`` into ``workdir``; resume what exists."""
    from mama_augment.embed import EMBEDDERS
    from mama_augment.inputs import discover_inputs

    cfg = config or KeyframesConfig()
    cfg.validate()
    if cfg.embedder not in EMBEDDERS:
        from mama_augment.errors import UsageError

        raise UsageError(f"unknown embedder {cfg.embedder!r}; choose one of: {', '.join(EMBEDDERS)}")
    workdir = ensure_workdir(workdir)
    items = discover_inputs([Path(s) for s in sources], exclude=[workdir])

    started = time.perf_counter()
    report = StageReport(stage="keyframes", output=workdir / KEYFRAMES.filename, total=len(items))
    with workdir_lock(workdir, "keyframes"):
        if cfg.overwrite:
            remove_manifest(workdir, KEYFRAMES)
            for sub in (FRAMES_DIR, GRIDS_DIR):
                shutil.rmtree(workdir / sub, ignore_errors=True)
            cfg = replace(cfg, overwrite=False)
        record_run_config(workdir, "keyframes", {"inputs": [str(s) for s in sources], **cfg.as_dict()})
        compact(workdir, KEYFRAMES)  # fold parts left by a killed run
        plan = plan_jobs(items, workdir, cfg)
        report.skipped = plan.skipped_ok
        for video_id, kind, error in plan.skipped_failed:
            report.add_failure(kind, error, video_id)
        if plan.skipped_failed:
            report.extra["previously_failed"] = (
                f"{len(plan.skipped_failed)} inputs failed in an earlier run; use --retry-failed to try again"
            )
        if plan.pending and cfg.engine == "ray":
            from mama_augment.engines.ray_engine import run_keyframes_on_ray

            run_keyframes_on_ray(plan.pending, workdir, cfg, report, progress)
        elif plan.pending:
            _run_pool(plan.pending, workdir, cfg, report, progress)
        rows = compact(workdir, KEYFRAMES)
    report.seconds = time.perf_counter() - started
    report.extra["rows_in_manifest"] = rows
    report.extra["grids"] = str(workdir / GRIDS_DIR)
    return report


def _start_method() -> str:
    """``fork`` when this process has not loaded torch, else ``spawn``.

    Forking skips re-importing the decoding stack in every worker (about 0.3 s a
    worker). It is only safe while torch's OpenMP thread pool has never run in this
    process, which holds for the CLI (it never imports torch) but not for a program
    or test session that used torch before calling the stage.
    """
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        return "fork"
    return "spawn"


def _run_pool(jobs: list[Job], workdir: Path, cfg: KeyframesConfig, report: StageReport, progress: bool) -> None:
    from pebble import ProcessPool
    from tqdm import tqdm

    config_hash = cfg.config_hash()
    workers = min(cfg.resolved_workers(), len(jobs))
    cores = os.cpu_count() or 1
    # Split the cores between workers so torch does not oversubscribe them.
    threads = max(1, cores // workers)
    context = multiprocessing.get_context(_start_method())
    bar = tqdm(
        total=len(jobs),
        unit="video",
        desc="keyframes",
        disable=not progress,
        dynamic_ncols=True,
    )
    writer = PartWriter(workdir, KEYFRAMES)
    pool = ProcessPool(max_workers=workers, initializer=_worker_init, initargs=(threads,), context=context)
    try:
        futures = {
            pool.schedule(process_video, args=(job, cfg, str(workdir), config_hash), timeout=cfg.timeout_s): job
            for job in jobs
        }
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            row = row_from_future(future, job, cfg, config_hash)
            writer.write([row])
            record_row(report, row)
            bar.update(1)
            bar.set_postfix(failed=report.failed, refresh=False)
    except BaseException:
        pool.stop()
        raise
    finally:
        pool.close()
        pool.join()
        bar.close()
        writer.close()
