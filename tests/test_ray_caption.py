"""``caption --engine ray``: the same rows as the local engine, resume, engine switches.

One local Ray with 2 CPUs and one tiny random LLaVA serve the whole module; one vLLM
engine runs at a time (each costs ~2.5 GB and ~20 s to start), so the module starts
three: an interrupted Ray run, its resume on the local engine, and a full Ray run
compared with it. Tests that need Ray or vLLM skip with the reason when they are absent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mama_augment.caption.config import CaptionConfig
from mama_augment.caption.stage import run_caption
from mama_augment.cli import app
from mama_augment.manifest import CAPTIONS, PartWriter, manifest_path, read_manifest
from tiny_llava import make_keyframes_workdir

HAVE_RAY = importlib.util.find_spec("ray") is not None
try:
    import vllm  # noqa: F401

    VLLM_MISSING = None
except Exception as exc:  # noqa: BLE001 - any import failure means: no vLLM here
    VLLM_MISSING = f"vLLM is not importable ({type(exc).__name__}: {exc}); install it with .ci/install-vllm"

needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'mama-augment[ray]')")
needs_vllm = pytest.mark.skipif(VLLM_MISSING is not None, reason=VLLM_MISSING or "")

NUM_VIDEOS = 5
MISSING = "vid0002"  # its grid is deleted: two missing_grid rows
# Sampled (temperature > 0) with per-caption seeds, and max_words=1 so that most
# answers are too long: regenerations and truncations run in the actors too.
SAMPLING = dict(num_captions=2, max_tokens=8, ignore_eos=True, temperature=0.7, seed=7, max_words=1, regenerate=1)
# Columns equal between engines; created_at differs, latency_s is a measurement, and
# error names the grid's path in its own work folder.
SAME = ["caption", "raw_output", "status", "error_kind", "model", "preset", "backend", "prompt_name",
        "prompt_sha256", "sampling", "seed", "prompt_tokens", "completion_tokens", "config_hash"]



@pytest.fixture(scope="module")
def model_dir() -> Path:
    if VLLM_MISSING:
        pytest.skip(VLLM_MISSING)
    from tiny_llava import tiny_llava_dir

    return tiny_llava_dir()


def _workdir(path: Path) -> Path:
    workdir = make_keyframes_workdir(path, num_videos=NUM_VIDEOS, failed=1)
    (workdir / "grids" / f"{MISSING}.jpg").unlink()
    return workdir


def _config(model_dir: Path, engine: str, **extra) -> CaptionConfig:
    # batch_size 2: the Ray run is four actor calls, so it can be stopped after the first.
    return CaptionConfig(model=str(model_dir), engine=engine, max_model_len=1024, batch_size=2, **SAMPLING, **extra)


def _rows(workdir: Path) -> dict[tuple[str, int], dict]:
    return {(r["video_id"], r["caption_index"]): r for r in read_manifest(workdir, CAPTIONS).to_pylist()}


class _StopAfter(PartWriter):
    """A writer that dies (as Ctrl-C would) once ``limit`` rows were written."""

    limit = 4  # the two missing_grid rows (written first) and the first Ray answers

    def write(self, rows):
        if self.rows_written >= self.limit:
            raise KeyboardInterrupt
        super().write(rows)


@pytest.fixture(scope="module")
def resumed(ray_cluster, model_dir, tmp_path_factory):
    """A Ray run stopped after its first rows, then resumed on the local engine."""
    import mama_augment.caption.stage as stage

    workdir = _workdir(tmp_path_factory.mktemp("ray-caption") / "resumed")
    stopping = _config(model_dir, "ray", flush_rows=1, flush_interval_s=3600)  # every row written at once
    patch = pytest.MonkeyPatch()
    patch.setattr(stage, "PartWriter", _StopAfter)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_caption(stopping, workdir, progress=False)
    finally:
        patch.undo()
    saved = _rows(workdir)
    report = run_caption(_config(model_dir, "local"), workdir, progress=False)
    return workdir, saved, report


@needs_ray
@needs_vllm
def test_interrupted_ray_run_resumes_on_the_local_engine_without_duplicates(resumed):
    workdir, saved, report = resumed
    total = NUM_VIDEOS * SAMPLING["num_captions"]
    assert len(saved) == _StopAfter.limit
    kept = sum(r["status"] == "ok" for r in saved.values())
    assert kept == 2  # two answers made on Ray survived
    # the failed rows (missing grids) are tried again, as every rerun does by default
    assert (report.skipped, report.done + report.failed) == (kept, total - kept)
    assert report.extra.get("engine") is None and report.extra["backend"] == "offline"
    rows = read_manifest(workdir, CAPTIONS).to_pylist()
    assert len(rows) == total and len({(r["video_id"], r["caption_index"]) for r in rows}) == total
    assert len(read_manifest(workdir, CAPTIONS)) == total and manifest_path(workdir, CAPTIONS).exists()
    after = _rows(workdir)
    for key, row in saved.items():
        if row["status"] == "ok":  # what was done is kept; failed rows were tried again
            assert after[key]["created_at"] == row["created_at"], key
        else:
            assert after[key]["created_at"] > row["created_at"], key


@needs_ray
@needs_vllm
def test_ray_engine_writes_the_same_rows_as_the_local_engine(resumed, model_dir, tmp_path):
    mixed, _, local_report = resumed  # 2 rows made on Ray, 6 on the local engine
    workdir = _workdir(tmp_path / "ray")
    report = run_caption(_config(model_dir, "ray"), workdir, progress=False)

    total = NUM_VIDEOS * SAMPLING["num_captions"]
    assert (report.total, report.done, report.failed, report.skipped) == (total, total - 2, 2, 0)
    assert report.failures_by_kind == {"missing_grid": 2} and report.exit_code == 1
    assert (report.extra["engine"], report.extra["replicas"], report.extra["backend"]) == ("ray", 1, "offline")
    assert report.extra["regenerated"] + report.extra["truncated"] > 0  # the regeneration ran in the actor

    expected, got = _rows(mixed), _rows(workdir)
    assert set(got) == set(expected)
    for key, want in expected.items():
        # Seeded sampling gives the same text on both engines: the same engine
        # arguments, requests and per-caption seeds (vLLM on CPU is deterministic here).
        assert {c: got[key][c] for c in SAME} == {c: want[c] for c in SAME}, key
    for index in range(SAMPLING["num_captions"]):
        row = got[(MISSING, index)]
        assert (row["status"], row["error_kind"], row["caption"]) == ("failed", "missing_grid", None)
        assert str(workdir / "grids" / f"{MISSING}.jpg") in row["error"]
    for row in got.values():
        if row["status"] == "ok":
            assert row["caption"] and row["latency_s"] > 0 and row["completion_tokens"] == SAMPLING["max_tokens"]
            assert json.loads(row["sampling"])["temperature"] == SAMPLING["temperature"]
    # Switching engines never redoes work: each workdir is complete for the other engine
    # (the two rows of the missing grid kept failed, as --skip-failed asks).
    for folder, engine in ((workdir, "local"), (mixed, "ray")):
        again = run_caption(_config(model_dir, engine, retry_failed=False), folder, progress=False)
        assert (again.done, again.failed, again.skipped, again.extra["pending"]) == (0, 2, total - 2, 0)


@needs_ray
@needs_vllm
def test_cli_engine_ray_with_nothing_pending(resumed, model_dir):
    workdir, _, _ = resumed
    result = CliRunner().invoke(app, [
        "caption", "-w", str(workdir), "--model", str(model_dir), "--engine", "ray", "--replicas", "2",
        "--num-cpus", "1", "--max-tokens", "8", "--ignore-eos", "--temperature", "0.7", "--seed", "7",
        "--num-captions", "2", "--max-words", "1", "--no-progress", "--skip-failed",
    ])
    assert result.exit_code == 1, result.output  # the rows of the missing grid, kept failed
    assert "0 done, 8 skipped, 2 failed" in result.output


@needs_ray
@pytest.mark.parametrize("args, message", [
    (["--num-gpus", "1"], "--num-gpus"),
    (["--tensor-parallel-size", "2", "--num-gpus", "1"], "--tensor-parallel-size"),
])
def test_resources_the_cluster_cannot_give_are_a_usage_error(ray_cluster, tmp_path, args, message):
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=1, failed=0)
    result = CliRunner().invoke(app, ["caption", "-w", str(workdir), "--engine", "ray", "--no-progress", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not read_manifest(workdir, CAPTIONS).num_rows  # nothing written, nothing started


@pytest.mark.parametrize("args, message", [
    (["--engine", "spark"], "--engine"),
    (["--engine", "ray", "--replicas", "0"], "--replicas"),
    (["--engine", "ray", "--num-cpus", "0"], "--num-cpus"),
    (["--engine", "ray", "--endpoint", "http://127.0.0.1:9/v1"], "--engine local"),
])
def test_cli_bad_engine_options_exit_2(tmp_path, args, message):
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=1, failed=0)
    result = CliRunner().invoke(app, ["caption", "-w", str(workdir), "--no-progress", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_engine_options_do_not_change_the_config_hash():
    base = CaptionConfig()
    moved = CaptionConfig(engine="ray", ray_address="auto", replicas=8, num_cpus=4, num_gpus=2, tensor_parallel_size=2)
    assert moved.config_hash("m", "p") == base.config_hash("m", "p")


def test_an_actor_that_cannot_start_its_engine_fails_the_run_with_the_stage_message():
    from mama_augment.engines.ray import run_error

    # What the driver gets when CaptionWorker.__init__ raised (Ray keeps only the text).
    died = RuntimeError(
        "The actor died because of an error raised in its creation task, \x1b[36mray::MapWorker(MapBatches("
        "CaptionWorker)).__init__()\x1b[39m (pid=1, ip=10.0.0.2)\nTraceback (most recent call last):\n"
        '  File "offline.py", line 93, in __init__\n'
        "mama_augment.errors.MissingDependency: vllm is required for the offline caption backend but is not "
        "installed; install it with: pip install 'mama-augment[vllm]'"
    )
    error = run_error(died)
    assert error.exit_code == 2
    assert str(error) == ("on Ray: vllm is required for the offline caption backend but is not installed; "
                          "install it with: pip install 'mama-augment[vllm]'")
    other = run_error(RuntimeError("node lost\nObjectLostError: gone"))
    assert other.exit_code == 1 and "node lost | ObjectLostError: gone" in str(other)


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=1, failed=0)
    result = CliRunner().invoke(app, ["caption", "-w", str(workdir), "--engine", "ray", "--no-progress"])
    assert result.exit_code == 2 and "pip install 'mama-augment[ray]'" in result.output, result.output
