"""The videos of ``keyframes.parquet`` a training run can use, read as a stream.

Keyframe embeddings (12 x 1 280 floats a video, say) are by far the largest part of a
work folder. Turned into Python lists they take ~0.85 MB a video, so a training run of
tens of thousands of videos ran out of memory before its first step. Here the manifest
is streamed a record batch at a time (newest row per video), the embeddings go from
Arrow straight to numpy and on into one ``float16`` array on disk,
``cache/features/<fingerprint>/frames.f16``, which the run maps into memory: peak
memory is a batch plus the pages of the array in use. ``float16`` halves the file and
the memory of the frames table; embeddings are unit-scale values whose 11-bit mantissa
keeps retrieval unchanged (see benchmarks/RESULTS.md).

The cache is keyed by the names, sizes and modification times of the manifest's files,
so a second run on an unchanged work folder maps the array without reading Parquet; a
changed manifest gets a new cache and the old ones are removed.
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

import numpy as np

from mama_augment.errors import ItemError, UsageError
from mama_augment.manifest import KEYFRAMES, STATUS_OK, _part_files, iter_manifest_batches, manifest_path
from mama_augment.workpaths import PATH_OUTSIDE_WORKDIR, WorkFolder

FEATURE_DTYPE = np.float16
CACHE_DIR = Path("cache") / "features"
_FORMAT = 1  # bump when the files below change meaning
_BATCH_ROWS = 256


@dataclass
class LoadedVideos:
    video_ids: list[str]  # sorted
    keyframe_embeddings: list[np.ndarray]  # (frames, dim) views of one array; (0, 0) when not read
    keyframe_paths: list[list[str]]
    issues: Counter
    examples: dict[str, str]


def load_usable_videos(workdir: Path, need: str) -> LoadedVideos:
    """The ``ok`` videos with what ``need`` (``keyframe_embeddings`` or
    ``keyframe_paths``) asks for, sorted by id; the others counted in ``issues``."""
    if need != "keyframe_embeddings":
        return _sorted(_scan(workdir, need, frames_file=None))
    fingerprint = _fingerprint(workdir)
    folder = workdir / CACHE_DIR / fingerprint
    cached = _open_cache(folder)
    if cached is not None:
        return cached
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = folder.parent / f".tmp-{uuid.uuid4().hex}"
    building.mkdir()
    try:
        scan = _scan(workdir, need, frames_file=building / "frames.f16")
        meta = {"format": _FORMAT, "dim": scan.dim, "frames": scan.total_frames,
                "issues": dict(scan.issues), "examples": scan.examples}
        index = {"video_id": scan.video_ids, "offset": scan.offsets, "frames": scan.frame_counts,
                 "keyframe_paths": scan.keyframe_paths}
        _write_index(building / "index.parquet", index)
        del scan, index  # read back below: not held twice
        (building / "meta.json").write_text(json.dumps(meta), encoding="utf-8")  # last: marks it complete
        try:
            os.replace(building, folder)
        except OSError:  # another run built the same cache meanwhile: use either
            pass
    finally:
        shutil.rmtree(building, ignore_errors=True)
    _remove_stale(folder)
    loaded = _open_cache(folder)
    if loaded is None:  # pragma: no cover - the folder was just completed
        raise UsageError(f"the feature cache {folder} could not be read back")
    return loaded


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
    videos are appended to it (file order) and their offsets recorded."""
    import pyarrow.compute as pc

    scan = _Scan([], [], [], [], Counter(), {})
    work = WorkFolder(workdir)
    columns = ["status", "keyframe_paths"] + (["keyframe_embeddings"] if frames_file is not None else [])
    seen = False
    with open(frames_file, "wb") if frames_file is not None else contextlib.nullcontext() as out:
        for batch in iter_manifest_batches(workdir, KEYFRAMES, columns=columns, batch_rows=_BATCH_ROWS):
            seen = True
            ids = batch.column("video_id").to_pylist()
            status = batch.column("status").to_pylist()
            paths = batch.column("keyframe_paths").to_pylist()
            if out is not None:
                embeddings = batch.column("keyframe_embeddings")
                frames = pc.fill_null(pc.list_value_length(embeddings), 0).to_numpy()
                inner = embeddings.flatten()  # every frame of the batch (null rows have none)
                widths = pc.fill_null(pc.list_value_length(inner), 0).to_numpy()
                values = inner.flatten().to_numpy(zero_copy_only=False)
                frame_start = np.concatenate([[0], np.cumsum(frames)])
                value_start = np.concatenate([[0], np.cumsum(widths)])
            for i, video_id in enumerate(ids):
                if status[i] != STATUS_OK:
                    _note(scan, "video_failed_in_keyframes", video_id)
                    continue
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
                first, last = int(frame_start[i]), int(frame_start[i + 1])
                if last == first:
                    _note(scan, "video_without_embeddings", video_id)
                    continue
                row_widths = widths[first:last]
                dim = int(row_widths[0])
                if dim == 0 or (row_widths != dim).any():
                    raise UsageError(f"keyframe embeddings of several sizes in video {video_id!r}: "
                                     "rerun keyframes with one embedder")
                if scan.dim and dim != scan.dim:
                    raise UsageError(f"keyframe embeddings of several sizes {sorted({scan.dim, dim})}: "
                                     "rerun keyframes with one embedder")
                scan.dim = dim
                block = values[int(value_start[first]) : int(value_start[last])]
                out.write(np.ascontiguousarray(block, dtype=FEATURE_DTYPE).tobytes())
                scan.video_ids.append(video_id)
                scan.offsets.append(scan.total_frames)
                scan.frame_counts.append(last - first)
                scan.keyframe_paths.append(frame_paths)
                scan.total_frames += last - first
    if not seen:
        raise UsageError(f"no keyframes found in {workdir}: run `mama-augment keyframes` first")
    return scan


def _sorted(scan: _Scan, frames: np.ndarray | None = None) -> LoadedVideos:
    order = sorted(range(len(scan.video_ids)), key=scan.video_ids.__getitem__)
    empty = np.zeros((0, 0), FEATURE_DTYPE)
    embeddings = [frames[scan.offsets[k] : scan.offsets[k] + scan.frame_counts[k]] if frames is not None else empty
                  for k in order]
    return LoadedVideos([scan.video_ids[k] for k in order], embeddings, [scan.keyframe_paths[k] for k in order],
                        scan.issues, scan.examples)


def _fingerprint(workdir: Path) -> str:
    files = [manifest_path(workdir, KEYFRAMES), *_part_files(workdir, KEYFRAMES)]
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
    pq.write_table(table, path)


def _open_cache(folder: Path) -> LoadedVideos | None:
    import pyarrow.parquet as pq

    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT:
            return None
        index = pq.read_table(folder / "index.parquet").to_pydict()
    except (OSError, ValueError):
        return None
    total, dim = int(meta["frames"]), int(meta["dim"])
    if total == 0:
        frames = np.zeros((0, dim), FEATURE_DTYPE)
    else:
        # Copy-on-write: the model may take the array as a (writable) tensor, and
        # nothing written in this process ever reaches the file.
        frames = np.memmap(folder / "frames.f16", dtype=FEATURE_DTYPE, mode="c", shape=(total, dim))
    scan = _Scan(index["video_id"], index["offset"], index["frames"], index["keyframe_paths"],
                 Counter(meta["issues"]), dict(meta["examples"]), dim, total)
    return _sorted(scan, frames)


def _remove_stale(keep: Path) -> None:
    """Caches of earlier states of the manifest (a run that maps one keeps its pages)."""
    for other in keep.parent.iterdir():
        if other != keep and other.is_dir() and not other.name.startswith("."):
            shutil.rmtree(other, ignore_errors=True)
