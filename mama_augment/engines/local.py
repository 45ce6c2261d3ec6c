"""The ``local`` engine: worker processes on this machine (``--engine local``).

Item tasks run in a pebble process pool: a worker that overruns the task's timeout is
killed, and one that dies takes only its item with it. The same pool, one process
wide, runs inside every Ray actor (``engines/ray.py``), so both engines turn a hung
or crashing item into the same row. Batch workers run in this process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import pyarrow as pa

from mama_augment.engines.base import ItemTask, ModelTask, Placement
from mama_augment.errors import MamaError
from mama_augment.manifest import rows_to_table


def start_method() -> str:
    """``fork`` when this process has not loaded torch or Ray, else ``spawn``.

    Forking skips re-importing the decoding stack in every worker (about 0.3 s a
    worker). It is only safe while torch's OpenMP thread pool has never run in this
    process, which holds for the CLI (it never imports torch) but not for a program
    or test session that used torch before calling the stage. Ray's client threads do
    not survive a fork either: a forked child that collects a Ray object crashes.
    """
    if sys.platform.startswith("linux") and "torch" not in sys.modules and "ray" not in sys.modules:
        return "fork"
    return "spawn"


def process_pool(task: ItemTask, workers: int, threads: int, method: str | None = None):
    """A pebble pool whose processes ran ``task.setup(threads)`` first."""
    from pebble import ProcessPool

    setup = {"initializer": task.setup, "initargs": (threads,)} if task.setup is not None else {}
    return ProcessPool(max_workers=workers, context=multiprocessing.get_context(method or start_method()), **setup)


def result_row(future: Any, item: dict, task: ItemTask | ModelTask) -> dict:
    """The row of one scheduled item: its own, or the task's failed row when the
    worker timed out, died or could not run it. A MamaError stops the run."""
    from pebble import ProcessExpired

    try:
        return future.result()
    except MamaError:
        raise
    except concurrent.futures.TimeoutError as exc:
        return task.failed(item, "timeout", exc)
    except ProcessExpired as exc:
        return task.failed(item, "crashed", exc)
    except Exception as exc:  # pickling or pool errors
        return task.failed(item, "internal_error", exc)


def map_items(items: Sequence[dict], task: ItemTask, placement: Placement, schema: pa.Schema) -> Iterator[pa.Table]:
    """Run ``task`` over ``items`` in ``placement.workers`` processes (0: one per
    core); yield each row, as a one-row table, as soon as its item finishes."""
    cores = os.cpu_count() or 1
    workers = min(placement.workers if placement.workers > 0 else cores, len(items))
    # Split the cores between workers so torch does not oversubscribe them.
    threads = max(1, cores // max(1, workers))
    with _running(process_pool(task, workers, threads)) as pool:
        futures = {pool.schedule(task.run, args=(item,), timeout=task.timeout_s): item for item in items}
        for future in concurrent.futures.as_completed(futures):
            yield rows_to_table([result_row(future, futures[future], task)], schema)


@contextlib.contextmanager
def _running(pool):
    """``pool`` for the block: stopped at once on an error (or a closed generator),
    else closed; joined either way."""
    try:
        yield pool
    except BaseException:
        pool.stop()
        raise
    finally:
        pool.close()
        pool.join()


def map_model_items(items: Sequence[dict], task: ModelTask, placement: Placement,
                    schema: pa.Schema) -> Iterator[pa.Table]:
    """Run a :class:`ModelTask`: ``placement.workers`` worker processes (0: one per
    core) prepare and finish items, one model process per device runs the model on
    batches of many items (``engines/device.py``); yield each row as its item ends.

    The model process on the CPU gets every core's thread: it works while the
    workers wait for it, and decodes overlap its batches.
    """
    from pebble import ProcessPool

    from mama_augment.engines.device import model_servers, run_model_item, worker_init

    cores = os.cpu_count() or 1
    workers = min(placement.workers if placement.workers > 0 else cores, len(items))
    method = start_method()
    with model_servers(task, threads=cores, method=method) as servers:
        context = multiprocessing.get_context(method)
        pool = ProcessPool(max_workers=workers, context=context, initializer=worker_init,
                           initargs=(task.setup, 1, servers.folder, servers.authkey, servers.shm_prefix))
        with _running(pool):
            futures = {pool.schedule(run_model_item, args=(task, item), timeout=task.timeout_s): item
                       for item in items}
            waiting = set(futures)
            while waiting:
                servers.check()
                done, waiting = concurrent.futures.wait(waiting, timeout=0.5,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    try:
                        row = result_row(future, futures[future], task)
                    except MamaError:
                        servers.check(wait_s=2.0)  # the model process's own error says more
                        raise
                    yield rows_to_table([row], schema)


class _LocalPool:
    """One batch worker in this process."""

    def __init__(self, worker: Callable[[list[dict]], Iterable[dict]], schema: pa.Schema, start_s: float):
        self.worker = worker
        self.schema = schema
        self.info = {"start_s": start_s}

    def map(self, items: Sequence[dict], batch_size: int) -> Iterator[pa.Table]:
        # The worker batches by itself; its rows come back one by one as they are final.
        for row in self.worker(list(items)):
            yield rows_to_table([row], self.schema)


@contextlib.contextmanager
def batch_workers(make_worker: Callable[[bool], Any], placement: Placement, schema: pa.Schema) -> Iterator[_LocalPool]:
    started = time.monotonic()
    worker = make_worker(False)
    try:
        yield _LocalPool(worker, schema, time.monotonic() - started)
    finally:
        close = getattr(worker, "close", None)
        if close is not None:
            close()
