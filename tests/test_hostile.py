"""Hostile and careless use of the CLI: nothing is written outside the work folder,
nothing of one video is deleted by another, and every mistake is one clear line with
exit code 2 (or 1 for damaged state), never a traceback.

Every test drives the command line itself (Typer's CliRunner, or a subprocess where
another process has to hold something).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.manifest import KEYFRAMES, WORKDIR_MARKER, CAPTIONS, read_manifest
from media import make_image
from test_caption_server import FakeOpenAI
from tiny_llava import make_keyframes_workdir
from workdir_helpers import lock_held_elsewhere, make_captioned_workdir
from train_helpers import make_workdir as make_train_workdir

runner = CliRunner()


def cli(*args: str, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def assert_clean_error(result, code: int = 2, mentions: str | None = None) -> str:
    """Exit ``code`` with one line on stderr (no traceback); returns that line."""
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}\n{result.output}"
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    if mentions is not None:
        assert mentions in lines[0], lines[0]
    return lines[0]


def keyframe_files(workdir: Path) -> list[Path]:
    rows = read_manifest(workdir, KEYFRAMES).to_pylist()
    return [workdir / p for r in rows if r["status"] == "ok" for p in [*r["keyframe_paths"], r["grid_path"]]]


def tree_state(root: Path, skip: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` except ``skip``: kind, size, mtime, content hash."""
    state = {}
    for folder, dirnames, filenames in os.walk(root):
        if Path(folder) == skip or skip in Path(folder).parents:
            dirnames[:] = []
            continue
        for name in dirnames:
            path = Path(folder) / name
            if path != skip:
                state[str(path.relative_to(root)) + "/"] = ("dir",)
        for name in filenames:
            path = Path(folder) / name
            stat = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            state[str(path.relative_to(root))] = ("file", stat.st_size, stat.st_mtime_ns, digest)
    return state


# ------------------------------------------------------------------ an OpenAI-style server


@pytest.fixture
def server():
    """``start(mode) -> (endpoint, server)``: test_caption_server's fake endpoint."""
    servers = []

    def start(mode: str):
        srv = FakeOpenAI(mode)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.endpoint, srv

    yield start
    for srv in servers:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------ 1. run names


@pytest.mark.parametrize("name", ["../../victim", "..", "ABSOLUTE", "a/b", ".hidden", ""])
def test_a_run_name_must_be_one_folder_name(tmp_path, name):
    workdir, captions = make_train_workdir(tmp_path, n_videos=40)
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name
    before = tree_state(tmp_path, skip=tmp_path / "none")
    result = cli("train", "--captions", captions, "-w", workdir, "--text-model", "hashing", "--epochs", "1",
                 "--batch-size", "8", "--name", name, "-q")
    assert_clean_error(result, 2, "--name")
    assert tree_state(tmp_path, skip=tmp_path / "none") == before


# ------------------------------------------------------------------ 2. outputs never nest


def test_one_videos_redo_keeps_the_keyframes_of_a_nested_id(tmp_path):
    make_image(tmp_path / "nest" / "a.png", color=(200, 20, 20))
    make_image(tmp_path / "nest" / "a" / "b.png", color=(20, 200, 20))
    workdir = tmp_path / "work"
    args = ["keyframes", tmp_path / "nest", "-w", workdir, "--embedder", "pixels", "--workers", "1", "-q"]
    assert cli(*args).exit_code == 0
    os.utime(tmp_path / "nest" / "a.png", (time.time() + 5, time.time() + 5))  # a.png changed: redo it
    result = cli(*args)
    assert result.exit_code == 0 and "1 done, 1 skipped" in result.output, result.output
    rows = {r["video_id"]: r for r in read_manifest(workdir, KEYFRAMES).to_pylist()}
    assert set(rows) == {"a", "a/b"} and all(r["status"] == "ok" for r in rows.values())
    files = keyframe_files(workdir)
    assert len(files) == 4 and all(f.is_file() for f in files)
    assert rows["a/b"]["grid_path"] == "grids/a+b.jpg"


def test_a_list_naming_the_nested_id_first(tmp_path):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "a" / "b.png", color=(0, 0, 250))
    (tmp_path / "list.txt").write_text("a/b.png\na.png\n")
    workdir = tmp_path / "work"
    result = cli("keyframes", tmp_path / "list.txt", "-w", workdir, "--embedder", "pixels", "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    files = keyframe_files(workdir)
    assert len(files) == 4 and all(f.is_file() for f in files)


def test_a_redo_in_an_older_work_folder_leaves_nested_keyframes(tmp_path):
    """Before ids got one folder each, id a/b wrote frames/a/b/ inside frames/a/."""
    make_image(tmp_path / "in" / "a.png")
    workdir = tmp_path / "work"
    older = workdir / "frames" / "a" / "b" / "00_f000000.jpg"
    older.parent.mkdir(parents=True)
    older.write_bytes(b"keyframe of a/b")
    result = cli("keyframes", tmp_path / "in", "-w", workdir, "--embedder", "pixels", "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    assert older.read_bytes() == b"keyframe of a/b"


# ------------------------------------------------------------------ 3. one training run at a time


def test_train_takes_a_lock_per_run(tmp_path):
    workdir, captions = make_train_workdir(tmp_path, n_videos=40)
    base = ["train", "--captions", captions, "-w", workdir, "--text-model", "hashing", "--batch-size", "8",
            "--epochs", "1", "--name", "X", "-q"]
    assert cli(*base).exit_code == 0
    metrics = workdir / "runs" / "X" / "metrics.jsonl"
    before = metrics.read_bytes()
    # Another process trains run X (it holds the lock, as a running `train` does) ...
    with lock_held_elsewhere(workdir, "train-X"):
        # ... so a second `train --resume --name X` stops at once and touches nothing.
        result = cli("train", "-w", workdir, "--name", "X", "--resume", "-q")
        assert_clean_error(result, 1, "another 'train-X' run")
        assert metrics.read_bytes() == before
        # Another run of the same work folder is not held up.
        other = cli(*[a if a != "X" else "Y" for a in base])
        assert other.exit_code == 0, other.output
    assert cli("train", "-w", workdir, "--name", "X", "--resume", "-q").exit_code == 0
    steps = [(r["kind"], r["step"]) for r in map(json.loads, metrics.read_text().splitlines())]
    assert len(steps) == len(set(steps))


# ------------------------------------------------------------------ 4. --overwrite and -w ""


def test_overwrite_refuses_a_folder_that_is_not_a_work_folder(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    folder = tmp_path / "mine"
    photo = folder / "frames" / "holiday" / "photo.txt"
    photo.parent.mkdir(parents=True)
    photo.write_text("mine")
    (folder / "grids").mkdir()
    (folder / "grids" / "x.txt").write_text("mine too")
    before = tree_state(folder, skip=folder / "none")
    result = cli("keyframes", tmp_path / "in", "-w", folder, "--embedder", "pixels", "--overwrite", "-q")
    assert_clean_error(result, 2, WORKDIR_MARKER)
    assert tree_state(folder, skip=folder / "none") == before


def test_overwrite_deletes_only_what_the_manifest_lists(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    make_image(tmp_path / "in" / "sub" / "b.png", color=(1, 2, 250))
    workdir = tmp_path / "work"
    args = ["keyframes", tmp_path / "in", "-w", workdir, "--embedder", "pixels", "--workers", "1", "-q"]
    assert cli(*args).exit_code == 0
    assert (workdir / WORKDIR_MARKER).is_file()
    old = keyframe_files(workdir)
    photo = workdir / "frames" / "holiday" / "photo.txt"
    photo.parent.mkdir()
    photo.write_text("a user's file")
    (tmp_path / "in" / "sub" / "b.png").unlink()
    assert cli(*args, "--overwrite").exit_code == 0
    assert photo.read_text() == "a user's file"
    assert not (workdir / "frames" / "sub+b").exists() and not (workdir / "grids" / "sub+b.jpg").exists()
    assert [f.name for f in keyframe_files(workdir)] == [f.name for f in old if "sub+b" not in str(f)]


def test_an_empty_workdir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image(tmp_path / "in" / "a.png")
    for command in (["keyframes", "in"], ["caption"], ["train", "--captions", "c.csv"], ["status"], ["report"],
                    ["filter"], ["export", "-f", "csv", "-o", "out"]):
        result = cli(*command, "-w", "")
        assert result.exit_code == 2 and "must not be empty" in result.stderr, result.output
    result = cli("export", "-w", "w", "-f", "csv", "-o", " ")
    assert result.exit_code == 2 and "--out" in result.stderr and "must not be empty" in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


# ------------------------------------------------------------------ 5. damaged state


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (features backbone, hashing text encoder)."""
    root = tmp_path_factory.mktemp("trained")
    workdir, captions = make_train_workdir(root, n_videos=40)
    result = cli("train", "--captions", captions, "-w", workdir, "--text-model", "hashing", "--epochs", "1",
                 "--batch-size", "8", "--name", "r", "-q")
    assert result.exit_code == 0, result.output
    return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(trained, workdir)
    return workdir


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_manifest_is_a_clear_error(tmp_path, server, damage):
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=2)
    manifest = workdir / KEYFRAMES.filename
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    make_image(tmp_path / "in" / "a.png")
    result = cli("keyframes", tmp_path / "in", "-w", workdir, "--embedder", "pixels", "-q")
    assert_clean_error(result, 1, "--overwrite")
    endpoint, _ = server("ok")
    assert_clean_error(cli("caption", "-w", workdir, "--endpoint", endpoint, "--no-progress"), 1, "keyframes.parquet")
    # --overwrite starts over, as the message says.
    assert cli("keyframes", tmp_path / "in", "-w", workdir, "--embedder", "pixels", "-q", "--overwrite").exit_code == 0


@pytest.mark.parametrize("folder", [".locks", ".parts"])
def test_tool_folders_that_are_files(tmp_path, folder):
    make_image(tmp_path / "in" / "a.png")
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / folder).write_text("not a folder")
    result = cli("keyframes", tmp_path / "in", "-w", workdir, "--embedder", "pixels", "--workers", "1", "-q")
    assert_clean_error(result, 1, folder)


def test_a_broken_run_config(run_copy):
    (run_copy / "runs" / "r" / "config.json").write_text('{"loss": "mama", "epochs": ')
    assert_clean_error(cli("evaluate", "--run", run_copy / "runs" / "r"), 1, "config.json")
    assert_clean_error(cli("train", "-w", run_copy, "--name", "r", "--resume", "-q"), 1, "config.json")
    (run_copy / "runs" / "r" / "config.json").write_text('{"loss": "mama", "epochs": "many", "captions": "c.csv"}')
    assert_clean_error(cli("evaluate", "--run", run_copy / "runs" / "r"), 1, "config.json")


def test_damaged_weights_and_pair_weights(run_copy):
    run = run_copy / "runs" / "r"
    (run / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes()[:100])
    assert_clean_error(cli("evaluate", "--run", run, "--checkpoint", "last"), 1, "model.safetensors")
    best = run / "best_model.safetensors"
    assert best.exists()
    assert cli("evaluate", "--run", run).exit_code == 0  # the best epoch's weights are intact
    best.write_bytes(best.read_bytes()[:100])
    assert_clean_error(cli("evaluate", "--run", run), 1, "best_model.safetensors")
    (run / "pair_weights.parquet").write_bytes(b"PAR1 not really")
    assert_clean_error(cli("audit", "--run", run), 1, "pair_weights.parquet")
    pd.DataFrame({"x": [1]}).to_parquet(run / "pair_weights.parquet")
    assert_clean_error(cli("audit", "--run", run), 1, "not a pair_weights table")


def test_a_damaged_caption_flags_manifest(tmp_path):
    info = make_captioned_workdir(tmp_path, num_videos=4)
    workdir, out = info["workdir"], tmp_path / "out"
    filter_args = ["filter", "-w", workdir, "--text-model", "hashing", "--no-progress"]
    assert cli(*filter_args).exit_code == 0
    flags = workdir / "caption_flags.parquet"
    rows = len(pd.read_parquet(flags))
    flags.write_bytes(flags.read_bytes()[: flags.stat().st_size // 2])
    export = ["export", "-w", workdir, "-f", "csv", "-o", out, "--drop-flags", "all", "--no-progress"]
    assert_clean_error(cli(*export), 1, "run `mama-augment filter` again")
    assert not out.exists()
    # filter computes every row anew (nothing of the damaged file was needed), and says so.
    result = cli(*filter_args)
    assert result.exit_code == 0 and "computed again" in result.output, result.output
    assert len(pd.read_parquet(flags)) == rows
    assert cli(*export).exit_code == 0


def _finished_export(tmp_path, fmt: str) -> tuple[list, Path]:
    info = make_captioned_workdir(tmp_path, num_videos=5)
    out = tmp_path / "out"
    args = ["export", "-w", info["workdir"], "-f", fmt, "-o", out, "--captions", info["originals"], "--shard-size", "2",
            "--no-progress"]
    assert cli(*args).exit_code == 0
    return args, out


def _export_files(out: Path) -> dict:
    """What an export holds (a tar by its members: their headers carry the time they were written)."""
    import tarfile

    files = {}
    for path in sorted(p for p in out.glob("*") if p.is_file() and p.name != "index.json"):
        if path.suffix == ".tar":
            with tarfile.open(path) as tar:
                files[path.name] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        else:
            files[path.name] = path.read_bytes()
    return files


def _as_if_killed(out: Path) -> None:
    """The state of an export stopped before its end: not complete, no index.json."""
    state_file = out / ".mama-export" / "state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "complete": False}))
    (out / "index.json").unlink()


@pytest.mark.parametrize("damage", ["record_cut_short", "record_without_fields", "shard_file_gone", "parts_gone"])
def test_a_half_written_export_is_finished(tmp_path, damage):
    fmt = "csv" if damage == "parts_gone" else "webdataset"
    args, out = _finished_export(tmp_path, fmt)
    finished = _export_files(out)
    samples = json.loads((out / "index.json").read_text())["counts"]["written"]
    _as_if_killed(out)
    record = out / ".mama-export" / "shards" / "shard-000001.json"
    if damage == "record_cut_short":
        record.write_text(record.read_text()[:40])
    elif damage == "record_without_fields":
        record.write_text(json.dumps({"index": 1}))
    elif damage == "shard_file_gone":
        (out / "shard-000001.tar").unlink()
    # parts_gone: a finished export removes the csv's parts; its records still name them.
    result = cli(*args)
    assert result.exit_code == 0, result.output
    # Shard 1 (two samples) is written again; without their parts, every shard of the csv.
    rewritten = samples if damage == "parts_gone" else 2
    assert f"export: {rewritten} done, {samples - rewritten} skipped" in result.output, result.output
    assert _export_files(out) == finished
    assert json.loads((out / "index.json").read_text())["counts"]["written"] == samples


@pytest.mark.parametrize("damage", ["state_unreadable", "state_folder_is_a_file", "shards_folder_is_a_file"])
def test_a_damaged_export_state_is_a_clear_error(tmp_path, damage):
    args, out = _finished_export(tmp_path, "webdataset")
    _as_if_killed(out)
    state = out / ".mama-export"
    if damage == "state_unreadable":
        (state / "state.json").write_text('{"identity_hash": ')
        assert_clean_error(cli(*args), 1, "--overwrite")
        assert cli(*args, "--overwrite").exit_code == 0
        assert json.loads((out / "index.json").read_text())["counts"]["written"] == 5
        return
    if damage == "state_folder_is_a_file":
        shutil.rmtree(state)
        state.write_text("not a folder")
    else:
        shutil.rmtree(state / "shards")
        (state / "shards").write_text("not a folder")
    assert_clean_error(cli(*args), 1, str(state.name))


def test_an_overwrite_with_unusable_captions_keeps_the_earlier_export(tmp_path):
    args, out = _finished_export(tmp_path, "webdataset")
    before = tree_state(out, skip=out / ".mama-export")
    (tmp_path / "other.csv").write_text("video_id,caption\nnot-a-video,a caption of nothing here\n")
    captions = args.index("--captions") + 1
    args[captions] = tmp_path / "other.csv"
    assert_clean_error(cli(*args, "--overwrite"), 2, "names a video in keyframes.parquet")
    assert tree_state(out, skip=out / ".mama-export") == before


# ------------------------------------------------------------------ 6. bad input files


@pytest.mark.parametrize("name, content, message", [
    ("list.txt", b"a.png\n\xff\xfe.png\n", "not UTF-8"),
    ("list.csv", b"path\na.png\n\xff.png\n", "not UTF-8"),
    ("list.txt", b"a.png\nb\x00.png\n", "NUL byte"),
])
def test_bad_list_files(tmp_path, name, content, message):
    make_image(tmp_path / "a.png")
    (tmp_path / name).write_bytes(content)
    result = cli("keyframes", tmp_path / name, "-w", tmp_path / "work", "--embedder", "pixels")
    assert_clean_error(result, 2, message)
    assert not (tmp_path / "work").exists()


def test_bad_config_files(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b'[keyframes]\nembedder = "caf\xe9"\n')
    assert_clean_error(cli("--config", tmp_path / "latin1.toml", "status", "-w", tmp_path), 2, "not UTF-8")
    assert_clean_error(cli("--config", "/dev/zero", "status", "-w", tmp_path), 2, "not a regular file")
    from mama_augment.configfile import MAX_CONFIG_BYTES

    (tmp_path / "huge.toml").write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    assert_clean_error(cli("--config", tmp_path / "huge.toml", "status", "-w", tmp_path), 2, "larger than")


# ------------------------------------------------------------------ 7. and 8. run-wide mistakes


@pytest.mark.parametrize("args, option", [
    (["--grid", "100x100"], "--grid"),
    (["--tile-size", "100000x100000"], "--tile-size"),
    (["--fps", "nan"], "--fps"),
    (["--fps", "inf"], "--fps"),
    (["--timeout", "nan"], "--timeout"),
    (["--workers", "-1"], "--workers"),
    (["--batch-size", "0"], "--batch-size"),
    (["--embedder", "clip"], "--embed-model"),
    (["--embedder", "clip", "--embed-model", "/no/such/model"], "--embed-model"),
    (["--embedder", "clip", "--embed-model", "someone/not-cached-clip"], "HF_HUB_OFFLINE"),
    (["--device", "cuda"], "--device"),
])
def test_run_wide_mistakes_stop_before_any_work(tmp_path, monkeypatch, args, option):
    if args == ["--device", "cuda"]:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA GPU")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_image(tmp_path / "in" / "a.png")
    result = cli("keyframes", tmp_path / "in", "-w", tmp_path / "work", "--embedder", "pixels", *args)
    assert_clean_error(result, 2, option)
    assert not (tmp_path / "work").exists()


# ------------------------------------------------------------------ 9. the caption client


def test_a_slow_server_is_cut_off_at_the_deadline(tmp_path, server):
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=1, failed=0)
    endpoint, _ = server("slow")
    started = time.monotonic()
    result = cli("caption", "-w", workdir, "--endpoint", endpoint, "--timeout", "1.5", "--retries", "0",
                 "--no-progress")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    row = read_manifest(workdir, CAPTIONS).to_pylist()[0]
    assert row["status"] == "failed" and row["error_kind"] == "timeout", row
    assert elapsed < 30  # the answer alone would take two minutes


@pytest.mark.parametrize("mode", ["huge", "announced"])
def test_a_huge_answer_is_not_read(tmp_path, server, mode):
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=1, failed=0)
    endpoint, srv = server(mode)
    result = cli("caption", "-w", workdir, "--endpoint", endpoint, "--retries", "0", "--no-progress")
    assert result.exit_code == 1, result.output
    row = read_manifest(workdir, CAPTIONS).to_pylist()[0]
    assert row["error_kind"] == "response_too_large", row
    assert srv.sent < 32 * 2**20  # the client hung up long before the 64 MiB were sent


# ------------------------------------------------------------------ 10. long names


def test_a_long_valid_file_name(tmp_path):
    name = "鳥" * 80 + ".png"
    assert len(name.encode()) == 244
    make_image(tmp_path / "in" / name)
    workdir = tmp_path / "work"
    result = cli("keyframes", tmp_path / "in", "-w", workdir, "--embedder", "pixels", "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    (row,) = read_manifest(workdir, KEYFRAMES).to_pylist()
    assert row["status"] == "ok" and row["video_id"] == "鳥" * 80
    assert all(f.is_file() for f in keyframe_files(workdir))
    assert not [p for p in workdir.rglob(".*tmp*")]


# ------------------------------------------------------------------ 11. a missing work folder


def test_caption_into_a_missing_work_folder_creates_nothing(tmp_path, server):
    endpoint, _ = server("ok")
    result = cli("caption", "-w", tmp_path / "missing" / "work", "--endpoint", endpoint)
    assert_clean_error(result, 2, "keyframes")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 12. the report


def test_report_links_nothing_outside_and_shows_no_machine_paths(tmp_path):
    from test_report import make_workdir as make_report_workdir, page_data

    facts = make_report_workdir(tmp_path, n_ok=3)
    workdir = facts["workdir"].absolute()
    table = read_manifest(workdir, KEYFRAMES).to_pandas()
    table["path"] = [str(tmp_path / "videos" / f"{v}.mp4") for v in table["video_id"]]
    row_of = {v: i for i, v in enumerate(table["video_id"])}
    table.at[row_of["clips/v000"], "grid_path"] = "../../../../../../../../etc/passwd"
    table.at[row_of["clips/v001"], "keyframe_paths"] = ["/etc/passwd"]
    table.loc[table["status"] == "failed", "error"] = f"file not found: {tmp_path}/videos/gone.mp4"
    (workdir / KEYFRAMES.filename).unlink()
    table.to_parquet(workdir / KEYFRAMES.filename)
    (facts["run_dir"] / "eval.json").write_text(json.dumps({"test": {"run": str(facts["run_dir"]), "R@1": 5.0}}))
    result = cli("report", "-w", workdir, "--captions", facts["originals"].absolute())
    assert result.exit_code == 0, result.output
    assert "lead outside the work folder" in result.stderr
    page = (workdir / "report" / "index.html").read_text()
    assert str(tmp_path) not in page
    assert all(str(tmp_path) not in path.read_text() for path in (workdir / "report" / "data").iterdir())
    data = page_data(workdir / "report" / "index.html")
    first, second = data["videos"][0], data["videos"][1]
    assert first["grid"] is None and all(frame[0] is None for frame in second["frames"])
    assert first["meta"].endswith("videos/clips/v000.mp4") and not first["meta"].split(" \u00b7 ")[-1].startswith("/")


# ------------------------------------------------------------------ 13. unreadable subfolders


def test_unreadable_subfolders_are_counted_and_reported(tmp_path, monkeypatch):
    # Running as root, chmod does not stop reads: the folder's listing fails here instead.
    make_image(tmp_path / "in" / "a.png")
    make_image(tmp_path / "in" / "private" / "b.png")
    blocked = str(tmp_path / "in" / "private")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = cli("keyframes", tmp_path / "in", "-w", tmp_path / "work", "--embedder", "pixels", "--workers", "1",
                 "-q")
    assert result.exit_code == 1, result.output
    assert "1 done" in result.output and "unreadable_folder" in result.output and "private" in result.output
    assert "Permission denied" in result.output


# ------------------------------------------------------------------ 14. a model that is not there


def test_caption_with_a_model_neither_cached_nor_reachable(tmp_path, monkeypatch):
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=1, failed=0)
    before = tree_state(tmp_path, skip=tmp_path / "none")
    args = ["caption", "-w", workdir, "--backend", "transformers", "--model", "someone/not-cached-vlm"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_clean_error(cli(*args), 2, "HF_HUB_OFFLINE is set")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with socket.socket() as probe:  # a port nothing listens on: the hub is "down"
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    line = assert_clean_error(cli(*args), 2, "cannot be reached")
    assert "hf download someone/not-cached-vlm" in line
    assert tree_state(tmp_path, skip=tmp_path / "none") == before


# ------------------------------------------------------------------ numeric options, every command


def _kind(param) -> str:
    """``integer``, ``float`` or another name, for click's and newer Typer's parameters."""
    click_type = getattr(param, "type", None)  # a click ParamType
    if click_type is not None:
        return getattr(click_type, "name", "")
    annotation = param.type_descriptor.annotation  # Typer's own parameters (Typer 0.29)
    return {int: "integer", float: "float"}.get(annotation, "")


def _numeric_options() -> list[tuple[str, str, str]]:
    """(command, option, type) of every numeric option of every command, read from the
    click commands Typer builds, so a new option is covered without a change here."""
    group = typer.main.get_command(app)
    found = []

    def visit(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            visit(sub, [*path, name])
        for param in getattr(command, "params", []):
            if getattr(param, "param_type_name", "") != "option":
                continue
            kind = _kind(param)
            if kind in ("integer", "float"):
                long = [o for o in param.opts if o.startswith("--")][0]
                found.append((" ".join(path), long, kind))

    visit(group, [])
    return found


NUMERIC_OPTIONS = _numeric_options()
BAD_FLOATS = ["nan", "inf", "-inf", "-1", "0", "1e300"]
BAD_INTS = ["-1", "0", str(10**30)]


def _base(command: str, tmp: Path) -> list[str]:
    """Arguments that pass every option check and then stop at a missing input (exit 2)."""
    return {
        "keyframes": ["keyframes", str(tmp / "missing.mp4"), "-w", str(tmp / "w"), "--embedder", "pixels"],
        "caption": ["caption", "-w", str(tmp / "w"), "--endpoint", "http://127.0.0.1:9/v1"],
        "train": ["train", "--captions", str(tmp / "c.csv"), "-w", str(tmp / "w"), "--text-model", "hashing"],
        "audit": ["audit", "--run", str(tmp / "w" / "runs" / "r")],
        "report": ["report", "-w", str(tmp / "w")],
        "datasets": ["datasets", str(tmp / "missing.json"), "-w", str(tmp / "w")],
        "qa": ["qa", "--run", str(tmp / "w" / "runs" / "r"), "--questions", str(tmp / "missing.json")],
        "filter": ["filter", "-w", str(tmp / "w"), "--text-model", "hashing"],
        "export": ["export", "-w", str(tmp / "w"), "--format", "csv", "--out", str(tmp / "out")],
    }[command]


def test_the_numeric_options_are_found():
    commands = {command for command, _, _ in NUMERIC_OPTIONS}
    assert {"keyframes", "caption", "train", "audit", "report", "filter", "export"} <= commands
    assert ("keyframes", "--fps", "float") in NUMERIC_OPTIONS and ("train", "--nproc-per-node", "integer") in NUMERIC_OPTIONS
    assert len(NUMERIC_OPTIONS) > 50


@pytest.mark.parametrize("command", sorted({c for c, _, _ in NUMERIC_OPTIONS}))
def test_fuzzed_numbers_are_one_clear_line(tmp_path, command, monkeypatch):
    monkeypatch.delenv("MAMA_CONFIG", raising=False)
    base = _base(command, tmp_path)
    reference = assert_clean_error(cli(*base), 2)
    assert not any(option in reference for c, option, _ in NUMERIC_OPTIONS if c == command)
    for _, option, kind in [o for o in NUMERIC_OPTIONS if o[0] == command]:
        for value in BAD_FLOATS if kind == "float" else BAD_INTS:
            result = cli(*base, option, value)
            try:
                line = assert_clean_error(result, 2)
            except AssertionError as exc:
                raise AssertionError(f"{command} {option} {value}: {exc}") from None
            must_refuse = value in ("nan", "inf", "-inf", str(10**30))
            assert line == reference or option in line, f"{command} {option} {value}: {line}"
            assert not must_refuse or option in line, f"{command} {option} {value} was accepted: {line}"
            assert not any(tmp_path.iterdir()), f"{command} {option} {value} wrote {list(tmp_path.iterdir())}"


# ------------------------------------------------------------------ nothing written outside --workdir


def test_every_command_writes_only_inside_the_work_folder(tmp_path, monkeypatch, server):
    outer = tmp_path / "outer"
    for i in range(16):
        make_image(outer / "videos" / ("nest" if i % 2 else "") / f"v{i:02d}.png", color=(15 * i, 250 - 15 * i, 90))
    captions = outer / "captions.csv"
    videos = [f"nest/v{i:02d}" if i % 2 else f"v{i:02d}" for i in range(16)]
    pd.DataFrame({"video_id": videos, "caption": [f"a picture of colour {i}" for i in range(16)],
                  "split": ["test" if i < 3 else "val" if i < 6 else "train" for i in range(16)]}).to_csv(captions,
                                                                                                      index=False)
    (outer / "mama.toml").write_text('[status]\njson = true\n')
    (outer / "sibling" / "keep.txt").parent.mkdir(parents=True)
    (outer / "sibling" / "keep.txt").write_text("a neighbour of the work folder")
    workdir = outer / "work"
    monkeypatch.chdir(outer)
    before = tree_state(outer, skip=workdir)
    endpoint, _ = server("ok")
    run = workdir / "runs" / "r"
    commands = [
        ["keyframes", "videos", "-w", "work", "--embedder", "pixels", "--workers", "1", "-q"],
        ["caption", "-w", "work", "--endpoint", endpoint, "--no-progress"],
        ["train", "--captions", captions, "-w", "work", "--text-model", "hashing", "--epochs", "2",
         "--batch-size", "4", "--meta-fraction", "0.3", "--name", "r", "-q"],
        ["train", "--captions", captions, "-w", "work", "--text-model", "hashing", "--name", "../../escape", "-q"],
        ["train", "-w", "work", "--name", "r", "--resume", "-q"],
        ["evaluate", "--run", run, "--split", "test"],
        ["audit", "--run", run, "--top", "3"],
        ["status", "-w", "work"],
        ["--config", "mama.toml", "status", "-w", "work"],
        ["report", "-w", "work", "--captions", captions],
        ["report", "-w", "work", "--copy-images"],
        ["filter", "-w", "work", "--text-model", "hashing", "--no-progress"],
        # --out is the one place export writes besides the work folder: here inside it.
        ["export", "-w", "work", "--format", "webdataset", "--out", "work/exports/wds", "--run", run, "--no-progress"],
        ["export", "-w", "work", "--format", "csv", "--out", "work/exports/csv", "--drop-flags", "all", "--no-progress"],
        ["config", "show"],
        ["keyframes", "videos", "-w", "work", "--embedder", "pixels", "--workers", "1", "-q", "--overwrite"],
        ["caption", "-w", "work", "--endpoint", endpoint, "--no-progress", "--overwrite"],
    ]
    codes = []
    for args in commands:
        result = cli(*args)
        assert isinstance(result.exception, (SystemExit, type(None))), f"{args}: {result.exception!r}"
        codes.append((result.exit_code, result.stderr.strip()[-200:]) if result.exit_code else 0)
    assert codes[:3] == [0, 0, 0] and codes[3][0] == 2 and codes[4:] == [0] * (len(commands) - 4), codes
    assert tree_state(outer, skip=workdir) == before
    assert (workdir / "report" / "index.html").is_file() and (run / "eval.json").is_file()
    assert (workdir / "caption_flags.parquet").is_file()
    assert (workdir / "exports" / "wds" / "index.json").is_file() and (workdir / "exports" / "csv" / "pairs.csv").is_file()
