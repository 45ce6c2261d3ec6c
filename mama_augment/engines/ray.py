"""The ``ray`` engine: a stage's work on Ray Data actors (``--engine ray``).

The stage still plans (what is pending in the manifest), writes and reports on the
driver; Ray only turns pending items into result rows::

    pending items --ray.data.from_items--> Dataset
        --map_batches(an actor class, a fixed pool of actors, num_cpus/num_gpus each)-->
    Arrow tables of result rows --iter_batches on the driver--> the stage's PartWriter

So the rows land as part files of the same manifest with the same schema as the local
engine, and a run can stop on one engine and resume on the other.

Model tasks (``map_model_items``): Ray Data's usual CPU -> GPU pipeline, three
operators streaming into each other::

    items --decode actors (CPU; each item in a child process under the timeout)-->
          --model actors (num_gpus each; the model loaded once, batches of many items)-->
          --finish tasks (CPU: clustering, files)--> result rows

Items cross the operators as one binary column holding the item's state and arrays
(an internal hand-over between this run's processes, never written to disk); Ray's
object store and its back-pressure keep memory bounded.

Item tasks (``map_items``): each actor keeps one worker process (the local engine's
pebble pool, one process wide) that keeps its state (a loaded embedder) across
items, and every item runs under the task's timeout, so a hung or crashing decoder
becomes a ``timeout`` or ``crashed`` row instead of a lost actor. Batch workers
(``batch_workers``): each actor builds the worker once (a vLLM engine with
``--tensor-parallel-size`` GPUs) and feeds it batches. Result rows cross Ray as Arrow
tables built against the stage's schema, so ``list<list<float32>>`` embeddings and
UTC timestamps arrive as they were made.

On a multi-node cluster every node must have mama-augment installed (with the extras
the work needs), and the inputs and the work folder must be at the same paths on
every node (a shared filesystem): actors read the inputs and write keyframe JPEGs and
grids straight into the work folder.

``import ray`` happens inside the functions here, so importing this module is cheap
(the workers' child processes import it too).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa

from mama_augment import errors
from mama_augment.engines.base import ItemTask, ModelTask, Placement, close_worker
from mama_augment.engines.local import process_pool, result_row
from mama_augment.errors import MamaError, MissingDependency, UsageError
from mama_augment.manifest import rows_to_table


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


_REMOTE_MAMA_ERROR = re.compile(r"mama_augment\.errors\.(\w+): ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_error(exc: BaseException, what: str = "the work") -> MamaError:
    """A run-level error for an execution or actor failure on Ray.

    An actor that dies in its constructor (the engine would not start, a package is
    not installed on that node) or a worker that raised a run-level error reaches the
    driver as a Ray error whose only trace of the cause is its text; the project's
    own error is found there, so the user reads the same message (and gets the same
    exit code) as with the local engine.
    """
    seen: set[int] = set()
    inner: BaseException | None = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, MamaError):
            return inner
        inner = getattr(inner, "cause", None) or inner.__cause__
        inner = inner if isinstance(inner, BaseException) else None
    text = _ANSI.sub("", str(exc))
    found = list(_REMOTE_MAMA_ERROR.finditer(text))
    if found:
        kind = getattr(errors, found[-1].group(1), None)
        error = MamaError(f"on Ray: {text[found[-1].end():].strip()}")
        if isinstance(kind, type) and issubclass(kind, MamaError):
            error.exit_code = kind.exit_code
        return error
    last_lines = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
    return MamaError(f"{what} on Ray failed: {type(exc).__name__}: {last_lines}")


def _results(tables: Iterator[pa.Table], what: str) -> Iterator[pa.Table]:
    """``tables``, with a failure of the Ray execution turned into a run-level error."""
    try:
        while True:
            try:
                table = next(tables)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - an execution or actor failure fails the run
                raise run_error(exc, what) from exc
            yield table
    finally:
        tables.close()


def _call_quietly(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        fn()


class ItemActor:
    """One Ray actor of ``map_items``: items in, result rows out, through one worker
    process that keeps its state across items and can be killed on a timeout."""

    def __init__(self, task: ItemTask, threads: int, schema: pa.Schema):
        self.task = task
        self.schema = schema
        # Spawned: the actor process has imported Ray (threads), unsafe to fork.
        self.pool = process_pool(task, 1, threads, "spawn")
        if task.warm_up is not None:  # load the model before the first item
            self.pool.schedule(_call_quietly, args=(task.warm_up,))

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        futures = [self.pool.schedule(self.task.run, args=(item,), timeout=self.task.timeout_s) for item in items]
        return rows_to_table([result_row(f, item, self.task) for f, item in zip(futures, items)], self.schema)

    def __del__(self) -> None:
        # Ray Data calls this when it shuts the actor down gracefully.
        pool, self.pool = getattr(self, "pool", None), None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.stop()
                pool.join(timeout=5)


def map_items(items: Sequence[dict], task: ItemTask, placement: Placement, schema: pa.Schema) -> Iterator[pa.Table]:
    """The Ray counterpart of the local pool: one actor per worker (``placement.workers``,
    or as many as the cluster fits), each item a call; tables as items finish."""
    local_cpus = math.ceil(placement.workers * placement.num_cpus) if placement.workers > 0 else (os.cpu_count() or 1)
    num_gpus = placement.num_gpus or 0.0
    with ray_session(placement.address, num_cpus=local_cpus):
        actors = actor_count(placement.workers, placement.num_cpus, num_gpus, len(items))
        log.info("%s on Ray: %d actors, %g CPUs and %g GPUs each", placement.label, actors, placement.num_cpus, num_gpus)
        constructor = dict(task=task, threads=max(1, int(placement.num_cpus)), schema=schema)
        yield from _results(
            map_on_ray(items, ItemActor, constructor, actors=actors, num_cpus=placement.num_cpus, num_gpus=num_gpus),
            placement.label,
        )


class BatchActor:
    """One Ray actor of ``batch_workers``: builds the worker once, then batches in, rows out."""

    def __init__(self, make_worker: Callable[[bool], Any], schema: pa.Schema):
        self.schema = schema
        self.worker = make_worker(True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rows_to_table(list(self.worker(batch.to_pylist())), self.schema)

    def __del__(self) -> None:
        worker, self.worker = getattr(self, "worker", None), None
        if worker is not None:
            close_worker(worker)


class _RayPool:
    def __init__(self, make_worker: Callable[[bool], Any], placement: Placement, schema: pa.Schema):
        self.make_worker = make_worker
        self.placement = placement
        self.schema = schema
        self.info: dict = {}

    def map(self, items: Sequence[dict], batch_size: int) -> Iterator[pa.Table]:
        import ray

        placement = self.placement
        num_gpus = placement.num_gpus
        if num_gpus is None:
            num_gpus = placement.default_gpus if ray.cluster_resources().get("GPU", 0.0) > 0 else 0.0
        num_gpus = float(num_gpus)
        fits = actor_count(0, placement.num_cpus, num_gpus, len(items))  # raises when not even one fits
        actors = min(placement.workers, fits)
        if actors < min(placement.workers, len(items)):
            log.warning("the Ray cluster fits %d replicas of %g CPUs and %g GPUs now; starting %d, not %d",
                        fits, placement.num_cpus, num_gpus, actors, placement.workers)
        # Every replica gets work; rows reach the driver at least every batch_size items per replica.
        per_call = max(1, min(batch_size, math.ceil(len(items) / actors)))
        self.info.update(replicas=actors, num_cpus=placement.num_cpus, num_gpus=num_gpus)
        log.info("%s on Ray: %d replicas, %g CPUs and %g GPUs each, %d items per call",
                 placement.label, actors, placement.num_cpus, num_gpus, per_call)
        constructor = dict(make_worker=self.make_worker, schema=self.schema)
        yield from _results(
            map_on_ray(items, BatchActor, constructor, actors=actors, num_cpus=placement.num_cpus,
                       num_gpus=num_gpus, batch_size=per_call),
            placement.label,
        )


@contextlib.contextmanager
def batch_workers(make_worker: Callable[[bool], Any], placement: Placement, schema: pa.Schema) -> Iterator[_RayPool]:
    """A Ray session for the run; the workers start in the actors when ``map`` runs
    (``placement.workers`` replicas, fewer when the cluster fits fewer)."""
    require_ray()  # before anything starts: says how to install the extra
    # A Ray started here must fit the replicas asked for (the actors only reserve
    # CPUs; the workers use the cores they find).
    local_cpus = max(os.cpu_count() or 1, math.ceil(placement.workers * placement.num_cpus))
    with ray_session(placement.address, num_cpus=local_cpus):
        yield _RayPool(make_worker, placement, schema)


# --------------------------------------------------------------------------- model tasks

_HANDOVER = pa.schema([("payload", pa.binary())])  # one item between the operators
_MODEL_ITEMS_PER_CALL = 16  # items a model actor takes per call (their rows are batched)


def _pack(*parts: Any) -> dict:
    import pickle

    return {"payload": pickle.dumps(parts, protocol=5)}


def _unpack(table: pa.Table) -> list[tuple]:
    import pickle

    return [pickle.loads(blob) for blob in table.column("payload").to_pylist()]


def _prepare_payload(prepare: Callable[[dict], Any], item: dict) -> dict:
    prepared = prepare(item)
    if prepared.inputs is None:
        return _pack("row", prepared.state)
    return _pack("prepared", prepared.state, prepared.inputs)


def _failed_payload(failed: Callable[[dict, str, BaseException], dict], item: dict, kind: str,
                    exc: BaseException) -> dict:
    return _pack("row", failed(item, kind, exc))


class ModelActor:
    """A Ray actor holding the task's model (on the GPU Ray gave it, or the CPU):
    items in, their model outputs attached; rows of all the items of a call are
    batched together."""

    def __init__(self, load: Callable[[str, int], Any], device: str, threads: int):
        self.model = load(device, threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import numpy as np

        entries = _unpack(batch)
        waiting = [entry for entry in entries if entry[0] == "prepared"]
        outputs: list = []
        if waiting:
            inputs = np.concatenate([np.asarray(entry[2]) for entry in waiting])
            size = max(1, int(self.model.batch_size))
            done = np.concatenate([self.model(inputs[start:start + size]) for start in range(0, len(inputs), size)])
            start = 0
            for entry in waiting:
                outputs.append(done[start:start + len(entry[2])])
                start += len(entry[2])
        out, position = [], 0
        for entry in entries:
            if entry[0] == "prepared":
                out.append(_pack("done", entry[1], outputs[position]))
                position += 1
            else:
                out.append(_pack(*entry))
        return rows_to_table(out, _HANDOVER)


def _finish_batch(batch: pa.Table, finish: Callable[[Any, Any], dict], schema: pa.Schema) -> pa.Table:
    rows = []
    for entry in _unpack(batch):
        rows.append(finish(entry[1], entry[2]) if entry[0] == "done" else entry[1])
    return rows_to_table(rows, schema)


def map_model_items(items: Sequence[dict], task: ModelTask, placement: Placement,
                    schema: pa.Schema) -> Iterator[pa.Table]:
    """A :class:`ModelTask` on Ray: decode actors (``placement.workers``, ``num_cpus``
    each), one model actor per GPU (``num_gpus`` each; on a cluster without GPUs, one
    on the CPU), and finish tasks; rows as items finish.

    Finish tasks reserve no CPU of their own, so they run whatever the actors hold.
    """
    import ray.data

    local_cpus = (math.ceil(placement.workers * placement.num_cpus) + 1) if placement.workers > 0 else (os.cpu_count() or 1)
    with ray_session(placement.address, num_cpus=local_cpus):
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        num_gpus = float(placement.num_gpus or 0.0)
        if num_gpus == 0.0 and gpus > 0 and task.device != "cpu":
            num_gpus = 1.0
        if num_gpus > 0:
            if gpus < num_gpus:
                raise UsageError(f"--num-gpus {num_gpus:g} but the Ray cluster has {gpus:g} GPUs")
            model_actors, model_cpus = max(1, int(gpus // num_gpus)), 0.0
        else:
            model_actors, model_cpus = 1, min(1.0, resources.get("CPU", 1.0) / 2)
        free = resources.get("CPU", 0.0) - model_actors * model_cpus
        decode_cpus = min(placement.num_cpus, free)  # a small cluster: decoders share what is left
        if decode_cpus <= 0:
            raise UsageError(f"the Ray cluster has {resources.get('CPU', 0.0):g} CPUs: none left to decode videos")
        fits = max(1, int(free // decode_cpus))
        decoders = max(1, min(placement.workers if placement.workers > 0 else fits, fits, len(items)))
        if placement.workers > decoders:
            log.warning("the Ray cluster fits %d decode actors of %g CPUs beside the model, not %d",
                        decoders, decode_cpus, placement.workers)
        log.info("%s on Ray: %d decode actors (%g CPUs each), %d model actors (%g GPUs, %g CPUs each)",
                 placement.label, decoders, decode_cpus, model_actors, num_gpus, model_cpus)
        decode = ItemTask(run=partial(_prepare_payload, task.prepare), failed=partial(_failed_payload, task.failed),
                          setup=task.setup, timeout_s=task.timeout_s)
        threads = max(1, int(decode_cpus))
        model_threads = max(1, int(model_cpus)) if num_gpus == 0 else 1
        device = "cuda" if num_gpus > 0 else "cpu"
        with _quiet_ray_data():
            dataset = ray.data.from_items(list(items), override_num_blocks=max(1, min(len(items), MAX_BLOCKS)))
            dataset = dataset.map_batches(
                ItemActor, batch_size=1, batch_format="pyarrow",
                fn_constructor_kwargs=dict(task=decode, threads=threads, schema=_HANDOVER),
                compute=ray.data.ActorPoolStrategy(size=decoders), num_cpus=decode_cpus,
            )
            dataset = dataset.map_batches(
                ModelActor, batch_size=_MODEL_ITEMS_PER_CALL, batch_format="pyarrow",
                fn_constructor_kwargs=dict(load=task.load, device=device, threads=model_threads),
                compute=ray.data.ActorPoolStrategy(size=model_actors), num_cpus=model_cpus,
                num_gpus=num_gpus if num_gpus > 0 else None,
            )
            dataset = dataset.map_batches(
                _finish_batch, batch_size=1, batch_format="pyarrow",
                fn_kwargs=dict(finish=task.finish, schema=schema), num_cpus=0,
            )
            batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
            try:
                yield from _results(batches, placement.label)
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
