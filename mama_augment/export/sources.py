"""Streaming reads of everything an export joins, in ``video_id`` order.

Memory stays bounded by batches, whatever the size of the work folder:

* the manifests (``keyframes``, ``captions``, ``caption_flags``) are compacted tables
  sorted by their key (``manifest.compact`` sorts them), read a Parquet batch at a time
  through :mod:`mama_augment.workread`, which first compacts the parts a killed stage
  left, under that stage's lock;
* the inputs that come in another order (the original captions file, a run's
  ``pair_weights.parquet``, opened by :func:`mama_augment.train.audit.load_run_weights`)
  are sorted by ``video_id`` on disk: in runs of at most ``sort_memory_rows`` rows,
  merged back as a stream (an external merge sort); an input that fits in one run
  never touches the disk.

The original captions are read as ``train`` reads them (:mod:`mama_augment.datasets`),
their ids matched to the ``keyframes.parquet`` ids by the same rules. This project's
own table (one ``.csv``, ``.jsonl`` or ``.parquet`` of ``video_id``, ``caption``) is
streamed through the sort, its ids read by the datasets' one rule
(:func:`mama_augment.datasets.base.id_value`); the benchmarks' files (a JSON document, several files that
decide splits together) are read whole, as training reads them, and then sorted.

:func:`iter_videos` walks ``keyframes.parquet`` and takes, for each video, the rows of
every other source with the same ``video_id`` (a merge join of sorted streams).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mama_augment.datasets import (
    CaptionSpec,
    Problems,
    Source,
    count_unmatched,
    detect_format,
    load_captions,
    match_video_ids,
    no_video_matches,
)
from mama_augment.datasets.base import id_value
from mama_augment.errors import MamaError, UsageError
from mama_augment.export.config import SOURCE_GENERATED, SOURCE_ORIGINAL
from mama_augment.export.records import CaptionEntry, VideoItem
from mama_augment.manifest import CAPTION_FLAGS, CAPTIONS, KEYFRAMES, STATUS_OK
from mama_augment.datasets.splits import normalize_split
from mama_augment.train.runs import RunPaths
from mama_augment.workread import caption_sha256, manifest_rows, open_parquet, parquet_rows

SEQ = "__seq"
MERGE_BATCH_ROWS = 1024


# ----------------------------------------------------------------------------- external sort


def sorted_rows(
    batches: Iterable[pa.RecordBatch], key: str, tmpdir: Path, max_rows: int, batch_rows: int = 4096
) -> Iterator[dict]:
    """Rows of ``batches`` sorted by ``key`` (stable), holding at most ~``max_rows`` in memory.

    Each run of ``max_rows`` rows is sorted with Arrow and, when the input does not fit
    in one run, written to ``tmpdir`` as Parquet in row groups of ``batch_rows``; the
    runs are then merged a row group at a time each. The files are removed when the
    iterator is exhausted or closed.
    """
    runs: list[Path] = []
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    seq = 0

    def sort_pending() -> pa.Table:
        table = pa.Table.from_batches(pending)
        return table.sort_by([(key, "ascending"), (SEQ, "ascending")])

    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            batch = batch.append_column(SEQ, pa.array(np.arange(seq, seq + batch.num_rows, dtype=np.int64)))
            seq += batch.num_rows
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= max_rows:
                tmpdir.mkdir(parents=True, exist_ok=True)
                path = tmpdir / f"sort-{key}-{uuid.uuid4().hex}.parquet"  # two sorts may share tmpdir
                pq.write_table(sort_pending(), path, row_group_size=batch_rows)
                runs.append(path)
                pending, pending_rows = [], 0
        if not runs:
            if pending:
                for batch in sort_pending().to_batches(max_chunksize=batch_rows):
                    yield from batch.to_pylist()
            return
        if pending:
            path = tmpdir / f"sort-{key}-{uuid.uuid4().hex}.parquet"  # two sorts may share tmpdir
            pq.write_table(sort_pending(), path, row_group_size=batch_rows)
            runs.append(path)
            pending = []
        # The merge holds a batch per run: small batches keep many runs cheap.
        streams = [parquet_rows(path, None, MERGE_BATCH_ROWS, "sort run") for path in runs]
        yield from heapq.merge(*streams, key=lambda row: (row[key], row[SEQ]))
    finally:
        for path in runs:
            with contextlib.suppress(OSError):
                path.unlink()


class KeyedCursor:
    """Consume a stream of rows sorted by ``key``: ``take(k)`` returns the rows with key k.

    Keys must be asked for in ascending order. Rows whose key is never asked for (a
    caption of a video that is not in ``keyframes.parquet``) are skipped and counted.
    """

    def __init__(self, rows: Iterator[dict], key: str, label: str):
        self._rows = iter(rows)
        self._key = key
        self._label = label
        self._last: str | None = None
        self.skipped = 0
        self._pending = self._next()

    def _next(self) -> dict | None:
        row = next(self._rows, None)
        if row is not None:
            value = row[self._key]
            if self._last is not None and value < self._last:
                raise MamaError(
                    f"{self._label} is not sorted by {self._key} ({value!r} after {self._last!r}); "
                    "rerun the stage that wrote it to compact it"
                )
            self._last = value
        return row

    def take(self, value: str) -> list[dict]:
        found = []
        while self._pending is not None:
            current = self._pending[self._key]
            if current < value:
                self.skipped += 1
            elif current == value:
                found.append(self._pending)
            else:
                break
            self._pending = self._next()
        return found

    def rows(self) -> Iterator[dict]:
        """Every row, in order (the cursor that drives the join)."""
        while self._pending is not None:
            row = self._pending
            self._pending = self._next()
            yield row

    def drain(self) -> None:
        while self._pending is not None:
            self.skipped += 1
            self._pending = self._next()


# ----------------------------------------------------------------------------- original captions

ORIGINAL_COLUMNS = ("video_id", "caption", "split", "concept")
_TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")


def plain_table(spec: CaptionSpec) -> Path | None:
    """The file of ``spec`` when it is one of this project's captions tables (``mama``
    format, read as a stream); None for anything else."""
    if len(spec.paths) != 1:
        return None
    path = Path(spec.paths[0])
    named = spec.formats[0] if spec.formats else None
    if path.suffix.lower() not in _TABLE_SUFFIXES or named not in (None, "auto", "mama"):
        return None
    if named == "mama":
        return path
    try:
        # Recognised from the file's head: nothing is read whole here.
        return path if detect_format(Source(path)) == "mama" else None
    except UsageError:  # read whole below, which says what is wrong
        return None


def original_caption_rows(
    spec: CaptionSpec, video_ids: Sequence[str], tmpdir: Path, batch_rows: int, max_rows: int, problems: Problems,
    splits: set[str] | None = None,
) -> Iterator[dict]:
    """Rows (``video_id``, ``caption``, ``split``, ``concept``) of the original captions,
    sorted by ``video_id``, each id matched to one of ``video_ids`` (the ``ok`` videos
    of ``keyframes.parquet``) by the rules training uses.

    The files are read (and a table sorted) before this returns, so a file that cannot
    be used stops the export here. Ids that match no video keep their own and are
    counted in ``problems`` (``unmatched_video_id``, ``ambiguous_video_id``); when no
    id matches at all it is a UsageError, as in ``train``. ``splits``, when given,
    receives every split name the captions hold (known once this returns).
    """
    if not video_ids:
        return iter(())
    splits = splits if splits is not None else set()
    path = plain_table(spec)
    if path is None:
        loaded = load_captions(spec, video_ids=video_ids)
        problems.merge(loaded.problems)
        if "split" in loaded.frame.columns:
            splits.update(str(v) for v in loaded.frame["split"].dropna().unique())
        return _frame_rows(loaded.frame)
    return _streamed_rows(spec, path, video_ids, tmpdir, batch_rows, max_rows, problems, splits)


def _frame_rows(frame) -> Iterator[dict]:
    frame = frame.sort_values("video_id", kind="stable")
    columns = [frame[name].tolist() if name in frame.columns else [None] * len(frame) for name in ORIGINAL_COLUMNS]
    for values in zip(*columns):
        yield {name: None if isinstance(value, float) and value != value else value
               for name, value in zip(ORIGINAL_COLUMNS, values)}


def _streamed_rows(spec: CaptionSpec, path: Path, video_ids: Sequence[str], tmpdir: Path, batch_rows: int,
                   max_rows: int, problems: Problems, splits: set[str]) -> Iterator[dict]:
    """A table sorted on disk. The ids are collected while it is sorted; only when some
    id is not a keyframes id but matches one by a looser rule (``video7010`` for
    ``all/video7010``) is the table read a second time, with those ids replaced."""
    known = set(video_ids)
    exact: set[str] = set()
    others: set[str] = set()

    def watched(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for video_id in batch.column("video_id").unique().to_pylist():
                (exact if video_id in known else others).add(video_id)
            splits.update(v for v in batch.column("split").unique().to_pylist() if v is not None)
            yield batch

    rows = sorted_rows(watched(original_caption_batches(path, batch_rows, problems)), "video_id", tmpdir, max_rows)
    first = next(rows, None)  # the whole table has been read and sorted
    if first is None:  # as in train: a given file that holds nothing is a mistake, not "no originals"
        raise UsageError(f"{path} holds no caption rows (a header only, or only empty captions): "
                         "give a file with captions, or leave it out")
    mapping: dict[str, str] = {}
    if others:
        # The exact ids take part so that a looser rule never claims a video that has its own id.
        match = match_video_ids([*sorted(exact), *sorted(others)], video_ids)
        count_unmatched(match, problems)
        mapping = {v: match.mapping[v] for v in others if v in match.mapping}
        if not exact and not mapping:
            rows.close()
            raise no_video_matches(spec, sorted(others), video_ids)
    if not mapping:
        return itertools.chain([first], rows)
    rows.close()
    renamed = (_rename_ids(batch, mapping) for batch in original_caption_batches(path, batch_rows))
    rows = sorted_rows(renamed, "video_id", tmpdir, max_rows)
    first = next(rows, None)
    return itertools.chain([first], rows) if first is not None else iter(())


def _rename_ids(batch: pa.RecordBatch, mapping: dict[str, str]) -> pa.RecordBatch:
    ids = batch.column("video_id").to_pylist()
    if not any(v in mapping for v in ids):
        return batch
    renamed = pa.array([mapping.get(v, v) for v in ids], type=pa.string())
    columns = [renamed if name == "video_id" else batch.column(name) for name in batch.schema.names]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def original_caption_batches(path: Path, batch_rows: int, problems: Problems | None = None) -> Iterator[pa.RecordBatch]:
    """The original captions file as batches of ``video_id``, ``caption``, ``split``, ``concept``.

    Same rules as training: text is stripped, empty captions are skipped; CSV and JSON
    Lines are read line by line as training reads them, so a byte that is not UTF-8
    (``non_utf8_text``) or a bad JSON line (``malformed_line``) is counted in
    ``problems``, not fatal.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"captions file not found: {path}")
    suffix = path.suffix.lower()
    names = list(ORIGINAL_COLUMNS)
    try:
        if suffix == ".csv":
            source: Iterable[pa.RecordBatch] = _csv_batches(Source(path, problems), names, batch_rows)
        elif suffix in (".jsonl", ".ndjson"):
            source = _json_lines_batches(Source(path, problems), names, batch_rows)
        elif suffix == ".parquet":
            handle = open_parquet(path)
            present = [n for n in names if n in handle.schema_arrow.names]
            source = (_cast_batch(b, names) for b in handle.iter_batches(batch_size=batch_rows, columns=present))
        else:
            raise UsageError(f"captions file must be .csv, .jsonl or .parquet, not {path.name}")
        first = True
        for batch in source:
            if first:
                missing = [n for n in ("video_id", "caption") if batch.schema.field(n).type == pa.null()]
                if missing and batch.num_rows:
                    raise UsageError(f"captions file {path} lacks column(s) {', '.join(missing)}")
                first = False
            cleaned = _clean_batch(_cast_batch(batch, names))
            if problems is not None:
                _count_missing_ids(batch, problems, path)
            yield cleaned
    except UsageError:
        raise
    except Exception as exc:  # the readers raise many kinds for malformed files
        raise UsageError(f"cannot read captions file {path}: {exc}") from exc


def _csv_batches(source: Source, names: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """A CSV file a batch at a time, every value as text (Python's csv module: it holds
    one batch, where Arrow's streaming CSV reader was seen to keep memory in proportion
    to the file)."""
    import csv

    reader = csv.DictReader(line + "\n" for line in source.lines())
    missing = [n for n in ("video_id", "caption") if n not in (reader.fieldnames or [])]
    if missing:
        raise UsageError(f"captions file {source.path} lacks column(s) {', '.join(missing)}")
    rows: list[dict] = []
    for row in reader:
        rows.append(row)
        if len(rows) >= batch_rows:
            yield _rows_batch(rows, names)
            rows = []
    if rows:
        yield _rows_batch(rows, names)


def _json_lines_batches(source: Source, names: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """A JSON Lines file a batch at a time; values are read as text whatever their JSON type."""
    import pandas as pd

    records: list[dict] = []
    for number, record in source.json_lines():
        if not isinstance(record, dict):
            source.problems.add("malformed_line", f"{source.name} line {number}: not a JSON object")
            continue
        records.append(record)
        if len(records) >= batch_rows:
            yield _frame_batch(pd.DataFrame.from_records(records), names)
            records = []
    if records:
        yield _frame_batch(pd.DataFrame.from_records(records), names)


def _rows_batch(rows: list[dict], names: Sequence[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({n: pa.array([r.get(n) for r in rows], type=pa.string()) for n in names})


def _frame_batch(frame, names: Sequence[str]) -> pa.RecordBatch:
    columns = {}
    for name in names:
        if name in frame.columns:
            if name == "video_id":  # the datasets' rule: 12.0 is "12", true/false is no id
                values = [id_value(v) for v in frame[name].tolist()]
            else:
                values = [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in frame[name].tolist()]
            columns[name] = pa.array(values, type=pa.string())
        else:
            columns[name] = pa.nulls(len(frame), type=pa.null())
    return pa.RecordBatch.from_pydict(columns)


def _cast_batch(batch: pa.RecordBatch, names: Sequence[str]) -> pa.RecordBatch:
    arrays = []
    for name in names:
        index = batch.schema.get_field_index(name)
        if index < 0:
            arrays.append(pa.nulls(batch.num_rows, type=pa.null()))
            continue
        column = batch.column(index)
        if name == "video_id" and column.type not in (pa.string(), pa.null()):
            # Numbers (a Parquet column of ints, or of floats once nulls are in it) by the
            # datasets' rule, as training reads them: 12.0 is "12", true/false is no id.
            column = pa.array([id_value(v) for v in column.to_pylist()], type=pa.string())
        elif column.type not in (pa.string(), pa.null()):
            column = column.cast(pa.string())
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=list(names))


def _count_missing_ids(batch: pa.RecordBatch, problems: Problems, path: Path) -> None:
    """Rows left out for want of an id, counted as training counts them."""
    import pyarrow.compute as pc

    index = batch.schema.get_field_index("video_id")
    if index < 0 or batch.column(index).type != pa.string():
        return
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(batch.column(index)), ""), True)
    problems.add("malformed_record", f"{path.name}: a row without video_id (left out)", pc.sum(blank).as_py() or 0)


def _clean_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    import pyarrow.compute as pc

    if batch.schema.field("video_id").type == pa.null():
        raise UsageError("the captions file has no video_id values")
    arrays = {}
    for name in batch.schema.names:
        column = batch.column(name)
        if column.type == pa.null():
            column = column.cast(pa.string())
        else:
            column = pc.utf8_trim_whitespace(column)
            if name != "caption":
                column = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
        arrays[name] = column
    table = pa.RecordBatch.from_pydict(arrays)
    keep = pc.and_(pc.is_valid(table.column("video_id")), pc.not_equal(pc.fill_null(table.column("caption"), ""), ""))
    return table.filter(keep)


# ----------------------------------------------------------------------------- the join


@dataclass
class JoinCounts:
    videos: int = 0
    videos_failed: int = 0  # failed rows of keyframes.parquet (never exported)
    generated_failed: int = 0  # failed rows of captions.parquet
    flags_missing: int = 0  # generated captions without a flag row
    flags_stale: int = 0  # flag rows of another caption text (captions redone after `filter`)
    orphans: Counter = field(default_factory=Counter)  # rows of videos not in keyframes.parquet


_KEYFRAME_COLUMNS = [
    "status", "grid_path", "keyframe_paths", "keyframe_times_s", "grid_rows", "grid_cols", "media_type", "duration_s",
]
_CAPTION_COLUMNS = ["caption", "status", "model", "preset", "prompt_name", "prompt_sha256", "seed", "sampling"]
_FLAG_COLUMNS = ["caption_sha256", "status", "flags", "duplicate_keep"]


def iter_videos(
    workdir: Path,
    *,
    originals: Iterator[dict] | None,
    weights: Iterator[dict] | None,
    with_flags: bool,
    batch_rows: int,
    counts: JoinCounts,
) -> Iterator[VideoItem]:
    """Every ``ok`` video of ``keyframes.parquet`` with all its captions, by ``video_id``."""
    keyframes = KeyedCursor(manifest_rows(workdir, KEYFRAMES, _KEYFRAME_COLUMNS, batch_rows), "video_id", KEYFRAMES.filename)
    generated = KeyedCursor(manifest_rows(workdir, CAPTIONS, _CAPTION_COLUMNS, batch_rows), "video_id", CAPTIONS.filename)
    flags = (
        KeyedCursor(manifest_rows(workdir, CAPTION_FLAGS, _FLAG_COLUMNS, batch_rows), "video_id", CAPTION_FLAGS.filename)
        if with_flags else None
    )
    original = KeyedCursor(originals, "video_id", "the original captions") if originals is not None else None
    weight = KeyedCursor(weights, "video_id", RunPaths.PAIR_WEIGHTS) if weights is not None else None

    for row in keyframes.rows():
        video_id = row["video_id"]
        generated_rows = generated.take(video_id)
        flag_rows = flags.take(video_id) if flags is not None else []
        original_rows = original.take(video_id) if original is not None else []
        weight_rows = weight.take(video_id) if weight is not None else []
        if row["status"] != STATUS_OK:
            counts.videos_failed += 1
            continue
        counts.videos += 1
        item = VideoItem(
            video_id=video_id,
            grid_path=row["grid_path"],
            keyframe_paths=[p for p in (row["keyframe_paths"] or []) if p],
            keyframe_times_s=list(row["keyframe_times_s"] or []),
            grid_rows=row["grid_rows"],
            grid_cols=row["grid_cols"],
            media_type=row["media_type"],
            duration_s=row["duration_s"],
        )
        by_text: dict[str, list[dict]] = {}
        by_index: dict[int, dict] = {}
        for w in weight_rows:
            if w["caption_source"] == SOURCE_ORIGINAL:
                by_text.setdefault(w["caption"], []).append(w)
            elif w["caption_index"] is not None:
                by_index[int(w["caption_index"])] = w
        for o in original_rows:
            entry = CaptionEntry(text=o["caption"], source=SOURCE_ORIGINAL)
            matches = by_text.get(entry.text)
            if matches:
                _set_weight(entry, matches.pop(0))
            item.captions.append(entry)
            if item.split is None and o.get("split"):
                item.split = o["split"]
            normalized = normalize_split(o.get("split"))
            if normalized is not None:
                item.split_votes[normalized] += 1
            if item.concept is None and o.get("concept"):
                item.concept = o["concept"]
        flag_by_index = {int(f["caption_index"]): f for f in flag_rows}
        for g in generated_rows:
            if g["status"] != STATUS_OK or not g["caption"]:
                counts.generated_failed += 1
                continue
            index = int(g["caption_index"])
            entry = CaptionEntry(
                text=g["caption"], source=SOURCE_GENERATED, caption_index=index, model=g["model"],
                preset=g["preset"], prompt_name=g["prompt_name"], prompt_sha256=g["prompt_sha256"],
                seed=g["seed"], sampling=g["sampling"],
            )
            if index in by_index:
                _set_weight(entry, by_index[index])
            if flags is not None:
                flag = flag_by_index.get(index)
                if flag is None:
                    counts.flags_missing += 1
                elif flag["caption_sha256"] != caption_sha256(entry.text):
                    counts.flags_stale += 1
                else:
                    entry.flags = list(flag["flags"] or [])
                    entry.duplicate_keep = flag["duplicate_keep"]
            item.captions.append(entry)
        yield item

    for label, cursor in (("captions", generated), ("caption_flags", flags), ("original", original), ("weights", weight)):
        if cursor is not None:
            cursor.drain()
            if cursor.skipped:
                counts.orphans[label] += cursor.skipped


def _set_weight(entry: CaptionEntry, row: dict) -> None:
    weight = row.get("weight")
    loss = row.get("loss")
    entry.weight = None if weight is None or weight != weight else float(weight)
    entry.loss = None if loss is None or loss != loss else float(loss)
    entry.pair_id = int(row["pair_id"])
