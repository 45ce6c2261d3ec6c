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
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

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

    @property
    def filename(self) -> str:
        return f"{self.name}.parquet"


KEYFRAMES = ManifestSpec(
    name="keyframes",
    stage="keyframes",
    key=("video_id",),
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
            pa.field("keyframe_embeddings", pa.list_(pa.list_(pa.float32()))),
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


def _atomic_write_table(table: pa.Table, path: Path, fsync: bool = False) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)


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
            missing = [c for c in columns if c not in present]
            if missing:
                raise UsageError(missing_columns_message(path, spec, missing))
        table = pq.read_table(path, columns=list(columns) if columns is not None else None)
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

    Returns an empty table with the schema when nothing has been written yet.
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
    table = pa.concat_tables(tables)
    return dedupe_latest(table, spec.key)


def compact(workdir: str | os.PathLike, spec: ManifestSpec) -> int:
    """Fold all parts into ``NAME.parquet`` atomically; return its row count.

    A damaged ``NAME.parquet`` is a MamaError that says how to go on: it is never
    overwritten, since its rows would be lost.
    """
    parts = _part_files(workdir, spec)
    main = manifest_path(workdir, spec)
    try:
        if not parts and main.exists():
            return pq.ParquetFile(main).metadata.num_rows
        table = read_manifest(workdir, spec)
    except (OSError, pa.ArrowException, MamaError) as exc:
        raise MamaError(
            f"the manifest {main} cannot be read ({exc}); restore it from a backup, "
            "or start this stage over with --overwrite"
        ) from None
    if table.num_rows == 0 and not parts:
        return 0
    table = table.sort_by([(k, "ascending") for k in spec.key])
    _atomic_write_table(table, main, fsync=True)
    for part in parts:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return table.num_rows


def remove_manifest(workdir: str | os.PathLike, spec: ManifestSpec) -> None:
    """Delete the manifest and its parts (``--overwrite``)."""
    for part in _part_files(workdir, spec):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    with contextlib.suppress(FileNotFoundError):
        manifest_path(workdir, spec).unlink()


class PartWriter:
    """Append rows to a manifest as atomically renamed part files.

    ``write`` puts rows on disk at once (one small part per call); every
    ``consolidate_every`` parts the writer folds its own small parts into one larger
    part, so a run of a million videos does not leave a million files behind.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        spec: ManifestSpec,
        consolidate_every: int = 256,
    ):
        self.workdir = Path(workdir)
        self.spec = spec
        self.directory = parts_dir(workdir, spec)
        make_folder(self.directory)
        self.consolidate_every = consolidate_every
        self._mine: list[Path] = []
        self.rows_written = 0

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
        table = conform(table, self.spec.schema)
        path = self._new_part_path()
        _atomic_write_table(table, path)
        self._mine.append(path)
        self.rows_written += table.num_rows
        if len(self._mine) >= self.consolidate_every:
            self._consolidate()

    def _consolidate(self) -> None:
        tables = [conform(pq.read_table(p), self.spec.schema) for p in self._mine]
        merged = pa.concat_tables(tables)
        path = self._new_part_path()
        _atomic_write_table(merged, path)
        for old in self._mine:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        self._mine = [path]

    def close(self) -> None:
        self._mine = []

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
