"""The keyframes stage end to end: rows, files, failed rows, resume and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.frame_embeddings import iter_video_embeddings
from mama_augment.keyframes.config import KeyframesConfig
from mama_augment.keyframes.stage import run_keyframes
from mama_augment.manifest import KEYFRAMES, manifest_path, parts_dir, read_manifest
from tests.media import (
    make_audio_only,
    make_image,
    make_random_bytes,
    make_text_as_video,
    make_truncated,
    make_video,
    make_zero_byte,
)

FAST = dict(embedder="pixels", workers=1)


@pytest.fixture
def videos(tmp_path) -> Path:
    folder = tmp_path / "videos"
    make_video(folder / "a.mp4", num_frames=48, fps=24)
    make_video(folder / "sub" / "b.avi", num_frames=72, fps=24, seed=1)
    make_image(folder / "still.png")
    return folder


def _rows(workdir: Path) -> dict[str, dict]:
    return {row["video_id"]: row for row in read_manifest(workdir, KEYFRAMES).to_pylist()}


def test_stage_writes_rows_frames_and_grids(videos, tmp_path):
    workdir = tmp_path / "work"
    report = run_keyframes([videos], workdir, KeyframesConfig(num_keyframes=4, **FAST), progress=False)
    assert (report.done, report.failed, report.skipped) == (3, 0, 0)
    assert report.exit_code == 0

    table = pq.read_table(manifest_path(workdir, KEYFRAMES))
    assert table.schema.names == KEYFRAMES.schema.names
    assert table.schema.field("keyframe_embeddings").type == KEYFRAMES.schema.field("keyframe_embeddings").type
    rows = _rows(workdir)
    assert set(rows) == {"a", "sub/b", "still"}

    video = rows["sub/b"]
    assert video["status"] == "ok" and video["media_type"] == "video"
    assert video["num_sampled"] == 6  # 3 s at 2 fps
    assert len(video["keyframe_indices"]) == 4
    assert video["keyframe_times_s"] == sorted(video["keyframe_times_s"])
    assert video["keyframe_indices"] == sorted(video["keyframe_indices"])
    # The embeddings sit in an array file the row points at, not in the row.
    assert video["keyframe_embeddings"] is None
    assert video["embeddings_file"].startswith("embeddings/") and video["embeddings_count"] == 4
    embeddings = dict(iter_video_embeddings(workdir))["sub/b"]
    assert embeddings.shape == (4, video["embedding_dim"]) and embeddings.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(embeddings.astype(np.float32), axis=1), 1.0, atol=2e-3)
    for rel in video["keyframe_paths"]:
        assert (workdir / rel).is_file()
    grid = Image.open(workdir / video["grid_path"])
    assert grid.size == (4 * 320, 3 * 240)
    assert (video["grid_rows"], video["grid_cols"]) == (3, 4)
    assert video["input_size_bytes"] == (videos / "sub" / "b.avi").stat().st_size

    still = rows["still"]
    assert still["status"] == "ok" and still["media_type"] == "image"
    assert still["keyframe_indices"] == [0] and still["keyframe_times_s"] == [0.0]
    # Compacted: no parts left, pandas reads the table directly.
    assert list(parts_dir(workdir, KEYFRAMES).glob("part-*")) == []
    assert len(pd.read_parquet(workdir / "keyframes.parquet")) == 3


def test_every_bad_input_kind_is_a_failed_row_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "in"
    good = make_video(folder / "good.mp4", num_frames=24, fps=12)
    make_zero_byte(folder / "empty.mp4")
    make_text_as_video(folder / "text.mp4")
    make_random_bytes(folder / "noise.avi")
    make_truncated(good, folder / "cut.mp4", 0.02)
    make_audio_only(folder / "sound.mkv")
    workdir = tmp_path / "work"
    report = run_keyframes([folder], workdir, KeyframesConfig(**FAST), progress=False)
    rows = _rows(workdir)
    assert rows["good"]["status"] == "ok"
    kinds = {vid: row["error_kind"] for vid, row in rows.items() if row["status"] == "failed"}
    assert kinds["empty"] == "zero_byte"
    assert kinds["text"] == "not_a_video"
    assert kinds["noise"] == "not_a_video"
    assert kinds["sound"] == "no_video_stream"
    assert kinds["cut"] in {"truncated", "not_a_video"}
    assert all(rows[v]["error"] for v in kinds)
    assert report.failed == 5 and report.done == 1 and report.exit_code == 1
    assert sum(report.failures_by_kind.values()) == 5


def test_missing_file_in_a_list_is_a_failed_row(tmp_path):
    good = make_video(tmp_path / "good.mp4", num_frames=12, fps=12)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good}\n{tmp_path / 'gone.mp4'}\n")
    workdir = tmp_path / "work"
    report = run_keyframes([listing], workdir, KeyframesConfig(**FAST), progress=False)
    rows = _rows(workdir)
    assert rows["good"]["status"] == "ok"
    assert rows["gone"]["status"] == "failed" and rows["gone"]["error_kind"] == "not_found"
    assert report.exit_code == 1


def test_rerun_skips_done_and_redoes_changed_inputs_and_config(videos, tmp_path):
    workdir = tmp_path / "work"
    cfg = KeyframesConfig(num_keyframes=4, **FAST)
    run_keyframes([videos], workdir, cfg, progress=False)
    before = _rows(workdir)

    again = run_keyframes([videos], workdir, cfg, progress=False)
    assert (again.done, again.skipped) == (0, 3)
    assert _rows(workdir)["a"]["created_at"] == before["a"]["created_at"]

    # A changed input (new mtime) is redone, the others are not.
    target = videos / "a.mp4"
    os.utime(target, (time.time() + 10, time.time() + 10))
    changed = run_keyframes([videos], workdir, cfg, progress=False)
    assert (changed.done, changed.skipped) == (1, 2)

    # A changed option that alters the output redoes everything.
    other = KeyframesConfig(num_keyframes=3, **FAST)
    redo = run_keyframes([videos], workdir, other, progress=False)
    assert redo.done == 3
    assert all(len(r["keyframe_indices"]) <= 3 for r in _rows(workdir).values())
    # The number of workers does not change outputs, so it does not redo anything.
    assert run_keyframes([videos], workdir, KeyframesConfig(num_keyframes=3, embedder="pixels", workers=2), progress=False).done == 0
    assert len(read_manifest(workdir, KEYFRAMES)) == 3


def test_failed_inputs_are_retried_on_a_rerun_unless_skipped(tmp_path):
    folder = tmp_path / "in"
    make_video(folder / "ok.mp4", num_frames=12, fps=12)
    make_zero_byte(folder / "empty.mp4")
    workdir = tmp_path / "work"
    cfg = KeyframesConfig(**FAST)
    first = run_keyframes([folder], workdir, cfg, progress=False)
    assert (first.done, first.failed) == (1, 1)
    written = _rows(workdir)["empty"]["created_at"]
    # --skip-failed keeps the failed input failed: counted as a failure, exit code 1.
    kept = run_keyframes([folder], workdir, KeyframesConfig(retry_failed=False, **FAST), progress=False)
    assert (kept.done, kept.skipped, kept.failed, kept.exit_code) == (0, 1, 1, 1)
    assert "--skip-failed" in kept.extra["previously_failed"]
    assert _rows(workdir)["empty"]["created_at"] == written
    # A plain rerun tries it again (same input, same fingerprint): a new row, failed again.
    again = run_keyframes([folder], workdir, cfg, progress=False)
    assert (again.done, again.skipped, again.failed, again.exit_code) == (0, 1, 1, 1)
    assert "previously_failed" not in again.extra
    assert _rows(workdir)["empty"]["created_at"] > written
    # Once the input is fixed, a plain rerun makes it ok.
    make_video(folder / "empty.mp4", num_frames=12, fps=12)
    fixed = run_keyframes([folder], workdir, cfg, progress=False)
    assert (fixed.done, fixed.failed, fixed.exit_code) == (1, 0, 0)


def test_overwrite_starts_over(videos, tmp_path):
    workdir = tmp_path / "work"
    cfg = KeyframesConfig(**FAST)
    run_keyframes([videos], workdir, cfg, progress=False)
    old = _rows(workdir)["sub/b"]
    stray = workdir / "grids" / "stray.jpg"  # not the tool's: --overwrite leaves it
    stray.write_bytes(b"x")
    report = run_keyframes([videos / "a.mp4"], workdir, KeyframesConfig(overwrite=True, **FAST), progress=False)
    assert report.done == 1
    assert set(_rows(workdir)) == {"a"}
    assert stray.exists()
    assert not (workdir / old["grid_path"]).exists() and not (workdir / "frames" / "sub+b").exists()


def test_hung_decoder_is_stopped_by_the_timeout(tmp_path):
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # opening it for reading blocks forever: a decoder that hangs
    good = make_video(tmp_path / "good.mp4", num_frames=12, fps=12)
    workdir = tmp_path / "work"
    report = run_keyframes([good, fifo], workdir, KeyframesConfig(timeout_s=3, **FAST), progress=False)
    rows = _rows(workdir)
    assert rows["good"]["status"] == "ok"
    assert rows["stuck"]["status"] == "failed" and rows["stuck"]["error_kind"] == "timeout"
    assert report.exit_code == 1


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    folder = tmp_path / "in"
    for i in range(8):
        make_video(folder / f"v{i}.mp4", num_frames=96, fps=24, seed=i)
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "mama_augment", "keyframes", str(folder), "--workdir", str(workdir),
               "--embedder", "pixels", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(parts_dir(workdir, KEYFRAMES).glob("part-*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the CLI and its worker
    proc.wait()
    saved = _rows(workdir)
    assert 1 <= len(saved) < 8, "the kill should land mid-run"
    # Every saved row's embeddings can be read: the kill left no dangling reference.
    saved_embeddings = {video_id: np.array(array) for video_id, array in iter_video_embeddings(workdir)}
    assert all(saved_embeddings[video_id].shape[0] > 0 for video_id in saved)

    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = read_manifest(workdir, KEYFRAMES).to_pylist()
    ids = [row["video_id"] for row in rows]
    assert sorted(ids) == sorted(f"v{i}" for i in range(8))
    assert len(ids) == len(set(ids))
    after = {row["video_id"]: row for row in rows}
    embeddings = dict(iter_video_embeddings(workdir))
    for video_id, row in saved.items():  # finished before the kill: kept, not redone
        assert after[video_id]["created_at"] == row["created_at"]
        np.testing.assert_array_equal(embeddings[video_id], saved_embeddings[video_id])
    assert f"{len(saved)} skipped" in result.stdout


# ----------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_runs_and_reports(videos, tmp_path):
    workdir = tmp_path / "work"
    result = runner.invoke(app, ["keyframes", str(videos), "--workdir", str(workdir), "--embedder", "pixels",
                                 "--workers", "1", "--num-keyframes", "auto", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "3 done" in result.output
    assert str(workdir / "keyframes.parquet") in result.output
    rows = _rows(workdir)
    assert all(4 <= len(r["keyframe_indices"]) <= 12 or r["num_sampled"] < 4 for r in rows.values())


def test_cli_exit_code_1_and_error_table_when_some_fail(tmp_path):
    folder = tmp_path / "in"
    make_video(folder / "ok.mp4", num_frames=12, fps=12)
    make_zero_byte(folder / "empty.mp4")
    result = runner.invoke(app, ["keyframes", str(folder), "--workdir", str(tmp_path / "w"), "--embedder",
                                 "pixels", "--workers", "1", "-q"])
    assert result.exit_code == 1
    assert "zero_byte" in result.output and "1 failed" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "3by4"], "--grid"),
        (["--num-keyframes", "20"], "does not fit"),
        (["--num-keyframes", "many"], "number or 'auto'"),
        (["--embedder", "nope"], "unknown embedder"),
        (["--fps", "0"], "--fps"),
        (["--decoder", "gst"], "--decoder"),
    ],
)
def test_cli_bad_options_exit_2_with_a_message(tmp_path, args, message):
    make_video(tmp_path / "v.mp4", num_frames=12, fps=12)
    result = runner.invoke(app, ["keyframes", str(tmp_path / "v.mp4"), "--workdir", str(tmp_path / "w"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_missing_input_and_unwritable_workdir_exit_2(tmp_path):
    result = runner.invoke(app, ["keyframes", str(tmp_path / "nothing-here"), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "nothing-here" in result.output
    make_video(tmp_path / "v.mp4", num_frames=12, fps=12)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    result = runner.invoke(app, ["keyframes", str(tmp_path / "v.mp4"), "--workdir", str(blocker / "w")])
    assert result.exit_code == 2 and "work folder" in result.output


def test_module_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "mama_augment", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "keyframes" in result.stdout


def test_plan_matches_inputs_to_rows(tmp_path):
    # The plan compares inputs and rows column by column; every reason, and a missing
    # fingerprint on either side, must come out as it would row by row.
    from mama_augment.inputs import InputItem
    from mama_augment.keyframes.stage import plan_jobs
    from mama_augment.manifest import PartWriter, ensure_workdir

    workdir = ensure_workdir(tmp_path / "work")
    cfg = KeyframesConfig(**FAST)
    same = cfg.config_hash()

    def row(video_id, status="ok", size=10, mtime=5.0, config_hash=same):
        return {"video_id": video_id, "status": status, "error_kind": None if status == "ok" else "zero_byte",
                "error": None if status == "ok" else f"{video_id} is empty", "input_size_bytes": size,
                "input_mtime": mtime, "config_hash": config_hash}

    with PartWriter(workdir, KEYFRAMES) as writer:
        writer.write([row("done"), row("other_options", config_hash="x"), row("bigger"), row("touched"),
                      row("no_mtime_recorded", mtime=None), row("failed", status="failed"),
                      row("missing_now")])
    items = [InputItem(video_id, tmp_path / f"{video_id}.mp4", size, mtime) for video_id, size, mtime in [
        ("done", 10, 5.0), ("new", 10, 5.0), ("other_options", 10, 5.0), ("bigger", 11, 5.0),
        ("touched", 10, 5.0 + 1e-3), ("no_mtime_recorded", 10, 5.0), ("failed", 10, 5.0),
        ("missing_now", None, None)]]
    plan = plan_jobs(items, workdir, cfg)
    assert [job.video_id for job in plan.pending] == [
        "new", "other_options", "bigger", "touched", "no_mtime_recorded", "failed", "missing_now"]
    assert plan.redo_reasons == {"new": 1, "config changed": 1, "input changed": 4, "retry failed": 1}
    assert (plan.skipped_ok, plan.skipped_failed) == (1, [])
    kept = plan_jobs(items, workdir, KeyframesConfig(retry_failed=False, **FAST))
    assert kept.skipped_failed == [("failed", "zero_byte", "failed is empty")]
    assert (kept.skipped_ok, len(kept.pending)) == (1, 6)
    assert plan_jobs([], workdir, cfg).pending == []
