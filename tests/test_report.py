"""The HTML report: its structure without a browser, then the page in headless Chromium.

``make_workdir`` builds a small synthetic work folder (manifests written with the
real PartWriter, JPEGs and PNGs made with Pillow, a fake training run); the status
tests use it too.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import mama_augment.cli.report  # noqa: F401  (registers the command)
from mama_augment.cli import app
from mama_augment.manifest import CAPTIONS, KEYFRAMES, PartWriter, compact, utc_now
from mama_augment.report import build_report, build_report_summary
from mama_augment.datasets import captions_by_video
from mama_augment.report.html import eval_tables

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "pink"]
ANIMALS = ["zebra", "otter", "falcon", "walrus", "lynx", "heron", "bison"]

EVAL = {
    "test": {
        "videos": 5,
        "captions": 7,
        "text_to_video": {"R@1": 42.5, "R@5": 80.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.4},
        "video_to_text": {"R@1": 40.0, "R@5": 80.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.6},
        "per_concept": [
            {"concept": "animals", "captions": 5, "videos": 4, "t2v_R@1": 60.0, "t2v_R@5": 100.0},
            {"concept": "vehicles", "captions": 2, "videos": 1, "t2v_R@1": 0.0, "t2v_R@5": 50.0},
        ],
        "split": "test",
    }
}


def _jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG", quality=80)


def make_workdir(
    root: Path,
    n_ok: int = 5,
    captioned: int | None = None,
    with_run: bool = True,
    compact_captions: bool = False,
) -> dict:
    """A work folder with ``n_ok`` ok videos (3 keyframes each), 2 failed inputs, captions
    for the first ``captioned`` videos (one caption failed), an original-captions CSV
    and a training run. Returns facts the tests check against."""
    workdir = root / "work"
    workdir.mkdir(parents=True)
    captioned = n_ok if captioned is None else captioned
    now = utc_now()
    rows = []
    for i in range(n_ok):
        video_id = f"clips/v{i:03d}"
        colour = (40 * i % 256, 120, 200 - 20 * i % 200)
        grid = f"grids/{video_id}.jpg"
        _jpeg(workdir / grid, (160, 90), colour)
        frames = []
        for k in range(3):
            rel = f"frames/{video_id}/{k:03d}.jpg"
            _jpeg(workdir / rel, (48, 27), colour)
            frames.append(rel)
        rows.append({
            "video_id": video_id, "path": f"/data/{video_id}.mp4", "status": "ok", "media_type": "video",
            "decode_backend": "pyav", "duration_s": 4.0 + i, "fps": 25.0, "width": 320, "height": 180,
            "num_sampled": 8, "keyframe_indices": [0, 3, 6], "keyframe_times_s": [0.0, 1.5, 3.0],
            "keyframe_paths": frames, "grid_path": grid, "grid_rows": 1, "grid_cols": 3,
            "embedder": "pixels", "embedding_dim": 4, "keyframe_embeddings": [[0.1, 0.2, 0.3, 0.4]] * 3,
            "config_hash": "abc", "created_at": now,
        })
    failed = [
        ("bad/empty", "zero_byte", "the file is empty (0 bytes)"),
        ("bad/notes", "not_a_video", "not a video or image: notes.txt is text"),
    ]
    for video_id, kind, message in failed:
        rows.append({"video_id": video_id, "path": f"/data/{video_id}", "status": "failed",
                     "error_kind": kind, "error": message, "created_at": now})
    with PartWriter(workdir, KEYFRAMES) as writer:
        writer.write(rows[: n_ok // 2])
        writer.write(rows[n_ok // 2:])
    compact(workdir, KEYFRAMES)

    captions = []
    for i in range(captioned):
        captions.append({
            "video_id": f"clips/v{i:03d}", "caption_index": 0, "status": "ok",
            "caption": f"A {COLOURS[i % 7]} {ANIMALS[i % 7]} walks across the video.",
            "model": "llava-hf/llava-1.5-7b-hf", "preset": "llava", "backend": "offline",
            "prompt_name": "default", "seed": 100 + i, "created_at": now,
        })
    if captioned:
        captions.append({
            "video_id": "clips/v000", "caption_index": 1, "status": "failed", "error_kind": "server_error",
            "error": "HTTP 500 after 4 retries", "model": "llava-hf/llava-1.5-7b-hf", "preset": "llava",
            "backend": "server", "prompt_name": "default", "seed": 7, "created_at": now,
        })
        with PartWriter(workdir, CAPTIONS) as writer:
            writer.write(captions)
        if compact_captions:
            compact(workdir, CAPTIONS)

    originals = root / "originals.csv"
    frame = pd.DataFrame({
        "video_id": ["clips/v000", "clips/v000", "clips/v001", "gone/v999"],
        "caption": ["a person films a striped animal", "zebra crossing a road",
                    "an otter swims", "this id has no keyframes row"],
    })
    frame.to_csv(originals, index=False)

    run_dir = workdir / "runs" / "mama-features-seed0"
    if with_run:
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(
            {"loss": "mama", "backbone": "features", "margin": 0.1, "epochs": 2, "captions": str(originals)}))
        (run_dir / "metrics.jsonl").write_text("".join(
            json.dumps({"kind": "train", "step": s, "epoch": 0, "loss": 2.0 - 0.1 * s}) + "\n" for s in range(3)))
        (run_dir / "eval.json").write_text(json.dumps(EVAL))
        for name, colour in (("training.png", (250, 250, 250)), ("loss_weight.png", (230, 240, 255))):
            Image.new("RGB", (120, 80), colour).save(run_dir / name)
    return {
        "workdir": workdir, "originals": originals, "n_ok": n_ok, "n_failed": len(failed),
        "captioned": captioned, "run_dir": run_dir,
    }


def page_data(index: Path) -> dict:
    text = index.read_text(encoding="utf-8")
    match = re.search(r'<script id="mama-data" type="application/json">(.*?)</script>', text, re.S)
    assert match, "data blob missing"
    data = json.loads(match.group(1))
    data["videos"] = []  # the cards, from the data files the page loads
    for number in range(data["chunks"]):
        script = (index.parent / "data" / f"videos-{number:04d}.js").read_text(encoding="utf-8")
        call = re.fullmatch(r'mamaReportData\("videos",(\d+),(.*)\);\n', script, re.S)
        assert call and int(call.group(1)) == number, "data file malformed"
        data["videos"].extend(json.loads(call.group(2)))
    return data


def _image_urls(data: dict) -> list[str]:
    urls = []
    for video in data["videos"]:
        urls.append(video["grid"])
        urls.extend(frame[0] for frame in video["frames"])
    return urls


# ----------------------------------------------------------------------------- structure


def test_report_structure(tmp_path):
    facts = make_workdir(tmp_path)
    index = build_report(facts["workdir"], captions_file=facts["originals"], page_size=3)
    assert index == facts["workdir"] / "report" / "index.html"
    text = index.read_text(encoding="utf-8")
    data = page_data(index)

    # One record per ok video, in video_id order, with grid, 3 keyframes and timestamps.
    assert [v["id"] for v in data["videos"]] == [f"clips/v{i:03d}" for i in range(facts["n_ok"])]
    assert data["pageSize"] == 3
    first = data["videos"][0]
    assert [f[1] for f in first["frames"]] == [0.0, 1.5, 3.0]
    # Original captions beside every generated caption (ok and failed, with provenance).
    assert first["orig"] == ["a person films a striped animal", "zebra crossing a road"]
    assert [(g["i"], g["ok"]) for g in first["gen"]] == [(0, True), (1, False)]
    assert first["gen"][0]["t"].startswith("A red zebra")
    assert first["gen"][0]["s"] == 100 and first["gen"][0]["p"] == "default"
    assert "llava" in first["gen"][0]["m"]
    assert first["gen"][1]["k"] == "server_error"
    assert "orig" not in data["videos"][2]

    # Every image is a relative URL that exists on disk from the report folder.
    for url in _image_urls(data):
        assert url and not url.startswith(("/", "http:", "https:", "file:"))
        assert (index.parent / unquote(url)).is_file(), url
    # No network: nothing is fetched from elsewhere.
    assert not re.search(r'(src|href)="(https?:)?//', text)

    # Search box, pager, script; failed inputs with reasons from both manifests.
    assert 'id="search"' in text and 'class="pager"' in text and "<script>" in text
    failed = re.findall(r'<tr class="failed-row">(.*?)</tr>', text, re.S)
    assert len(failed) == facts["n_failed"] + 1
    assert "the file is empty (0 bytes)" in text and "HTTP 500 after 4 retries" in text
    # Totals per stage.
    totals = text[text.index('id="totals"'): text.index('id="videos"')]
    assert re.search(r"<th>keyframes</th><td class=\"num\">7</td><td class=\"num\">5</td><td class=\"num\">2</td>", totals)
    assert re.search(r"<th>captions</th><td class=\"num\">6</td><td class=\"num\">5</td><td class=\"num\">1</td>", totals)
    assert "3 caption(s) for 2 of 5 videos" in totals and "1 video_id(s) in that file have no keyframes row" in totals
    # The training run: its pictures and evaluation, per-concept R@1 included.
    runs = text[text.index('id="runs"'): text.index('id="failed"')]
    assert "runs/mama-features-seed0/training.png" in runs and "loss_weight.png" in runs
    assert "text_to_video" in runs and "42.5" in runs
    assert "Per-concept" in runs and "vehicles" in runs


def test_report_copy_images_elsewhere(tmp_path):
    facts = make_workdir(tmp_path, n_ok=2, with_run=True)
    out = tmp_path / "shared-report"
    summary = build_report_summary(facts["workdir"], output=out, copy_images=True)
    assert summary.path == out / "index.html" and summary.videos == 2 and summary.runs == 1
    # Without --captions the run's recorded captions file is used.
    assert summary.originals_file == str(facts["originals"]) and summary.originals == 3
    data = page_data(summary.path)
    for url in _image_urls(data):
        assert url.startswith("media/") and (out / unquote(url)).is_file()
    assert (out / "media/runs/mama-features-seed0/training.png").is_file()
    # The folder stands alone: moving it keeps every image.
    moved = tmp_path / "moved"
    shutil.move(str(out), moved)
    assert all((moved / unquote(u)).is_file() for u in _image_urls(page_data(moved / "index.html")))


def test_report_missing_images_and_empty_workdir(tmp_path):
    facts = make_workdir(tmp_path, n_ok=2, captioned=0, with_run=False)
    (facts["workdir"] / "grids/clips/v001.jpg").unlink()
    summary = build_report_summary(facts["workdir"])
    assert summary.missing_images == 1
    video = page_data(summary.path)["videos"][1]
    assert video["grid"] is None and video["gridMissing"] == "grids/clips/v001.jpg"
    assert "gen" not in video

    empty = tmp_path / "empty"
    empty.mkdir()
    index = build_report(empty)
    assert page_data(index)["videos"] == [] and "No failed inputs" in index.read_text()


def test_original_captions_formats(tmp_path):
    rows = pd.DataFrame({"video_id": ["a", "a", "b"], "caption": ["one", " two ", "three"]})
    rows.to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    rows.to_parquet(tmp_path / "c.parquet")
    for name in ("c.jsonl", "c.parquet"):
        assert captions_by_video(tmp_path / name) == {"a": ["one", "two"], "b": ["three"]}
    pd.DataFrame({"video_id": ["a"], "text": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(Exception, match="cannot tell the format"):
        captions_by_video(tmp_path / "bad.csv")


def test_eval_tables_shapes():
    html = eval_tables(EVAL)
    assert 'data-split="test"' in html and "Per-concept" in html and "animals" in html
    bare = eval_tables({"text_to_video": {"R@1": 12.5}, "per_concept": {"dogs": {"t2v_R@1": 3.0}}})
    assert "12.5" in bare and "dogs" in bare


def test_report_cli(tmp_path):
    facts = make_workdir(tmp_path, n_ok=2)
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--workdir", str(facts["workdir"]),
                                 "--captions", str(facts["originals"]), "--page-size", "1"])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and "2 videos" in result.output and "file://" in result.output
    assert page_data(facts["workdir"] / "report" / "index.html")["pageSize"] == 1

    missing = runner.invoke(app, ["report", "--workdir", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad = runner.invoke(app, ["report", "--workdir", str(facts["workdir"]), "--captions", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


# ----------------------------------------------------------------------------- browser


def find_browser() -> str | None:
    explicit = os.environ.get("MAMA_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4).

    Only the standard library: ``--remote-debugging-pipe`` takes NUL-separated JSON
    messages, so no websocket client and no browser download are needed.
    """

    FLAGS = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
        "--remote-debugging-pipe",
    ]

    def __init__(self, executable: str, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="mama-chromium-")
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()

        def wire_fds() -> None:  # runs in the child: the protocol wants fds 3 (in) and 4 (out)
            a, b = os.dup(to_r), os.dup(from_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.process = subprocess.Popen(
            [executable, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_fds,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True,
                  width=1280, height=1000, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                if "method" in reply:
                    self.events.append(reply)
            ready, _, _ = select.select([self._from_r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"no answer to {method} within {self.timeout} s")
            chunk = os.read(self._from_r, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed the pipe")
            self._buffer += chunk

    def evaluate(self, expression: str, await_promise: bool = False):
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"page never satisfied: {expression}")

    def screenshot(self, path: Path) -> None:
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        self.call("Emulation.setDeviceMetricsOverride", session=True,
                  width=1280, height=min(int(height), 6000), deviceScaleFactor=1, mobile=False)
        shot = self.call("Page.captureScreenshot", session=True, format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def problems(self) -> list[str]:
        """Script exceptions, console errors and failed loads seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(json.dumps(params.get("args", []))[:300])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(params["entry"].get("text", "")[:300])
        return found

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._to_w)
        os.close(self._from_r)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser():
    executable = find_browser()
    if executable is None:
        pytest.skip("no Chromium found (install Debian's chromium, e.g. bash .ci/setup --browser, or set MAMA_CHROMIUM)")
    instance = Browser(executable)
    try:
        yield instance
    finally:
        instance.close()


CARD_COUNT = "document.querySelectorAll('#cards .card').length"
CARD_IDS = "Array.from(document.querySelectorAll('#cards .card')).map(c => c.dataset.videoId)"
# Load every image of the page now (lazy ones too) and report their natural widths.
IMAGE_WIDTHS = """
Promise.all(Array.from(document.images).map(img => {
  img.loading = 'eager';
  return img.decode().then(() => [img.getAttribute('src'), img.naturalWidth],
                           () => [img.getAttribute('src'), 0]);
}))
"""


def _type(browser: Browser, text: str) -> None:
    browser.evaluate("(() => { const s = document.getElementById('search'); s.focus(); s.select(); })()")
    browser.call("Input.insertText", session=True, text=text)
    browser.wait_for(f"document.getElementById('cards').dataset.query === {json.dumps(text.strip())}")


def test_report_in_headless_chromium(tmp_path, browser):
    facts = make_workdir(tmp_path, n_ok=5)
    index = build_report(facts["workdir"], captions_file=facts["originals"], page_size=3)
    browser.call("Page.navigate", session=True, url=index.resolve().as_uri())
    browser.wait_for("document.readyState === 'complete' && document.body.dataset.ready === '1'")

    # Page 1 of 2 shows 3 cards; every image loads (keyframes, grids, run pictures).
    assert browser.evaluate(CARD_COUNT) == 3
    assert browser.evaluate("document.querySelector('#pager-top .label').textContent") == "page 1 of 2"
    widths = browser.evaluate(IMAGE_WIDTHS, await_promise=True)
    assert len(widths) == 3 * (1 + 3) + 2
    assert [src for src, width in widths if width <= 0] == []
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "report.png")

    browser.evaluate("document.querySelector('#pager-top .next').click()")
    browser.wait_for("document.getElementById('cards').dataset.page === '1'")
    assert browser.evaluate(CARD_IDS) == ["clips/v003", "clips/v004"]

    # Search: by a caption word (generated or original), by video_id, all words must match.
    _type(browser, "falcon")
    assert browser.evaluate(CARD_IDS) == ["clips/v002"]
    _type(browser, "striped")
    assert browser.evaluate(CARD_IDS) == ["clips/v000"]
    _type(browser, "V004")
    assert browser.evaluate(CARD_IDS) == ["clips/v004"]
    _type(browser, "blue lynx")
    assert browser.evaluate(CARD_COUNT) == 0
    assert "0 of 5 videos match" in browser.evaluate("document.getElementById('match-count').textContent")
    _type(browser, "walks")
    assert browser.evaluate(CARD_COUNT) == 3
    assert browser.evaluate("location.hash") == "#q=walks"
    browser.screenshot(ARTIFACTS / "report-search.png")

    # A query in the URL fragment is applied on load and when it changes (shareable views).
    browser.call("Page.navigate", session=True, url="about:blank")
    browser.wait_for("location.href === 'about:blank'")
    browser.call("Page.navigate", session=True, url=index.resolve().as_uri() + "#q=otter")
    browser.wait_for("document.body && document.body.dataset.ready === '1' && document.getElementById('cards').dataset.query === 'otter'")
    assert browser.evaluate(CARD_IDS) == ["clips/v001"]
    assert browser.evaluate("document.getElementById('search').value") == "otter"
    browser.evaluate("location.hash = '#q=clips&page=2'")
    browser.wait_for("document.getElementById('cards').dataset.query === 'clips'")
    assert browser.evaluate(CARD_IDS) == ["clips/v003", "clips/v004"]
    assert browser.problems() == []

    # A cut or hand-edited link with a broken %-escape searches for the text as it stands.
    browser.call("Page.navigate", session=True, url="about:blank")
    browser.wait_for("location.href === 'about:blank'")
    browser.call("Page.navigate", session=True, url=index.resolve().as_uri() + "#q=%E0%A4%A")
    browser.wait_for("document.body && document.body.dataset.ready === '1'")
    assert browser.evaluate("document.getElementById('search').value") == "%E0%A4%A"
    assert "0 of 5 videos match" in browser.evaluate("document.getElementById('match-count').textContent")
    browser.call("Page.navigate", session=True, url=index.resolve().as_uri() + "#q=zebra")
    browser.wait_for("document.getElementById('cards').dataset.query === 'zebra'")
    assert browser.evaluate(CARD_IDS) == ["clips/v000"]
    assert browser.problems() == []


def test_report_cards_in_data_files_of_a_few_videos(tmp_path, monkeypatch):
    # The page holds no card: they sit in data files of CHUNK_VIDEOS videos, so neither the
    # page nor the build grows with the dataset; a later, smaller report drops the extra files.
    import mama_augment.report.build as build

    monkeypatch.setattr(build, "CHUNK_VIDEOS", 2)
    facts = make_workdir(tmp_path, n_ok=5)
    index = build_report(facts["workdir"], captions_file=facts["originals"], page_size=3)
    names = sorted(p.name for p in (index.parent / "data").iterdir())
    assert names == [f"{kind}-{n:04d}.js" for kind in ("search", "videos") for n in range(3)]
    data = page_data(index)
    assert data["total"] == 5 and data["chunkSize"] == 2
    assert [v["id"] for v in data["videos"]] == [f"clips/v{i:03d}" for i in range(5)]
    assert "clips/v004" not in index.read_text(encoding="utf-8")
    monkeypatch.setattr(build, "CHUNK_VIDEOS", 5)
    build_report(facts["workdir"], captions_file=facts["originals"], page_size=3)
    assert sorted(p.name for p in (index.parent / "data").iterdir()) == ["search-0000.js", "videos-0000.js"]


def test_report_pages_and_search_across_data_files_in_chromium(tmp_path, browser, monkeypatch):
    import mama_augment.report.build as build

    monkeypatch.setattr(build, "CHUNK_VIDEOS", 2)
    facts = make_workdir(tmp_path, n_ok=5)
    index = build_report(facts["workdir"], captions_file=facts["originals"], page_size=3)
    browser.call("Page.navigate", session=True, url=index.resolve().as_uri())
    browser.wait_for("document.readyState === 'complete' && document.body.dataset.ready === '1'")
    assert browser.evaluate(CARD_IDS) == ["clips/v000", "clips/v001", "clips/v002"]  # two files
    browser.evaluate("document.querySelector('#pager-top .next').click()")
    browser.wait_for("document.getElementById('cards').dataset.page === '1'")
    assert browser.evaluate(CARD_IDS) == ["clips/v003", "clips/v004"]
    _type(browser, "V004")  # in the last file
    assert browser.evaluate(CARD_IDS) == ["clips/v004"]
    _type(browser, "falcon")
    assert browser.evaluate(CARD_IDS) == ["clips/v002"]
    assert browser.problems() == []
