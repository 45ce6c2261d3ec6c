"""Parquet manifests: the schemas of every stage and the one way they are written.

Layout inside a work folder, for a manifest called ``NAME``::

    NAME.parquet            the compacted table (what users read)
    .parts/NAME/part-*.parquet
                            rows written since the last compaction

Rows are written as small part files, each written under a temporary name and then
renamed into place, so a reader never sees half a file and a process killed at any
moment loses only the rows it had not yet handed to the writer. Readers merge the
compacted table and the parts; when a key appears more than once the newest row
wins (parts sort by their creation time). ``compact`` folds the parts into
``NAME.parquet`` with one atomic rename and then removes them; if it is killed in
between, the next read simply sees duplicates of identical rows and keeps one.

Cost grows with the rows written, not with the table: every file is written once and
only ever merged with files of its own size. A writer folds every ``consolidate_every``
small parts into one part sorted by key, and every ``consolidate_every`` of those into
one larger part (a streaming merge of sorted runs). ``compact`` rewrites
``NAME.parquet`` only when the parts hold at least ``FOLD_FRACTION`` of its rows (or
when asked to, ``full=True``), again as a streaming merge, so adding a few rows to a
large table leaves them in a part instead of rewriting the table, and no step holds
more than a few batches of rows in memory. No merge reads more than ``MERGE_FAN_IN``
files at once: a fold of more parts merges consecutive runs of them first.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import heapq
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mama_augment.fileio import atomic_path
from mama_augment.errors import MamaError, UsageError

STATUS_OK = "ok"
STATUS_FAILED = "failed"

_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ManifestSpec:
    """A manifest's file name, key columns and Arrow schema."""

    name: str
    key: tuple[str, ...]
    schema: pa.Schema
    stage: str = ""  # the command that writes it, named in errors about its contents
    # Columns added after files of this manifest were first written: a file of an older
    # version lacks them, and readers get nulls instead of an error.
    added: frozenset[str] = frozenset()

    @property
    def filename(self) -> str:
        return f"{self.name}.parquet"


KEYFRAMES = ManifestSpec(
    name="keyframes",
    stage="keyframes",
    key=("video_id",),
    added=frozenset({"embeddings_file", "embeddings_offset", "embeddings_count"}),
    schema=pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("path", pa.string()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error_kind", pa.string()),
            pa.field("error", pa.string()),
            pa.field("media_type", pa.string()),  # "video" or "image"
            pa.field("decode_backend", pa.string()),
            pa.field("codec", pa.string()),
            pa.field("duration_s", pa.float64()),
            pa.field("fps", pa.float64()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("num_sampled", pa.int32()),
            pa.field("keyframe_indices", pa.list_(pa.int64())),
            pa.field("keyframe_times_s", pa.list_(pa.float64())),
            pa.field("keyframe_paths", pa.list_(pa.string())),
            pa.field("grid_path", pa.string()),
            pa.field("grid_rows", pa.int32()),
            pa.field("grid_cols", pa.int32()),
            pa.field("embedder", pa.string()),
            pa.field("embedding_dim", pa.int32()),
            # Read from work folders of older versions only: the stage now stores the
            # embeddings in array files and the row references them (frame_embeddings.py).
            pa.field("keyframe_embeddings", pa.list_(pa.list_(pa.float32()))),
            pa.field("embeddings_file", pa.string()),
            pa.field("embeddings_offset", pa.int64()),
            pa.field("embeddings_count", pa.int32()),
            pa.field("input_size_bytes", pa.int64()),
            pa.field("input_mtime", pa.float64()),
            pa.field("config_hash", pa.string()),
            pa.field("seconds", pa.float64()),
            pa.field("created_at", _TS),
        ]
    ),
)

CAPTIONS = ManifestSpec(
    name="captions",
    stage="caption",
    key=("video_id", "caption_index"),
    schema=pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("caption_index", pa.int32(), nullable=False),
            pa.field("caption", pa.string()),
            pa.field("raw_output", pa.string()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error_kind", pa.string()),
            pa.field("error", pa.string()),
            pa.field("grid_path", pa.string()),
            pa.field("model", pa.string()),
            pa.field("preset", pa.string()),
            pa.field("backend", pa.string()),
            pa.field("prompt_name", pa.string()),
            pa.field("prompt_sha256", pa.string()),
            pa.field("sampling", pa.string()),  # JSON
            pa.field("seed", pa.int64()),
            pa.field("prompt_tokens", pa.int32()),
            pa.field("completion_tokens", pa.int32()),
            pa.field("latency_s", pa.float64()),
            pa.field("config_hash", pa.string()),
            pa.field("created_at", _TS),
        ]
    ),
)

# Quality flags of generated captions (``mama-augment filter``): one row per ``ok`` row of
# ``captions.parquet``, same key. Rows are never deleted; exports read the flags to filter.
CAPTION_FLAGS = ManifestSpec(
    name="caption_flags",
    stage="filter",
    key=("video_id", "caption_index"),
    schema=pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("caption_index", pa.int32(), nullable=False),
            pa.field("caption_sha256", pa.string()),  # of the caption text the flags describe
            pa.field("status", pa.string(), nullable=False),
            pa.field("error_kind", pa.string()),
            pa.field("error", pa.string()),
            pa.field("flags", pa.list_(pa.string())),  # names of the raised flags, sorted
            pa.field("flagged", pa.bool_()),
            pa.field("words", pa.int32()),
            pa.field("too_short", pa.bool_()),
            pa.field("truncated", pa.bool_()),
            pa.field("generic", pa.bool_()),
            pa.field("informative_words", pa.int32()),
            pa.field("generic_phrases", pa.list_(pa.string())),
            pa.field("prompt_echo", pa.bool_()),
            pa.field("prompt_overlap", pa.float64()),
            pa.field("near_duplicate", pa.bool_()),
            pa.field("duplicate_group", pa.int64()),
            pa.field("duplicate_videos", pa.int32()),
            pa.field("duplicate_keep", pa.bool_()),
            pa.field("nearest_similarity", pa.float64()),
            pa.field("nearest_video_id", pa.string()),
            pa.field("clip_mismatch", pa.bool_()),
            pa.field("clip_score", pa.float64()),
            pa.field("clip_zscore", pa.float64()),
            pa.field("clip_model", pa.string()),
            pa.field("text_model", pa.string()),
            pa.field("config_hash", pa.string()),
            pa.field("created_at", _TS),
        ]
    ),
)

MANIFESTS: dict[str, ManifestSpec] = {spec.name: spec for spec in (KEYFRAMES, CAPTIONS, CAPTION_FLAGS)}


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def manifest_path(workdir: str | os.PathLike, spec: ManifestSpec) -> Path:
    return Path(workdir) / spec.filename


def parts_dir(workdir: str | os.PathLike, spec: ManifestSpec) -> Path:
    return Path(workdir) / ".parts" / spec.name


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns (missing ones as nulls)."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            if column.type != field.type:
                column = column.cast(field.type)
            columns.append(column)
        else:
            columns.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(None))


def rows_to_table(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    """Build a table from row dicts; keys absent from a row become nulls."""
    names = schema.names
    data = {name: [row.get(name) for row in rows] for name in names}
    arrays = [pa.array(data[field.name], type=field.type) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


# Rows per Parquet row group: a reader that streams a manifest (``export``) holds one
# row group of the columns it reads at a time, so this bounds its memory.
ROW_GROUP_ROWS = 8192

# ``compact`` rewrites NAME.parquet when the parts hold at least this share of its
# rows: each rewrite then adds a quarter or more, so a row is rewritten a bounded
# number of times however the table grew (amortised linear cost).
FOLD_FRACTION = 0.25

# Rows a merge cursor holds per input and bytes of merged rows buffered before they are
# written: a merge of K sorted runs holds about K * MERGE_BATCH_ROWS rows.
MERGE_BATCH_ROWS = 16
MERGE_FLUSH_BYTES = 64 << 20
# Rows per row group of the merged parts (levels 1 and 2), which only merges read: a
# cursor decodes a whole row group of its file, so a merge of K parts holds K of them
# (a fold of 122 parts of 8 192-row groups held ~1 GB at a million videos).
PART_ROW_GROUP_ROWS = 1024
# Most files one merge reads at once: a fold of more parts first merges consecutive runs
# of this many (each cursor holds a decoded row group, so memory is bounded by this, not
# by how many parts a long run left).
MERGE_FAN_IN = 64

# Written into the schema metadata of files sorted by key with one row per key, which a
# merge may stream; other files (small parts, files of older versions) are sorted in memory.
_SORTED_FLAG = b"mama_augment.sorted_by_key"


def _atomic_write_table(table: pa.Table, path: Path, fsync: bool = False, sorted_by_key: bool = False,
                        dictionary: bool = True) -> None:
    if sorted_by_key:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _SORTED_FLAG: b"1"})
    with atomic_path(path, fsync=fsync) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS, use_dictionary=dictionary)


def _part_files(workdir: str | os.PathLike, spec: ManifestSpec) -> list[Path]:
    directory = parts_dir(workdir, spec)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("part-*.parquet"))


def _read_one(path: Path, spec: ManifestSpec, columns: Sequence[str] | None) -> pa.Table:
    schema = spec.schema
    try:
        if columns is not None:
            # Arrow's own error for an absent column prints the file's whole schema and
            # names neither the manifest nor what writes it.
            present = set(pq.read_schema(path).names)
            missing = [c for c in columns if c not in present and c not in spec.added]
            if missing:
                raise UsageError(missing_columns_message(path, spec, missing))
            read = [c for c in columns if c in present]  # the added ones come back as nulls
        # One file: ParquetFile, not pq.read_table, whose dataset machinery costs an import
        # (~10 ms) and a discovery pass each call for nothing.
        table = pq.ParquetFile(path).read(columns=read if columns is not None else None)
    except (OSError, pa.ArrowException) as exc:
        raise MamaError(f"cannot read manifest file {path}: {exc}") from exc
    target = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    return conform(table, target)


def missing_columns_message(path: str | os.PathLike, spec: ManifestSpec, missing: Sequence[str]) -> str:
    """What to say when a manifest lacks columns its reader needs."""
    noun = "column" if len(missing) == 1 else "columns"
    writer = f"`mama-augment {spec.stage}`" if spec.stage else "this tool"
    return (f"the {spec.name} manifest {path} lacks the {noun} {', '.join(missing)} that {writer} writes; "
            f"write it again with {writer} (or restore it from a backup)")


def dedupe_latest(table: pa.Table, key: Sequence[str]) -> pa.Table:
    """Keep the last row of every key (rows are in write order)."""
    if table.num_rows == 0:
        return table
    order = pa.array(range(table.num_rows), type=pa.int64())
    with_order = table.append_column("__order", order)
    latest = with_order.group_by(list(key), use_threads=False).aggregate([("__order", "max")])
    keep = pc.is_in(order, value_set=latest.column("__order_max"))
    return table.filter(keep)


def read_manifest(
    workdir: str | os.PathLike,
    spec: ManifestSpec,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The merged view: compacted table plus parts, newest row per key.

    Returns an empty table with the schema when nothing has been written yet. The
    whole result is in memory: read wide columns (embeddings) with
    :func:`iter_manifest_batches` instead.
    """
    if columns is not None:
        columns = list(dict.fromkeys([*spec.key, *columns]))
    tables = []
    main = manifest_path(workdir, spec)
    if main.exists():
        tables.append(_read_one(main, spec, columns))
    for part in _part_files(workdir, spec):
        try:
            tables.append(_read_one(part, spec, columns))
        except MamaError:
            # A part is renamed into place only when complete; an unreadable one was
            # damaged from outside. Its rows are simply redone.
            continue
    schema = spec.schema if columns is None else pa.schema([spec.schema.field(c) for c in columns])
    if not tables:
        return schema.empty_table()
    if len(tables) == 1 and main.exists() and _is_sorted_run(main):
        return tables[0]  # a compacted table alone holds one row per key: nothing to dedupe
    table = pa.concat_tables(tables)
    return dedupe_latest(table, spec.key)


def iter_manifest_batches(
    workdir: str | os.PathLike,
    spec: ManifestSpec,
    columns: Sequence[str] | None = None,
    batch_rows: int = 256,
) -> Iterator[pa.RecordBatch]:
    """The rows of :func:`read_manifest`, newest per key, a record batch at a time.

    First the key columns of every file are read (a small index) to find the newest
    row of each key; then each file is streamed and only those rows are kept. Rows come
    in file order, not sorted; memory holds the index and about one batch. A compacted
    table with no parts beside it is streamed as it is (sorted by key), without the index.
    """
    columns = list(dict.fromkeys([*spec.key, *(columns if columns is not None else spec.schema.names)]))
    schema = pa.schema([spec.schema.field(c) for c in columns])
    main = manifest_path(workdir, spec)
    parts = _part_files(workdir, spec)
    if not parts and main.exists() and _is_sorted_run(main):
        # A compacted table alone holds one row per key: no index of its keys is needed,
        # so memory stays at one batch however many rows it has.
        for batch in _file_batches(main, columns, batch_rows):
            yield _conform_batch(batch, schema)
        return
    files = ([main] if main.exists() else []) + parts
    key_tables, readable = [], []
    for path in files:
        try:
            keys = _read_one(path, spec, list(spec.key))
        except MamaError:
            if path == main:
                raise
            continue  # a damaged part: its rows are redone (as read_manifest does)
        readable.append(path)
        key_tables.append(keys.append_column("__file", pa.array([len(readable) - 1] * keys.num_rows, pa.int32()))
                          .append_column("__row", pa.array(range(keys.num_rows), pa.int64())))
    if not key_tables:
        return
    index = dedupe_latest(pa.concat_tables(key_tables), spec.key)
    for number, path in enumerate(readable):
        keep_rows = pc.filter(index.column("__row"), pc.equal(index.column("__file"), number)).to_numpy()
        if len(keep_rows) == 0:
            continue
        keep = np.zeros(pq.ParquetFile(path).metadata.num_rows, dtype=bool)
        keep[keep_rows] = True
        start = 0
        for batch in _file_batches(path, columns, batch_rows):
            mask = keep[start : start + batch.num_rows]
            start += batch.num_rows
            if mask.any():
                yield _conform_batch(batch.filter(pa.array(mask)), schema)


def _file_batches(path: Path, columns: Sequence[str] | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet file, decoded as they are read (no read-ahead), the
    columns it lacks (an older file) left out for the caller to conform."""
    try:
        handle = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        present = [c for c in columns if c in handle.schema_arrow.names] if columns is not None else None
        yield from handle.iter_batches(batch_size=batch_rows, columns=present)
    except (OSError, pa.ArrowException) as exc:
        raise MamaError(f"cannot read manifest file {path}: {exc}") from exc


def _conform_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.remove_metadata() == schema:
        return batch
    table = conform(pa.Table.from_batches([batch]), schema).combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=schema)


def _file_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def _is_sorted_run(path: Path) -> bool:
    try:
        return (pq.read_schema(path).metadata or {}).get(_SORTED_FLAG) == b"1"
    except (OSError, pa.ArrowException):
        return False


class _NotSorted(Exception):
    """A file streamed as sorted by key is not (written by hand, or damaged)."""


class _Cursor:
    """One sorted run of a merge: the current row's key, a small batch at a time."""

    def __init__(self, batches: Iterator[pa.RecordBatch], key: Sequence[str], schema: pa.Schema):
        self._batches = batches
        self._key = list(key)
        self._schema = schema
        self.batch: pa.RecordBatch | None = None
        self.row = 0
        self._keys: list[tuple] = []
        self._next_batch()

    def _next_batch(self) -> None:
        self.batch, self.row, self._keys = None, 0, []
        for batch in self._batches:
            if batch.num_rows:
                self.batch = _conform_batch(batch, self._schema)
                self._keys = list(zip(*(self.batch.column(k).to_pylist() for k in self._key)))
                return

    @property
    def key(self) -> tuple | None:
        return self._keys[self.row] if self.batch is not None else None

    def advance(self) -> None:
        current = self._keys[self.row]
        self.row += 1
        if self.row >= len(self._keys):
            self._next_batch()
        if self.batch is not None and self._keys[self.row] < current:
            raise _NotSorted()


def _sorted_in_memory(path: Path, spec: ManifestSpec) -> Iterator[pa.RecordBatch]:
    table = _read_one(path, spec, None)
    table = dedupe_latest(table, spec.key).sort_by([(k, "ascending") for k in spec.key])
    return iter(table.to_batches(max_chunksize=MERGE_BATCH_ROWS))


def _merge_runs(sources: Sequence[Path], spec: ManifestSpec, out: Path, fsync: bool = False,
                row_group_rows: int = PART_ROW_GROUP_ROWS) -> int:
    """Merge files (oldest first) into ``out``, sorted by key, newest row per key.

    Files marked sorted are streamed; others (small parts, files of older versions)
    are sorted in memory one by one as the merge opens them. Returns the rows written.
    Raises _NotSorted when a file marked or taken as sorted is not.
    """
    schema = spec.schema
    cursors = []
    for path in sources:
        batches = _file_batches(path, None, MERGE_BATCH_ROWS) if _is_sorted_run(path) or path.name == spec.filename \
            else _sorted_in_memory(path, spec)
        cursors.append(_Cursor(batches, spec.key, schema))
    heap = [(c.key, number) for number, c in enumerate(cursors) if c.key is not None]
    heapq.heapify(heap)
    written = 0
    out_schema = schema.with_metadata({_SORTED_FLAG: b"1"})
    with atomic_path(out, fsync=fsync) as tmp:
        with pq.ParquetWriter(tmp, out_schema, compression="zstd") as writer:
            pending: list[list] = []  # [batch, first row, rows]: runs of rows to write
            pending_bytes = pending_rows = 0

            def flush() -> None:
                nonlocal pending, pending_bytes, pending_rows
                if pending:
                    table = pa.Table.from_batches([b.slice(r, n) for b, r, n in pending], schema=schema)
                    writer.write_table(table.combine_chunks().replace_schema_metadata(out_schema.metadata),
                                       row_group_size=row_group_rows)
                pending, pending_bytes, pending_rows = [], 0, 0

            while heap:
                key, number = heapq.heappop(heap)
                group = [number]
                while heap and heap[0][0] == key:
                    group.append(heapq.heappop(heap)[1])
                winner = max(group)  # the newest file holding the key
                for member in group:
                    cursor = cursors[member]
                    while cursor.key == key:  # a file may repeat a key: its last row wins
                        batch, row = cursor.batch, cursor.row
                        cursor.advance()
                        if member == winner and cursor.key != key:
                            if pending and pending[-1][0] is batch and pending[-1][1] + pending[-1][2] == row:
                                pending[-1][2] += 1
                            else:
                                pending.append([batch, row, 1])
                            pending_bytes += batch.nbytes // max(1, batch.num_rows)
                            pending_rows += 1
                            written += 1
                    if cursor.key is not None:
                        heapq.heappush(heap, (cursor.key, member))
                if pending_bytes >= MERGE_FLUSH_BYTES or pending_rows >= row_group_rows:
                    flush()
            flush()
    return written


def _newest_stem(paths: Sequence[Path]) -> str:
    """Name of a merged part: that of its newest input with its level, so it keeps that
    input's place in the newest-wins order."""
    return max(paths).name.split("~")[0].removesuffix(".parquet")


def _remove_oldest_first(paths: Iterable[Path]) -> None:
    # Oldest first: a kill half way leaves newer copies of a row, never an older one alone.
    for path in sorted(paths):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _count_keys(workdir: str | os.PathLike, spec: ManifestSpec) -> int:
    return sum(batch.num_rows for batch in iter_manifest_batches(workdir, spec, columns=list(spec.key), batch_rows=65536))


def compact(workdir: str | os.PathLike, spec: ManifestSpec, full: bool = False) -> int:
    """Fold parts into ``NAME.parquet`` atomically; return the rows of the manifest.

    The table is rewritten (a streaming merge) when there is none yet, when the parts
    hold ``FOLD_FRACTION`` of its rows or more, or with ``full``; otherwise only the
    small parts of killed writers are merged into one part, and the parts stay (every
    reader merges them). A damaged ``NAME.parquet`` is a MamaError that says how to go
    on: it is never overwritten, since its rows would be lost.
    """
    parts = _part_files(workdir, spec)
    main = manifest_path(workdir, spec)
    try:
        base_rows = _file_rows(main) if main.exists() else None
        if not parts:
            return base_rows or 0
        readable, part_rows = [], 0
        for part in parts:
            try:
                part_rows += _file_rows(part)
                readable.append(part)
            except (OSError, pa.ArrowException):
                continue  # damaged from outside: its rows are redone, and it goes below
        if full or base_rows is None or part_rows >= FOLD_FRACTION * base_rows:
            sources = ([main] if base_rows is not None else []) + readable
            if base_rows is None and part_rows == 0:
                _remove_oldest_first(parts)
                return 0
            merged: list[Path] = []
            try:
                # Consecutive runs of parts first, each into one part in the place of its
                # newest (the newest-wins order is kept), until one merge reads them all.
                while len(sources) > MERGE_FAN_IN:
                    head = 1 if base_rows is not None else 0
                    pending, groups = sources[head:], []
                    for start in range(0, len(pending), MERGE_FAN_IN):
                        group = pending[start : start + MERGE_FAN_IN]
                        groups.append(_merge_consecutive(group, spec, 3) if len(group) > 1 else group[0])
                    merged += groups
                    sources = sources[:head] + groups
                rows = _merge_runs(sources, spec, main, fsync=True, row_group_rows=ROW_GROUP_ROWS)
            except _NotSorted:
                rows = _compact_in_memory(workdir, spec, main)
            _remove_oldest_first([*parts, *merged])
            return rows
        for small in _runs_of_small_parts(readable):
            _merge_small_parts(small, spec)
        return _count_keys(workdir, spec)
    except (OSError, pa.ArrowException, MamaError) as exc:
        raise MamaError(
            f"the manifest {main} cannot be read ({exc}); restore it from a backup, "
            "or start this stage over with --overwrite"
        ) from None


def _runs_of_small_parts(parts: Sequence[Path]) -> list[list[Path]]:
    """Runs of consecutive small parts (those a writer had not merged yet: a killed
    run's) in newest-wins order. Only consecutive ones are merged: the merged part
    takes the place of its newest input, which must not move an older row past a
    newer one of a part in between."""
    runs: list[list[Path]] = [[]]
    for part in parts:
        if "~" in part.name:
            runs.append([])
        else:
            runs[-1].append(part)
    return [run for run in runs if len(run) > 1]


def _merge_small_parts(small: Sequence[Path], spec: ManifestSpec) -> None:
    _merge_consecutive(small, spec, 1)


def _merge_consecutive(parts: Sequence[Path], spec: ManifestSpec, level: int) -> Path:
    """Consecutive parts (newest-wins order) merged into one part named after the newest
    of them with ``level``, which takes its place; the inputs removed. Returns it."""
    merged = parts[0].parent / f"{_newest_stem(parts)}~{level}.parquet"
    # A merge of the same parts killed before it removed them all may have left this
    # file: it holds rows of inputs already gone, so it is an input too (the newest).
    sources = list(parts) if merged in parts else ([*parts, merged] if merged.exists() else list(parts))
    _merge_runs(sources, spec, merged)
    _remove_oldest_first(p for p in parts if p != merged)
    return merged


def _compact_in_memory(workdir: str | os.PathLike, spec: ManifestSpec, main: Path) -> int:
    """The whole table in memory: for a NAME.parquet not sorted by key (written by hand)."""
    table = read_manifest(workdir, spec).sort_by([(k, "ascending") for k in spec.key])
    _atomic_write_table(table, main, fsync=True, sorted_by_key=True)
    return table.num_rows


def remove_manifest(workdir: str | os.PathLike, spec: ManifestSpec) -> None:
    """Delete the manifest and its parts (``--overwrite``)."""
    for part in _part_files(workdir, spec):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    with contextlib.suppress(FileNotFoundError):
        manifest_path(workdir, spec).unlink()


def _strictly_ascending(table: pa.Table, key: Sequence[str]) -> bool:
    """Whether consecutive rows' keys strictly increase (sorted, one row per key)."""
    if table.num_rows < 2:
        return True
    later = None  # row i's key < row i+1's, from the last key column to the first
    for name in reversed(list(key)):
        column = table.column(name)
        before, after = column.slice(0, len(column) - 1), column.slice(1)
        less = pc.less(before, after)
        later = less if later is None else pc.or_(less, pc.and_(pc.equal(before, after), later))
    return pc.all(later).as_py() is not False


def write_whole_manifest(workdir: str | os.PathLike, spec: ManifestSpec, tables: Iterable[pa.Table]) -> int:
    """Replace the manifest (``NAME.parquet`` and its parts) by ``tables``; return the rows.

    For a stage that computes every row on every run (``filter``): its rows are
    streamed once into the compacted table, instead of into parts that are then merged
    twice (each row through the per-row merge of ``compact``). The tables must come in
    key order with one row per key (a ValueError otherwise: the file is marked sorted
    for the merges that read it later). Memory holds one table.
    """
    main = manifest_path(workdir, spec)
    out_schema = spec.schema.with_metadata({_SORTED_FLAG: b"1"})
    rows = 0
    last: pa.Table | None = None  # the previous table's last key, to check the order across tables
    with atomic_path(main, fsync=True) as tmp:
        with pq.ParquetWriter(tmp, out_schema, compression="zstd") as writer:
            for table in tables:
                if table.num_rows == 0:
                    continue
                table = conform(table, spec.schema)
                keys = table.select(list(spec.key))
                if not _strictly_ascending(keys if last is None else pa.concat_tables([last, keys]), spec.key):
                    raise ValueError(f"rows for {spec.filename} must come sorted by {', '.join(spec.key)}, "
                                     "one row per key")
                last = keys.slice(keys.num_rows - 1)
                writer.write_table(table.replace_schema_metadata(out_schema.metadata), row_group_size=ROW_GROUP_ROWS)
                rows += table.num_rows
        # Parts hold older rows that would win over these (parts are read after the
        # table): gone before the new table takes the name. Killed in between, the old
        # table stays whole, without rows the next run computes again.
        _remove_oldest_first(_part_files(workdir, spec))
    return rows


class PartWriter:
    """Append rows to a manifest as atomically renamed part files.

    ``write`` puts rows on disk at once (one small part per call). Every
    ``consolidate_every`` small parts the writer merges them into one part sorted by
    key (level 1), and every ``consolidate_every`` level-1 parts into one level-2 part
    (a streaming merge): a run of a million videos leaves a few hundred files, and each
    row is written three times at most, whatever the run's length. ``close`` merges
    what is left at level 0.
    """

    LEVELS = 3  # small parts, level 1, level 2 (never merged again by the writer)

    def __init__(
        self,
        workdir: str | os.PathLike,
        spec: ManifestSpec,
        consolidate_every: int = MERGE_FAN_IN,
    ):
        self.workdir = Path(workdir)
        self.spec = spec
        self.directory = parts_dir(workdir, spec)
        make_folder(self.directory)
        self.consolidate_every = max(2, consolidate_every)
        self._levels: list[list[Path]] = [[] for _ in range(self.LEVELS)]
        self.rows_written = 0

    @property
    def _mine(self) -> list[Path]:
        return [path for level in self._levels for path in level]

    def _new_part_path(self) -> Path:
        return self.directory / f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"

    def write(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not rows:
            return
        table = rows_to_table(rows, self.spec.schema)
        self.write_table(table)

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        rows = table.num_rows
        # Sorted (and one row per key) already, so that merges can stream every part.
        table = conform(table, self.spec.schema)
        if rows > 1:
            ordered = table.sort_by([(k, "ascending") for k in self.spec.key])
            # A stage's write holds each key once (a video per row): then sorting is all.
            # The dedupe (a group-by, and its first use imports Arrow's query engine)
            # was the largest fixed cost of a short run's writing.
            if _strictly_ascending(ordered.select(list(self.spec.key)), self.spec.key):
                table = ordered
            else:
                table = dedupe_latest(table, self.spec.key).sort_by([(k, "ascending") for k in self.spec.key])
        path = self._new_part_path()
        # Without dictionary encoding: a part lives until the next merge, and building a
        # dictionary of each of its ~30 columns was over half the cost of writing one
        # (2.8 -> 1.2 ms of CPU for 16 rows); the merged files keep theirs.
        _atomic_write_table(table, path, sorted_by_key=True, dictionary=False)
        self._levels[0].append(path)
        self.rows_written += rows
        for level in range(self.LEVELS - 1):
            if len(self._levels[level]) >= self.consolidate_every:
                self._consolidate(level)

    def _consolidate(self, level: int = 0) -> None:
        inputs = self._levels[level]
        if len(inputs) < 2:
            return
        target = level + 1
        merged = self.directory / f"{_newest_stem(inputs)}~{target}.parquet"
        _merge_runs(inputs, self.spec, merged)
        _remove_oldest_first(p for p in inputs if p != merged)
        self._levels[level] = []
        self._levels[target].append(merged)

    def close(self, consolidate: bool = True) -> None:
        """Merge what is left at level 0; ``consolidate=False`` leaves it to a ``compact``
        that follows at once (it folds the parts or merges runs of small ones itself:
        merging them here first would write the same rows twice)."""
        if consolidate:
            self._consolidate(0)
        self._levels = [[] for _ in range(self.LEVELS)]

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, stage: str) -> Iterator[None]:
    """Refuse to run two writers of the same stage on one work folder at once."""
    import fcntl

    workdir = Path(workdir)
    lock_dir = workdir / ".locks"
    make_folder(lock_dir)
    path = lock_dir / f"{stage}.lock"
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise MamaError(
                f"another '{stage}' run is using the work folder {workdir}; wait for it to end"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def make_folder(path: Path) -> Path:
    """``mkdir -p`` of a folder the tool keeps in the work folder; a file (or anything
    else) in its place is a MamaError naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MamaError(f"cannot create the folder {path}: {exc.strerror or exc} (is something else in its place?)") from None
    return path


# The file that marks a folder as a work folder: written by every stage that writes
# there, and required before ``--overwrite`` deletes anything.
WORKDIR_MARKER = ".mama-augment.json"


def is_work_folder(workdir: str | os.PathLike) -> bool:
    """Whether ``workdir`` holds the marker, or (written before the marker existed) a
    manifest of this tool."""
    path = Path(workdir)
    if (path / WORKDIR_MARKER).is_file():
        return True
    return any(manifest_path(path, spec).is_file() or parts_dir(path, spec).is_dir() for spec in MANIFESTS.values())


def require_work_folder(workdir: str | os.PathLike, why: str) -> None:
    """UsageError unless ``workdir`` is a work folder this tool made (see ``is_work_folder``)."""
    path = Path(workdir)
    if path.exists() and not is_work_folder(path):
        raise UsageError(
            f"{path} is not a mama-augment work folder (no {WORKDIR_MARKER} in it): {why}; "
            "point --workdir at the work folder, or use a new folder"
        )


def _mark_work_folder(path: Path) -> None:
    marker = path / WORKDIR_MARKER
    if marker.is_file():
        return
    import json

    from mama_augment import __version__

    record = {"written_by": "mama-augment", "version": __version__, "created_at": utc_now().isoformat(),
              "about": "a mama-augment work folder: manifests, frames/, grids/, runs/ (see the README)"}
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def ensure_workdir(workdir: str | os.PathLike) -> Path:
    """Create the work folder and mark it as one (``WORKDIR_MARKER``), or fail with a
    clear message if it cannot be written."""
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the work folder {path}: {exc.strerror or exc}") from exc
    if not path.is_dir():
        raise UsageError(f"the work folder {path} is not a folder")
    probe = path / f".write-test-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        _mark_work_folder(path)
    except OSError as exc:
        raise UsageError(f"cannot write to the work folder {path}: {exc.strerror or exc}") from exc
    return path
