"""The videos of ``keyframes.parquet`` a training run can use, read as a stream.

Keyframe embeddings (12 x 1 280 floats a video, say) are by far the largest part of a
work folder. Turned into Python lists they take ~0.85 MB a video, so a training run of
tens of thousands of videos ran out of memory before its first step. Here the manifest
is streamed a record batch at a time (newest row per video) and the run maps the
embeddings from disk: peak memory is a batch plus the pages in use. ``float16`` halves
the memory of the frames; embeddings are unit-scale values whose 11-bit mantissa keeps
retrieval unchanged (see benchmarks/RESULTS.md).

The cache, ``cache/features/<fingerprint>/``, holds ``index.parquet`` (a row per usable
video, sorted by id on reading) and ``meta.json``. In today's layout the rows point into
the keyframes stage's own array files (``embeddings/emb-*.f16``,
:mod:`mama_augment.frame_embeddings`): each video's file (a number into the list of
``meta.json``'s ``files``), its first frame there and its frame count; the run maps
those files (:class:`~mama_augment.train.columns.FrameRows` with a table a file), so the
embeddings are stored once and building the cache reads only the manifest's small
columns. A work folder of an older version (embeddings inside the rows), or references
to files the cache does not map (float32 ones), get a copy instead: the usable videos'
embeddings as one ``float16`` array, ``frames.f16``, the rows' offsets into it.

The cache is keyed by the names, sizes, modification times and inodes of the manifest's
files and of the embeddings files, so a second run on an unchanged work folder maps the
arrays without reading Parquet; a changed manifest, or an embeddings file changed, cut
short or deleted, gets a new cache (whose scan counts the videos it cannot read) and the
old ones are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mama_augment.errors import ItemError, UsageError
from mama_augment.frame_embeddings import (
    DTYPES,
    EMBEDDINGS_DIR,
    READ_COLUMNS,
    REFERENCE_COLUMNS,
    EmbeddingReader,
    embedding_files,
)
from mama_augment.manifest import KEYFRAMES, _part_files, make_folder, manifest_path
from mama_augment.train.columns import FrameRows, ListColumn, TextColumn
from mama_augment.workpaths import PATH_OUTSIDE_WORKDIR, WorkFolder
from mama_augment.workread import VideoBatch, video_batches

FEATURE_DTYPE = np.float16
CACHE_DIR = Path("cache") / "features"
_FORMAT = 2  # bump when the files below change meaning
_BATCH_ROWS = 256


@dataclass
class LoadedVideos:
    video_ids: TextColumn  # sorted
    keyframe_embeddings: FrameRows  # (frames, dim) views of mapped tables; (0, 0) when not read
    keyframe_paths: ListColumn
    issues: Counter
    examples: dict[str, str]


def load_usable_videos(workdir: Path, need: str, rank: int = 0, world_size: int = 1,
                       barrier: Callable[[], None] | None = None) -> LoadedVideos:
    """The ``ok`` videos with what ``need`` (``keyframe_embeddings`` or
    ``keyframe_paths``) asks for, sorted by id; the others counted in ``issues``.

    Under torchrun (``world_size`` > 1, ``barrier`` waits for every rank) the feature
    cache is built together (:func:`_build_shared`)."""
    if need != "keyframe_embeddings":
        return _sorted(_scan(workdir, need, frames_file=None))
    fingerprint = _fingerprint(workdir)
    folder = workdir / CACHE_DIR / fingerprint
    if world_size > 1 and barrier is not None:
        _build_shared(workdir, folder, rank, world_size, barrier)
    elif _open_cache(workdir, folder) is None:
        _build(workdir, folder)
    loaded = _open_cache(workdir, folder)
    if loaded is None:  # pragma: no cover - the folder was just completed
        raise UsageError(f"the feature cache {folder} could not be read back")
    return loaded


def _build(workdir: Path, folder: Path) -> None:
    """The cache in ``folder`` from one pass over the manifest, by this process alone."""
    make_folder(folder.parent)
    building = folder.parent / f".tmp-{uuid.uuid4().hex}"
    building.mkdir()
    try:
        plan = _plan(workdir)
        if plan is None:  # embeddings inside the rows: copied in one pass over them
            scan = _scan(workdir, "keyframe_embeddings", frames_file=building / "frames.f16")
        else:
            scan, references = plan
            if scan.files is None:  # references the cache does not map: their frames copied
                _write_share(workdir, building / "frames.f16", scan, references, 0, 1)
        _complete(scan, building, folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    _remove_stale(folder)


def _complete(scan: "_Scan", building: Path, folder: Path) -> None:
    """Write the index and meta of a filled ``building`` folder and rename it to ``folder``."""
    meta = {"format": _FORMAT, "dim": scan.dim, "frames": scan.total_frames, "files": scan.files,
            "issues": dict(scan.issues), "examples": scan.examples}
    index = {"video_id": scan.video_ids, "offset": scan.offsets, "frames": scan.frame_counts,
             "keyframe_paths": scan.keyframe_paths}
    if scan.files is not None:
        index["file"] = scan.table
    _write_index(building / "index.parquet", index)
    (building / "meta.json").write_text(json.dumps(meta), encoding="utf-8")  # last: marks it complete
    try:
        os.replace(building, folder)
    except OSError:  # another run built the same cache meanwhile: use either
        pass


def _build_shared(workdir: Path, folder: Path, rank: int, world_size: int, barrier: Callable[[], None]) -> None:
    """The cache built by every rank together.

    Every rank reads the manifest's small columns (ids, status, paths, the references
    into the array files: no embedding values) and so knows every usable video's place.
    In today's layout the cache maps the array files themselves: nothing is copied, and
    rank 0 writes the index. Where references point at files it does not map (float32
    ones), rank ``r`` copies the embeddings of the ``r``-th contiguous slice of the
    videos into the shared file, and rank 0 writes the index once all are done: each
    rank reads 1/world of them. A work folder of an older version holds embeddings
    inside its rows, whose sizes only reading them tells: there rank 0 builds the
    cache alone and the others wait for it. Every rank calls ``barrier`` three times
    whatever it finds, so none is left waiting.
    """
    present = _open_cache(workdir, folder) is not None
    barrier()  # every rank has looked: none completes the cache before all have
    shared = folder.parent / f".shared-{folder.name}"
    plan = None
    if not present:
        make_folder(folder.parent)
        plan = _plan(workdir)
        if plan is None:  # embeddings inside the rows: rank 0 alone
            if rank == 0:
                _build(workdir, folder)
        else:
            scan, references = plan
            make_folder(shared)
            if scan.files is None:
                _write_share(workdir, shared / "frames.f16", scan, references, rank, world_size)
    barrier()  # every share is in the file
    if plan is not None and rank == 0:
        try:
            _complete(plan[0], shared, folder)
        finally:
            shutil.rmtree(shared, ignore_errors=True)
        _remove_stale(folder)
    barrier()  # the cache is complete: every rank maps it


def _plan(workdir: Path) -> "tuple[_Scan, list[tuple[str, int, int]]] | None":
    """The cache's index from the manifest's small columns, and each usable video's
    reference (file, first frame, frames); None when a usable row holds its embeddings
    itself (a work folder of an older version). Where every reference is to a float16
    file of ``embeddings/`` (the keyframes stage's), the index points into those files
    (``files`` set, :func:`_point_into_files`); else at places in a copy, ``frames.f16``."""
    scan = _Scan([], [], [], [], Counter(), {})
    references: list[tuple[str, int, int]] = []
    seen = False
    reader = EmbeddingReader(workdir)
    for batch in video_batches(workdir, ["keyframe_paths", "embedding_dim", *REFERENCE_COLUMNS], batch_rows=4096):
        seen = True
        _note_failed(scan, batch)
        ok = batch.ok
        ids = ok.column("video_id").to_pylist()
        paths = ok.column("keyframe_paths").to_pylist()
        files = ok.column("embeddings_file").to_pylist()
        offsets = ok.column("embeddings_offset").to_pylist()
        arrays = reader.rows(ok)  # mapped, not read: only their shapes are used here
        for i, video_id in enumerate(ids):
            if files[i] is None:
                return None
            if not _take_dim(scan, video_id, arrays[i], True):
                continue
            references.append((files[i], offsets[i], len(arrays[i])))
            _add_video(scan, video_id, len(arrays[i]), [p for p in (paths[i] or []) if p])
    _reader_issues(scan, reader)
    reader.close()
    if not seen:
        raise UsageError(f"no keyframes found in {workdir}: run `mama-augment keyframes` first")
    _point_into_files(workdir, scan, references)
    return scan, references


def _point_into_files(workdir: Path, scan: "_Scan", references: list[tuple[str, int, int]]) -> None:
    """Make ``scan`` an index into the embeddings files themselves, when it can map
    them: float16 (the cache's own type) and among :func:`embedding_files`, the files
    the fingerprint covers. Each video is then its file's number (``table``) and its
    first frame there (``offsets``); ``files`` lists each file with the rows it maps."""
    known = {f"{EMBEDDINGS_DIR}/{path.name}" for path in embedding_files(workdir)}
    names: dict[str, int] = {}
    for relative, _, _ in references:
        if relative not in names:
            if relative not in known or DTYPES.get(os.path.splitext(relative)[1]) != np.dtype(FEATURE_DTYPE):
                return
            names[relative] = len(names)
    table = np.fromiter((names[relative] for relative, _, _ in references), np.int32, len(references))
    offsets = np.fromiter((offset for _, offset, _ in references), np.int64, len(references))
    counts = np.asarray(scan.frame_counts, dtype=np.int64)
    rows = np.zeros(len(names), np.int64)
    np.maximum.at(rows, table, offsets + counts)
    scan.files = [[relative, int(n)] for relative, n in zip(names, rows.tolist())]
    scan.table, scan.offsets = table, offsets


def _write_share(workdir: Path, path: Path, scan: "_Scan", references: list[tuple[str, int, int]],
                 rank: int, world_size: int) -> None:
    """Copy the embeddings of this rank's slice of the videos to their place in ``path``."""
    videos = len(references)
    first, last = rank * videos // world_size, (rank + 1) * videos // world_size
    row_bytes = scan.dim * np.dtype(FEATURE_DTYPE).itemsize
    reader = EmbeddingReader(workdir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, scan.total_frames * row_bytes)  # every rank sets the same size: no data is lost
        for k in range(first, last):
            relative, offset, count = references[k]
            flat = reader.mapped(relative)
            block = flat[offset * scan.dim : (offset + count) * scan.dim]
            data = np.ascontiguousarray(block, dtype=FEATURE_DTYPE).tobytes()
            os.pwrite(fd, data, scan.offsets[k] * row_bytes)
    finally:
        os.close(fd)
    reader.close()


@dataclass
class _Scan:
    video_ids: list[str]
    offsets: list[int]
    frame_counts: list[int]
    keyframe_paths: list[list[str]]
    issues: Counter
    examples: dict[str, str]
    dim: int = 0
    total_frames: int = 0
    # Set where the cache maps the embeddings files: [relative name, rows mapped] each,
    # and each video's file number (``offsets`` are then rows of its file).
    files: list | None = None
    table: np.ndarray | None = None


def _note(scan: _Scan, kind: str, example: str) -> None:
    from mama_augment.datasets.base import clip_text

    scan.issues[kind] += 1
    scan.examples.setdefault(kind, clip_text(example))  # ids and paths come from data: never unbounded


def _confined_frames(work: WorkFolder, scan: _Scan, video_id: str, frame_paths: list[str]) -> list[str]:
    """The keyframe files that exist inside the work folder: the one gate before the clip
    backbone, the frame cache and the loader read any of them."""
    present = []
    for path in frame_paths:
        try:
            work.file(path, "keyframe")
        except ItemError as exc:
            if exc.kind == PATH_OUTSIDE_WORKDIR:
                _note(scan, PATH_OUTSIDE_WORKDIR, f"{video_id}: {path}")
            continue
        present.append(path)
    return present


def _scan(workdir: Path, need: str, frames_file: Path | None) -> _Scan:
    """One pass over the manifest; with ``frames_file`` the embeddings of the usable
    videos (either layout, :mod:`mama_augment.frame_embeddings`) are appended to it
    (file order) and their offsets recorded."""
    scan = _Scan([], [], [], [], Counter(), {})
    work = WorkFolder(workdir)
    columns = ["keyframe_paths"] + (READ_COLUMNS if frames_file is not None else [])
    seen = False
    reader = EmbeddingReader(workdir)
    with open(frames_file, "wb") if frames_file is not None else contextlib.nullcontext() as out:
        for batch in video_batches(workdir, columns, batch_rows=_BATCH_ROWS):
            seen = True
            _note_failed(scan, batch)
            ok = batch.ok
            ids = ok.column("video_id").to_pylist()
            paths = ok.column("keyframe_paths").to_pylist()
            arrays = reader.rows(ok) if out is not None else None
            referenced = ok.column("embeddings_file").is_valid().to_pylist() if out is not None else None
            for i, video_id in enumerate(ids):
                frame_paths = [p for p in (paths[i] or []) if p]
                if out is None:
                    if need == "keyframe_paths":
                        frame_paths = _confined_frames(work, scan, video_id, frame_paths)
                        if not frame_paths:
                            _note(scan, "video_without_frames", video_id)
                            continue
                    scan.video_ids.append(video_id)
                    scan.keyframe_paths.append(frame_paths)
                    continue
                if not _take_dim(scan, video_id, arrays[i], referenced[i]):
                    continue
                out.write(np.ascontiguousarray(arrays[i], dtype=FEATURE_DTYPE).tobytes())
                _add_video(scan, video_id, len(arrays[i]), frame_paths)
    _reader_issues(scan, reader)
    if not seen:
        raise UsageError(f"no keyframes found in {workdir}: run `mama-augment keyframes` first")
    return scan


def _note_failed(scan: _Scan, batch: VideoBatch) -> None:
    failed = batch.failed.column("video_id")
    if len(failed):
        _note(scan, "video_failed_in_keyframes", failed[0].as_py())
        scan.issues["video_failed_in_keyframes"] += len(failed) - 1


def _take_dim(scan: _Scan, video_id: str, array: np.ndarray | None, referenced: bool) -> bool:
    """Whether ``array`` holds the video's embeddings (else it is counted as without,
    unless it has a reference the reader could not follow: the reader counted why);
    embeddings of another size than the videos before are a UsageError."""
    if array is None or len(array) == 0:
        if not referenced:
            _note(scan, "video_without_embeddings", video_id)
        return False
    dim = int(array.shape[1])
    if scan.dim and dim != scan.dim:
        raise UsageError(f"keyframe embeddings of several sizes {sorted({scan.dim, dim})}: "
                         "rerun keyframes with one embedder")
    scan.dim = dim
    return True


def _add_video(scan: _Scan, video_id: str, frames: int, frame_paths: list[str]) -> None:
    scan.video_ids.append(video_id)
    scan.offsets.append(scan.total_frames)
    scan.frame_counts.append(frames)
    scan.keyframe_paths.append(frame_paths)
    scan.total_frames += frames


def _reader_issues(scan: _Scan, reader: EmbeddingReader) -> None:
    # A reference that cannot be followed (a file deleted or cut short from outside):
    # the video is left out as one without embeddings, and the summary says why.
    for kind, count in reader.problems.items():
        scan.issues[kind] += count
        scan.examples.setdefault(kind, reader.examples[kind])


def _sorted(scan: _Scan, frames: np.ndarray | list[np.ndarray] | None = None) -> LoadedVideos:
    """The scan's videos sorted by id, as columns: no Python object per video or path
    (at 200 k videos those lists held ~300 MB). ``scan``'s lists may be Arrow arrays
    (the cache's index, read as it is)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = scan.video_ids if isinstance(scan.video_ids, pa.Array) else pa.array(scan.video_ids, pa.string())
    paths = scan.keyframe_paths
    if not isinstance(paths, pa.Array):
        paths = pa.array(paths, pa.list_(pa.string()))
    # Arrow orders strings by their UTF-8 bytes, which is the code point order sorted() used.
    order = pc.sort_indices(ids).to_numpy() if len(ids) else np.zeros(0, np.int64)
    if frames is None:
        rows = FrameRows(None, np.zeros(len(order), np.int64), np.zeros(len(order), np.int64))
    else:
        table = None if scan.table is None else np.asarray(scan.table, dtype=np.int32)[order]
        rows = FrameRows(frames, np.asarray(scan.offsets, dtype=np.int64)[order],
                         np.asarray(scan.frame_counts, dtype=np.int64)[order], table)
    return LoadedVideos(TextColumn.from_arrow(ids.take(order)), rows, ListColumn(paths.take(order)),
                        scan.issues, scan.examples)


def _fingerprint(workdir: Path) -> str:
    # The embeddings files too: a cache maps them, so one changed, cut short or gone
    # (:func:`remove_unreferenced`, or from outside) makes a new cache, whose scan
    # counts the videos it can no longer read.
    files = [manifest_path(workdir, KEYFRAMES), *_part_files(workdir, KEYFRAMES), *embedding_files(workdir)]
    parts = [f"format={_FORMAT}", f"dtype={np.dtype(FEATURE_DTYPE).str}"]
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:20]


def _write_index(path: Path, index: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "video_id": pa.array(index["video_id"], pa.string()),
        "offset": pa.array(index["offset"], pa.int64()),
        "frames": pa.array(index["frames"], pa.int64()),
        "keyframe_paths": pa.array(index["keyframe_paths"], pa.list_(pa.string())),
    })
    if "file" in index:
        table = table.append_column("file", pa.array(index["file"], pa.int32()))
    pq.write_table(table, path)


def _open_cache(workdir: Path, folder: Path) -> LoadedVideos | None:
    import pyarrow.parquet as pq

    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT:
            return None
        # As Arrow columns: the ids and paths of every video never become Python objects.
        table = pq.read_table(folder / "index.parquet")
        index = {name: table.column(name).combine_chunks() for name in table.column_names}
        total, dim, files = int(meta["frames"]), int(meta["dim"]), meta.get("files")
        # Copy-on-write: the model may take an array as a (writable) tensor, and
        # nothing written in this process ever reaches a file.
        if total == 0:
            frames = np.zeros((0, dim), FEATURE_DTYPE)
        elif files is None:  # a copy of the frames
            frames = np.memmap(folder / "frames.f16", dtype=FEATURE_DTYPE, mode="c", shape=(total, dim))
        else:  # the embeddings files themselves, only those the fingerprint covers
            known = {f"{EMBEDDINGS_DIR}/{path.name}": path for path in embedding_files(workdir)}
            frames = [np.memmap(known[relative], dtype=FEATURE_DTYPE, mode="c", shape=(int(rows), dim))
                      for relative, rows in files]
    except (OSError, ValueError, KeyError, TypeError):  # not complete, or a file it maps gone or cut short
        return None
    scan = _Scan(index["video_id"], index["offset"].to_numpy(), index["frames"].to_numpy(), index["keyframe_paths"],
                 Counter(meta["issues"]), dict(meta["examples"]), dim, total,
                 files, index["file"].to_numpy() if files is not None and total else None)
    return _sorted(scan, frames)


def _remove_stale(keep: Path) -> None:
    """Caches of earlier states of the manifest (a run that maps one keeps its pages)."""
    for other in keep.parent.iterdir():
        if other != keep and other.is_dir() and not other.name.startswith("."):
            shutil.rmtree(other, ignore_errors=True)
