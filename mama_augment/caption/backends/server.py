"""Caption through any OpenAI-compatible chat endpoint (``vllm serve MODEL``).

Standard library only: a pool of threads, each with its own keep-alive HTTP
connection, keeps ``concurrency`` requests in flight; results are yielded as they
finish. The work per request on this side (read the JPEG, base64, JSON) is a few
hundred microseconds, far below what the engine spends, so threads are plenty and no
async HTTP dependency is needed.

Refused connections, resets, timeouts, 5xx / 429 answers and malformed bodies are
retried with exponential backoff and jitter; after ``max_retries`` the request
becomes a failed row whose ``error_kind`` says which of these it was. Other 4xx
answers (a prompt too long for the model, a wrong model name) are not retried.

A server cannot hold the run: ``timeout_s`` is a deadline for the whole of one
request (a watchdog closes the connection when it passes, however slowly the answer
trickles in), and an answer larger than ``MAX_RESPONSE_BYTES`` is dropped unread
(``response_too_large``, not retried).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from mama_augment.caption.backends.base import (
    CaptionBackend,
    CaptionRequest,
    Generation,
    Sampling,
    grid_data_url,
)
from mama_augment.caption.presets import ModelSpec
from mama_augment.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_API_KEY_ENVS = ("OPENAI_API_KEY", "VLLM_API_KEY")
_MAX_BACKOFF_S = 30.0
# A caption answer is a few kilobytes; anything far larger is not one.
MAX_RESPONSE_BYTES = 8 * 2**20
_READ_CHUNK = 64 * 1024


class _Retryable(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Final(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def api_key_from_env(name: str | None) -> str | None:
    names = (name,) if name else DEFAULT_API_KEY_ENVS
    for env in names:
        if os.environ.get(env):
            return os.environ[env]
    return None


class ServerBackend(CaptionBackend):
    name = "server"

    def __init__(
        self,
        spec: ModelSpec,
        endpoint: str,
        sampling: Sampling,
        *,
        served_model_name: str | None = None,
        api_key: str | None = None,
        concurrency: int = 64,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        jpeg_quality: int = 90,
    ):
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--endpoint must look like http://HOST:PORT/v1, got {endpoint!r}")
        if concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        base = parts.path.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = base
        self.endpoint = f"{parts.scheme}://{parts.netloc}{base}"
        self.spec = spec
        self.sampling = sampling
        self.model_name = served_model_name or spec.model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.jpeg_quality = jpeg_quality
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        if served_model_name is None:
            self._adopt_served_model()

    # -- connection handling -------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _http(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        conn = self._connection()
        deadline = time.monotonic() + self.timeout_s
        expired = threading.Event()

        def expire() -> None:  # the deadline passed: unblock whatever read is waiting
            expired.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request(method, path, body=body, headers=self.headers)
            response = conn.getresponse()
            data = self._read_body(response, deadline, expired)
        except _Final:
            self._drop_connection()
            raise
        except (socket.timeout, TimeoutError) as exc:
            self._drop_connection()
            raise _Retryable("timeout", f"no answer within {self.timeout_s:g} s") from exc
        except ConnectionRefusedError as exc:
            self._drop_connection()
            raise _Retryable("connection_refused", f"connection refused by {self.host}:{self.port}") from exc
        except (http.client.HTTPException, OSError) as exc:
            self._drop_connection()
            if expired.is_set():
                raise _Retryable("timeout", f"no whole answer within {self.timeout_s:g} s") from exc
            raise _Retryable("connection_error", f"{type(exc).__name__}: {exc}") from exc
        finally:
            watchdog.cancel()
        if expired.is_set() or response.getheader("connection", "").lower() == "close":
            self._drop_connection()
        return response.status, data

    def _read_body(self, response: http.client.HTTPResponse, deadline: float, expired: threading.Event) -> bytes:
        """The body, read in chunks: at most ``MAX_RESPONSE_BYTES``, before ``deadline``."""
        length = response.getheader("content-length")
        if length and length.strip().isdigit() and int(length) > MAX_RESPONSE_BYTES:
            raise _Final("response_too_large", f"the server announced {int(length)} bytes; "
                                               f"an answer is at most {MAX_RESPONSE_BYTES} bytes")
        chunks, size = [], 0
        while True:
            chunk = response.read(_READ_CHUNK)
            if expired.is_set() or time.monotonic() > deadline:
                raise TimeoutError("deadline passed")
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise _Final("response_too_large", f"the answer passed {MAX_RESPONSE_BYTES} bytes")
            chunks.append(chunk)

    def _adopt_served_model(self) -> None:
        """If the server serves exactly one model under another name, use that name.

        ``vllm serve /models/llava`` serves the folder path as the name; the user who
        typed ``--model llava`` means that model. Best effort: a dead server is not an
        error here (its requests will fail as rows).
        """
        try:
            status, data = self._http("GET", f"{self.base_path}/models", None)
            names = [m["id"] for m in json.loads(data)["data"]] if status == 200 else []
        except Exception:  # noqa: BLE001 - any failure just keeps the given name
            return
        finally:
            self._drop_connection()
        if names and self.model_name not in names and len(names) == 1:
            log.warning("endpoint serves %r, not %r: using %r", names[0], self.model_name, names[0])
            self.model_name = names[0]

    # -- one request ---------------------------------------------------------
    def _body(self, request: CaptionRequest) -> bytes:
        image_part = {"type": "image_url", "image_url": {"url": grid_data_url(
            request.grid_path, self.jpeg_quality, self.spec.pad_to_square, self.spec.image_side)}}
        payload = {
            "model": self.model_name,
            "messages": self.spec.messages(request.prompt, image_part),
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_tokens": self.sampling.max_tokens,
            "seed": request.seed,
            "n": 1,
        }
        if self.sampling.ignore_eos:
            payload["ignore_eos"] = True  # vLLM extension; other servers ignore it
        return json.dumps(payload).encode()

    @staticmethod
    def _parse(status: int, data: bytes) -> Generation:
        if status >= 500 or status == 429:
            kind = "rate_limited" if status == 429 else "server_error"
            raise _Retryable(kind, f"HTTP {status}: {data[:200].decode('utf-8', 'replace')}")
        if status >= 400:
            raise _Final("request_rejected", f"HTTP {status}: {data[:300].decode('utf-8', 'replace')}")
        try:
            answer = json.loads(data)
            choice = answer["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable("malformed_response", f"unexpected answer ({exc}): {data[:120]!r}") from exc
        usage = answer.get("usage") or {}
        return Generation(
            text=text,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )

    def _one(self, request: CaptionRequest) -> Generation:
        try:
            body = self._body(request)
        except OSError as exc:
            return Generation(error_kind="unreadable_grid", error=f"{request.grid_path}: {exc}")
        path = f"{self.base_path}/chat/completions"
        start = time.perf_counter()
        last: _Retryable | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(_MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * random.uniform(0.5, 1.5))
            try:
                generation = self._parse(*self._http("POST", path, body))
            except _Retryable as exc:
                last = exc
                continue
            except _Final as exc:
                return Generation(error_kind=exc.kind, error=exc.message, latency_s=time.perf_counter() - start)
            generation.latency_s = time.perf_counter() - start
            return generation
        return Generation(
            error_kind=last.kind if last else "client_error",
            error=f"{last.message if last else 'no attempt made'} (after {self.max_retries + 1} attempts)",
            latency_s=time.perf_counter() - start,
        )

    # -- the interface -------------------------------------------------------
    def generate(self, requests: Sequence[CaptionRequest]) -> Iterator[tuple[CaptionRequest, Generation]]:
        pending = iter(requests)
        in_flight: dict[Future, CaptionRequest] = {}
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="caption-http")
        try:
            while True:
                while len(in_flight) < self.concurrency:
                    request = next(pending, None)
                    if request is None:
                        break
                    in_flight[pool.submit(self._one, request)] = request
                if not in_flight:
                    return
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    request = in_flight.pop(future)
                    try:
                        generation = future.result()
                    except Exception as exc:  # noqa: BLE001 - a bug for one request stays a row
                        generation = Generation(error_kind="client_error", error=f"{type(exc).__name__}: {exc}")
                    yield request, generation
        finally:
            # On Ctrl-C do not wait for answers that would not be written anyway.
            pool.shutdown(wait=not in_flight, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
