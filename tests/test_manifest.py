"""The manifest writer: atomic parts, newest row per key, crash-safe compaction."""

from __future__ import annotations

import contextlib
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
    write_whole_manifest,
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


def _count_rows_written(monkeypatch) -> list[int]:
    """Rows of every file the manifest module renames into place, in order."""
    import mama_augment.manifest as manifest

    written: list[int] = []
    real = manifest.atomic_path

    @contextlib.contextmanager
    def counting(path, fsync=False):
        with real(path, fsync=fsync) as tmp:
            yield tmp
            written.append(pq.read_metadata(tmp).num_rows)

    monkeypatch.setattr(manifest, "atomic_path", counting)
    return written


def test_writer_writes_each_row_a_bounded_number_of_times(tmp_path, monkeypatch):
    # Folding a writer's parts into one growing part rewrote every earlier row at each
    # fold: quadratic in the rows of a run.
    written = _count_rows_written(monkeypatch)
    with PartWriter(tmp_path, KEYFRAMES, consolidate_every=4) as writer:
        for i in range(200):
            writer.write([_row(f"v{i:03d}")])
    assert sum(written) <= 3 * 200
    ids = read_manifest(tmp_path, KEYFRAMES).column("video_id").to_pylist()
    assert sorted(ids) == [f"v{i:03d}" for i in range(200)]
    assert len(list(parts_dir(tmp_path, KEYFRAMES).glob("part-*.parquet"))) < 200 / 4


def test_compact_adds_a_few_rows_without_rewriting_the_table(tmp_path, monkeypatch):
    with PartWriter(tmp_path, KEYFRAMES) as writer:
        writer.write([_row(f"v{i:03d}") for i in range(100)])
    assert compact(tmp_path, KEYFRAMES) == 100
    written = _count_rows_written(monkeypatch)
    with PartWriter(tmp_path, KEYFRAMES) as writer:
        writer.write([_row("new"), _row("v005", "failed", error="redone")])
    assert compact(tmp_path, KEYFRAMES) == 101
    assert sum(written) <= 2  # the new part only: NAME.parquet was not rewritten
    assert pq.read_metadata(manifest_path(tmp_path, KEYFRAMES)).num_rows == 100
    rows = {r["video_id"]: r for r in read_manifest(tmp_path, KEYFRAMES).to_pylist()}
    assert len(rows) == 101 and rows["v005"]["status"] == "failed" and "new" in rows
    # Asked for (export), or once the parts hold a quarter of the table, it is rewritten.
    assert compact(tmp_path, KEYFRAMES, full=True) == 101
    assert list(parts_dir(tmp_path, KEYFRAMES).glob("part-*")) == []
    frame = pd.read_parquet(manifest_path(tmp_path, KEYFRAMES))
    assert list(frame["video_id"]) == sorted(rows)
    assert frame.set_index("video_id").loc["v005", "status"] == "failed"


def test_killed_between_a_merge_and_the_removal_of_its_inputs(tmp_path, monkeypatch):
    import mama_augment.manifest as manifest

    def killed(paths):
        raise KeyboardInterrupt("killed")

    writer = PartWriter(tmp_path, KEYFRAMES, consolidate_every=3)
    writer.write([_row("a", "failed")])
    writer.write([_row("b")])
    monkeypatch.setattr(manifest, "_remove_oldest_first", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.write([_row("a")])  # the merged part is in place, its inputs too
    monkeypatch.undo()
    assert len(list(parts_dir(tmp_path, KEYFRAMES).glob("part-*.parquet"))) == 4
    rows = read_manifest(tmp_path, KEYFRAMES).to_pylist()
    assert sorted((r["video_id"], r["status"]) for r in rows) == [("a", "ok"), ("b", "ok")]
    batches = list(manifest.iter_manifest_batches(tmp_path, KEYFRAMES, columns=["status"]))
    assert sorted(pa.Table.from_batches(batches).column("video_id").to_pylist()) == ["a", "b"]
    assert compact(tmp_path, KEYFRAMES) == 2
    assert sorted(pq.read_table(manifest_path(tmp_path, KEYFRAMES)).column("status").to_pylist()) == ["ok", "ok"]


def test_streamed_rows_equal_the_merged_view(tmp_path):
    from mama_augment.manifest import iter_manifest_batches

    with PartWriter(tmp_path, KEYFRAMES) as writer:
        writer.write([_row(f"v{i}", keyframe_embeddings=[[float(i)] * 3]) for i in range(7)])
    compact(tmp_path, KEYFRAMES)
    writer = PartWriter(tmp_path, KEYFRAMES)
    writer.write([_row("v3", "failed"), _row("v9")])
    writer.write([_row("v1", keyframe_embeddings=[[9.0] * 3])])
    (parts_dir(tmp_path, KEYFRAMES) / "part-99999999999999999999-1-x.parquet").write_bytes(b"garbage")
    streamed = pa.Table.from_batches(
        list(iter_manifest_batches(tmp_path, KEYFRAMES, columns=["status", "keyframe_embeddings"], batch_rows=2)))
    merged = read_manifest(tmp_path, KEYFRAMES, columns=["status", "keyframe_embeddings"])
    assert streamed.schema == merged.schema
    assert sorted(streamed.to_pylist(), key=str) == sorted(merged.to_pylist(), key=str)
    assert len(streamed) == 8


def test_work_folder_of_an_older_version_compacts(tmp_path):
    # Older versions wrote unsorted parts without the sorted marker, and a main table
    # that nothing marks; a main table written by hand may not even be sorted.
    pq.write_table(pa.table({"video_id": ["c", "a"], "status": ["ok", "ok"]}), manifest_path(tmp_path, KEYFRAMES))
    folder = parts_dir(tmp_path, KEYFRAMES)
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"video_id": ["d", "b", "a"], "status": ["ok", "ok", "failed"]}),
                   folder / "part-00000000000000000001-1-a.parquet")
    assert compact(tmp_path, KEYFRAMES) == 4
    table = pq.read_table(manifest_path(tmp_path, KEYFRAMES))
    assert table.column("video_id").to_pylist() == ["a", "b", "c", "d"]
    assert table.column("status").to_pylist() == ["failed", "ok", "ok", "ok"]


def test_merge_of_small_parts_killed_half_way_loses_no_row(tmp_path):
    import mama_augment.manifest as manifest

    with PartWriter(tmp_path, KEYFRAMES) as writer:
        writer.write([_row(f"v{i:02d}") for i in range(40)])
    compact(tmp_path, KEYFRAMES)
    writer = PartWriter(tmp_path, KEYFRAMES)  # a run killed before it closed its writer
    for name in ("n1", "n2", "n3"):
        writer.write([_row(name)])
    raw = sorted(parts_dir(tmp_path, KEYFRAMES).glob("part-*.parquet"))
    # Killed while merging them: the merged part in place, the oldest input removed.
    manifest._merge_runs(raw, KEYFRAMES, raw[-1].with_name(raw[-1].stem + "~1.parquet"))
    raw[0].unlink()
    assert compact(tmp_path, KEYFRAMES) == 43
    assert {"n1", "n2", "n3"} <= set(read_manifest(tmp_path, KEYFRAMES).column("video_id").to_pylist())
    assert len(list(parts_dir(tmp_path, KEYFRAMES).glob("part-*.parquet"))) == 1


def test_whole_manifest_replaces_the_table_and_the_older_parts(tmp_path):
    with PartWriter(tmp_path, CAPTIONS) as writer:
        writer.write([{"video_id": v, "caption_index": 0, "status": "ok", "caption": "old"} for v in "abc"])
    compact(tmp_path, CAPTIONS)
    with PartWriter(tmp_path, CAPTIONS) as writer:  # a part newer than the table
        writer.write([{"video_id": "b", "caption_index": 0, "status": "ok", "caption": "old part"}])

    def chunk(ids, caption):
        return pa.table({"video_id": ids, "caption_index": pa.array([0] * len(ids), pa.int32()),
                         "status": ["ok"] * len(ids), "caption": [caption] * len(ids)})

    assert write_whole_manifest(tmp_path, CAPTIONS, [chunk(["a", "b"], "new"), chunk(["d"], "new")]) == 3
    rows = {r["video_id"]: r["caption"] for r in read_manifest(tmp_path, CAPTIONS).to_pylist()}
    assert rows == {"a": "new", "b": "new", "d": "new"}  # "c" gone, the older part no longer wins
    assert list(parts_dir(tmp_path, CAPTIONS).glob("part-*")) == []
    # Marked sorted: later parts merge into it as a stream.
    with PartWriter(tmp_path, CAPTIONS) as writer:
        writer.write([{"video_id": "c", "caption_index": 0, "status": "ok", "caption": "added"}])
    assert compact(tmp_path, CAPTIONS, full=True) == 4


@pytest.mark.parametrize("chunks", [[["b", "a"]], [["a", "c"], ["b"]], [["a"], ["a"]]])
def test_whole_manifest_refuses_rows_out_of_key_order(tmp_path, chunks):
    tables = [pa.table({"video_id": ids, "caption_index": pa.array([0] * len(ids), pa.int32()),
                        "status": ["ok"] * len(ids)}) for ids in chunks]
    with PartWriter(tmp_path, CAPTIONS) as writer:
        writer.write([{"video_id": "kept", "caption_index": 0, "status": "ok"}])
    compact(tmp_path, CAPTIONS)
    with pytest.raises(ValueError, match="sorted by video_id, caption_index"):
        write_whole_manifest(tmp_path, CAPTIONS, tables)
    assert read_manifest(tmp_path, CAPTIONS).column("video_id").to_pylist() == ["kept"]  # untouched


def test_a_write_of_distinct_keys_is_sorted_without_a_dedupe(tmp_path, monkeypatch):
    # The dedupe is a group-by whose first use imports Arrow's query engine: a fixed cost
    # of every short keyframes run, whose writes hold each video once.
    import mama_augment.manifest as manifest

    calls = []
    original = manifest.dedupe_latest
    monkeypatch.setattr(manifest, "dedupe_latest", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    with PartWriter(tmp_path, KEYFRAMES) as writer:
        writer.write([_row("c"), _row("a"), _row("b")])
    assert calls == []
    part = next(parts_dir(tmp_path, KEYFRAMES).glob("part-*.parquet"))
    assert pq.read_table(part).column("video_id").to_pylist() == ["a", "b", "c"]
    with PartWriter(tmp_path / "again", KEYFRAMES) as writer:  # a key twice: the last row wins
        writer.write([_row("b", error="old"), _row("a"), _row("b", error="new")])
    assert calls == [1]
    part = next(parts_dir(tmp_path / "again", KEYFRAMES).glob("part-*.parquet"))
    assert pq.read_table(part).select(["video_id", "error"]).to_pylist() == [
        {"video_id": "a", "error": None}, {"video_id": "b", "error": "new"}]


def test_writing_and_reading_a_manifest_imports_no_query_engine(tmp_path):
    # pyarrow.dataset and pyarrow.acero cost ~25 ms to import: in a 40-video keyframes
    # run that was a fifth of all its manifest writing.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        from mama_augment.manifest import KEYFRAMES, PartWriter, compact, read_manifest, utc_now
        work = {str(tmp_path)!r}
        for start in (0, 3):
            writer = PartWriter(work, KEYFRAMES)
            writer.write([{{"video_id": f"v{{i}}", "status": "ok", "created_at": utc_now()}} for i in range(start, start + 3)])
            writer.close(consolidate=False)
        compact(work, KEYFRAMES)
        assert read_manifest(work, KEYFRAMES, columns=["embeddings_file"]).num_rows == 6
        print(sorted(m for m in ("pyarrow.dataset", "pyarrow.acero") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_parts_are_written_without_dictionaries_and_the_table_with_them(tmp_path):
    # A part lives until the next merge: building a dictionary for each of its columns was
    # over half the cost of writing one. The compacted table keeps them (its size).
    def encodings(path):
        meta = pq.ParquetFile(path).metadata
        return {e for g in range(meta.num_row_groups) for c in range(meta.num_columns)
                for e in meta.row_group(g).column(c).encodings}

    with PartWriter(tmp_path, KEYFRAMES) as writer:
        writer.write([_row(f"v{i}", media_type="video") for i in range(20)])
    part = next(parts_dir(tmp_path, KEYFRAMES).glob("part-*.parquet"))
    assert not any("DICTIONARY" in e for e in encodings(part))
    compact(tmp_path, KEYFRAMES)
    assert any("DICTIONARY" in e for e in encodings(manifest_path(tmp_path, KEYFRAMES)))
    assert read_manifest(tmp_path, KEYFRAMES).num_rows == 20


def test_a_fold_of_many_parts_reads_a_bounded_number_of_files_at_once(tmp_path, monkeypatch):
    """A long run leaves parts in proportion to its rows; folding them merges consecutive
    runs of at most ``MERGE_FAN_IN`` first (each cursor holds a row group), and the
    newest row of every key still wins, whether it lies in an early or a late part."""
    import mama_augment.manifest as manifest

    monkeypatch.setattr(manifest, "MERGE_FAN_IN", 4)
    with PartWriter(tmp_path, KEYFRAMES) as writer:
        writer.write([_row(f"v{i:03d}") for i in range(10)])
    assert compact(tmp_path, KEYFRAMES, full=True) == 10
    for k in range(13):  # 13 parts after the table: more than 4 at once
        with PartWriter(tmp_path, KEYFRAMES) as writer:
            writer.write([_row(f"v{k:03d}", "failed", error=f"redone {k}"), _row(f"new{k:02d}")])
            if k == 12:
                writer.write([_row("v000", "ok")])  # the newest row of v000, in the last part
    assert len(list(parts_dir(tmp_path, KEYFRAMES).glob("part-*.parquet"))) == 13
    widths = []
    original = manifest._merge_runs
    monkeypatch.setattr(manifest, "_merge_runs", lambda sources, *a, **k: widths.append(len(sources)) or original(sources, *a, **k))
    assert compact(tmp_path, KEYFRAMES, full=True) == 26  # v010-v012 and new00-new12 are new
    assert max(widths) <= 4 and len(widths) > 1
    assert list(parts_dir(tmp_path, KEYFRAMES).glob("part-*")) == []
    rows = {r["video_id"]: r for r in read_manifest(tmp_path, KEYFRAMES).to_pylist()}
    assert len(rows) == 26 and rows["v000"]["status"] == "ok"
    assert rows["v003"]["status"] == "failed" and rows["v003"]["error"] == "redone 3"
    assert rows["v011"]["error"] == "redone 11" and rows["v012"]["status"] == "failed"
    frame = pd.read_parquet(manifest_path(tmp_path, KEYFRAMES))
    assert list(frame["video_id"]) == sorted(rows)
