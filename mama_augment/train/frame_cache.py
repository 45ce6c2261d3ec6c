"""The frame cache: every keyframe stored once at the model's input size.

Decoding a keyframe JPEG, cropping and resizing it costs milliseconds of CPU per
frame, every epoch; reading the same frame already at the model's input size is a
copy. The cache lives in the work folder, one folder per image size::

    cache/frames/<size>px/frames.u8       uint8 frames, slot k at byte k * size * size * 3
                                          (height x width x RGB), read with positioned reads
    cache/frames/<size>px/index.parquet   one row per keyframe: path (relative to the
                                          work folder), slot, source_size, source_mtime_ns,
                                          crc32; the format, version, image size, resize
                                          rule and Pillow version in its metadata
    cache/frames/<size>px/.lock           one writer at a time

It is written on first use (in the loader's worker processes, in parallel) and kept
up to date incrementally: a keyframe that is new, or whose JPEG changed size or
modification time since it was stored, is decoded again; unchanged ones are reused.
An index written by another format version, image size, resize rule or Pillow version,
or one that cannot be read, makes the whole cache stale: it is rebuilt.

It is never trusted: every read checks the frame's CRC-32 against the index, and a
frame that fails (a damaged file, a crash mid-write) is decoded from its JPEG again,
used, and written back in place. The index is replaced atomically after the frames
it describes are on disk. No pickle: raw bytes and Parquet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mama_augment.fileio import atomic_path
from mama_augment.train.frames import RESIZE_RULE, FrameSource, as_tensor, decode_frame

log = logging.getLogger(__name__)

FRAME_CACHE_DIR = Path("cache") / "frames"  # inside the work folder
DATA_FILE = "frames.u8"
INDEX_FILE = "index.parquet"
LOCK_FILE = ".lock"
FORMAT = "mama-augment frame cache"
VERSION = 1
NOT_DECODABLE = -1  # crc32 of a keyframe whose JPEG could not be decoded


def cache_folder(workdir: str | Path, size: int) -> Path:
    return Path(workdir) / FRAME_CACHE_DIR / f"{int(size)}px"


def frame_bytes(size: int) -> int:
    return int(size) * int(size) * 3


def _header(size: int) -> dict[str, str]:
    import PIL

    return {"format": FORMAT, "version": str(VERSION), "image_size": str(int(size)),
            "resize": RESIZE_RULE, "pillow": PIL.__version__}


@dataclass
class CacheReport:
    """What opening the cache did."""

    frames: int = 0
    reused: int = 0
    decoded: int = 0
    stale: int = 0  # stored but the JPEG changed since: decoded again
    not_decodable: int = 0
    rebuilt_reason: str | None = None  # why the whole cache was started over
    seconds: float = 0.0


class CachedFrames(FrameSource):
    """Reads frames from the cache (``cache``) with positioned reads into the batch's
    buffer (measured faster than page-faulting through a memory map of the same file,
    2x warm and more when cold: benchmarks/RESULTS.md), then checks each frame's CRC-32; a frame that fails is decoded from its JPEG
    instead and repaired in the file. Picklable: each process opens the file itself."""

    name = "cache"

    def __init__(self, data_path: str, size: int, slots: np.ndarray, crcs: np.ndarray, paths: Sequence[str]):
        self.data_path = str(data_path)
        self.size = int(size)
        self.slots = np.asarray(slots, dtype=np.int64)  # per frame id
        self.crcs = np.asarray(crcs, dtype=np.int64)  # per frame id; NOT_DECODABLE for broken JPEGs
        self.paths = list(paths)  # absolute JPEG paths, to repair from
        self.repaired = 0
        self._fd = None
        self._pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fd = os.open(self.data_path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def frames(self, frame_ids):
        fd = self._file()
        nbytes = frame_bytes(self.size)
        ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), self.size, self.size, 3), dtype=np.uint8)
        for k, frame_id in enumerate(ids.tolist()):
            buffer = memoryview(out[k]).cast("B")
            read = os.preadv(fd, [buffer], int(self.slots[frame_id]) * nbytes)
            if read != nbytes or zlib.crc32(buffer) != self.crcs[frame_id]:
                out[k] = self._repair(frame_id)
        return as_tensor(out)

    def _repair(self, frame_id: int) -> np.ndarray:
        """The frame decoded from its JPEG (which raises a clear error when the JPEG is
        itself unreadable); written back when it matches what the index recorded."""
        pixels = decode_frame(self.paths[frame_id], self.size)
        self.repaired += 1
        if zlib.crc32(pixels) == self.crcs[frame_id]:
            with contextlib.suppress(OSError):  # a read-only cache still gives right frames
                fd = os.open(self.data_path, os.O_WRONLY)
                try:
                    os.pwrite(fd, pixels.tobytes(), int(self.slots[frame_id]) * frame_bytes(self.size))
                finally:
                    os.close(fd)
        log.warning("frame cache: %s failed its checksum; decoded again%s", self.paths[frame_id],
                    " and repaired" if zlib.crc32(pixels) == self.crcs[frame_id] else "")
        return pixels

    def broken(self, frame_ids) -> list[int]:
        """The frame ids whose JPEG could not be decoded when the cache was filled."""
        return [i for i in frame_ids if self.crcs[i] == NOT_DECODABLE]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("frame cache %s is being written by another run: waiting", path.parent)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_index(folder: Path, size: int) -> tuple[dict[str, tuple[int, int, int, int]], str | None]:
    """``path -> (slot, source_size, source_mtime_ns, crc32)`` of a usable index, and
    why the cache must be started over (None when it need not)."""
    import pyarrow.parquet as pq

    index, data = folder / INDEX_FILE, folder / DATA_FILE
    if not index.exists():
        return {}, ("no cache yet" if not data.exists() else "frames without an index")
    try:
        table = pq.read_table(index)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        columns = table.to_pydict()
        rows = list(zip(columns["path"], columns["slot"], columns["source_size"], columns["source_mtime_ns"],
                        columns["crc32"]))
    except Exception as exc:  # a damaged index: start over, never guess
        return {}, f"unreadable index ({type(exc).__name__}: {exc})"
    expected = _header(size)
    changed = [k for k in expected if meta.get(k) != expected[k]]
    if changed:
        return {}, "made with another " + ", ".join(f"{k} ({meta.get(k)!r}, now {expected[k]!r})" for k in changed)
    if not data.exists():
        return {}, "index without frames"
    length = data.stat().st_size
    entries = {}
    for path, slot, source_size, mtime, crc in rows:
        if 0 <= slot and (slot + 1) * frame_bytes(size) <= length:  # a truncated file loses its tail
            entries[path] = (int(slot), int(source_size), int(mtime), int(crc))
    if len(entries) < len(rows):
        log.warning("frame cache %s: %d frames lie beyond the end of %s (truncated): they are decoded again",
                    folder, len(rows) - len(entries), DATA_FILE)
    return entries, None


def _write_index(folder: Path, entries: dict[str, tuple[int, int, int, int]], size: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted(entries)
    values = [entries[p] for p in paths]
    table = pa.table({
        "path": pa.array(paths, pa.string()),
        "slot": pa.array([v[0] for v in values], pa.int64()),
        "source_size": pa.array([v[1] for v in values], pa.int64()),
        "source_mtime_ns": pa.array([v[2] for v in values], pa.int64()),
        "crc32": pa.array([v[3] for v in values], pa.int64()),
    }).replace_schema_metadata(_header(size))
    with atomic_path(folder / INDEX_FILE, fsync=True) as tmp:
        pq.write_table(table, tmp)


class _FillTask:
    """Decode chunks of keyframes and write them into their slots (in a worker)."""

    def __init__(self, data_path: str, size: int, chunks: list[list[tuple[str, int]]]):
        self.data_path, self.size, self.chunks = data_path, size, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> list[int]:
        crcs = []
        fd = os.open(self.data_path, os.O_WRONLY)
        try:
            for path, slot in self.chunks[k]:
                try:
                    pixels = decode_frame(path, self.size)
                except Exception:  # a broken JPEG is recorded, not fatal here
                    crcs.append(NOT_DECODABLE)
                    continue
                os.pwrite(fd, pixels.tobytes(), slot * frame_bytes(self.size))
                crcs.append(zlib.crc32(pixels))
        finally:
            os.close(fd)
        return crcs


def _fill(data_path: Path, size: int, todo: list[tuple[str, int]], workers: int) -> list[int]:
    """Decode ``todo`` (absolute path, slot) into the data file; their CRC-32s in order."""
    import torch

    chunk = 64
    chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    task = _FillTask(str(data_path), size, chunks)
    if workers <= 0:
        results = [task[k] for k in range(len(task))]
    else:
        loader = torch.utils.data.DataLoader(task, batch_size=None, shuffle=False, num_workers=min(workers, len(task)))
        results = list(loader)
    with open(data_path, "rb+") as handle:
        os.fsync(handle.fileno())
    return [crc for chunk_crcs in results for crc in chunk_crcs]


def open_frame_cache(workdir: str | Path, relative_paths: Sequence[str], size: int, workers: int = 0) -> tuple[CachedFrames, CacheReport]:
    """The frame cache of ``relative_paths`` (keyframe JPEGs relative to the work folder)
    at ``size`` pixels, brought up to date first: missing and stale frames are decoded
    (by ``workers`` processes; 0 decodes here). Frame id ``i`` is ``relative_paths[i]``."""
    started = time.time()
    workdir = Path(workdir)
    folder = cache_folder(workdir, size)
    data_path = folder / DATA_FILE
    report = CacheReport(frames=len(relative_paths))
    with _locked(folder / LOCK_FILE):
        entries, restart = _read_index(folder, size)
        if restart is not None:
            if restart != "no cache yet":
                log.warning("frame cache %s is rebuilt: %s", folder, restart)
            report.rebuilt_reason = restart
            with contextlib.suppress(FileNotFoundError):
                data_path.unlink()
            entries = {}
        next_slot = max((e[0] for e in entries.values()), default=-1) + 1
        todo: list[tuple[str, int]] = []
        todo_paths: list[str] = []
        fresh: dict[str, tuple[int, int]] = {}  # path -> (source size, mtime) now
        for rel in dict.fromkeys(relative_paths):  # unique, in order
            stat = (workdir / rel).stat()
            fresh[rel] = (stat.st_size, stat.st_mtime_ns)
            entry = entries.get(rel)
            if entry is not None and (entry[1], entry[2]) == fresh[rel]:
                report.reused += 1
                continue
            if entry is not None:
                report.stale += 1
                slot = entry[0]
            else:
                slot, next_slot = next_slot, next_slot + 1
            todo.append((str(workdir / rel), slot))
            todo_paths.append(rel)
        if todo:
            log.info("frame cache %s: decoding %d keyframes (%d reused)", folder, len(todo), report.reused)
            data_path.parent.mkdir(parents=True, exist_ok=True)
            with open(data_path, "ab"):
                pass
            needed = (max(slot for _, slot in todo) + 1) * frame_bytes(size)
            if data_path.stat().st_size < needed:
                os.truncate(data_path, needed)
            crcs = _fill(data_path, size, todo, workers)
            for rel, (_, slot), crc in zip(todo_paths, todo, crcs):
                entries[rel] = (slot, fresh[rel][0], fresh[rel][1], crc)
                report.decoded += 1
            _write_index(folder, entries, size)
    slots = np.asarray([entries[p][0] for p in relative_paths], dtype=np.int64)
    crcs = np.asarray([entries[p][3] for p in relative_paths], dtype=np.int64)
    report.not_decodable = int((crcs == NOT_DECODABLE).sum())
    report.seconds = time.time() - started
    source = CachedFrames(str(data_path), size, slots, crcs, [str(workdir / p) for p in relative_paths])
    return source, report


def cache_bytes_needed(relative_paths: Sequence[str], size: int) -> int:
    return len(set(relative_paths)) * frame_bytes(size)
