"""The local engine's model tasks: workers prepare and finish items, one model process
per device runs the model on batches of many items (``engines/device.py``).

A toy task stands in for decoding and embedding: an item's inputs are a few rows that
encode its name, the model returns, for each row, the row's sum, the model process's
pid and its device's index. A worker killed while the model holds its rows, a hung
worker and a model process that dies each end as a row or a clear error, never a hang.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from mama_augment.engines.base import ModelTask, Placement, Prepared
from mama_augment.engines.device import shared_memory_dir
from mama_augment.engines.local import map_model_items
from mama_augment.errors import MamaError, MissingDependency

SCHEMA = pa.schema([("name", pa.string()), ("result", pa.string()), ("sums", pa.list_(pa.float64())),
                    ("pid", pa.int64()), ("device", pa.int64())])
DEVICES = ["toy:0", "toy:1", "toy:2"]


class ToyModel:
    batch_size = 4

    def __init__(self, device: str):
        assert device in DEVICES, device
        self.device = device

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        if (inputs == -7).any():  # the model process dies
            os._exit(7)
        if (inputs == -5).any():  # slow: its worker is killed meanwhile
            time.sleep(1.5)
        time.sleep(0.01)
        out = np.zeros((len(inputs), 3))
        out[:, 0] = inputs.sum(axis=1)
        out[:, 1] = os.getpid()
        out[:, 2] = DEVICES.index(self.device)
        return out


def _load(device: str, threads: int) -> ToyModel:
    return ToyModel(device)


def _devices(device: str) -> list[str]:
    return DEVICES if device == "auto" else [device]


def _load_missing(device: str, threads: int) -> ToyModel:
    raise MissingDependency("toy-package", purpose="the toy model")


def _prepare(item: dict) -> Prepared:
    name = item["name"]
    if name == "bad":
        return Prepared({"name": name, "result": "bad input"})
    if name == "hangs":
        time.sleep(60)
    rows = 1 + len(name) % 5
    inputs = np.arange(rows * 3, dtype=np.float64).reshape(rows, 3) + len(name)
    if name == "killed":  # dies while the model process holds its rows
        inputs[0, 0] = -5
        threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGKILL)).start()
    if name == "model-dies":
        inputs[0, 0] = -7
    return Prepared(name, inputs)


def _finish(name: str, outputs: np.ndarray) -> dict:
    return {"name": name, "result": "ok", "sums": outputs[:, 0].tolist(), "pid": int(outputs[0, 1]),
            "device": int(outputs[0, 2])}


def _failed(item: dict, kind: str, exc: BaseException) -> dict:
    return {"name": item["name"], "result": kind}


def _rows(names, load=_load, workers=3, timeout_s=20.0, device="auto") -> dict[str, dict]:
    task = ModelTask(prepare=_prepare, finish=_finish, failed=_failed, load=load, device=device,
                     devices=_devices, timeout_s=timeout_s)
    tables = map_model_items([{"name": n} for n in names], task, Placement(workers=workers), SCHEMA)
    return {row["name"]: row for table in tables for row in table.to_pylist()}


def _expected_sums(name: str) -> list[float]:
    rows = 1 + len(name) % 5
    return (np.arange(rows * 3, dtype=np.float64).reshape(rows, 3) + len(name)).sum(axis=1).tolist()


def _leftover_inputs() -> list[str]:
    return glob.glob(os.path.join(shared_memory_dir(), f"mama-{os.getpid()}-*"))


@pytest.fixture
def started(monkeypatch) -> list:
    """(device, pid) of every model process the engine starts."""
    from mama_augment.engines import device as device_module

    seen: list = []
    original = device_module.ModelServers.start

    def start(self, device):
        original(self, device)
        seen.append((device, self.servers[-1].process.pid))

    monkeypatch.setattr(device_module.ModelServers, "start", start)
    return seen


def test_one_model_process_per_device_batches_items_and_returns_their_rows(started):
    names = [f"video-{i}" * (1 + i % 3) for i in range(24)]
    rows = _rows(names)
    assert set(rows) == set(names)
    for name in names:
        assert rows[name]["result"] == "ok" and rows[name]["sums"] == _expected_sums(name)
    # One process per device, started once: the first says which devices exist.
    assert sorted(device for device, _ in started) == ["auto", "toy:1", "toy:2"]
    pid_of_device = {}
    for row in rows.values():  # every row of a device came from that device's one process
        assert pid_of_device.setdefault(row["device"], row["pid"]) == row["pid"]
    assert set(pid_of_device.values()) <= {pid for _, pid in started}
    assert os.getpid() not in pid_of_device.values()
    assert _leftover_inputs() == []


def test_a_concrete_device_starts_one_process_for_it(started):
    rows = _rows([f"v{i}" for i in range(6)], device="toy:1")
    assert [device for device, _ in started] == ["toy:1"]
    assert {row["device"] for row in rows.values()} == {1}
    assert {row["pid"] for row in rows.values()} == {started[0][1]}


def test_killed_and_hung_workers_become_rows_and_the_model_process_goes_on():
    names = ["a", "killed", "bb", "hangs", "bad", "cccc", "ddddd"]
    started = time.monotonic()
    rows = _rows(names, timeout_s=4.0, workers=2)
    assert time.monotonic() - started < 60
    assert set(rows) == set(names)
    assert rows["killed"]["result"] == "crashed"
    assert rows["hangs"]["result"] == "timeout"
    assert rows["bad"]["result"] == "bad input"
    for name in ["a", "bb", "cccc", "ddddd"]:
        assert rows[name]["result"] == "ok" and rows[name]["sums"] == _expected_sums(name)
    assert _leftover_inputs() == []  # the killed worker's inputs file was removed


def test_a_model_process_that_dies_stops_the_run_with_a_clear_error():
    started = time.monotonic()
    seen = {}
    with pytest.raises(MamaError, match="model process"):
        task = ModelTask(prepare=_prepare, finish=_finish, failed=_failed, load=_load, devices=_devices,
                         timeout_s=30.0)
        items = [{"name": n} for n in ["a", "bb", "model-dies", "ccc", "dddd", "eeeee"]]
        for table in map_model_items(items, task, Placement(workers=2), SCHEMA):
            for row in table.to_pylist():
                seen[row["name"]] = row
    assert time.monotonic() - started < 30  # not the per-item timeout: the death is noticed
    assert "model-dies" not in seen  # its row is not written: a resumed run redoes it
    assert _leftover_inputs() == []


def test_a_model_that_cannot_load_is_the_runs_error_with_its_exit_code():
    with pytest.raises(MissingDependency, match="toy-package") as excinfo:
        _rows(["a", "bb"], load=_load_missing)
    assert excinfo.value.exit_code == 2
