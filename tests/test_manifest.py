"""The manifest writer: atomic parts, newest row per key, crash-safe compaction."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mama_augment.errors import MamaError, UsageError
from mama_augment.manifest import (
    CAPTIONS,
    KEYFRAMES,
    PartWriter,
    compact,
    conform,
    dedupe_latest,
    ensure_workdir,
    manifest_path,
    parts_dir,
    read_manifest,
    remove_manifest,
    utc_now,
    workdir_lock,
)


def _row(video_id: str, status: str = "ok", **extra) -> dict:
    return {"video_id": video_id, "status": status, "created_at": utc_now(), **extra}


def test_empty_workdir_reads_as_empty_table_with_schema(tmp_path):
    table = read_manifest(tmp_path, KEYFRAMES)
    assert table.num_rows == 0
    assert table.schema.names == KEYFRAMES.schema.names


def test_parts_are_visible_before_compaction_and_newest_row_wins(tmp_path):
    writer = PartWriter(tmp_path, KEYFRAMES)
    writer.write([_row("a", "failed", error="bad"), _row("b")])
    writer.write([_row("a", "ok", num_sampled=3)])
    table = read_manifest(tmp_path, KEYFRAMES)
    rows = {r["video_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["status"] == "ok" and rows["a"]["num_sampled"] == 3
    assert not manifest_path(tmp_path, KEYFRAMES).exists()


def test_compact_folds_parts_into_one_table_readable_by_pandas(tmp_path):
    writer = PartWriter(tmp_path, KEYFRAMES)
    for name in "cab":
        writer.write([_row(name, keyframe_embeddings=[[0.5, 0.25], [1.0, 0.0]], keyframe_indices=[1, 7])])
    assert compact(tmp_path, KEYFRAMES) == 3
    assert list(parts_dir(tmp_path, KEYFRAMES).glob("part-*")) == []
    frame = pd.read_parquet(manifest_path(tmp_path, KEYFRAMES))
    assert list(frame["video_id"]) == ["a", "b", "c"]
    assert list(frame.loc[0, "keyframe_indices"]) == [1, 7]
    file_schema = pq.read_schema(manifest_path(tmp_path, KEYFRAMES))
    assert file_schema.field("keyframe_embeddings").type == pa.list_(pa.list_(pa.float32()))


def test_compaction_killed_before_removing_parts_leaves_no_duplicates(tmp_path):
    writer = PartWriter(tmp_path, KEYFRAMES)
    writer.write([_row("a"), _row("b")])
    # What a kill between the rename of the compacted table and the removal of the
    # parts leaves behind: the same rows in both places.
    table = read_manifest(tmp_path, KEYFRAMES)
    pq.write_table(table, manifest_path(tmp_path, KEYFRAMES))
    merged = read_manifest(tmp_path, KEYFRAMES)
    assert sorted(merged.column("video_id").to_pylist()) == ["a", "b"]
    compact(tmp_path, KEYFRAMES)
    assert sorted(read_manifest(tmp_path, KEYFRAMES).column("video_id").to_pylist()) == ["a", "b"]


def test_leftover_temporary_file_of_a_killed_write_is_ignored(tmp_path):
    writer = PartWriter(tmp_path, KEYFRAMES)
    writer.write([_row("a")])
    (parts_dir(tmp_path, KEYFRAMES) / ".part-123.parquet.tmp-abc").write_bytes(b"PAR1 half written")
    assert read_manifest(tmp_path, KEYFRAMES).column("video_id").to_pylist() == ["a"]


def test_damaged_part_is_skipped_not_fatal(tmp_path):
    writer = PartWriter(tmp_path, KEYFRAMES)
    writer.write([_row("a")])
    (parts_dir(tmp_path, KEYFRAMES) / "part-99999999999999999999-1-x.parquet").write_bytes(b"garbage")
    assert read_manifest(tmp_path, KEYFRAMES).column("video_id").to_pylist() == ["a"]


def test_damaged_main_table_is_a_clear_error(tmp_path):
    manifest_path(tmp_path, KEYFRAMES).write_bytes(b"not parquet")
    with pytest.raises(MamaError, match="cannot read manifest"):
        read_manifest(tmp_path, KEYFRAMES)


def test_writer_consolidates_its_small_parts(tmp_path):
    writer = PartWriter(tmp_path, KEYFRAMES, consolidate_every=4)
    for i in range(10):
        writer.write([_row(f"v{i}")])
    parts = list(parts_dir(tmp_path, KEYFRAMES).glob("part-*.parquet"))
    assert len(parts) < 10
    assert sorted(read_manifest(tmp_path, KEYFRAMES).column("video_id").to_pylist()) == sorted(
        f"v{i}" for i in range(10)
    )


def test_composite_key_of_captions(tmp_path):
    writer = PartWriter(tmp_path, CAPTIONS)
    writer.write([
        {"video_id": "a", "caption_index": 0, "status": "ok", "caption": "one"},
        {"video_id": "a", "caption_index": 1, "status": "ok", "caption": "two"},
    ])
    writer.write([{"video_id": "a", "caption_index": 0, "status": "ok", "caption": "one again"}])
    rows = sorted(read_manifest(tmp_path, CAPTIONS).to_pylist(), key=lambda r: r["caption_index"])
    assert [r["caption"] for r in rows] == ["one again", "two"]


def test_read_selected_columns_keeps_the_key(tmp_path):
    PartWriter(tmp_path, KEYFRAMES).write([_row("a", num_sampled=4)])
    table = read_manifest(tmp_path, KEYFRAMES, columns=["num_sampled"])
    assert table.column_names == ["video_id", "num_sampled"]


def test_conform_adds_missing_columns_of_an_older_file():
    old = pa.table({"video_id": ["a"], "status": ["ok"]})
    table = conform(old, KEYFRAMES.schema)
    assert table.schema.names == KEYFRAMES.schema.names
    assert table.column("grid_path").to_pylist() == [None]


def test_dedupe_latest_keeps_last_occurrence():
    table = pa.table({"video_id": ["a", "b", "a"], "n": [1, 2, 3]})
    assert sorted(dedupe_latest(table, ["video_id"]).to_pylist(), key=lambda r: r["video_id"]) == [
        {"video_id": "a", "n": 3},
        {"video_id": "b", "n": 2},
    ]


def test_remove_manifest(tmp_path):
    PartWriter(tmp_path, KEYFRAMES).write([_row("a")])
    compact(tmp_path, KEYFRAMES)
    PartWriter(tmp_path, KEYFRAMES).write([_row("b")])
    remove_manifest(tmp_path, KEYFRAMES)
    assert read_manifest(tmp_path, KEYFRAMES).num_rows == 0


def test_lock_refuses_a_second_writer(tmp_path):
    with workdir_lock(tmp_path, "keyframes"):
        # flock locks belong to open file descriptions, so a second open in the same
        # process conflicts just as another process would.
        with pytest.raises(MamaError, match="another 'keyframes' run"):
            with workdir_lock(tmp_path, "keyframes"):
                pass
    with workdir_lock(tmp_path, "keyframes"):
        pass


def test_ensure_workdir_errors_are_clear(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot create the work folder"):
        ensure_workdir(blocker / "sub")
    assert ensure_workdir(tmp_path / "new").is_dir()


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    writer = PartWriter(tmp_path, KEYFRAMES)
    writer.write([_row("a")])
    compact(tmp_path, KEYFRAMES)
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert os.listdir(parts_dir(tmp_path, KEYFRAMES)) == []
