"""What a stage hands an engine, and what it gets back.

An engine runs a stage's per-item work somewhere (worker processes here, Ray actors on
a cluster) and hands back Arrow tables of result rows against a schema the stage
gives. It never imports a stage, never writes a manifest and never counts anything:
the stage plans, writes and reports, so every engine writes the same manifest and a
run can stop on one engine and resume on another.

Two shapes of work:

* :class:`ItemTask` - independent items that may hang or crash the process they run
  in (decoding a video). Each item runs in a worker process under a timeout; a worker
  that overruns or dies becomes the item's failed row, built by the task.
* :class:`ModelTask` - items whose CPU work surrounds a model (decode, embed, cluster):
  ``prepare`` runs per item in worker processes under the timeout, the model runs
  once per device in its own process on batches that mix many items, and ``finish``
  turns the item's state and its model outputs into the row (``map_model_items``).
* a batch worker - a model loaded once per worker (a vLLM engine) that takes items in
  batches: ``make_worker(in_actor) -> worker``, ``worker(items) -> iterable of rows``,
  an optional ``worker.close()``. ``in_actor`` tells the worker it runs in a remote
  actor that holds its own devices.

Items are plain dicts (they cross processes and Ray as they are); the callables are
module-level functions or ``functools.partial`` of them, so they pickle.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol, Sequence

import pyarrow as pa


@dataclass(frozen=True)
class Placement:
    """How many workers, and what each one reserves (the resources matter on Ray)."""

    workers: int = 0  # worker processes or actors; 0: as many as the machine or cluster fits
    num_cpus: float = 1.0  # CPUs reserved per worker (Ray)
    # GPUs reserved per worker (Ray); None: ``default_gpus`` on a cluster with GPUs, else 0.
    num_gpus: float | None = 0.0
    default_gpus: float = 0.0
    address: str | None = None  # Ray cluster to join; None: start a local one
    label: str = "the work"  # what runs, for log lines and errors ("captioning on Ray failed: ...")


@dataclass(frozen=True)
class ItemTask:
    """Per-item work run in worker processes, each item under ``timeout_s``.

    ``run(item) -> row`` never raises for a bad item (that is a failed row), but a
    :class:`~mama_augment.errors.MamaError` it raises is a run-level problem (a bad
    option every item would hit) and stops the run. ``failed(item, kind, exc)`` is
    the row of an item whose worker did not answer: kind ``timeout``, ``crashed``
    (the process died) or ``internal_error`` (the pool itself failed).
    """

    run: Callable[[dict], dict]
    failed: Callable[[dict, str, BaseException], dict]
    setup: Callable[[int], None] | None = None  # once in each worker process, with its thread budget
    warm_up: Callable[[], None] | None = None  # once per remote actor before the first item, best effort
    timeout_s: float | None = None


@dataclass(frozen=True)
class Prepared:
    """The CPU half of a model item: ``inputs`` for the model (an array, one row per
    unit of work, e.g. a frame) and the ``state`` ``finish`` needs; with ``inputs``
    None, ``state`` already is the item's row (it failed before the model)."""

    state: Any
    inputs: Any = None  # numpy array (N, ...) or None


class DeviceModel(Protocol):
    """A model loaded on one device: ``model(inputs) -> outputs`` row for row."""

    batch_size: int  # rows per call it prefers (the engine fills batches from many items)

    def __call__(self, inputs: Any) -> Any: ...


@dataclass(frozen=True)
class ModelTask:
    """Per-item work around a model that is loaded once per device.

    * ``prepare(item) -> Prepared`` - CPU work (decoding), in worker processes, under
      ``timeout_s`` together with the wait for the model and ``finish``; never raises
      for a bad item (its failed row comes back as ``Prepared(row)``);
    * ``devices(device) -> [device, ...]`` - which devices ``device`` ("auto", "cpu",
      "cuda", "cuda:1") stands for here; run in the first model process before
      anything loads, so the engine starts one model process per device at once;
    * ``load(device, threads) -> DeviceModel`` - in a process of its own per device
      (local engine) or a Ray actor holding a GPU;
    * ``finish(state, outputs) -> row`` - CPU work after the model (clustering, files);
    * ``failed(item, kind, exc) -> row`` - as for :class:`ItemTask`.

    A :class:`~mama_augment.errors.MamaError` raised anywhere (a model that cannot
    load, a model process that died) stops the run.
    """

    prepare: Callable[[dict], Prepared]
    finish: Callable[[Any, Any], dict]
    failed: Callable[[dict, str, BaseException], dict]
    load: Callable[[str, int], DeviceModel]
    device: str = "auto"
    devices: Callable[[str], Sequence[str]] | None = None  # None: just ``device``
    setup: Callable[[int], None] | None = None  # once in each worker process, with its thread budget
    timeout_s: float | None = None


class BatchPool(Protocol):
    """Started batch workers: ``map`` streams result tables; ``info`` says what started."""

    info: dict  # facts for the stage's report (replicas started, seconds to start, ...)

    def map(self, items: Sequence[dict], batch_size: int) -> Iterator[pa.Table]: ...


class Engine(Protocol):
    """One entry of :data:`mama_augment.engines.ENGINES`."""

    def map_items(self, items: Sequence[dict], task: ItemTask, placement: Placement,
                  schema: pa.Schema) -> Iterator[pa.Table]:
        """Run ``task`` on every item; yield result tables as items finish (any order)."""
        ...

    def map_model_items(self, items: Sequence[dict], task: ModelTask, placement: Placement,
                        schema: pa.Schema) -> Iterator[pa.Table]:
        """Run ``task``: prepare/finish in worker processes, its model once per device."""
        ...

    def batch_workers(self, make_worker: Callable[[bool], Callable[[list[dict]], Iterable[dict]]],
                      placement: Placement, schema: pa.Schema) -> ContextManager[BatchPool]:
        """Start the batch workers for the length of the ``with`` block."""
        ...


def close_worker(worker: Any) -> None:
    """Close a batch worker that has a ``close`` (best effort at shutdown)."""
    close = getattr(worker, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()
