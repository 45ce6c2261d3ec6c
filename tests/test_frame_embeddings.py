"""Keyframe embeddings in array files beside the manifest, read in either layout."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mama_augment.frame_embeddings import (
    EMBEDDINGS_DIR,
    EmbeddingAppender,
    EmbeddingReader,
    embedding_files,
    iter_video_embeddings,
)
from mama_augment.keyframes.config import KeyframesConfig
from mama_augment.keyframes.stage import run_keyframes
from mama_augment.manifest import KEYFRAMES, PartWriter, compact, read_manifest, rows_to_table
from mama_augment.train import video_cache
from mama_augment.train.data import load_videos
from tests.media import make_video


def _embedding(i: int, frames: int, dim: int = 6) -> np.ndarray:
    rng = np.random.default_rng(i)
    vectors = rng.standard_normal((frames, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _row(i: int, frames: int, dim: int = 6, **extra) -> dict:
    return {"video_id": f"v{i:03d}", "status": "ok", "embedding_dim": dim,
            "keyframe_embeddings": _embedding(i, frames, dim).tolist(),
            "keyframe_paths": [f"frames/v{i:03d}/{k:02d}.jpg" for k in range(frames)], **extra}


def _write_new(workdir, rows, **appender) -> None:
    """Rows as the keyframes stage writes them: one part a row, embeddings out first."""
    with PartWriter(workdir, KEYFRAMES, consolidate_every=4) as writer, EmbeddingAppender(workdir, **appender) as arrays:
        for row in rows:
            writer.write_table(arrays.externalize(rows_to_table([row], KEYFRAMES.schema)))


def _write_old(workdir, rows) -> None:
    """Rows as versions before the array files wrote them: embeddings inside."""
    with PartWriter(workdir, KEYFRAMES) as writer:
        writer.write(rows)


def test_new_layout_round_trips_through_parts_and_compaction(tmp_path):
    workdir = tmp_path / "work"
    rows = [_row(i, 1 + i % 4) for i in range(13)]
    _write_new(workdir, rows)
    stored = read_manifest(workdir, KEYFRAMES)
    assert stored.column("keyframe_embeddings").null_count == 13  # none left in the rows
    assert set(stored.column("embeddings_file").to_pylist()) == {f"{EMBEDDINGS_DIR}/{p.name}"
                                                                 for p in embedding_files(workdir)}
    for full in (False, True):  # parts merged, then the table rewritten: references still hold
        compact(workdir, KEYFRAMES, full=full)
        got = dict(iter_video_embeddings(workdir, batch_rows=5))
        assert sorted(got) == [row["video_id"] for row in rows]
        for i, row in enumerate(rows):
            array = got[row["video_id"]]
            assert array.dtype == np.float16 and array.shape == (1 + i % 4, 6)
            np.testing.assert_array_equal(array, _embedding(i, 1 + i % 4).astype(np.float16))


def test_files_roll_over_and_float32_files_read_too(tmp_path):
    workdir = tmp_path / "work"
    rows = [_row(i, 3) for i in range(5)]
    _write_new(workdir, rows, dtype=np.float32, max_file_bytes=2 * 3 * 6 * 4)  # two videos a file
    assert [p.suffix for p in embedding_files(workdir)] == [".f32"] * 3
    got = dict(iter_video_embeddings(workdir))
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(got[row["video_id"]], _embedding(i, 3))


def _write_old_version_file(workdir, rows) -> None:
    """keyframes.parquet as a version before the array files wrote it: no reference columns."""
    import pyarrow.parquet as pq

    from mama_augment.manifest import ensure_workdir

    ensure_workdir(workdir)
    old_schema = KEYFRAMES.schema
    for name in ("embeddings_file", "embeddings_offset", "embeddings_count"):
        old_schema = old_schema.remove(old_schema.get_field_index(name))
    pq.write_table(rows_to_table(rows, old_schema), workdir / KEYFRAMES.filename)


def test_a_folder_of_an_older_version_is_read_as_it_is(inputs, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    workdir = tmp_path / "work"
    _write_old_version_file(workdir, [_row(i, 2) for i in range(8)])
    got = dict(iter_video_embeddings(workdir))
    np.testing.assert_array_equal(got["v001"], _embedding(1, 2))
    videos, issues, _ = load_videos(workdir, "keyframe_embeddings")
    assert videos.video_ids == [f"v{i:03d}" for i in range(8)] and not issues
    results, _ = _build_on_ranks(workdir, 2, monkeypatch)  # torchrun: rank 0 reads it alone
    assert results[1].video_ids == videos.video_ids
    # keyframes adds videos to it (the old file stays as it is: too few new rows to fold),
    # and still finds the files no row names (a killed run's) among the old rows.
    orphan = workdir / EMBEDDINGS_DIR / f"emb-{0:020d}-1-deadbeef.f16"
    orphan.parent.mkdir()
    orphan.write_bytes(b"\0" * 12)
    report = run_keyframes([inputs / "v0.mp4"], workdir, KeyframesConfig(**FAST), progress=False)
    assert report.done == 1 and not orphan.exists() and len(embedding_files(workdir)) == 1
    got = dict(iter_video_embeddings(workdir))
    assert sorted(got) == ["v0", *videos.video_ids] and got["v0"].shape[0] == 3
    assert "embeddings_file" not in pq.read_schema(workdir / KEYFRAMES.filename).names
    np.testing.assert_array_equal(got["v001"], _embedding(1, 2))


def test_old_and_new_rows_in_one_folder_both_train(tmp_path):
    workdir = tmp_path / "work"
    _write_old(workdir, [_row(i, 2) for i in range(4)])  # a folder of an older version
    compact(workdir, KEYFRAMES)
    _write_new(workdir, [_row(i, 3) for i in (2, 5)])  # redone and added by this version
    got = dict(iter_video_embeddings(workdir))
    assert got["v002"].shape == (3, 6) and got["v000"].shape == (2, 6)
    videos, issues, _ = load_videos(workdir, "keyframe_embeddings")
    assert videos.video_ids == ["v000", "v001", "v002", "v003", "v005"]
    want = {"v000": _embedding(0, 2), "v001": _embedding(1, 2), "v002": _embedding(2, 3),
            "v003": _embedding(3, 2), "v005": _embedding(5, 3)}
    for video_id, array in zip(videos.video_ids, videos.keyframe_embeddings):
        np.testing.assert_allclose(array.astype(np.float32), want[video_id], atol=1e-3)
    assert not issues


def test_a_folder_of_either_layout_trains_to_the_same_model(tmp_path):
    import json
    from pathlib import Path

    from mama_augment.train.config import TrainConfig
    from mama_augment.train.loop import run_train
    from train_helpers import make_workdir

    curves = {}
    for layout in ("rows", "arrays", "small arrays"):
        # rows: the cache copies the frames; arrays: it maps the one array file;
        # small arrays: it maps 9 files of ~8 videos (a model fed from a table a file).
        small = {"max_file_bytes": 8 * 3 * 16 * 2} if layout == "small arrays" else {}
        workdir, captions = make_workdir(tmp_path / layout.replace(" ", "-"), n_videos=64, n_concepts=4, dim=16,
                                         seed=3, layout=layout.split()[-1], **small)
        files = len(embedding_files(workdir))
        assert files == 0 if layout == "rows" else files == 1 if layout == "arrays" else files > 2
        config = TrainConfig(captions=str(captions), text_model="hashing", epochs=2, batch_size=16, lr=3e-3,
                             progress=False, embed_dim=16, head_hidden=32, loss="infonce", seed=0)
        report = run_train(config, workdir)
        assert report.exit_code == 0
        lines = (Path(report.extra["run"]) / "metrics.jsonl").read_text().splitlines()
        curves[layout] = [row["loss"] for row in map(json.loads, lines) if "loss" in row]
        tables = load_videos(workdir, "keyframe_embeddings")[0].keyframe_embeddings.tables
        assert len(tables) == max(files, 1)
    # The cache holds the same float16 values either way, so training is the same.
    assert curves["rows"] and curves["rows"] == curves["arrays"] == curves["small arrays"]


def _cache_folder(workdir):
    (folder,) = (workdir / "cache" / "features").iterdir()
    return folder


def test_the_feature_cache_maps_the_embeddings_files_themselves(tmp_path):
    workdir = tmp_path / "work"
    rows = [_row(i, 1 + i % 4) for i in range(11)]
    _write_new(workdir, rows, max_file_bytes=5 * 6 * 2)  # at most 5 frames a file
    _write_new(workdir, [_row(3, 2), {"video_id": "v100", "status": "failed", "error_kind": "zero_byte"}],
               max_file_bytes=5 * 6 * 2)  # v003 redone: its first frames are in no row now
    files = embedding_files(workdir)
    assert len(files) >= 4
    videos, issues, _ = load_videos(workdir, "keyframe_embeddings")
    assert sorted(p.name for p in _cache_folder(workdir).iterdir()) == ["index.parquet", "meta.json"]  # no copy
    frames = videos.keyframe_embeddings
    referenced = set(read_manifest(workdir, KEYFRAMES).column("embeddings_file").drop_null().to_pylist())
    assert len(referenced) >= 4  # mapped where they lie, each file once
    assert sorted(str(table.filename) for table in frames.tables) == sorted(str((workdir / f).resolve()) for f in referenced)
    assert issues == {"video_failed_in_keyframes": 1}
    want = {video_id: array for video_id, array in iter_video_embeddings(workdir) if array is not None}
    assert videos.video_ids == sorted(want)
    for video_id, array in zip(videos.video_ids, frames):
        assert array.dtype == np.float16
        np.testing.assert_array_equal(array, want[video_id])
    pooled = frames.each(range(len(frames)), lambda e: e.astype(np.float32).sum(axis=0), chunk=3)
    np.testing.assert_array_equal(pooled, [want[v].astype(np.float32).sum(axis=0) for v in videos.video_ids])
    again, _, _ = load_videos(workdir, "keyframe_embeddings")  # mapped again, nothing rebuilt
    assert again.video_ids == videos.video_ids and len(list((workdir / "cache" / "features").iterdir())) == 1


def test_an_embeddings_file_gone_or_cut_short_after_the_cache_makes_a_new_one(tmp_path):
    workdir = tmp_path / "work"
    _write_new(workdir, [_row(i, 2) for i in range(6)], max_file_bytes=2 * 2 * 6 * 2)  # two videos a file
    first, second, third = embedding_files(workdir)
    videos, issues, _ = load_videos(workdir, "keyframe_embeddings")
    assert len(videos.video_ids) == 6 and not issues
    built = _cache_folder(workdir)
    second.unlink()
    third.write_bytes(third.read_bytes()[: 3 * 6 * 2])  # the file's second video cut short
    videos, issues, examples = load_videos(workdir, "keyframe_embeddings")
    assert _cache_folder(workdir) != built  # a new cache, the old one removed
    assert videos.video_ids == ["v000", "v001", "v004"]
    # As the reader counts them: the file gone once, the video cut short once.
    assert issues == {"embeddings_missing": 2}
    assert "does not exist" in examples["embeddings_missing"] or "ends before" in examples["embeddings_missing"]
    want = dict(iter_video_embeddings(workdir))
    for video_id, array in zip(videos.video_ids, videos.keyframe_embeddings):
        np.testing.assert_array_equal(array, want[video_id])
    first.unlink()
    third.unlink()  # every file gone: the cache is empty, not broken
    videos, issues, _ = load_videos(workdir, "keyframe_embeddings")
    assert videos.video_ids == [] and issues == {"embeddings_missing": 3}


def test_a_reference_that_cannot_be_followed_leaves_the_video_out_with_a_reason(tmp_path):
    workdir = tmp_path / "work"
    _write_new(workdir, [_row(0, 2)])
    _write_new(workdir, [_row(1, 2)])  # a second file
    first, second = embedding_files(workdir)
    second.unlink()
    first.write_bytes(first.read_bytes()[:10])  # cut short from outside
    videos, issues, examples = load_videos(workdir, "keyframe_embeddings")
    assert videos.video_ids == []
    assert issues == {"embeddings_missing": 2}  # each video counted once, with why
    assert "ends before" in examples["embeddings_missing"] or "does not exist" in examples["embeddings_missing"]


def test_a_reference_outside_the_work_folder_is_not_followed(tmp_path):
    workdir = tmp_path / "work"
    outside = tmp_path / "elsewhere.f16"
    np.ones(12, np.float16).tofile(outside)
    _write_old(workdir, [{"video_id": "x", "status": "ok", "embedding_dim": 6, "embeddings_file": "../elsewhere.f16",
                          "embeddings_offset": 0, "embeddings_count": 2}])
    reader = EmbeddingReader(workdir)
    assert [array for _, array in iter_video_embeddings(workdir)] == [None]
    batch = read_manifest(workdir, KEYFRAMES)
    assert reader.rows(batch) == [None] and reader.problems == {"path_outside_workdir": 1}


# ----------------------------------------------------------------------------- the stage


class _KilledBeforeThePart(PartWriter):
    """Dies (as a kill would) once ``limit`` rows were written: after the embeddings of
    the next rows were appended, before their part is written."""

    limit = 1  # the first row is written at once, the next write dies

    def write_table(self, table):
        if self.rows_written >= self.limit:
            raise KeyboardInterrupt
        super().write_table(table)


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    for i in range(5):
        make_video(folder / f"v{i}.mp4", num_frames=24, fps=12, seed=i)
    return folder


FAST = dict(embedder="pixels", workers=1, num_keyframes=3)


def test_kill_between_array_and_part_leaves_no_dangling_reference(inputs, tmp_path, monkeypatch):
    import mama_augment.keyframes.stage as stage

    workdir = tmp_path / "work"
    monkeypatch.setattr(stage, "PartWriter", _KilledBeforeThePart)
    with pytest.raises(KeyboardInterrupt):
        run_keyframes([inputs], workdir, KeyframesConfig(**FAST), progress=False)
    monkeypatch.undo()
    saved = {row["video_id"]: row for row in read_manifest(workdir, KEYFRAMES).to_pylist()}
    assert len(saved) == 1
    (array_file,) = embedding_files(workdir)
    dim = next(iter(saved.values()))["embedding_dim"]
    referenced = sum(row["embeddings_count"] for row in saved.values())
    unnamed = array_file.stat().st_size // (dim * 2) - referenced
    assert unnamed > 0 and unnamed % 3 == 0  # the killed write's videos (3 keyframes each): no row names them
    before = dict(iter_video_embeddings(workdir))
    assert all(before[video_id] is not None for video_id in saved)
    before = {video_id: np.array(array) for video_id, array in before.items()}

    # The resume keeps what was saved, bit for bit, and does the rest once.
    report = run_keyframes([inputs], workdir, KeyframesConfig(**FAST), progress=False)
    assert (report.skipped, report.done, report.failed) == (len(saved), 5 - len(saved), 0)
    after = {row["video_id"]: row for row in read_manifest(workdir, KEYFRAMES).to_pylist()}
    embeddings = dict(iter_video_embeddings(workdir))
    assert sorted(embeddings) == [f"v{i}" for i in range(5)] and all(a is not None for a in embeddings.values())
    for video_id, row in saved.items():
        assert after[video_id]["created_at"] == row["created_at"]
        assert after[video_id]["embeddings_file"] == row["embeddings_file"]
        np.testing.assert_array_equal(embeddings[video_id], before[video_id])
    assert len(embedding_files(workdir)) == 2  # the killed run's file (still named) and the resume's


def test_redone_videos_free_their_files_and_overwrite_removes_them(inputs, tmp_path):
    workdir = tmp_path / "work"
    run_keyframes([inputs], workdir, KeyframesConfig(**FAST), progress=False)
    (first,) = embedding_files(workdir)
    # Other options: every video is redone, so nothing names the first file any more.
    run_keyframes([inputs], workdir, KeyframesConfig(**{**FAST, "num_keyframes": 2}), progress=False)
    (second,) = embedding_files(workdir)
    assert second != first and not first.exists()
    assert all(a is not None and len(a) == 2 for _, a in iter_video_embeddings(workdir))
    stray = workdir / EMBEDDINGS_DIR / "notes.txt"  # not the tool's: stays
    stray.write_text("x")
    run_keyframes([inputs / "v0.mp4"], workdir, KeyframesConfig(overwrite=True, **FAST), progress=False)
    (third,) = embedding_files(workdir)
    assert not second.exists() and third != second and stray.exists()


# ----------------------------------------------------------------------------- torchrun


def _build_on_ranks(workdir, world_size, monkeypatch):
    """load_usable_videos on ``world_size`` threads standing for ranks; returns each
    rank's result and the cache rows each rank wrote."""
    import os

    wait = threading.Barrier(world_size, timeout=60)
    written: dict[int, list[int]] = {rank: [] for rank in range(world_size)}
    local = threading.local()
    original_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        written[local.rank].append(offset)
        return original_pwrite(fd, data, offset)

    monkeypatch.setattr(video_cache.os, "pwrite", pwrite)
    results: dict[int, object] = {}
    errors = []

    def run(rank):
        local.rank = rank
        try:
            results[rank] = video_cache.load_usable_videos(workdir, "keyframe_embeddings", rank, world_size, wait.wait)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            wait.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results, written


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_ranks_build_one_cache_together(tmp_path, monkeypatch, dtype):
    """float16 files (the keyframes stage's): the cache maps them, no rank copies a frame.
    float32 files: each rank copies its share of the videos into the cache's one array."""
    workdir = tmp_path / "work"
    rows = [_row(i, 1 + i % 3) for i in range(9)]
    _write_new(workdir, rows, dtype=dtype, max_file_bytes=4 * 6 * np.dtype(dtype).itemsize)  # 4 frames a file at most
    assert len(embedding_files(workdir)) > 2
    _write_new(workdir, [{"video_id": "v100", "status": "failed", "error_kind": "zero_byte"}])
    from mama_augment import workread

    read_columns = []
    original = workread.iter_manifest_batches

    def recording(*args, **kwargs):
        read_columns.append(kwargs.get("columns"))
        return original(*args, **kwargs)

    monkeypatch.setattr(workread, "iter_manifest_batches", recording)  # the cache reads through workread
    results, written = _build_on_ranks(workdir, 3, monkeypatch)
    assert read_columns and all("keyframe_embeddings" not in columns for columns in read_columns)  # values via the references
    (cache,) = (workdir / "cache" / "features").iterdir()  # one cache, no leftovers
    if dtype == np.float16:
        assert not any(written.values()) and sorted(p.name for p in cache.iterdir()) == ["index.parquet", "meta.json"]
        assert all(len(results[rank].keyframe_embeddings.tables) == len(embedding_files(workdir)) for rank in range(3))
    else:
        frame_bytes = 6 * 2
        shares = [sorted(offset // frame_bytes for offset in written[rank]) for rank in range(3)]
        assert all(len(share) == 3 for share in shares)  # 9 videos, 3 each, no video read twice
        assert len(set().union(*shares)) == 9
    single = video_cache._sorted(video_cache._scan(workdir, "keyframe_embeddings", tmp_path / "alone.f16"),
                                 np.fromfile(tmp_path / "alone.f16", np.float16).reshape(-1, 6))
    for rank in range(3):
        loaded = results[rank]
        assert loaded.video_ids == single.video_ids == [row["video_id"] for row in rows]
        assert loaded.issues == single.issues == {"video_failed_in_keyframes": 1}
        for got, want in zip(loaded.keyframe_embeddings, single.keyframe_embeddings):
            assert got.dtype == np.float16
            np.testing.assert_array_equal(got, want)
    again, written = _build_on_ranks(workdir, 3, monkeypatch)  # built: every rank maps it, nobody reads
    assert not any(written.values()) and again[1].video_ids == single.video_ids


def test_ranks_on_an_old_folder_wait_for_rank_0(tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    _write_old(workdir, [_row(i, 2) for i in range(4)])
    results, _ = _build_on_ranks(workdir, 2, monkeypatch)
    assert results[0].video_ids == results[1].video_ids == [f"v{i:03d}" for i in range(4)]
    for got, want in zip(results[1].keyframe_embeddings, results[0].keyframe_embeddings):
        np.testing.assert_array_equal(got, want)


def test_rows_arriving_fast_are_written_a_few_parts_a_second(tmp_path):
    from mama_augment.keyframes import stage

    workdir = tmp_path / "work"
    now = [0.0]
    parts = []

    class Counting(PartWriter):
        def write_table(self, table):
            parts.append(table.num_rows)
            super().write_table(table)

    with Counting(workdir, KEYFRAMES) as writer, EmbeddingAppender(workdir) as arrays:
        buffer = stage._RowBuffer(writer, arrays, clock=lambda: now[0])
        for i in range(40):  # 100 videos a second for 0.4 s
            now[0] = i * 0.01
            buffer.add(rows_to_table([_row(i, 2)], KEYFRAMES.schema))
        for i in range(40, 43):  # then one every write interval
            now[0] += stage.WRITE_INTERVAL_S
            buffer.add(rows_to_table([_row(i, 2)], KEYFRAMES.schema))
        buffer.flush()
    # The first row at once, the fast ones together (not a part a row), the slow ones as
    # they come; none lost.
    assert parts == [1, 40, 1, 1]
    got = dict(iter_video_embeddings(workdir))
    assert len(got) == 43 and all(array.shape == (2, 6) for array in got.values())


def test_a_run_merges_its_rows_once_at_its_end(inputs, tmp_path, monkeypatch):
    import mama_augment.manifest as manifest

    merges = []
    original = manifest._merge_runs
    monkeypatch.setattr(manifest, "_merge_runs", lambda sources, *a, **k: (merges.append(len(sources)),
                                                                           original(sources, *a, **k))[1])
    report = run_keyframes([inputs], tmp_path / "work", KeyframesConfig(**FAST), progress=False)
    assert report.done == 5
    # compact folds the run's parts into keyframes.parquet; the writer does not merge
    # them into one part first (the same rows written twice, at the end of every run).
    assert len(merges) == 1


def test_a_stream_hands_back_the_pages_each_batch_read(tmp_path, monkeypatch):
    """Streaming every video's embeddings pages out what the previous batch read (else
    a pass over 6 GB of array files leaves them all resident); the values are unchanged."""
    import mama_augment.frame_embeddings as frame_embeddings

    workdir = tmp_path / "work"
    rows = [_row(i, 2 + i % 3) for i in range(12)]
    _write_new(workdir, rows)
    compact(workdir, KEYFRAMES, full=True)
    handed_back: list[tuple[int, int]] = []
    real = frame_embeddings.page_out
    monkeypatch.setattr(frame_embeddings, "page_out",
                        lambda array, begin, end: (handed_back.append((begin, end)), real(array, begin, end)))
    got = dict((video_id, np.array(array)) for video_id, array in iter_video_embeddings(workdir, batch_rows=4))
    for row in rows:
        assert np.array_equal(got[row["video_id"]], np.asarray(row["keyframe_embeddings"], np.float16))
    total = sum(2 + i % 3 for i in range(12)) * 6 * 2  # frames x dim x float16 bytes
    assert len(handed_back) == 3 and handed_back[0][0] == 0 and handed_back[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(handed_back, handed_back[1:]))  # batch after batch, nothing left out
