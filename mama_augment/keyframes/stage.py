"""The ``keyframes`` stage: plan -> map over an engine -> PartWriter -> StageReport.

``run_keyframes`` is the one-call library API. It works out which inputs are pending
(new, changed, made with other options, or failed unless ``retry_failed`` is off), hands them
with the per-video work (``keyframes/worker.py``) to the engine of ``cfg.engine``
(worker processes here, or Ray actors; ``mama_augment.engines``): with a model
embedder (``cnn``, ``clip``) as decoding and finishing around one model per device
(``map_model_items``), else whole videos per worker (``map_items``). It writes every
result row to ``keyframes.parquet`` as soon as it arrives; a killed run loses only the
videos in flight and the next run resumes. Planning, writing and the report stay
here, so every engine shares one manifest and one resume logic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from mama_augment.configfile import record_run_config
from mama_augment.errors import MamaError
from mama_augment.engines import get_engine
from mama_augment.engines.base import Placement
from mama_augment.frame_embeddings import EmbeddingAppender, remove_unreferenced
from mama_augment.keyframes.config import KeyframesConfig
from mama_augment.keyframes.worker import (
    FRAMES_DIR,
    GRIDS_DIR,
    Job,
    job_item,
    keyframes_model_task,
    keyframes_task,
)
from mama_augment.manifest import (
    KEYFRAMES,
    STATUS_OK,
    PartWriter,
    compact,
    ensure_workdir,
    read_manifest,
    remove_manifest,
    require_work_folder,
    workdir_lock,
)
from mama_augment.stage import StageReport

log = logging.getLogger(__name__)


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
    """Decide which inputs still need work, from what the manifest already holds
    (:func:`mama_augment.workread.pending_videos`)."""
    from mama_augment.workread import pending_videos

    pending = pending_videos(workdir, [item.video_id for item in items], [item.size_bytes for item in items],
                             [item.mtime for item in items], cfg.config_hash(), cfg.retry_failed)
    jobs = [Job(items[i].video_id, str(items[i].path), items[i].size_bytes, items[i].mtime) for i in pending.redo]
    skipped_failed = [(items[i].video_id, kind, error) for i, kind, error in pending.kept_failed]
    skipped_ok = len(items) - len(jobs) - len(skipped_failed)
    return Plan(jobs, skipped_ok, skipped_failed, pending.reasons)


# --------------------------------------------------------------------------- run


def run_keyframes(
    sources: Sequence[str | os.PathLike],
    workdir: str | os.PathLike,
    config: KeyframesConfig | None = None,
    progress: bool = True,
) -> StageReport:
    """Run the keyframes stage over ``sources`` into ``workdir``; resume what exists."""
    from mama_augment.inputs import discover_inputs

    cfg = config or KeyframesConfig()
    cfg.validate()
    if cfg.overwrite:
        require_work_folder(workdir, "--overwrite deletes only what this tool wrote in its own work folder")
    unreadable: list[str] = []
    items = discover_inputs([Path(s) for s in sources], exclude=[Path(workdir)], unreadable=unreadable)
    workdir = ensure_workdir(workdir)

    started = time.perf_counter()
    report = StageReport(stage="keyframes", output=workdir / KEYFRAMES.filename, total=len(items) + len(unreadable))
    for line in unreadable:  # each is one failure: its videos were never seen
        folder, _, reason = line.rpartition(": ")
        report.add_failure("unreadable_folder", reason, folder)
    if unreadable:
        report.extra["unreadable_folders"] = (
            f"{len(unreadable)} folder(s) could not be read and their videos were skipped, e.g. {unreadable[0]}")
    with workdir_lock(workdir, "keyframes"):
        if cfg.overwrite:
            remove_outputs(workdir)
            cfg = replace(cfg, overwrite=False)
        record_run_config(workdir, "keyframes", {"inputs": [str(s) for s in sources], **cfg.as_dict()})
        compact(workdir, KEYFRAMES)  # fold parts left by a killed run
        plan = plan_jobs(items, workdir, cfg)
        report.skipped = plan.skipped_ok
        for video_id, kind, error in plan.skipped_failed:
            report.add_failure(kind, error, video_id)
        if plan.skipped_failed:
            report.extra["previously_failed"] = (
                f"{len(plan.skipped_failed)} inputs failed in an earlier run and were kept failed (--skip-failed); "
                "rerun without it to try them again"
            )
        if plan.pending:
            _run_pending(plan.pending, workdir, cfg, report, progress)
        rows = compact(workdir, KEYFRAMES)
        _remove_unreferenced_embeddings(workdir)
    report.seconds = time.perf_counter() - started
    report.extra["rows_in_manifest"] = rows
    report.extra["grids"] = str(workdir / GRIDS_DIR)
    return report


def remove_outputs(workdir: Path) -> int:
    """``--overwrite``: delete the manifest and the keyframe JPEGs and grids its rows
    name (nothing else under ``frames/`` or ``grids/``), then the folders that this
    left empty. Returns the number of files deleted."""
    try:
        rows = read_manifest(workdir, KEYFRAMES, columns=["keyframe_paths", "grid_path"]).to_pylist()
    except MamaError as exc:  # nothing can tell which files are ours: they stay
        log.warning("--overwrite: %s; the files it lists are left in place", exc)
        rows = []
    # A linked frames/ or grids/ is not the work folder's own: nothing is deleted through it.
    root = Path(os.path.realpath(workdir))
    roots = [root / sub for sub in (FRAMES_DIR, GRIDS_DIR) if Path(os.path.realpath(workdir / sub)) == root / sub]
    removed = 0
    for row in rows:
        for rel in [*(row["keyframe_paths"] or []), row["grid_path"]]:
            path = _owned_path(workdir, rel, roots)
            if path is None:
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                path.unlink()
                removed += 1
            _remove_empty_parents(path.parent, roots)
    remove_manifest(workdir, KEYFRAMES)
    removed += remove_unreferenced(workdir, [])
    return removed


def _remove_unreferenced_embeddings(workdir: Path) -> None:
    """Array files no row points at any more: every video in them was redone, or a killed
    run wrote them before any of its rows. Runs under the stage's lock, no writer open."""
    try:
        referenced = read_manifest(workdir, KEYFRAMES, columns=["embeddings_file"]).column("embeddings_file")
    except MamaError as exc:  # nothing can tell which files are still named: they stay
        log.warning("%s; the embeddings files are left in place", exc)
        return
    remove_unreferenced(workdir, referenced.unique().to_pylist())


def _owned_path(workdir: Path, rel: str | None, roots: list[Path]) -> Path | None:
    """``workdir / rel`` when ``rel`` is a relative path that leads (links resolved)
    inside ``frames/`` or ``grids/``."""
    if not rel or os.path.isabs(rel):
        return None
    path = Path(os.path.realpath(workdir / rel))
    return path if any(root in path.parents for root in roots) else None


def _remove_empty_parents(folder: Path, roots: list[Path]) -> None:
    while folder not in roots and any(root in folder.parents for root in roots):
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): everything above stays too
            return
        folder = folder.parent


def _run_pending(jobs: list[Job], workdir: Path, cfg: KeyframesConfig, report: StageReport, progress: bool) -> None:
    """Hand ``jobs`` to the engine; write and count every row as it comes back."""
    from tqdm import tqdm

    engine = get_engine(cfg.engine)
    placement = Placement(workers=cfg.workers, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                          address=cfg.ray_address, label="keyframes")
    desc = "keyframes" if cfg.engine == "local" else f"keyframes ({cfg.engine})"
    bar = tqdm(total=len(jobs), unit="video", desc=desc, disable=not progress, dynamic_ncols=True)
    writer = PartWriter(workdir, KEYFRAMES)
    arrays = EmbeddingAppender(workdir)
    # Largest inputs first: a long video started last would leave the other workers
    # idle at the end of the run (rows arrive in any order anyway).
    ordered = sorted(jobs, key=lambda job: -(job.size_bytes or 0))
    items = [job_item(job) for job in ordered]
    model_task = keyframes_model_task(cfg, workdir)
    if model_task is not None:  # decoding workers, the embedder's model once per device
        results = engine.map_model_items(items, model_task, placement, KEYFRAMES.schema)
    else:
        results = engine.map_items(items, keyframes_task(cfg, workdir), placement, KEYFRAMES.schema)
    rows = _RowBuffer(writer, arrays)
    try:
        for table in results:
            rows.add(table)
            for row in table.select(["video_id", "status", "error_kind", "error"]).to_pylist():
                record_row(report, row)
            bar.update(table.num_rows)
            bar.set_postfix(failed=report.failed, refresh=False)
        rows.flush()
    except BaseException:
        rows.flush_after_error()  # the rows already back are kept, unless writing them failed
        raise
    finally:
        results.close()  # now, not when the traceback goes: stops the workers
        bar.close()
        arrays.close()
        writer.close(consolidate=False)  # run_keyframes compacts next


# Rows come back one a video. At a video every two seconds or slower each is written at once (one part
# each); faster than that, rows wait up to this long and are written together, so the
# manifest costs a part every two seconds however fast the engine runs (one Parquet part
# costs milliseconds: at hundreds of videos a second, a part a row would hold up the run).
# A run killed meanwhile loses these rows only; the next run redoes them.
WRITE_INTERVAL_S = 2.0
WRITE_MAX_ROWS = 512


class _RowBuffer:
    def __init__(self, writer: PartWriter, arrays: EmbeddingAppender, clock=time.perf_counter):
        self.writer, self.arrays, self.clock = writer, arrays, clock
        self.tables: list = []
        self.rows = 0
        self.last_write = float("-inf")
        self.failed = False

    def add(self, table) -> None:
        self.tables.append(table)
        self.rows += table.num_rows
        if self.clock() - self.last_write >= WRITE_INTERVAL_S or self.rows >= WRITE_MAX_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if not self.tables:
            return
        table = pa.concat_tables(self.tables) if len(self.tables) > 1 else self.tables[0]
        self.tables, self.rows = [], 0
        try:
            # The embeddings reach their array file before the part that points at them.
            self.writer.write_table(self.arrays.externalize(table))
        except BaseException:
            self.failed = True
            raise
        self.last_write = self.clock()

    def flush_after_error(self) -> None:
        if not self.failed:
            with contextlib.suppress(Exception):
                self.flush()
