"""The read side of a work folder: what a stage reads of the manifests others wrote.

Every stage that reads another stage's output takes it from here, so the views are
defined once:

* :func:`ok_video_batches` / :func:`ok_video_ids`: the videos ``keyframes`` processed
  (status ``ok``). The caller names the columns it needs and only those are decoded:
  the wide ones (embeddings) cost nothing to a reader that does not ask for them, and
  a column moved elsewhere only changes the names its readers pass.
  :func:`video_batches` gives the same stream with the failed rows beside it (their
  error kind and message), for a reader that counts what it leaves out; :func:`is_ok`
  is the one rule for a row that counts as done, for readers holding a table already.
* :func:`pending_videos`: what a ``keyframes`` run over some inputs has left to do
  (new, changed, made with other options, failed) and which failed rows it keeps.
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
from dataclasses import dataclass
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
    read_manifest,
    workdir_lock,
)

DEFAULT_BATCH_ROWS = 1024


def caption_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- views


def is_ok(status: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Which rows count as done: status ``ok``. A null status (a row cut short) is not."""
    return pc.fill_null(pc.equal(status, STATUS_OK), False)


def _ok_rows(workdir: str | os.PathLike, spec: ManifestSpec, columns: Sequence[str],
             batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of the rows of ``spec`` with status ``ok``: its key and ``columns`` only."""
    wanted = list(dict.fromkeys([*spec.key, *columns]))
    _require_columns(workdir, spec, [*wanted, "status"])
    for batch in iter_manifest_batches(workdir, spec, columns=[*wanted, "status"], batch_rows=batch_rows):
        kept = batch.filter(is_ok(batch.column("status"))).select(wanted)
        if kept.num_rows:
            yield kept


# What a failed row says about itself.
FAILED_COLUMNS = ("error_kind", "error")


@dataclass(frozen=True)
class VideoBatch:
    """One record batch of ``keyframes.parquet`` split by outcome."""

    ok: pa.RecordBatch  # ``video_id`` and the columns asked for, of the ``ok`` rows
    failed: pa.RecordBatch  # ``video_id``, ``error_kind``, ``error`` of the others


def video_batches(
    workdir: str | os.PathLike, columns: Sequence[str] = (), batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[VideoBatch]:
    """Every video of ``keyframes.parquet`` (newest row per video), a batch at a time,
    split into the ``ok`` rows (``video_id`` and ``columns``, as :func:`ok_video_batches`)
    and the failed ones with their reason.

    Only ``status`` must be in every file: a column an older file lacks (the references
    of the embeddings layout, say) reads as nulls, so a reader of either layout asks for
    both. One :class:`VideoBatch` per batch read, either side possibly empty.
    """
    wanted = list(dict.fromkeys([*KEYFRAMES.key, *columns]))
    failed = [*KEYFRAMES.key, *FAILED_COLUMNS]
    _require_columns(workdir, KEYFRAMES, [*KEYFRAMES.key, "status"])
    read = list(dict.fromkeys([*wanted, "status", *FAILED_COLUMNS]))
    for batch in iter_manifest_batches(workdir, KEYFRAMES, columns=read, batch_rows=batch_rows):
        ok = is_ok(batch.column("status"))
        yield VideoBatch(batch.filter(ok).select(wanted), batch.filter(pc.invert(ok)).select(failed))


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


@dataclass
class PendingVideos:
    """What a ``keyframes`` run over some inputs has left to do, by input position."""

    redo: list[int]  # the inputs to process, in input order
    reasons: dict[str, int]  # why (``new``, ``config changed``, ``input changed``, ``retry failed``), counted
    kept_failed: list[tuple[int, str, str]]  # (input, error kind, error): failed rows left as they are


def pending_videos(workdir: str | os.PathLike, video_ids: Sequence[str], sizes: Sequence[int | None],
                   mtimes: Sequence[float | None], config_hash: str, retry_failed: bool) -> PendingVideos:
    """Which inputs (``video_id``, size in bytes, modification time) still need work,
    from what ``keyframes.parquet`` holds: new, made with another ``config_hash``,
    changed since, or failed (redone with ``retry_failed``, else kept and listed).

    The inputs are matched to the manifest's rows by ``video_id`` with Arrow
    (``index_in``) and compared column by column, so a resume over hundreds of thousands
    of inputs makes Python objects only for those that need work.
    """
    import numpy as np

    existing = read_manifest(
        workdir, KEYFRAMES,
        columns=["status", *FAILED_COLUMNS, "input_size_bytes", "input_mtime", "config_hash"],
    )
    where = pc.index_in(pa.array(video_ids, pa.string()), value_set=existing.column("video_id"))
    row = existing.take(where)  # the manifest row of each input, all nulls when it has none
    is_new = pc.is_null(where).to_numpy(zero_copy_only=False)
    config_changed = pc.fill_null(pc.not_equal(row.column("config_hash"), config_hash), True).to_numpy(
        zero_copy_only=False)
    size_changed = _differ(row.column("input_size_bytes"), pa.array(sizes, pa.int64()))
    current_mtimes = pa.array(mtimes, pa.float64())
    mtime_moved = pc.greater_equal(pc.abs(pc.subtract(row.column("input_mtime"), current_mtimes)), 1e-6)
    mtime_changed = pc.or_kleene(mtime_moved, pc.xor(pc.is_null(row.column("input_mtime")),
                                                      pc.is_null(current_mtimes)))
    input_changed = size_changed | pc.fill_null(mtime_changed, False).to_numpy(zero_copy_only=False)
    failed = pc.invert(is_ok(row.column("status"))).to_numpy(zero_copy_only=False)
    reason_of = {
        "new": is_new,
        "config changed": ~is_new & config_changed,
        "input changed": ~is_new & ~config_changed & input_changed,
    }
    was_failed = ~is_new & ~config_changed & ~input_changed & failed
    if retry_failed:
        reason_of["retry failed"] = was_failed
    redo = np.zeros(len(video_ids), dtype=bool)
    reasons: dict[str, int] = {}
    for reason, mask in reason_of.items():
        if mask.any():
            reasons[reason] = int(mask.sum())
            redo |= mask
    kept_failed = []
    if not retry_failed:
        kinds, errors = row.column("error_kind"), row.column("error")
        kept_failed = [(i, kinds[i].as_py() or "failed", errors[i].as_py() or "")
                       for i in np.flatnonzero(was_failed).tolist()]
    return PendingVideos(np.flatnonzero(redo).tolist(), reasons, kept_failed)


def _differ(recorded, current):
    """Where two int64 columns differ, a null differing from any number (numpy bools)."""
    unequal = pc.fill_null(pc.not_equal(recorded, current), False)
    return pc.or_(unequal, pc.xor(pc.is_null(recorded), pc.is_null(current))).to_numpy(zero_copy_only=False)


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
