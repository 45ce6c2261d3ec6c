"""The read side of a work folder: what a stage reads of the manifests others wrote.

Every stage that reads another stage's output takes it from here, so the views are
defined once:

* :func:`ok_video_batches` / :func:`ok_video_ids`: the videos ``keyframes`` processed
  (status ``ok``). The caller names the columns it needs and only those are decoded:
  the wide ones (embeddings) cost nothing to a reader that does not ask for them, and
  a column moved elsewhere only changes the names its readers pass.
* :func:`generated_caption_batches`: the ``ok`` rows of ``captions.parquet``.
* :func:`caption_sha256`: the hash that ties a ``caption_flags.parquet`` row to the
  caption text it judged.
* streaming access to a compacted manifest for readers that join several of them in
  key order (export): :func:`check_readable`, :func:`ensure_compacted`,
  :func:`manifest_rows`, :func:`open_parquet`, :func:`parquet_rows`, and
  :func:`file_fingerprint` to tell whether an input changed between two runs.

Memory is bounded by a batch, never by the work folder: the views are streams of
record batches (:func:`mama_augment.manifest.iter_manifest_batches`); only where
uncompacted parts remain is an index of the keys held beside them.

A run's ``pair_weights.parquet`` is read by :mod:`mama_augment.train.audit`, beside
the schema and the ranking it shares with the audit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mama_augment.errors import MamaError, UsageError
from mama_augment.manifest import (
    CAPTION_FLAGS,
    CAPTIONS,
    KEYFRAMES,
    STATUS_OK,
    ManifestSpec,
    compact,
    iter_manifest_batches,
    manifest_path,
    missing_columns_message,
    parts_dir,
    workdir_lock,
)

DEFAULT_BATCH_ROWS = 1024


def caption_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- views


def _ok_rows(workdir: str | os.PathLike, spec: ManifestSpec, columns: Sequence[str],
             batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of the rows of ``spec`` with status ``ok``: its key and ``columns`` only."""
    wanted = list(dict.fromkeys([*spec.key, *columns]))
    _require_columns(workdir, spec, [*wanted, "status"])
    for batch in iter_manifest_batches(workdir, spec, columns=[*wanted, "status"], batch_rows=batch_rows):
        ok = pc.fill_null(pc.equal(batch.column("status"), STATUS_OK), False)
        kept = batch.filter(ok).select(wanted)
        if kept.num_rows:
            yield kept


def _require_columns(workdir: str | os.PathLike, spec: ManifestSpec, columns: Sequence[str]) -> None:
    """UsageError naming the manifest file that lacks a column its reader needs (the
    stream would otherwise read it as nulls and, say, find no ``ok`` row at all)."""
    files = [manifest_path(workdir, spec), *sorted(parts_dir(workdir, spec).glob("part-*.parquet"))]
    for path in files:
        try:
            names = set(pq.read_schema(path).names)
        except FileNotFoundError:
            continue
        except (OSError, pa.ArrowException):
            continue  # a damaged file: the stream says so (the table), or redoes its rows (a part)
        missing = [c for c in columns if c not in names]
        if missing:
            raise UsageError(missing_columns_message(path, spec, missing))


def ok_video_batches(
    workdir: str | os.PathLike, columns: Sequence[str] = (), batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The ``ok`` videos of ``keyframes.parquet`` (newest row per video), as record
    batches of at most ``batch_rows`` rows holding ``video_id`` and ``columns``.

    Rows come in file order (sorted by ``video_id`` once the manifest is compacted);
    ``status`` is read to filter, and returned only when asked for.
    """
    return _ok_rows(workdir, KEYFRAMES, columns, batch_rows)


def ok_video_ids(workdir: str | os.PathLike, batch_rows: int = DEFAULT_BATCH_ROWS) -> list[str]:
    """The ids of the ``ok`` videos of ``keyframes.parquet``."""
    return [v for batch in ok_video_batches(workdir, (), batch_rows) for v in batch.column("video_id").to_pylist()]


def ok_videos_table(workdir: str | os.PathLike, columns: Sequence[str] = ()) -> pa.Table:
    """:func:`ok_video_batches` gathered, sorted by ``video_id``: for a reader that holds
    them all. The failed rows and the columns not named are never held."""
    return _gathered(KEYFRAMES, ok_video_batches(workdir, columns), columns)


def _gathered(spec: ManifestSpec, batches: Iterator[pa.RecordBatch], columns: Sequence[str]) -> pa.Table:
    wanted = list(dict.fromkeys([*spec.key, *columns]))
    schema = pa.schema([spec.schema.field(c) for c in wanted])
    table = pa.Table.from_batches(list(batches), schema=schema)
    return table.sort_by([(k, "ascending") for k in spec.key])


def generated_caption_batches(
    workdir: str | os.PathLike, columns: Sequence[str] = ("caption",), batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The ``ok`` rows of ``captions.parquet`` (newest per ``video_id``, ``caption_index``),
    as record batches of ``video_id``, ``caption_index`` and ``columns``.

    The ids are the ones ``keyframes`` wrote (the captions stage copies them), so they
    are used as they are. Whether an empty caption counts is the caller's rule.
    """
    return _ok_rows(workdir, CAPTIONS, columns, batch_rows)


def generated_captions_table(workdir: str | os.PathLike, columns: Sequence[str] = ("caption",)) -> pa.Table:
    """:func:`generated_caption_batches` gathered and sorted by (``video_id``,
    ``caption_index``): for a reader that holds them all (training, ``filter``). The
    failed rows and the other columns are never held."""
    return _gathered(CAPTIONS, generated_caption_batches(workdir, columns), columns)


# ----------------------------------------------------------------------------- compacted manifests, streamed

# The stage whose lock guards each manifest (the lock names the stages use).
MANIFEST_LOCKS = {KEYFRAMES.name: "keyframes", CAPTIONS.name: "caption", CAPTION_FLAGS.name: "filter"}

# What to do about a manifest that cannot be read.
_REPAIR = {
    KEYFRAMES.name: "restore it from a backup, or start over with `mama-augment keyframes --overwrite`",
    CAPTIONS.name: "restore it from a backup, or start over with `mama-augment caption --overwrite`",
    CAPTION_FLAGS.name: "run `mama-augment filter` again: it computes every row anew",
}


def ensure_compacted(workdir: Path, spec: ManifestSpec) -> None:
    """Check that ``NAME.parquet`` can be read, and fold parts a killed stage left
    behind into it (as its next run would).

    Takes the stage's lock, so a stage still writing is never disturbed: the reader
    stops with a message instead.
    """
    check_readable(workdir, spec)
    directory = parts_dir(workdir, spec)
    if not directory.is_dir() or not any(directory.glob("part-*.parquet")):
        return
    stage = MANIFEST_LOCKS[spec.name]
    try:
        with workdir_lock(workdir, stage):
            # The readers stream NAME.parquet alone, so every part goes in, however few.
            compact(workdir, spec, full=True)
    except MamaError as exc:
        raise MamaError(f"{spec.filename} is still being written ({exc}); try again when that run has ended") from None


def check_readable(workdir: Path, spec: ManifestSpec) -> None:
    """A compacted manifest that exists opens as Parquet with its key columns (a file
    cut short by a full disk or a killed copy does not); MamaError saying what to do."""
    path = manifest_path(workdir, spec)
    if not path.exists():
        return
    try:
        names = open_parquet(path).schema_arrow.names
    except (OSError, pa.ArrowException) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise MamaError(f"{spec.filename} ({path}) cannot be read ({reason}); {_REPAIR[spec.name]}") from None
    missing = [k for k in spec.key if k not in names]
    if missing:
        raise MamaError(f"{spec.filename} ({path}) is not a {spec.name} manifest (no {', '.join(missing)} column); "
                        f"{_REPAIR[spec.name]}")


def manifest_rows(workdir: Path, spec: ManifestSpec, columns: Sequence[str], batch_rows: int) -> Iterator[dict]:
    """Rows of a compacted manifest (sorted by its key), a batch at a time; every row,
    failed ones too (a join in key order counts them)."""
    path = manifest_path(workdir, spec)
    if not path.exists():
        return iter(())
    return parquet_rows(path, [*spec.key, *[c for c in columns if c not in spec.key]], batch_rows, spec.filename)


def open_parquet(path: Path) -> pq.ParquetFile:
    """A Parquet file read as its pages are decoded (``pre_buffer`` off: memory stays at
    about a batch per column, where pre-buffering holds ranges of the file ahead)."""
    return pq.ParquetFile(path, pre_buffer=False)


def parquet_rows(path: Path, columns: Sequence[str] | None, batch_rows: int, label: str) -> Iterator[dict]:
    """Rows of a Parquet file as dicts, a batch at a time; columns it lacks read as None."""
    try:
        handle = open_parquet(path)
        present = set(handle.schema_arrow.names)
        wanted = [c for c in columns if c in present] if columns is not None else None
        missing = [c for c in (columns or []) if c not in present]
        for batch in handle.iter_batches(batch_size=batch_rows, columns=wanted):
            rows = batch.to_pylist()
            if missing:
                for row in rows:
                    for name in missing:
                        row[name] = None
            yield from rows
    except (OSError, pa.ArrowException) as exc:
        raise MamaError(f"cannot read {label} ({path}): {exc}") from exc


def file_fingerprint(path: Path | None) -> dict | None:
    """Size and modification time: what decides whether a resumed reader may continue."""
    if path is None:
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
