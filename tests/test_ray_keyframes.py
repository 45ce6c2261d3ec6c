"""``keyframes --engine ray``: same rows as the local engine, resume, engine switches.

All Ray tests share one local Ray with 2 CPUs (a module fixture): starting Ray costs
seconds. They are skipped, with the reason, when Ray is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.errors import MissingDependency
from mama_augment.frame_embeddings import iter_video_embeddings
from mama_augment.keyframes.config import KeyframesConfig
from mama_augment.keyframes.stage import run_keyframes
from mama_augment.manifest import KEYFRAMES, PartWriter, manifest_path, read_manifest
from media import MEDIA_DIR, make_image, make_text_as_video, make_video, make_zero_byte

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'mama-augment[ray]')")

# Columns that must match exactly between engines (embeddings are compared numerically).
SAME = [
    "path", "status", "error_kind", "error", "media_type", "decode_backend", "codec", "duration_s", "fps",
    "width", "height", "num_sampled", "keyframe_indices", "keyframe_times_s", "keyframe_paths", "grid_path",
    "grid_rows", "grid_cols", "embedder", "embedding_dim", "input_size_bytes", "input_mtime", "config_hash",
]



@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray-inputs")
    make_video(folder / "a.mp4", num_frames=48, fps=24)
    make_video(folder / "sub" / "b.avi", num_frames=72, fps=24, seed=1)
    make_video(folder / "c.mkv", num_frames=36, fps=12, pattern="noise", seed=2)
    make_image(folder / "still.png")
    make_zero_byte(folder / "empty.mp4")
    make_text_as_video(folder / "text.mp4")
    return folder


def _rows(workdir: Path) -> dict[str, dict]:
    return {row["video_id"]: row for row in read_manifest(workdir, KEYFRAMES).to_pylist()}


def _config(engine: str, **extra) -> KeyframesConfig:
    options = dict(embedder="pixels", num_keyframes=4, workers=2 if engine == "ray" else 1, engine=engine)
    options.update(extra)
    return KeyframesConfig(**options)


@needs_ray
@pytest.mark.parametrize("embedder", ["pixels", "cnn"])
def test_ray_engine_writes_the_same_rows_as_the_local_engine(ray_cluster, inputs, tmp_path, embedder):
    local = run_keyframes([inputs], tmp_path / "local", _config("local", embedder=embedder), progress=False)
    on_ray = run_keyframes([inputs], tmp_path / "ray", _config("ray", embedder=embedder), progress=False)

    assert (on_ray.done, on_ray.failed, on_ray.skipped) == (local.done, local.failed, local.skipped) == (4, 2, 0)
    assert on_ray.failures_by_kind == local.failures_by_kind
    written = pq.read_table(manifest_path(tmp_path / "ray", KEYFRAMES)).schema
    assert [(f.name, f.type) for f in written] == [(f.name, f.type) for f in KEYFRAMES.schema]
    expected, got = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    stored = {engine: dict(iter_video_embeddings(tmp_path / engine)) for engine in ("local", "ray")}
    assert set(got) == set(expected) == {"a", "sub/b", "c", "still", "empty", "text"}
    for video_id, want in expected.items():
        row = got[video_id]
        assert {c: row[c] for c in SAME} == {c: want[c] for c in SAME}, video_id
        if want["status"] == "ok":
            assert stored["ray"][video_id] is not None
            np.testing.assert_allclose(stored["ray"][video_id].astype(np.float32),
                                       stored["local"][video_id].astype(np.float32), rtol=1e-5, atol=1e-6)
            for rel in [*row["keyframe_paths"], row["grid_path"]]:
                assert (tmp_path / "ray" / rel).is_file()
    assert got["empty"]["error_kind"] == "zero_byte" and got["text"]["error_kind"] == "not_a_video"
    # The embeddings crossed Ray with their Arrow type, not as objects or float64, and
    # went to the array files like the local engine's.
    assert all(array.dtype == np.float16 for array in stored["ray"].values() if array is not None)
    table = read_manifest(tmp_path / "ray", KEYFRAMES)
    assert table.schema.field("keyframe_embeddings").type == KEYFRAMES.schema.field("keyframe_embeddings").type


# Real clips whose keyframes both engines must agree on (the damaged one included: its row must match too).
REAL_CLIPS = ["pens.mp4", "realshort.mp4", "cityCC0.mpg", "Megamind.avi", "Megamind_bugy.avi", "box.mp4", "vtest.avi"]


@needs_ray
def test_both_engines_pick_the_same_keyframes_of_real_clips(ray_cluster, tmp_path):
    """Same inputs and options, same dataset on either engine: the local engine's model
    process runs the cnn network on every core, a Ray model actor on one thread and on
    other batches, and near ties in the selection must not fall differently."""
    present = [MEDIA_DIR / name for name in REAL_CLIPS if (MEDIA_DIR / name).is_file()]
    if not present:
        pytest.skip(f"none of the real clips {REAL_CLIPS} found in {MEDIA_DIR} (set MAMA_MEDIA_DIR)")
    folder = tmp_path / "clips"
    folder.mkdir()
    for path in present:
        (folder / path.name).symlink_to(path)
    runs = {}
    for engine in ("local", "ray"):
        run_keyframes([folder], tmp_path / engine, _config(engine, embedder="cnn", num_keyframes=12, workers=2),
                      progress=False)
        runs[engine] = _rows(tmp_path / engine)
        for video_id, array in iter_video_embeddings(tmp_path / engine):
            runs[engine][video_id]["stored_embeddings"] = None if array is None else array.tolist()
    assert set(runs["ray"]) == set(runs["local"]) == {path.stem for path in present}
    assert any(row["status"] == "ok" for row in runs["local"].values())
    for video_id, want in runs["local"].items():
        got = runs["ray"][video_id]
        assert (got["status"], got["error_kind"]) == (want["status"], want["error_kind"]), video_id
        assert got["keyframe_indices"] == want["keyframe_indices"], video_id
        assert got["keyframe_times_s"] == want["keyframe_times_s"], video_id
        assert got["stored_embeddings"] == want["stored_embeddings"], video_id  # bit for bit


class _StopAfter(PartWriter):
    """A writer that dies (as Ctrl-C would) once ``limit`` rows were written."""

    limit = 1  # the first row is written at once; the rows after it may be written together

    def write_table(self, table):
        if self.rows_written >= self.limit:
            raise KeyboardInterrupt
        super().write_table(table)


@needs_ray
@pytest.mark.parametrize("resume_engine", ["ray", "local"])
def test_interrupted_ray_run_resumes_without_loss_or_duplicates(ray_cluster, tmp_path, monkeypatch, resume_engine):
    folder = tmp_path / "in"
    for i in range(6):
        make_video(folder / f"v{i}.mp4", num_frames=48, fps=24, seed=i)
    workdir = tmp_path / "work"

    import mama_augment.keyframes.stage as stage

    monkeypatch.setattr(stage, "PartWriter", _StopAfter)
    with pytest.raises(KeyboardInterrupt):
        run_keyframes([folder], workdir, _config("ray"), progress=False)
    monkeypatch.undo()
    saved = _rows(workdir)
    assert len(saved) == _StopAfter.limit

    # Resume (on either engine): the saved rows are kept, the rest is done once.
    report = run_keyframes([folder], workdir, _config(resume_engine), progress=False)
    assert (report.skipped, report.done, report.failed) == (len(saved), 6 - len(saved), 0)
    rows = read_manifest(workdir, KEYFRAMES).to_pylist()
    ids = [row["video_id"] for row in rows]
    assert sorted(ids) == [f"v{i}" for i in range(6)]
    assert len(pq.read_table(manifest_path(workdir, KEYFRAMES))) == 6  # no duplicate rows on disk
    after = {row["video_id"]: row for row in rows}
    for video_id, row in saved.items():
        assert after[video_id]["created_at"] == row["created_at"]

    # And the other engine finds nothing left to do: switching engines never redoes work.
    other = "local" if resume_engine == "ray" else "ray"
    again = run_keyframes([folder], workdir, _config(other), progress=False)
    assert (again.done, again.skipped) == (0, 6)


@needs_ray
def test_hung_decoder_on_ray_becomes_a_timeout_row(ray_cluster, tmp_path):
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # opening it for reading blocks forever
    good = make_video(tmp_path / "good.mp4", num_frames=12, fps=12)
    workdir = tmp_path / "work"
    report = run_keyframes([good, fifo], workdir, _config("ray", timeout_s=3), progress=False)
    rows = _rows(workdir)
    assert rows["good"]["status"] == "ok"
    assert rows["stuck"]["status"] == "failed" and rows["stuck"]["error_kind"] == "timeout"
    assert report.exit_code == 1


@needs_ray
def test_cli_engine_ray(ray_cluster, inputs, tmp_path):
    workdir = tmp_path / "work"
    result = CliRunner().invoke(app, ["keyframes", str(inputs), "--workdir", str(workdir), "--embedder", "pixels",
                                      "--engine", "ray", "--workers", "2", "--num-cpus", "1", "--quiet"])
    assert result.exit_code == 1, result.output  # the two bad inputs
    assert "4 done" in result.output and "2 failed" in result.output and "zero_byte" in result.output
    assert len(_rows(workdir)) == 6


@needs_ray
def test_more_gpus_than_the_cluster_has_is_a_usage_error(ray_cluster, inputs, tmp_path):
    result = CliRunner().invoke(app, ["keyframes", str(inputs / "a.mp4"), "--workdir", str(tmp_path / "w"),
                                      "--embedder", "pixels", "--engine", "ray", "--num-gpus", "1", "-q"])
    assert result.exit_code == 2 and "--num-gpus" in result.output


def test_engine_options_do_not_change_the_config_hash():
    base = KeyframesConfig()
    moved = KeyframesConfig(engine="ray", ray_address="auto", num_cpus=4, num_gpus=0.5)
    assert moved.config_hash() == base.config_hash()


@pytest.mark.parametrize("args, message", [(["--engine", "spark"], "--engine"), (["--num-cpus", "0"], "--num-cpus")])
def test_cli_bad_engine_options_exit_2(tmp_path, args, message):
    make_video(tmp_path / "v.mp4", num_frames=12, fps=12)
    result = CliRunner().invoke(app, ["keyframes", str(tmp_path / "v.mp4"), "--workdir", str(tmp_path / "w"), *args])
    assert result.exit_code == 2 and message in result.output


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch, tmp_path):
    from mama_augment.engines.ray import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependency, match=r"mama-augment\[ray\]"):
        require_ray()
    make_video(tmp_path / "v.mp4", num_frames=12, fps=12)
    result = CliRunner().invoke(app, ["keyframes", str(tmp_path / "v.mp4"), "--workdir", str(tmp_path / "w"),
                                      "--embedder", "pixels", "--engine", "ray", "-q"])
    assert result.exit_code == 2 and "pip install 'mama-augment[ray]'" in result.output
