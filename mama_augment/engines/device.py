"""One model process per device, shared by the local engine's worker processes.

``map_model_items`` (``engines/local.py``) runs a :class:`~mama_augment.engines.base.ModelTask`
as two kinds of process::

    worker processes (N, one video each)              model processes (one per device)
    prepare(item) -> inputs --shared memory file---->  batch rows of many items
                                                        model(batch) on the device
    finish(state, outputs) <--------socket-----------  outputs of that item's rows

* A model process (:func:`serve`) loads the model once, listens on a Unix socket in
  the run's folder, and fills each call of the model with rows of every request
  waiting (up to the model's ``batch_size``), so a GPU sees large batches mixing many
  videos while CPUs decode. The first process first says which devices the task's
  device stands for (``ModelTask.devices``: every GPU for "auto"), then loads on the
  first; the engine starts one process for each other device at once.
* A worker (:class:`ModelClient`) writes an item's inputs to a file in shared memory
  (``/dev/shm``), sends its name, and blocks until that item's outputs come back. It
  has at most one request in flight, so memory stays bounded by the number of workers
  whatever the number of items. Requests go round-robin over the model processes
  whose sockets exist.
* Failures: a worker killed mid-item (timeout, crash) closes its socket; the model
  process drops its rows. A model process that dies or cannot load its model stops
  the run with a :class:`~mama_augment.errors.MamaError` (the engine watches it, and
  a worker waiting on it gets an error instead of hanging). A model process whose
  engine died exits by itself (its control pipe closes). Shared-memory files left by
  killed workers are removed when the run ends. When ``/dev/shm`` is full (containers
  often give it 64 MB), a worker hands its inputs over in a temporary file instead.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import multiprocessing
import os
import queue
import shutil
import tempfile
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mama_augment.engines.base import DeviceModel, ModelTask
from mama_augment.errors import MamaError

log = logging.getLogger(__name__)

SOCKET_SUFFIX = ".sock"
_SHM_ROOT = "/dev/shm"


def shared_memory_dir() -> str:
    """Where inputs are handed over: RAM-backed ``/dev/shm`` when there is one."""
    if os.path.isdir(_SHM_ROOT) and os.access(_SHM_ROOT, os.W_OK):
        return _SHM_ROOT
    return tempfile.gettempdir()


# --------------------------------------------------------------------------- model process


@dataclass
class _Request:
    conn: Connection
    request_id: int
    inputs: np.ndarray
    closer: Callable[[], None]
    done: int = 0
    outputs: list = field(default_factory=list)
    alive: list = field(default_factory=lambda: [True])  # shared with the connection's reader


def _map_inputs(path: str, shape: tuple, dtype: str) -> tuple[np.ndarray, Callable[[], None]]:
    """A read-only view of a worker's inputs file, and how to release it."""
    import mmap

    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if count == 0:
        return np.zeros(shape, dtype=dtype), lambda: None
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), count, access=mmap.ACCESS_READ)
    view = np.frombuffer(mapped, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def close() -> None:
        with contextlib.suppress(BufferError, ValueError):
            mapped.close()

    return view, close


def _read_requests(conn: Connection, work: queue.Queue, alive: list) -> None:
    """One worker's connection: queue its requests; on EOF mark its requests dead."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            alive[0] = False
            work.put(None)  # wake the batcher so it drops this worker's rows
            return
        work.put((conn, alive, message))


def _accept(listener: Listener, work: queue.Queue) -> None:
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError):
            return
        except Exception:  # a client that failed the handshake: ignore it
            continue
        threading.Thread(target=_read_requests, args=(conn, work, [True]), daemon=True).start()


def _watch_parent(control: Connection, parent: int) -> None:
    """Exit when the engine says stop or goes away: its end of the pipe closes, or (a
    forked process may hold a copy of that end) this process gets a new parent."""
    with contextlib.suppress(EOFError, OSError):
        while not control.poll(1.0):
            if os.getppid() != parent:
                break
    os._exit(0)


def serve(task: ModelTask, device: str, threads: int, address: str, authkey: bytes, control: Connection,
          first: bool, parent: int) -> None:
    """The model process: listen, (the first one: say which devices there are), load
    the model, then batch requests until told to stop."""
    listener = Listener(address, family="AF_UNIX", authkey=authkey)  # workers may queue up while loading
    try:
        if first:
            devices = list(task.devices(device)) if task.devices is not None else [device]
            control.send(("devices", devices))
            device = devices[0]
        model = task.load(device, threads)
    except MamaError as exc:
        control.send(("error", exc))
        return
    except BaseException as exc:  # noqa: BLE001 - any load failure is the run's
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        control.send(("error", MamaError(f"the model could not be loaded on {device}: {detail}")))
        return
    control.send(("ready", device))
    threading.Thread(target=_watch_parent, args=(control, parent), daemon=True).start()
    work: queue.Queue = queue.Queue()
    threading.Thread(target=_accept, args=(listener, work), daemon=True).start()
    _batch_loop(model, work)


def _batch_loop(model: DeviceModel, work: queue.Queue) -> None:
    pending: deque[_Request] = deque()
    batch_size = max(1, int(model.batch_size))

    def take(entry) -> None:
        if entry is None:
            return
        conn, alive, (request_id, path, shape, dtype) = entry
        try:
            inputs, closer = _map_inputs(path, tuple(shape), dtype)
        except OSError as exc:  # the worker was killed and its file removed
            with contextlib.suppress(OSError, EOFError):
                conn.send((request_id, "error", f"cannot read the inputs: {exc}"))
            return
        pending.append(_Request(conn, request_id, inputs, closer, alive=alive))

    while True:
        if not pending:
            take(work.get())
        while True:  # everything that is waiting joins the next batch
            try:
                take(work.get_nowait())
            except queue.Empty:
                break
        for request in [r for r in pending if not r.alive[0]]:  # their workers are gone
            pending.remove(request)
            request.closer()
        if not pending:
            continue
        parts, owners, rows = [], [], 0
        for request in pending:
            count = min(batch_size - rows, len(request.inputs) - request.done)
            if count > 0:
                parts.append(request.inputs[request.done : request.done + count])
                owners.append((request, count))
                rows += count
            if rows >= batch_size:
                break
        try:
            outputs = model(np.concatenate(parts) if len(parts) > 1 else np.array(parts[0]))
        except Exception as exc:  # noqa: BLE001 - tell every waiting worker, then stop
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            for request in pending:
                with contextlib.suppress(OSError, EOFError):
                    request.conn.send((request.request_id, "error", f"the model failed: {detail}"))
            os._exit(3)
        start = 0
        for request, count in owners:
            request.outputs.append(outputs[start : start + count])
            start += count
            request.done += count
            if request.done == len(request.inputs):
                pending.remove(request)
                request.closer()
                result = np.concatenate(request.outputs) if request.outputs else outputs[:0]
                with contextlib.suppress(OSError, EOFError):
                    request.conn.send((request.request_id, "ok", result))


# --------------------------------------------------------------------------- worker side


class ModelClient:
    """A worker's handle on the model processes of a run (one per process)."""

    def __init__(self, folder: str, authkey: bytes, shm_prefix: str):
        self.folder = folder
        self.authkey = authkey
        self.shm_prefix = shm_prefix
        self._conns: dict[str, Connection] = {}
        self._ids = itertools.count()
        self._turn = os.getpid()

    def _sockets(self, wait_s: float = 30.0) -> list[str]:
        deadline = time.monotonic() + wait_s
        while True:
            found = sorted(glob.glob(os.path.join(self.folder, f"*{SOCKET_SUFFIX}")))
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def _connect(self, address: str, wait_s: float = 10.0) -> Connection:
        """Connect to a model process; its socket file exists from ``bind`` on, a
        moment before it listens, so a refused connection is tried again briefly."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return Client(address, family="AF_UNIX", authkey=self.authkey)
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        if len(inputs) == 0:
            raise ValueError("a model request needs at least one row")
        sockets = self._sockets()
        if not sockets:
            raise MamaError("no model process is running (it did not start or has stopped)")
        self._turn += 1
        address = sockets[self._turn % len(sockets)]
        name = Path(address).stem
        inputs = np.ascontiguousarray(inputs)
        name_on_disk = f"{self.shm_prefix}{os.getpid()}-{next(self._ids)}"
        path = os.path.join(shared_memory_dir(), name_on_disk)
        request_id = next(self._ids)
        try:
            try:
                inputs.tofile(path)
            except OSError:  # /dev/shm full (containers often give it 64 MB): a temporary file
                with contextlib.suppress(OSError):
                    os.unlink(path)
                path = os.path.join(tempfile.gettempdir(), name_on_disk)
                inputs.tofile(path)
            try:
                conn = self._conns.get(address)
                if conn is None:
                    conn = self._conns[address] = self._connect(address)
                conn.send((request_id, path, inputs.shape, inputs.dtype.str))
                while True:
                    reply_id, status, payload = conn.recv()
                    if reply_id == request_id:
                        break
            except (EOFError, OSError) as exc:
                self._conns.pop(address, None)
                raise MamaError(f"the model process {name} stopped while working ({type(exc).__name__})") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if status != "ok":
            raise MamaError(f"model process {name}: {payload}")
        return payload


_CLIENT: dict[str, Any] = {}


def worker_init(setup: Callable[[int], None] | None, threads: int, folder: str, authkey: bytes, shm_prefix: str) -> None:
    """Runs once in each worker process: the task's setup, then the model client."""
    if setup is not None:
        setup(threads)
    _CLIENT["client"] = ModelClient(folder, authkey, shm_prefix)


def run_model_item(task: ModelTask, item: dict) -> dict:
    """One item in a worker: prepare -> the model process -> finish."""
    prepared = task.prepare(item)
    if prepared.inputs is None:
        return prepared.state
    outputs = _CLIENT["client"](prepared.inputs)
    return task.finish(prepared.state, outputs)


# --------------------------------------------------------------------------- engine side


@dataclass
class _Server:
    device: str
    process: Any
    control: Connection
    ready: bool = False


class ModelServers:
    """The model processes of one run: started by :func:`model_servers`."""

    def __init__(self, task: ModelTask, threads: int, method: str = "spawn"):
        self.task = task
        self.threads = threads
        self.folder = tempfile.mkdtemp(prefix="mama-models-")
        self.authkey = os.urandom(32)
        self.shm_prefix = f"mama-{os.getpid()}-{os.urandom(4).hex()}-"
        self.servers: list[_Server] = []
        self.info: dict = {}  # devices, and seconds from the start until each model was ready
        self.started = time.monotonic()
        # Forked (when the engine process has not loaded torch, so neither torch nor CUDA
        # was ever set up here) it skips a new interpreter and its imports; else spawned.
        self._context = multiprocessing.get_context(method)

    def start(self, device: str) -> None:
        index = len(self.servers)
        address = os.path.join(self.folder, f"{index}-{device.replace(':', '')}{SOCKET_SUFFIX}")
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=serve, name=f"mama-model-{device}",
            args=(self.task, device, self.threads, address, self.authkey, child_end, index == 0, os.getpid()),
            daemon=True,
        )
        process.start()
        child_end.close()
        self.servers.append(_Server(device, process, parent_end))

    def check(self, wait_s: float = 0.0) -> None:
        """Read what the model processes said; raise when one failed or died."""
        deadline = time.monotonic() + wait_s
        for server in list(self.servers):
            while not server.ready:
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    if not server.control.poll(remaining):
                        break
                    message = server.control.recv()
                except (EOFError, OSError):
                    message = None
                if message is None or message[0] == "error":
                    server.process.join(1.0)
                    raise message[1] if message else self._died(server)
                if message[0] == "devices":  # the first process: start one for each other device
                    server.device = message[1][0]
                    for other in message[1][1:]:
                        self.start(other)
                    continue
                server.ready = True
                self.info.setdefault("devices", []).append(server.device)
                self.info.setdefault("ready_after_s", []).append(time.monotonic() - self.started)
            if server.ready and not server.process.is_alive():
                raise self._died(server)

    def _died(self, server: _Server) -> MamaError:
        code = server.process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return MamaError(f"the model process on {server.device} {how}; the rows written so far are kept, "
                         "run the command again to resume")

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(OSError, BrokenPipeError):
                server.control.send("stop")
        for server in self.servers:
            server.process.join(5)
            if server.process.is_alive():
                server.process.kill()
                server.process.join(5)
            server.control.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        for folder in {shared_memory_dir(), tempfile.gettempdir()}:
            for leftover in glob.glob(os.path.join(folder, f"{self.shm_prefix}*")):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)  # inputs of workers killed mid-item


@contextlib.contextmanager
def model_servers(task: ModelTask, threads: int, method: str = "spawn") -> Iterator[ModelServers]:
    """Start the model process of the task's device (the others follow once it says
    which devices exist), with start ``method``; stop them all, and clean up, at the end."""
    servers = ModelServers(task, threads, method)
    try:
        servers.start(task.device)
        yield servers
    finally:
        servers.stop()
