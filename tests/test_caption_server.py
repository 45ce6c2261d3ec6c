"""The server backend against small in-test HTTP servers on 127.0.0.1 that answer
correctly, fail with 500, send garbage, hang, or are not there at all."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mama_augment.caption.config import CaptionConfig
from mama_augment.caption.stage import run_caption
from mama_augment.manifest import CAPTIONS, read_manifest
from tiny_llava import make_keyframes_workdir


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode  # ok | 500 | garbage | hang | flaky | reject | slow | huge | announced
        self.posts = 0
        self.sent = 0  # body bytes the huge mode got out before the client hung up
        self.bodies: list[dict] = []
        self.headers_seen: list[dict] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, json.dumps({"data": [{"id": "served-tiny"}]}).encode())

    def _misbehave(self, mode: str, server: "FakeOpenAI") -> None:
        """slow: one byte every 0.2 s (the answer would take minutes); huge: 64 MiB and
        no length; announced: says 10 GiB up front."""
        try:
            self.send_response(200)
            if mode == "slow":
                self.send_header("Content-Length", "600")
                self.end_headers()
                for _ in range(600):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif mode == "huge":
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(1024):
                    self.wfile.write(b" " * 2**16)
                    server.sent += 2**16
            else:
                self.send_header("Content-Length", str(10 * 2**30))
                self.end_headers()
                self.wfile.write(b"{")
        except OSError:  # the client hung up, as it should
            pass

    def do_POST(self):
        server: FakeOpenAI = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.posts += 1
            attempt = server.posts
            server.bodies.append(body)
            server.headers_seen.append(dict(self.headers))
        mode = server.mode
        if mode == "flaky":
            mode = "500" if attempt % 2 else "ok"
        if mode == "500":
            return self._send(500, b'{"error": "engine died"}')
        if mode == "garbage":
            return self._send(200, b"<html>not json</html>")
        if mode == "hang":
            server.stop.wait(5)
            return
        if mode == "reject":
            return self._send(400, b'{"error": "prompt too long"}')
        if mode in ("slow", "huge", "announced"):
            return self._misbehave(mode, server)
        answer = {
            "choices": [{"message": {"role": "assistant", "content": f"The image shows seed {body['seed']}."}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 5},
        }
        self._send(200, json.dumps(answer).encode())


@pytest.fixture
def serve():
    servers = []

    def start(mode):
        server = FakeOpenAI(mode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def workdir(tmp_path):
    return make_keyframes_workdir(tmp_path / "work", num_videos=3, failed=1)


def config(endpoint: str, **overrides) -> CaptionConfig:
    values = dict(model="tiny", backend="server", endpoint=endpoint, concurrency=4, request_timeout_s=0.5,
                  max_retries=2, retry_backoff_s=0.01)
    values.update(overrides)
    return CaptionConfig(**values)


def table(workdir):
    return sorted(read_manifest(workdir, CAPTIONS).to_pylist(), key=lambda r: (r["video_id"], r["caption_index"]))


def test_a_working_endpoint_gives_ok_rows(workdir, serve, monkeypatch):
    monkeypatch.setenv("MY_KEY", "secret-123")
    server = serve("ok")
    report = run_caption(config(server.endpoint, num_captions=2, api_key_env="MY_KEY"), workdir, progress=False)
    assert (report.done, report.failed, report.exit_code) == (6, 0, 0)
    rows = table(workdir)
    assert all(r["status"] == "ok" and r["backend"] == "server" for r in rows)
    # The server serves one model under another name: that name is used and recorded.
    assert {r["model"] for r in rows} == {"served-tiny"}
    assert {b["model"] for b in server.bodies} == {"served-tiny"}
    assert rows[0]["caption"] == f"Seed {rows[0]['seed']}." and rows[0]["prompt_tokens"] == 40
    body = server.bodies[0]
    image, text = body["messages"][0]["content"]
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/")
    assert "rows by" in text["text"] and body["temperature"] == 0.2 and body["max_tokens"] == 96
    assert server.headers_seen[0]["Authorization"] == "Bearer secret-123"
    assert len({r["seed"] for r in rows}) == 6


def test_transient_server_errors_are_retried(workdir, serve):
    server = serve("flaky")  # every other answer is a 500
    report = run_caption(config(server.endpoint, concurrency=1), workdir, progress=False)
    assert report.done == 3 and report.failed == 0 and server.posts == 6


@pytest.mark.parametrize(
    "mode, kind",
    [("500", "server_error"), ("garbage", "malformed_response"), ("hang", "timeout"), ("reject", "request_rejected")],
)
def test_a_failing_endpoint_gives_failed_rows_not_a_crash(workdir, serve, mode, kind):
    server = serve(mode)
    started = time.monotonic()
    report = run_caption(config(server.endpoint), workdir, progress=False)
    assert (report.done, report.failed, report.exit_code) == (0, 3, 1)
    assert report.failures_by_kind == {kind: 3}
    rows = table(workdir)
    assert all(r["status"] == "failed" and r["error_kind"] == kind and r["error"] for r in rows)
    expected_posts = 3 if mode == "reject" else 3 * 3  # 4xx is final; the rest: 1 try + 2 retries
    assert server.posts == expected_posts
    assert time.monotonic() - started < 10


def test_a_closed_port_gives_refused_rows(workdir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = run_caption(config(f"http://127.0.0.1:{port}/v1"), workdir, progress=False)
    assert report.failures_by_kind == {"connection_refused": 3} and report.exit_code == 1
    assert "after 3 attempts" in table(workdir)[0]["error"]
