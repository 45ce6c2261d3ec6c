"""The one read side of a work folder (:mod:`mama_augment.workread`) and the
torch-free reading of annotation files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mama_augment

ROOT = Path(mama_augment.__file__).parent.parent


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _keyframes(workdir: Path, count: int, failed=(), compacted: bool = True) -> list[str]:
    """A keyframes manifest of ``count`` videos, those numbered in ``failed`` failed; the
    ids of the ok ones, sorted."""
    from mama_augment.manifest import KEYFRAMES, PartWriter, compact, utc_now

    rows = []
    for i in range(count):
        video_id = f"v{i:04d}"
        if i in failed:
            rows.append({"video_id": video_id, "status": "failed", "error_kind": "undecodable", "error": "bad"})
            continue
        rows.append({"video_id": video_id, "status": "ok", "grid_path": f"grids/{video_id}.jpg", "grid_rows": 2,
                     "grid_cols": 2, "keyframe_paths": [f"frames/{video_id}/00.jpg"],
                     "keyframe_times_s": [0.5 * k for k in range(64)], "created_at": utc_now()})
    writer = PartWriter(workdir, KEYFRAMES)
    writer.write(rows)
    writer.close()
    if compacted:
        compact(workdir, KEYFRAMES, full=True)
    return sorted(r["video_id"] for r in rows if r["status"] == "ok")


def test_ok_videos_come_in_bounded_batches_of_the_columns_asked_for(tmp_path):
    from mama_augment.workread import ok_video_batches, ok_video_ids

    ok = _keyframes(tmp_path, 50, failed=(3, 17, 18, 49))
    batches = list(ok_video_batches(tmp_path, ["grid_path"], batch_rows=8))
    assert all(0 < b.num_rows <= 8 for b in batches)
    assert all(b.schema.names == ["video_id", "grid_path"] for b in batches)  # not status, nor the wide columns
    assert [v for b in batches for v in b.column("video_id").to_pylist()] == ok
    assert ok_video_ids(tmp_path) == ok
    with_status = next(ok_video_batches(tmp_path, ["status", "keyframe_times_s"]))
    assert with_status.schema.names == ["video_id", "status", "keyframe_times_s"]


def test_ok_videos_never_decode_a_column_not_asked_for(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from mama_augment.workread import ok_video_batches

    _keyframes(tmp_path, 20, failed=(2,))
    _keyframes(tmp_path, 5, compacted=False)  # parts beside the table: the merged view
    asked: list = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        asked.append(kwargs.get("columns"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert sum(b.num_rows for b in ok_video_batches(tmp_path, ["grid_rows"])) == 20
    # Only the key, the status that filters and the column asked for: never a wide one
    # (keyframe times here, embeddings in a real work folder).
    assert asked and all(c is not None and set(c) <= {"video_id", "status", "grid_rows"} for c in asked)


def test_a_compacted_table_is_streamed_without_an_index_of_its_keys(tmp_path, monkeypatch):
    # The index of every key costs memory in proportion to the videos; a compacted table
    # holds one row per key, so a reader of it needs none.
    from mama_augment import manifest
    from mama_augment.workread import ok_video_ids

    ok = _keyframes(tmp_path, 30, failed=(0,))

    def no_index(*args, **kwargs):
        raise AssertionError("read the keys of the whole table")

    monkeypatch.setattr(manifest, "_read_one", no_index)
    monkeypatch.setattr(manifest, "dedupe_latest", no_index)
    assert ok_video_ids(tmp_path, batch_rows=4) == ok


def test_ok_videos_take_the_newest_row_of_each_video(tmp_path):
    from mama_augment.manifest import KEYFRAMES, PartWriter
    from mama_augment.workread import ok_video_ids, ok_videos_table

    _keyframes(tmp_path, 6, failed=(1,))
    writer = PartWriter(tmp_path, KEYFRAMES)  # a later run: v0001 now decodes, v0004 no longer does
    writer.write([{"video_id": "v0001", "status": "ok", "grid_path": "grids/new.jpg"},
                  {"video_id": "v0004", "status": "failed", "error_kind": "undecodable"}])
    writer.close()
    assert sorted(ok_video_ids(tmp_path)) == ["v0000", "v0001", "v0002", "v0003", "v0005"]
    table = ok_videos_table(tmp_path, ["grid_path"])
    assert table.column("video_id").to_pylist() == ["v0000", "v0001", "v0002", "v0003", "v0005"]
    assert table.column("grid_path").to_pylist()[1] == "grids/new.jpg"


def test_generated_captions_are_the_ok_rows_sorted_by_key(tmp_path):
    from mama_augment.manifest import CAPTIONS, PartWriter
    from mama_augment.workread import generated_caption_batches, generated_captions_table

    writer = PartWriter(tmp_path, CAPTIONS)
    writer.write([{"video_id": v, "caption_index": i, "status": status, "caption": text}
                  for v, i, status, text in [("b", 1, "ok", "b1"), ("a", 0, "ok", "a0"), ("b", 0, "failed", None),
                                             ("a", 1, "ok", "")]])
    writer.close()
    table = generated_captions_table(tmp_path, ["caption"])
    assert table.column_names == ["video_id", "caption_index", "caption"]
    assert table.to_pylist() == [{"video_id": "a", "caption_index": 0, "caption": "a0"},
                                 {"video_id": "a", "caption_index": 1, "caption": ""},
                                 {"video_id": "b", "caption_index": 1, "caption": "b1"}]
    assert all(b.num_rows <= 1 for b in generated_caption_batches(tmp_path, ["caption"], batch_rows=1))


def test_a_manifest_without_a_column_asked_for_is_named(tmp_path):
    import pyarrow.parquet as pq
    import pytest

    from mama_augment.errors import UsageError
    from mama_augment.manifest import KEYFRAMES, manifest_path
    from mama_augment.workread import ok_video_ids

    _keyframes(tmp_path, 3)
    path = manifest_path(tmp_path, KEYFRAMES)
    pq.write_table(pq.read_table(path).drop_columns(["status"]), path)
    with pytest.raises(UsageError, match="status"):
        ok_video_ids(tmp_path)


def test_checking_annotation_files_does_not_import_torch(tmp_path):
    # `datasets check` reads files and picks a protocol: torch costs seconds and is not needed.
    (tmp_path / "caps.csv").write_text("video_id,caption,split\nv1,a dog runs,test\nv2,a cat sits,test\n")
    result = _run("""
        import sys
        import mama_augment.datasets.check as check
        assert 'torch' not in sys.modules, 'import'
        found = check.check_files(['caps.csv'])
        assert found.protocol == 'one-caption', found.protocol
        assert 'torch' not in sys.modules, 'check_files imported torch'
    """, tmp_path)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- one least-trusted ranking


def _pair_weights(run: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mama_augment.train.audit import META_WEIGHTED, PAIR_WEIGHTS_SCHEMA

    run.mkdir(parents=True, exist_ok=True)
    full = [{"caption_source": "original", "caption_index": None, "concept": None, "grid_path": None,
             "weight_raw": None, "mean_weight_last_epoch": None, "last_epoch_steps": 0, **r} for r in rows]
    table = pa.Table.from_pylist(full, schema=PAIR_WEIGHTS_SCHEMA).replace_schema_metadata({META_WEIGHTED: b"true"})
    pq.write_table(table, run / "pair_weights.parquet")
    return run


def test_export_drops_the_pairs_the_audit_ranks_least_trusted_even_on_ties(tmp_path):
    from mama_augment.train.audit import audit_run, load_run_weights

    # Written in descending pair_id order, with ties on weight and loss: the tie is
    # broken by pair_id in the audit, so export must break it the same way.
    rows = [{"pair_id": p, "video_id": f"v{p}", "caption": f"c{p}", "loss": loss, "weight": weight}
            for p, weight, loss in [(5, 0.2, 1.0), (4, 0.2, 1.0), (3, 0.2, 3.0), (2, 0.9, 1.0), (1, 1.5, 0.5),
                                    (0, 1.5, 0.5)]]
    run = _pair_weights(tmp_path / "runs" / "demo", rows)
    ranked = audit_run(run, top=10).ranked["pair_id"].tolist()
    assert ranked == [3, 4, 5, 2, 0, 1]
    for percent, count in ((34, 2), (50, 3), (84, 5)):
        weights = load_run_weights(run, percent, needs_weights=True)
        dropped = sorted(int(p) for p in weights.dropped_pair_ids.nonzero()[0])
        assert dropped == sorted(ranked[:count]), percent


# ----------------------------------------------------------------------------- one rule for a captions table's ids


def _tricky_tables(folder: Path) -> list[Path]:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    csv = folder / "caps.csv"
    csv.write_text("video_id,caption,split\n v1 ,  a dog ,train\n007,x,\n,y,test\nv4, z , test \n")
    jsonl = folder / "caps.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in [
        {"video_id": 12, "caption": "a"}, {"video_id": 12.0, "caption": "b"}, {"video_id": " v5", "caption": "c"},
        {"video_id": None, "caption": "d"}, {"video_id": True, "caption": "e"}]))
    parquet = folder / "caps.parquet"  # ints with a null: pandas reads them as floats
    pq.write_table(pa.table({"video_id": pa.array([1, 2, None], pa.int64()), "caption": ["p", "q", "r"]}), parquet)
    return [csv, jsonl, parquet]


def test_training_and_export_read_a_captions_tables_ids_by_one_rule(tmp_path):
    from mama_augment.datasets import Problems, read_pairs_file
    from mama_augment.export.sources import original_caption_batches

    expected = {"caps.csv": ["v1", "007", "v4"], "caps.jsonl": ["12", "12", "v5"], "caps.parquet": ["1", "2"]}
    for path in _tricky_tables(tmp_path):
        training, exporting = Problems(), Problems()
        frame = read_pairs_file(path, training)
        rows = [r for b in original_caption_batches(path, 2, exporting) for r in b.to_pylist()]
        assert frame["video_id"].tolist() == expected[path.name], path.name
        assert [r["video_id"] for r in rows] == expected[path.name], path.name
        assert training.counts == exporting.counts, path.name  # the rows left out, counted alike
        if path.name == "caps.csv":
            assert [r["split"] for r in rows] == ["train", None, "test"]
            assert [s if isinstance(s, str) else None for s in frame["split"]] == ["train", None, "test"]


def test_video_batches_give_the_ok_rows_and_the_failed_with_their_reason(tmp_path):
    from mama_augment.manifest import KEYFRAMES, PartWriter
    from mama_augment.workread import ok_video_ids, video_batches

    ok = _keyframes(tmp_path, 30, failed=(4, 11, 29))
    writer = PartWriter(tmp_path, KEYFRAMES)  # a later row: v0005 failed this time, v0004 decoded
    writer.write([{"video_id": "v0005", "status": "failed", "error_kind": "timeout", "error": "slow"},
                  {"video_id": "v0004", "status": "ok", "grid_path": "grids/v0004.jpg"}])
    writer.close()
    batches = list(video_batches(tmp_path, ["grid_path"], batch_rows=7))
    assert all(b.ok.num_rows + b.failed.num_rows <= 7 for b in batches)
    assert all(b.ok.schema.names == ["video_id", "grid_path"] for b in batches)
    assert all(b.failed.schema.names == ["video_id", "error_kind", "error"] for b in batches)
    got_ok = sorted(v for b in batches for v in b.ok.column("video_id").to_pylist())
    failed = sorted((r["video_id"], r["error_kind"], r["error"]) for b in batches for r in b.failed.to_pylist())
    assert got_ok == sorted(set(ok) - {"v0005"} | {"v0004"}) == sorted(ok_video_ids(tmp_path))
    assert failed == [("v0005", "timeout", "slow"), ("v0011", "undecodable", "bad"), ("v0029", "undecodable", "bad")]


def test_video_batches_read_a_column_an_older_file_lacks_as_nulls(tmp_path):
    # A folder written before the embeddings moved out has no reference columns; the
    # feature cache asks for both layouts' columns and must still read it.
    import pyarrow.parquet as pq

    from mama_augment.manifest import KEYFRAMES, manifest_path
    from mama_augment.workread import video_batches

    _keyframes(tmp_path, 4, failed=(2,))
    path = manifest_path(tmp_path, KEYFRAMES)
    pq.write_table(pq.read_table(path).drop_columns(["embeddings_file"]), path)
    batches = list(video_batches(tmp_path, ["embeddings_file", "grid_path"]))
    assert [v for b in batches for v in b.ok.column("embeddings_file").to_pylist()] == [None] * 3
    assert [v for b in batches for v in b.failed.column("video_id").to_pylist()] == ["v0002"]


def test_a_null_status_is_not_ok():
    import pyarrow as pa

    from mama_augment.workread import is_ok

    assert is_ok(pa.array(["ok", "failed", None, "OK"])).to_pylist() == [True, False, False, False]


def test_pending_videos_are_new_changed_or_failed_inputs(tmp_path):
    from mama_augment.manifest import KEYFRAMES, PartWriter
    from mama_augment.workread import pending_videos

    rows = [{"video_id": f"v{i}", "status": "failed" if i == 3 else "ok", "error_kind": "timeout" if i == 3 else None,
             "error": "slow" if i == 3 else None, "input_size_bytes": 100 + i, "input_mtime": 10.0 + i,
             "config_hash": "other" if i == 2 else "h"} for i in range(5)]
    rows.append({"video_id": "v5", "status": "failed", "input_size_bytes": 105, "input_mtime": 15.0, "config_hash": "h"})
    with PartWriter(tmp_path, KEYFRAMES) as writer:
        writer.write(rows)
    ids = ["v0", "v1", "v2", "v3", "v4", "v5", "new"]
    sizes = [100, 999, 102, 103, 104, 105, 1]
    mtimes = [10.0, 11.0, 12.0, 13.0, None, 15.0, 1.0]
    kept = pending_videos(tmp_path, ids, sizes, mtimes, "h", retry_failed=False)
    assert kept.redo == [1, 2, 4, 6]
    assert kept.reasons == {"new": 1, "config changed": 1, "input changed": 2}
    assert kept.kept_failed == [(3, "timeout", "slow"), (5, "failed", "")]  # no kind recorded: "failed"
    retried = pending_videos(tmp_path, ids, sizes, mtimes, "h", retry_failed=True)
    assert retried.redo == [1, 2, 3, 4, 5, 6] and retried.kept_failed == []
    assert retried.reasons["retry failed"] == 2
    assert pending_videos(tmp_path, [], [], [], "h", retry_failed=True).redo == []
