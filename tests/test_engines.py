"""The local engine's item pool, and run-level errors raised inside workers.

An engine hands back rows; a worker that overruns its timeout or dies becomes the
task's failed row, and a MamaError raised by the work (a bad option every item would
hit) stops the run instead of failing every row.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.engines.base import ItemTask, Placement
from mama_augment.engines.local import map_items
from mama_augment.errors import MamaError, UsageError
from mama_augment.keyframes.config import KeyframesConfig
from mama_augment.keyframes.stage import run_keyframes
from mama_augment.manifest import KEYFRAMES, read_manifest
from media import make_video

SCHEMA = pa.schema([("name", pa.string()), ("result", pa.string())])


def _work(item: dict) -> dict:
    if item["name"] == "slow":
        time.sleep(30)
    if item["name"] == "dies":
        os._exit(3)
    if item["name"] == "bad-option":
        raise UsageError("--thing must be set")
    return {"name": item["name"], "result": "ok"}


def _failed(item: dict, kind: str, exc: BaseException) -> dict:
    return {"name": item["name"], "result": kind}


def _rows(names: list[str]) -> dict[str, str]:
    task = ItemTask(run=_work, failed=_failed, timeout_s=2.0)
    tables = map_items([{"name": n} for n in names], task, Placement(workers=2), SCHEMA)
    return {row["name"]: row["result"] for table in tables for row in table.to_pylist()}


def test_local_pool_turns_timeouts_and_dead_workers_into_the_tasks_rows():
    assert _rows(["a", "slow", "dies", "b"]) == {"a": "ok", "b": "ok", "slow": "timeout", "dies": "crashed"}


def test_a_run_level_error_in_a_worker_stops_the_map():
    with pytest.raises(UsageError, match="--thing must be set"):
        _rows(["bad-option", "a"])


def test_clip_without_a_model_stops_keyframes_before_any_row(tmp_path):
    make_video(tmp_path / "v.mp4", num_frames=12, fps=12)
    with pytest.raises(UsageError, match="--embed-model"):
        run_keyframes([tmp_path / "v.mp4"], tmp_path / "w", KeyframesConfig(embedder="clip"), progress=False)
    result = CliRunner().invoke(app, ["keyframes", str(tmp_path / "v.mp4"), "-w", str(tmp_path / "w"),
                                      "--embedder", "clip", "-q"])
    assert result.exit_code == 2 and "--embed-model" in result.output
    assert read_manifest(tmp_path / "w", KEYFRAMES).num_rows == 0


def _embedder_that_needs_a_package(options):
    from mama_augment.errors import MissingDependency

    raise MissingDependency("some-package", purpose="the test embedder")


def test_a_missing_package_in_the_keyframes_worker_is_a_usage_error_not_a_row_per_video(tmp_path, monkeypatch):
    from mama_augment import embed

    # Registered in this process; the worker processes are forked from it (or, after
    # torch was loaded, spawned: then the entry is missing there, which fails the same way).
    monkeypatch.setitem(embed.EMBEDDERS, "needs-package",
                        embed.EmbedderFactory(_embedder_that_needs_a_package, "a test embedder"))
    for i in range(2):
        make_video(tmp_path / f"v{i}.mp4", num_frames=12, fps=12, seed=i)
    config = KeyframesConfig(embedder="needs-package", workers=1)
    with pytest.raises(MamaError) as excinfo:
        run_keyframes([tmp_path], tmp_path / "w", config, progress=False)
    assert excinfo.value.exit_code == 2
    assert read_manifest(tmp_path / "w", KEYFRAMES).num_rows == 0
