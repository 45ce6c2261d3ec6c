"""The caption stage: pending grids -> map over an engine -> PartWriter -> StageReport.

``run_caption`` works out which (video, caption_index) pairs of the ``ok`` grids in
``keyframes.parquet`` are pending, hands their requests with the caption worker
(``caption/generate.py``: one backend per engine worker, cleaning and regeneration
included) to the engine of ``config.engine`` (this process, or one vision-language
engine per Ray actor; ``mama_augment.engines``), and writes a ``captions.parquet`` row
for every outcome as it comes back, through the same atomic part files as every
manifest. Rows already done with the same ``config_hash`` (model + prompt + sampling)
are skipped; a changed prompt, model or sampling makes them pending again. Planning,
row building, writing and the report stay here, so every engine writes the same rows
and a run can switch engines and resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from mama_augment.caption.backends import BACKENDS, CaptionRequest, Generation, choose_backend, make_backend
from mama_augment.caption.config import CaptionConfig
from mama_augment.caption.generate import (
    OUTCOME_SCHEMA,
    CaptionWorker,
    Grid,
    Outcome,
    build_requests,
    outcomes_from_table,
    request_item,
)
from mama_augment.caption.presets import resolve_model
from mama_augment.caption.prompts import load_prompt
from mama_augment.checks import check_model_available
from mama_augment.configfile import record_run_config
from mama_augment.engines import get_engine
from mama_augment.engines.base import BatchPool, Placement
from mama_augment.errors import ItemError, UsageError
from mama_augment.manifest import (
    CAPTIONS,
    KEYFRAMES,
    STATUS_FAILED,
    STATUS_OK,
    PartWriter,
    compact,
    ensure_workdir,
    manifest_path,
    parts_dir,
    read_manifest,
    remove_manifest,
    utc_now,
    workdir_lock,
)
from mama_augment.workpaths import WorkFolder
from mama_augment.workread import ok_video_batches
from mama_augment.stage import StageReport

log = logging.getLogger(__name__)

# Backends that load the model in this process (the server backend leaves it to the server).
MODEL_LOADING_BACKENDS = ("offline", "transformers")


def validate(config: CaptionConfig) -> None:
    """Every check of the options (``CaptionConfig.validate``) and the backend's name."""
    config.validate()
    if config.backend != "auto" and config.backend not in BACKENDS:
        raise UsageError(f"unknown backend {config.backend!r}; choose from auto, {', '.join(BACKENDS)}")


def require_keyframes(workdir: Path) -> None:
    """UsageError unless ``workdir`` holds a keyframes manifest (looked at, nothing created)."""
    if not manifest_path(workdir, KEYFRAMES).exists() and not parts_dir(workdir, KEYFRAMES).is_dir():
        raise UsageError(f"no keyframes manifest in {workdir}: run `mama-augment keyframes` first")


def load_grids(workdir: Path) -> list[Grid]:
    require_keyframes(workdir)
    grids = []
    for batch in ok_video_batches(workdir, ["grid_path", "grid_rows", "grid_cols", "keyframe_paths"]):
        for row in batch.to_pylist():
            if not row["grid_path"]:
                continue
            rows, cols = row["grid_rows"] or 1, row["grid_cols"] or 1
            frames = len(row["keyframe_paths"]) if row["keyframe_paths"] else rows * cols
            grids.append(Grid(row["video_id"], row["grid_path"], rows, cols, frames))
    return sorted(grids, key=lambda grid: grid.video_id)


class _Run:
    """The bookkeeping of one run: rows, buffer, counters, progress."""

    def __init__(self, config, workdir, spec, prompt, backend_name, config_hash, report, total, progress):
        self.config = config
        self.workdir = workdir
        self.spec = spec
        self.prompt = prompt
        self.backend_name = backend_name
        self.config_hash = config_hash
        self.report = report
        self.sampling_json = json.dumps(config.sampling_dict(), sort_keys=True)
        self.model_label = spec.model
        self.buffer: list[dict] = []
        self.last_flush = time.monotonic()
        self.writer = PartWriter(workdir, CAPTIONS)
        # Answers that arrive slowly still reach the disk within flush_interval_s.
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._flusher = threading.Thread(target=self._flush_periodically, name="caption-flush", daemon=True)
        self._flusher.start()
        self.started = time.monotonic()
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.truncated = 0
        self.regenerated = 0
        self.grids_done: set[str] = set()
        self.bar = None
        if progress and total:
            from tqdm.auto import tqdm

            desc = "caption" if config.engine == "local" else f"caption ({config.engine})"
            self.bar = tqdm(total=total, unit="caption", desc=desc, dynamic_ncols=True, smoothing=0.1)
        self._last_postfix = 0.0

    def row(self, request: CaptionRequest, grid: Grid, generation: Generation, caption: str | None,
            status: str, error_kind: str | None = None, error: str | None = None) -> dict:
        return {
            "video_id": request.video_id,
            "caption_index": request.caption_index,
            "caption": caption,
            "raw_output": generation.text,
            "status": status,
            "error_kind": error_kind,
            "error": error,
            "grid_path": grid.grid_path,
            "model": self.model_label,
            "preset": self.spec.preset,
            "backend": self.backend_name,
            "prompt_name": self.prompt.name,
            "prompt_sha256": self.prompt.sha256,
            "sampling": self.sampling_json,
            "seed": request.seed,
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "latency_s": generation.latency_s,
            "config_hash": self.config_hash,
            "created_at": utc_now(),
        }

    def add_outcome(self, outcome: Outcome, grid: Grid) -> None:
        self.truncated += outcome.truncated
        self.regenerated += outcome.regenerated
        self.add(self.row(outcome.request, grid, outcome.generation, outcome.caption, outcome.status,
                          outcome.error_kind, outcome.error))

    def _flush_periodically(self) -> None:
        while not self._stopped.wait(self.config.flush_interval_s):
            if time.monotonic() - self.last_flush >= self.config.flush_interval_s:
                self.flush()

    def add(self, row: dict) -> None:
        with self._lock:
            self.buffer.append(row)
        if row["status"] == STATUS_OK:
            self.report.done += 1
        else:
            self.report.add_failure(row["error_kind"] or "unknown", row["error"] or "", row["video_id"])
        self.prompt_tokens += row["prompt_tokens"] or 0
        self.completion_tokens += row["completion_tokens"] or 0
        self.grids_done.add(row["video_id"])
        now = time.monotonic()
        if len(self.buffer) >= self.config.flush_rows or now - self.last_flush >= self.config.flush_interval_s:
            self.flush()
        if self.bar is not None:
            self.bar.update(1)
            if now - self._last_postfix > 0.5:
                elapsed = max(now - self.started, 1e-9)
                self.bar.set_postfix(
                    {"grids/s": f"{len(self.grids_done) / elapsed:.2f}",
                     "tok/s": f"{self.completion_tokens / elapsed:.0f}",
                     "failed": self.report.failed},
                    refresh=False,
                )
                self._last_postfix = now

    def flush(self) -> None:
        with self._lock:
            if self.buffer:
                self.writer.write(self.buffer)
                self.buffer = []
            self.last_flush = time.monotonic()

    def close(self) -> None:
        self._stopped.set()
        self._flusher.join()
        self.flush()
        self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _pending(config: CaptionConfig, workdir: Path, grids: list[Grid], config_hash: str, report: StageReport):
    """The (grid, caption index) pairs to caption. A failed row is captioned again
    unless ``retry_failed`` is off; then it is kept and counted as a failure of this
    run (exit code 1), as ``keyframes`` counts the inputs it keeps failed."""
    existing = {
        (row["video_id"], row["caption_index"]): row
        for row in read_manifest(workdir, CAPTIONS, columns=["status", "error_kind", "error", "config_hash"]).to_pylist()
    }
    pending: list[tuple[Grid, int]] = []
    previously_failed = 0
    for grid in grids:
        for index in range(config.num_captions):
            row = existing.get((grid.video_id, index))
            if row is not None and row["config_hash"] == config_hash:
                if row["status"] == STATUS_OK:
                    report.skipped += 1
                    continue
                if not config.retry_failed:
                    report.add_failure(row["error_kind"] or "failed", row["error"] or "", grid.video_id)
                    previously_failed += 1
                    continue
            pending.append((grid, index))
    return pending, previously_failed


def run_caption(config: CaptionConfig, workdir: str | os.PathLike, progress: bool = True) -> StageReport:
    """Caption every ``ok`` grid of ``<workdir>/keyframes.parquet`` into ``captions.parquet``."""
    started = time.monotonic()
    validate(config)
    workdir = Path(workdir)
    prompt = load_prompt(config.prompt)
    spec = resolve_model(config.model)
    # With Ray the engines run on the cluster: the driver needs no vLLM of its own.
    ray_auto = config.engine == "ray" and config.backend == "auto" and not config.endpoint
    backend_name = "offline" if ray_auto else choose_backend(config)
    if backend_name in MODEL_LOADING_BACKENDS and config.engine == "local":
        check_model_available(spec.model, "--model")  # in seconds, not after the hub's retries
    require_keyframes(workdir)  # before anything is written into the folder
    workdir = ensure_workdir(workdir)
    report = StageReport(stage="caption", output=manifest_path(workdir, CAPTIONS))
    # A server may serve the model under another name; that name is what is recorded
    # and hashed. Creating a server client is cheap; an in-process engine starts only
    # when something is pending.
    backend = make_backend(backend_name, spec, config) if backend_name == "server" else None
    model_label = getattr(backend, "model_name", None) or spec.model
    config_hash = config.config_hash(model_label, prompt.sha256)

    try:
        _run_locked(config, workdir, report, prompt, spec, backend_name, backend, model_label, config_hash, progress)
    finally:
        if backend is not None:  # a server client made above and never used
            backend.close()
    report.seconds = time.monotonic() - started
    return report


def _run_locked(config, workdir, report, prompt, spec, backend_name, backend, model_label, config_hash, progress):
    with workdir_lock(workdir, "caption"):
        record_run_config(workdir, "caption", config.as_dict())
        grids = load_grids(workdir)
        if config.limit is not None:
            grids = grids[: config.limit]
        if config.overwrite:
            remove_manifest(workdir, CAPTIONS)
        pending, previously_failed = _pending(config, workdir, grids, config_hash, report)
        report.total = len(grids) * config.num_captions
        report.extra.update(model=model_label, backend=backend_name, prompt=prompt.name, pending=len(pending))
        if config.engine != "local":
            report.extra["engine"] = config.engine
        if previously_failed:
            report.extra["previously_failed"] = (
                f"{previously_failed} captions failed in an earlier run and were kept failed (--skip-failed); "
                "rerun without it to try them again")
        if pending:
            _caption_pending(config, workdir, report, prompt, spec, backend_name, backend, model_label, config_hash,
                             pending, progress)
        compact(workdir, CAPTIONS)


def _caption_pending(config, workdir, report, prompt, spec, backend_name, backend, model_label, config_hash,
                     pending, progress):
    """Start the engine's workers, caption ``pending`` through them, write every row."""
    engine = get_engine(config.engine)
    placement = Placement(workers=config.replicas, num_cpus=config.num_cpus, num_gpus=config.num_gpus,
                          default_gpus=float(config.tensor_parallel_size), address=config.ray_address,
                          label="captioning")
    # A server client made up front is reused; anything else is built by each worker.
    make_worker = partial(CaptionWorker, spec, config, backend_name, backend=backend)
    with engine.batch_workers(make_worker, placement, OUTCOME_SCHEMA) as pool:
        if "start_s" in pool.info:  # workers that started here, before any request
            report.extra["backend_start_s"] = round(pool.info["start_s"], 2)
        # Rates and the progress bar start once the workers are up.
        run = _Run(config, workdir, spec, prompt, backend_name, config_hash, report, len(pending), progress)
        run.model_label = model_label
        try:
            _caption(run, partial(_outcomes, pool, config.batch_size), pending, workdir)
        finally:
            run.close()
        report.extra.update({k: v for k, v in pool.info.items() if k != "start_s"})
    _report_rates(report, run)


def _outcomes(pool: BatchPool, batch_size: int, requests: list[CaptionRequest]) -> Iterator[Outcome]:
    """The outcomes of ``requests`` from the engine's workers, as they come back."""
    request_of = {(r.video_id, r.caption_index): r for r in requests}
    tables = pool.map([request_item(r) for r in requests], batch_size)
    try:
        for table in tables:
            yield from outcomes_from_table(table, request_of)
    finally:
        tables.close()


def _report_rates(report: StageReport, run: _Run) -> None:
    seconds = max(time.monotonic() - run.started, 1e-9)
    processed = report.done + report.failed
    report.extra.update(
        captions_per_s=round(processed / seconds, 3),
        completion_tokens_per_s=round(run.completion_tokens / seconds, 1),
        prompt_tokens=run.prompt_tokens,
        completion_tokens=run.completion_tokens,
        regenerated=run.regenerated,
        truncated=run.truncated,
    )


def _caption(run: _Run, outcomes: Callable[[list[CaptionRequest]], Iterator[Outcome]],
             pending: list[tuple[Grid, int]], workdir: Path) -> None:
    """Write a row for every pending caption: missing grids fail here, the rest go
    through ``outcomes`` (the engine's workers)."""
    grid_of = {(grid.video_id, index): grid for grid, index in pending}
    work = WorkFolder(workdir)
    requests = []
    for request in build_requests(run.prompt, run.config, pending, workdir):
        grid = grid_of[(request.video_id, request.caption_index)]
        try:
            # The model is sent the checked file, never what the recorded path names.
            checked = Path(work.file(grid.grid_path, "grid image", missing_kind="missing_grid"))
        except ItemError as exc:
            message = f"grid image {request.grid_path} does not exist" if exc.kind == "missing_grid" else exc.message
            run.add_outcome(Outcome(request, Generation(), None, STATUS_FAILED, exc.kind, message), grid)
            continue
        requests.append(dataclasses.replace(request, grid_path=checked))
    if not requests:
        return
    stream = outcomes(requests)
    try:
        for outcome in stream:
            run.add_outcome(outcome, grid_of[(outcome.request.video_id, outcome.request.caption_index)])
    finally:
        stream.close()  # now, not when the traceback goes: a Ray execution stops here
