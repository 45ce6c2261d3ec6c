"""Paths that data names never reach a file outside the work folder.

A work folder is planted with image paths that lead to a sentinel file beside it
(absolute, with ``..``, through a linked file and through a linked folder); every
reader of such paths runs over it, and the sentinel's bytes must appear in no output,
no output may be a hard link to it, and the planted rows fail with
``path_outside_workdir``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.errors import ItemError
from mama_augment.export import FORMATS
from mama_augment.export.config import ExportConfig
from mama_augment.export.stage import run_export
from mama_augment.manifest import KEYFRAMES, read_manifest
from mama_augment.workpaths import PATH_OUTSIDE_WORKDIR, WorkFolder, writable_folder
from workdir_helpers import make_captioned_workdir

runner = CliRunner()
TOKEN = b"SENTINEL-3f9c2a-not-for-export"


def _rewrite_keyframes(workdir: Path, change) -> None:
    table = read_manifest(workdir, KEYFRAMES).to_pandas()
    change(table, {v: i for i, v in enumerate(table["video_id"])})
    (workdir / KEYFRAMES.filename).unlink()
    table.to_parquet(workdir / KEYFRAMES.filename)


@pytest.fixture
def planted(tmp_path):
    """Seven videos (one failed in keyframes); four of the ok ones name the sentinel."""
    info = make_captioned_workdir(tmp_path, num_videos=7, captions_per_video=1, failed_videos=(5,))
    workdir = info["workdir"]
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "secret.jpg"
    sentinel.write_bytes(TOKEN * 8)
    ids = info["ids"]
    # A linked grid file and a linked folder inside the work folder, both leading out.
    grid_link = workdir / f"grids/{ids[2]}.jpg"
    grid_link.unlink()
    grid_link.symlink_to(sentinel)
    (workdir / "outlink").symlink_to(outside, target_is_directory=True)

    def plant(table, row):
        table.at[row[ids[0]], "grid_path"] = str(sentinel)
        table.at[row[ids[1]], "grid_path"] = "../outside/secret.jpg"
        table.at[row[ids[3]], "grid_path"] = "outlink/secret.jpg"
        table.at[row[ids[4]], "keyframe_paths"] = [*table.at[row[ids[4]], "keyframe_paths"][:2], "outlink/secret.jpg"]

    _rewrite_keyframes(workdir, plant)
    info.update(sentinel=sentinel, planted={ids[0], ids[1], ids[2], ids[3]}, keyframe_planted=ids[4],
                clean=ids[6])
    return info


def assert_no_sentinel(folder: Path, sentinel: Path) -> None:
    """The sentinel's bytes in no file under ``folder``, its path in no data file (only
    where a refusal is reported), and no file is the sentinel itself (a hard link)."""
    stat = sentinel.stat()
    for path in folder.rglob("*"):
        if path.is_symlink():
            assert os.path.realpath(path) != os.path.realpath(sentinel), path
        if not path.is_file():
            continue
        own = path.stat()
        assert (own.st_dev, own.st_ino) != (stat.st_dev, stat.st_ino), f"{path} is a hard link to the sentinel"
        data = path.read_bytes()
        if path.suffix == ".parquet":  # compressed: look at the values
            data = json.dumps(pq.read_table(path).to_pylist(), default=repr).encode()
        assert TOKEN not in data, f"the sentinel's content is in {path}"
        says_what_was_refused = path.name in ("index.json", "index.html") or ".mama-export" in path.parts or (
            path.parent.name == "data" and path.suffix == ".js")  # the report's cards
        if not says_what_was_refused:
            assert str(sentinel).encode() not in data and b"outside/secret" not in data, f"{path} points at it"


def _failed(out: Path) -> dict[str, str]:
    index = json.loads((out / "index.json").read_text())
    return {f["video_id"]: f["error_kind"] for shard in index["shards"] for f in shard["failed"]}


EXPORTS = [(name, unit, images) for name in sorted(FORMATS) for unit in FORMATS[name]().units
           for images in (True, False)]


@pytest.mark.parametrize("fmt,unit,images", EXPORTS, ids=[f"{f}-{u}-{'images' if i else 'paths'}" for f, u, i in EXPORTS])
def test_export_never_carries_a_file_from_outside(planted, tmp_path, fmt, unit, images):
    out = tmp_path / "export"
    report = run_export(ExportConfig(format=fmt, out=out, unit=unit, images=images, captions=str(planted["originals"])),
                        planted["workdir"])
    assert_no_sentinel(out, planted["sentinel"])
    failed = _failed(out)
    # Without images, hf, llava, csv and jsonl still write each grid's path for their
    # reader to open: a path that leads out is refused there too.
    expected = set()
    if fmt in ("hf", "llava", "csv", "jsonl") or (fmt == "webdataset" and images):
        expected |= planted["planted"]
    if fmt in ("clip-vip", "webdataset") and images and unit == "video":
        expected.add(planted["keyframe_planted"])
    assert {v for v, kind in failed.items() if kind == PATH_OUTSIDE_WORKDIR} == expected, failed
    assert planted["clean"] not in failed
    assert report.failures_by_kind.get(PATH_OUTSIDE_WORKDIR, 0) == len(
        [1 for shard in json.loads((out / "index.json").read_text())["shards"] for f in shard["failed"]
         if f["error_kind"] == PATH_OUTSIDE_WORKDIR])


@pytest.mark.parametrize("copy", [False, True], ids=["pointing", "copy-images"])
def test_report_shows_and_links_nothing_from_outside(planted, copy):
    from test_report import page_data

    workdir = planted["workdir"]
    args = ["report", "-w", str(workdir), *(["--copy-images"] if copy else [])]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert PATH_OUTSIDE_WORKDIR in result.stderr
    assert_no_sentinel(workdir / "report", planted["sentinel"])
    videos = {v["id"]: v for v in page_data(workdir / "report" / "index.html")["videos"]}
    for video_id in planted["planted"]:
        assert videos[video_id]["grid"] is None and PATH_OUTSIDE_WORKDIR in videos[video_id]["gridMissing"]
    frames = videos[planted["keyframe_planted"]]["frames"]
    assert frames[0][0] is not None and frames[2][0] is None and PATH_OUTSIDE_WORKDIR in frames[2][2]
    assert videos[planted["clean"]]["grid"] is not None


def test_caption_sends_no_file_from_outside_to_the_model(planted, monkeypatch):
    from test_caption import FakeBackend, config

    from mama_augment.caption import backends as backends_module
    from mama_augment.caption.stage import run_caption
    from mama_augment.manifest import CAPTIONS

    FakeBackend.calls = []
    monkeypatch.setitem(backends_module.BACKENDS, "fake", lambda spec, cfg: FakeBackend())
    workdir = planted["workdir"]
    (workdir / CAPTIONS.filename).unlink()
    report = run_caption(config(), workdir)
    sent = {os.path.realpath(r.grid_path) for r in FakeBackend.calls}
    assert os.path.realpath(planted["sentinel"]) not in sent and sent
    rows = read_manifest(workdir, CAPTIONS).to_pylist()
    kinds = {r["video_id"]: r["error_kind"] for r in rows if r["status"] == "failed"}
    assert kinds == {v: PATH_OUTSIDE_WORKDIR for v in planted["planted"]}
    assert report.failures_by_kind[PATH_OUTSIDE_WORKDIR] == len(planted["planted"])


# ----------------------------------------------------------------------------- the rule itself


def test_the_rule(tmp_path):
    workdir = tmp_path / "work"
    (workdir / "grids").mkdir(parents=True)
    (workdir / "grids" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"y")
    (workdir / "grids" / "in.jpg").symlink_to(workdir / "grids" / "a.jpg")
    (workdir / "grids" / "out.jpg").symlink_to(tmp_path / "secret")
    (workdir / "fifo").mkdir()
    work = WorkFolder(workdir)
    assert work.file("grids/a.jpg") == os.path.realpath(workdir / "grids" / "a.jpg")
    assert work.file("grids/in.jpg") == os.path.realpath(workdir / "grids" / "a.jpg")  # a link that stays inside
    (workdir / "alias").symlink_to(workdir / "grids", target_is_directory=True)
    for same in ["alias/a.jpg", "grids/./a.jpg", "grids//a.jpg"]:
        assert work.file(same) == os.path.realpath(workdir / "grids" / "a.jpg"), same
    for bad in [str(tmp_path / "secret"), "../secret", "grids/../../secret", "grids/out.jpg", "fifo", "", None]:
        with pytest.raises(ItemError) as caught:
            work.file(bad)
        assert caught.value.kind == PATH_OUTSIDE_WORKDIR, bad
    with pytest.raises(ItemError) as caught:
        work.file("grids/gone.jpg")
    assert caught.value.kind == "missing_image"
    (workdir / "frames").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ItemError) as caught:
        writable_folder(workdir, "frames/clip")
    assert caught.value.kind == PATH_OUTSIDE_WORKDIR
    assert writable_folder(workdir, "grids/new/deeper") == workdir / "grids/new/deeper"


# ----------------------------------------------------------------------------- writers


@pytest.mark.parametrize("linked", ["frames/a", "frames", "grids"])
def test_keyframes_never_write_or_delete_through_a_linked_folder(tmp_path, linked):
    from media import make_image

    make_image(tmp_path / "in" / "a.png", color=(200, 20, 20))
    make_image(tmp_path / "in" / "b.png", color=(20, 200, 20))
    args = ["keyframes", str(tmp_path / "in"), "-w", str(tmp_path / "work"), "--embedder", "pixels",
            "--workers", "1", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "00_f000000.jpg").write_bytes(TOKEN)  # named like a keyframe: a redo would delete it
    (victim / "a.jpg").write_bytes(TOKEN)  # named like a grid: a redo would replace it
    moved = tmp_path / "work" / linked
    shutil.rmtree(moved)
    moved.symlink_to(victim, target_is_directory=True)
    os.utime(tmp_path / "in" / "a.png", (time.time() + 5, time.time() + 5))  # a.png changed: redo it
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in victim.iterdir()) == ["00_f000000.jpg", "a.jpg"]
    assert all(p.read_bytes() == TOKEN for p in victim.iterdir())
    row = {r["video_id"]: r for r in read_manifest(tmp_path / "work", KEYFRAMES).to_pylist()}["a"]
    assert row["status"] == "failed" and row["error_kind"] == PATH_OUTSIDE_WORKDIR


def test_overwrite_deletes_nothing_through_a_linked_folder(tmp_path):
    from media import make_image

    make_image(tmp_path / "in" / "a.png", color=(200, 20, 20))
    args = ["keyframes", str(tmp_path / "in"), "-w", str(tmp_path / "work"), "--embedder", "pixels",
            "--workers", "1", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    frames = tmp_path / "work" / "frames"
    victim = tmp_path / "victim"
    shutil.copytree(frames, victim)
    shutil.rmtree(frames)
    frames.symlink_to(victim, target_is_directory=True)
    kept = sorted(p for p in victim.rglob("*.jpg"))
    for path in kept:
        path.write_bytes(TOKEN)
    assert kept
    runner.invoke(app, [*args, "--overwrite"])
    assert all(p.read_bytes() == TOKEN for p in kept)


def test_report_replaces_only_a_page_it_wrote(tmp_path):
    folder = tmp_path / "any"
    page = folder / "report" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html>a page of my own</html>")
    result = runner.invoke(app, ["report", "-w", str(folder)])
    assert result.exit_code == 2 and "not a report written by mama-augment" in result.stderr, result.output
    assert page.read_text() == "<html>a page of my own</html>"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "index.html").symlink_to(page)
    result = runner.invoke(app, ["report", "-w", str(folder), "--output", str(other)])
    assert result.exit_code == 2 and page.read_text() == "<html>a page of my own</html>"
    page.unlink()
    for _ in range(2):  # written, then replaced: the second run finds its own page
        result = runner.invoke(app, ["report", "-w", str(folder)])
        assert result.exit_code == 0, result.output
    assert 'content="mama-augment"' in page.read_text()


def test_report_writes_nothing_through_a_linked_report_folder(planted, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (planted["workdir"] / "report").symlink_to(victim, target_is_directory=True)
    result = runner.invoke(app, ["report", "-w", str(planted["workdir"]), "--copy-images"])
    assert result.exit_code == 2, result.output
    assert list(victim.iterdir()) == []
    (planted["workdir"] / "report").unlink()
    (planted["workdir"] / "report" / "media").mkdir(parents=True)
    (planted["workdir"] / "report" / "media" / "grids").symlink_to(victim, target_is_directory=True)
    result = runner.invoke(app, ["report", "-w", str(planted["workdir"]), "--copy-images"])
    assert result.exit_code == 0 and list(victim.iterdir()) == [], result.output


def test_filter_clip_check_reads_no_keyframe_from_outside(planted, tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="transformers is a dependency")
    import PIL.Image
    from tiny_models import make_tiny_clip

    from mama_augment.manifest import CAPTION_FLAGS
    from mama_augment.quality.config import FilterConfig
    from mama_augment.quality.stage import run_filter

    model = make_tiny_clip(tmp_path / "clip", with_tokenizer=True)
    config = FilterConfig(text_model="hashing", clip_model=str(model), clip_others=4, device="cpu")
    opened, real_open = [], PIL.Image.open

    def watch(path, *args, **kwargs):
        opened.append(os.path.realpath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", watch)
    report = run_filter(config, planted["workdir"])
    monkeypatch.undo()
    assert os.path.realpath(planted["sentinel"]) not in opened and opened
    rows = read_manifest(planted["workdir"], CAPTION_FLAGS).to_pylist()
    kinds = {r["video_id"]: r["error_kind"] for r in rows if r["status"] == "failed"}
    assert kinds == {planted["keyframe_planted"]: PATH_OUTSIDE_WORKDIR}
    assert report.failures_by_kind[PATH_OUTSIDE_WORKDIR] == 1


def test_training_on_keyframe_jpegs_reads_no_frame_from_outside(planted):
    from mama_augment.train.data import load_videos

    videos, issues, examples = load_videos(planted["workdir"], "keyframe_paths")
    frames = dict(zip(videos.video_ids, videos.keyframe_paths))
    video_id = planted["keyframe_planted"]
    assert frames[video_id] == [p for p in frames[video_id] if not p.startswith("outlink/")] and len(frames[video_id]) == 2
    assert issues[PATH_OUTSIDE_WORKDIR] == 1 and video_id in examples[PATH_OUTSIDE_WORKDIR]


# ----------------------------------------------------------------------------- split lists


def _train_with_lists(tmp_path):
    import pandas as pd
    from train_helpers import make_workdir as make_train_workdir

    workdir, captions = make_train_workdir(tmp_path, n_videos=40)
    ids = pd.read_csv(captions)["video_id"].tolist()
    (workdir / "train_list.txt").write_text("\n".join(ids[:30]) + "\n")
    (workdir / "test_list.txt").write_text("\n".join(ids[30:]) + "\n")
    args = ["train", "-w", str(workdir), "--captions", str(captions), "--captions", str(workdir / "train_list.txt"),
            "--captions", str(workdir / "test_list.txt"), "--captions-format", "auto,split-list,split-list",
            "--text-model", "hashing", "--epochs", "1", "--batch-size", "8", "--name", "r", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    foreign = tmp_path / "foreign_test_list.txt"
    foreign.write_text("".join(f"secret-line-{i}\n" for i in range(50)))
    (workdir / "test_list.txt").unlink()
    (workdir / "test_list.txt").symlink_to(foreign)
    return workdir


def test_a_split_list_linked_out_of_the_work_folder_is_refused(tmp_path):
    workdir = _train_with_lists(tmp_path)
    run = workdir / "runs" / "r"
    summary_before = (run / "summary.json").read_text()
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--split", "test"])
    assert result.exit_code == 2 and PATH_OUTSIDE_WORKDIR in result.stderr, result.output
    assert "secret-line" not in result.output
    result = runner.invoke(app, ["train", "-w", str(workdir), "--name", "r", "--resume", "-q"])
    assert result.exit_code == 2 and PATH_OUTSIDE_WORKDIR in result.stderr, result.output
    assert "secret-line" not in result.output
    assert (run / "summary.json").read_text() == summary_before
    assert not (run / "eval.json").exists() or "secret-line" not in (run / "eval.json").read_text()


def test_a_recorded_list_found_in_the_work_folder_must_be_its_own(tmp_path, monkeypatch):
    from mama_augment.datasets import locate_captions
    from mama_augment.errors import UsageError

    workdir = tmp_path / "work"
    workdir.mkdir()
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("secret-line\n")
    (workdir / "own_list.txt").write_text("v1\n")
    (workdir / "test_list.txt").symlink_to(foreign)
    monkeypatch.chdir(tmp_path)  # the recorded names are not found as given: the folders are tried
    assert locate_captions("own_list.txt", None, [workdir]).paths == (str(workdir / "own_list.txt"),)
    with pytest.raises(UsageError, match=PATH_OUTSIDE_WORKDIR):
        locate_captions(["own_list.txt", "test_list.txt"], None, [workdir])
