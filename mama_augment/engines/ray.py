"""Run a stage's per-item work on Ray Data actors (``--engine ray``).

The stage still plans (what is pending in the manifest), writes and reports on the
driver; Ray only turns pending items into result rows::

    pending jobs --ray.data.from_items--> Dataset
        --map_batches(worker class, a fixed pool of actors, num_cpus/num_gpus each)-->
    Arrow tables of result rows --iter_batches on the driver--> PartWriter

So the rows land as part files of the same manifest with the same schema as the local
engine, and a run can stop on one engine and resume on the other.

Each actor keeps one worker process (pebble, as the local engine) that holds the
embedder: the model loads once per actor, and every item runs under the stage's
per-item timeout, so a hung or crashing decoder becomes a ``timeout`` or ``crashed``
row instead of a lost actor. Result rows cross Ray as Arrow tables built against the
manifest schema, so ``list<list<float32>>`` embeddings and UTC timestamps arrive as
they were made.

On a multi-node cluster every node must have mama-augment installed, and the inputs
and the work folder must be at the same paths on every node (a shared filesystem):
actors read the inputs and write keyframe JPEGs and grids straight into the work folder.

``import ray`` happens inside the functions here, so importing this module is cheap
(the workers' child processes import it too).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pyarrow as pa

from mama_augment.errors import MissingDependency, UsageError
from mama_augment.manifest import KEYFRAMES, PartWriter, rows_to_table

if TYPE_CHECKING:  # pragma: no cover
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.keyframes.stage import Job
    from mama_augment.stage import StageReport

log = logging.getLogger(__name__)

# Pending items are cut into at most this many input blocks. One item per block (the
# usual case) gives per-item progress and loses only items in flight when the driver
# dies; beyond this many items, blocks hold several to keep Ray's object count sane.
MAX_BLOCKS = 10_000


def require_ray(purpose: str = "--engine ray") -> Any:
    """Import and return ``ray`` (with Ray Data), or say how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("ray", extra="ray", purpose=purpose) from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to Ray for the length of a run.

    Reuses a Ray already initialised in this process (a notebook, a test, a user's own
    Ray program) and leaves it running. Otherwise ``address`` None starts a local Ray
    with ``num_cpus`` CPUs (or joins ``$RAY_ADDRESS`` when set), and ``"auto"`` or
    ``"host:6379"`` / ``"ray://host:10001"`` joins an existing cluster; either way the
    connection (and a Ray started here) is shut down afterwards.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if address is not None:
        kwargs["address"] = address
    elif not os.environ.get("RAY_ADDRESS"):  # ray.init joins $RAY_ADDRESS by itself
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        hint = " (start one with `ray start --head`)" if address else ""
        raise UsageError(f"cannot start or join {where}{hint}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def actor_count(requested: int, num_cpus: float, num_gpus: float, items: int) -> int:
    """How many actors to start: ``requested`` if set, else as many as the cluster fits."""
    import ray

    if requested > 0:
        count = requested
    else:
        resources = ray.cluster_resources()
        cpus = resources.get("CPU", 0.0)
        count = int(cpus // num_cpus)
        if count < 1:
            raise UsageError(f"the Ray cluster has {cpus:g} CPUs, fewer than --num-cpus {num_cpus:g} for one worker")
        if num_gpus > 0:
            gpus = resources.get("GPU", 0.0)
            if gpus < num_gpus:
                raise UsageError(f"--num-gpus {num_gpus:g} but the Ray cluster has {gpus:g} GPUs")
            count = min(count, int(gpus // num_gpus))
    return max(1, min(count, items))


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """The stage draws its own progress bar and summary: keep Ray Data's progress bars
    and per-run INFO lines out of the terminal (warnings and errors still show)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = {}
    for name, value in (("enable_progress_bars", False), ("print_on_execution_start", False),
                        ("enable_auto_log_stats", False)):
        if hasattr(context, name):
            saved[name] = getattr(context, name)
            setattr(context, name, value)
    # "Progress bars disabled" (a warning about the line above) and "execution finished".
    loggers = {name: logging.getLogger(name) for name in ("ray.data._internal.progress", "ray.data")}
    levels = {name: logger.level for name, logger in loggers.items()}
    loggers["ray.data._internal.progress"].setLevel(logging.ERROR)
    loggers["ray.data"].setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def map_on_ray(
    items: Sequence[dict],
    worker_class: type,
    constructor_kwargs: dict,
    *,
    actors: int,
    num_cpus: float,
    num_gpus: float,
    batch_size: int = 1,
) -> Iterator[pa.Table]:
    """Run ``worker_class`` (a callable class: Arrow table of items -> Arrow table of
    rows) over ``items`` on a fixed pool of ``actors`` Ray actors; yield the result
    tables on the driver as they finish (not in input order). Each call of a worker
    gets up to ``batch_size`` items (one result table each).

    Closing the generator early (an exception or Ctrl-C in the caller) stops the
    execution and releases the actors.
    """
    import ray.data

    with _quiet_ray_data():
        dataset = ray.data.from_items(list(items), override_num_blocks=max(1, min(len(items), MAX_BLOCKS)))
        dataset = dataset.map_batches(
            worker_class,
            batch_size=batch_size,
            batch_format="pyarrow",
            fn_constructor_kwargs=constructor_kwargs,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=num_cpus,
            num_gpus=num_gpus if num_gpus > 0 else None,
        )
        batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        try:
            yield from batches
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()


# --------------------------------------------------------------------------- keyframes


def _warm_up(cfg: "KeyframesConfig") -> None:
    """Load the embedder in the worker process before the first video (best effort:
    a model that cannot load fails each video's row with the reason, as locally)."""
    from mama_augment.keyframes.stage import _get_embedder

    with contextlib.suppress(Exception):
        _get_embedder(cfg)


class KeyframesWorker:
    """One Ray actor of the keyframes stage: jobs in, manifest rows out."""

    def __init__(self, cfg: "KeyframesConfig", workdir: str, config_hash: str, threads: int):
        import multiprocessing

        from pebble import ProcessPool

        from mama_augment.keyframes.stage import _worker_init

        self.cfg = cfg
        self.workdir = workdir
        self.config_hash = config_hash
        # One child process per actor, as the local pool: it holds the embedder across
        # videos and can be killed when a video overruns --timeout.
        self.pool = ProcessPool(
            max_workers=1,
            initializer=_worker_init,
            initargs=(threads,),
            context=multiprocessing.get_context("spawn"),
        )
        self.pool.schedule(_warm_up, args=(cfg,))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mama_augment.keyframes.stage import Job, process_video, row_from_future

        jobs = [Job(item["video_id"], item["path"], item["size_bytes"], item["mtime"]) for item in batch.to_pylist()]
        futures = [
            self.pool.schedule(
                process_video, args=(job, self.cfg, self.workdir, self.config_hash), timeout=self.cfg.timeout_s
            )
            for job in jobs
        ]
        rows = [row_from_future(future, job, self.cfg, self.config_hash) for future, job in zip(futures, jobs)]
        return rows_to_table(rows, KEYFRAMES.schema)

    def __del__(self) -> None:
        # Ray Data calls this when it shuts the actor down gracefully.
        pool, self.pool = getattr(self, "pool", None), None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.stop()
                pool.join(timeout=5)


def run_keyframes_on_ray(
    jobs: Sequence["Job"],
    workdir: Path,
    cfg: "KeyframesConfig",
    report: "StageReport",
    progress: bool,
) -> None:
    """The Ray counterpart of the local pool: process ``jobs`` and write their rows."""
    from tqdm import tqdm

    from mama_augment.keyframes.stage import record_row

    config_hash = cfg.config_hash()
    local_cpus = math.ceil(cfg.workers * cfg.num_cpus) if cfg.workers > 0 else (os.cpu_count() or 1)
    items = [
        {"video_id": job.video_id, "path": job.path, "size_bytes": job.size_bytes, "mtime": job.mtime}
        for job in jobs
    ]
    with ray_session(cfg.ray_address, num_cpus=local_cpus):
        actors = actor_count(cfg.workers, cfg.num_cpus, cfg.num_gpus, len(items))
        log.info("keyframes on Ray: %d actors, %g CPUs and %g GPUs each", actors, cfg.num_cpus, cfg.num_gpus)
        constructor = dict(
            cfg=cfg,
            workdir=str(Path(workdir).absolute()),
            config_hash=config_hash,
            threads=max(1, int(cfg.num_cpus)),
        )
        bar = tqdm(total=len(items), unit="video", desc="keyframes (ray)", disable=not progress, dynamic_ncols=True)
        writer = PartWriter(workdir, KEYFRAMES)
        results = map_on_ray(
            items, KeyframesWorker, constructor, actors=actors, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus
        )
        try:
            for table in results:
                writer.write_table(table)
                for row in table.select(["video_id", "status", "error_kind", "error"]).to_pylist():
                    record_row(report, row)
                bar.update(table.num_rows)
                bar.set_postfix(failed=report.failed, refresh=False)
        finally:
            results.close()
            bar.close()
            writer.close()
