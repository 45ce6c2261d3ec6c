"""Keyframe embeddings outside the row table: array files under ``embeddings/``.

A video's keyframe embeddings (12 x 1 280 floats, say) are ~50 times the size of the rest
of its ``keyframes.parquet`` row, and only two readers want them (training on features,
and whoever asks :func:`EmbeddingReader.rows`). So the keyframes stage appends them to a
flat array file, ``embeddings/<stem>.f16`` (little-endian float16, ``embedding_dim``
values a frame, one file per writer), and the row keeps a reference: ``embeddings_file``
(relative to the work folder), ``embeddings_offset`` (first frame in the file) and
``embeddings_count`` (frames). Readers that do not ask for these columns never touch
the arrays (status, resume, export, report read a few hundred bytes a video).

Why append-only rather than one file per manifest part: the stage writes one part per
finished video, so a file per part would be a file per video; one file a run keeps the
row's cost to one ``write`` call. A reference is only ever written after the bytes it
points at are in the file (:meth:`EmbeddingAppender.externalize` returns the rows only
once they are written), and a file is never rewritten, so a process killed at any
moment leaves at most bytes no row points at, never a row pointing at missing bytes.
Compaction moves rows between Parquet files, not arrays: references stay valid.
:func:`remove_unreferenced` deletes the files no row points at any more (at the end of
a keyframes run, under its lock).

Work folders written before this layout hold the embeddings in the rows
(``keyframe_embeddings``, list<list<float32>>); :class:`EmbeddingReader` reads both, row
by row, so old folders (and folders mixing both) keep working without a migration.

float16 rather than float32: keyframe selection runs on the float32 embeddings before
they are stored, and training already narrowed them to float16 in its feature cache
(retrieval unchanged, benchmarks/RESULTS.md), so storing float16 halves the folder and
loses nothing a reader used.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mama_augment.errors import ItemError, MamaError, UsageError

EMBEDDINGS_DIR = "embeddings"
STORE_DTYPE = np.dtype("<f2")
# File suffix -> the dtype of its values (the suffix is how a reader knows it).
DTYPES = {".f16": np.dtype("<f2"), ".f32": np.dtype("<f4")}
SUFFIX = {dtype: suffix for suffix, dtype in DTYPES.items()}

EMBEDDINGS_COLUMN = "keyframe_embeddings"  # the rows' own embeddings: work folders of older versions
REFERENCE_COLUMNS = ("embeddings_file", "embeddings_offset", "embeddings_count")
# What a reader of embeddings asks the manifest for (both layouts).
READ_COLUMNS = ["embedding_dim", EMBEDDINGS_COLUMN, *REFERENCE_COLUMNS]

# A new file once this one holds this many bytes: files stay a size a copy or a
# filesystem handles well, and a long run does not make one huge file.
MAX_FILE_BYTES = 1 << 30
_MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)  # Linux 5.4+; Python names it only where built against it


def page_out(array: np.ndarray, begin: int, end: int) -> None:
    """Hand the pages of bytes ``begin:end`` of a file-mapped ``array`` (an np.memmap as
    opened, not a view of one) back to the kernel: a pass over a large mapped file would
    otherwise leave all of it resident in the process. Only a hint: the values stay
    readable (read again from the file), and a page this process wrote (copy-on-write)
    is kept, never dropped."""
    mapping = getattr(array, "_mmap", None)
    if mapping is None:
        return
    # np.memmap maps from the allocation boundary at or before its offset.
    shift = int(getattr(array, "offset", 0) or 0) % mmap.ALLOCATIONGRANULARITY
    begin = (max(0, begin) + shift) // mmap.PAGESIZE * mmap.PAGESIZE
    end = min(end + shift, len(mapping))
    if end > begin:
        with contextlib.suppress(OSError, ValueError):  # an older kernel: the pages stay
            mapping.madvise(_MADV_PAGEOUT, begin, end - begin)
_FILE_NAME = re.compile(r"^emb-\d{20}-\d+-[0-9a-f]{8}\.f(16|32)$")


class EmbeddingAppender:
    """Moves the ``keyframe_embeddings`` of manifest rows into array files.

    ``externalize(table)`` appends every row's embeddings to the current file and
    returns the table with references in their place; call it before the table is
    written as a part, so the bytes are in the file before any row points at them.
    """

    def __init__(self, workdir: str | os.PathLike, dtype=STORE_DTYPE, max_file_bytes: int = MAX_FILE_BYTES):
        self.workdir = Path(workdir)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype not in SUFFIX:
            raise UsageError(f"embeddings are stored as float16 or float32, not {self.dtype}")
        self.max_file_bytes = max_file_bytes
        self._handle = None
        self._relative = ""
        self._frames = 0  # frames in the current file
        self._dim = 0

    def _open(self, dim: int) -> None:
        from mama_augment.manifest import make_folder

        self.close()
        folder = make_folder(self.workdir / EMBEDDINGS_DIR)
        name = f"emb-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX[self.dtype]}"
        # Unbuffered: each write reaches the OS at once, before its rows can be written.
        self._handle = open(folder / name, "xb", buffering=0)
        self._relative = f"{EMBEDDINGS_DIR}/{name}"
        self._frames, self._dim = 0, dim

    def externalize(self, table: pa.Table) -> pa.Table:
        """``table`` with its ``keyframe_embeddings`` in the array file: the column set
        to nulls, the references filled in (nulls for rows without embeddings)."""
        if EMBEDDINGS_COLUMN not in table.column_names or table.num_rows == 0:
            return table
        column = table.column(EMBEDDINGS_COLUMN).combine_chunks()
        files: list[str | None] = [None] * table.num_rows
        offsets: list[int | None] = [None] * table.num_rows
        counts: list[int | None] = [None] * table.num_rows
        for i, (frames, dim, values) in enumerate(_list_rows(column)):
            if frames == 0:
                continue
            if (self._handle is None or dim != self._dim
                    or (self._frames + frames) * dim * self.dtype.itemsize > self.max_file_bytes):
                self._open(dim)
            block = np.ascontiguousarray(values, dtype=self.dtype)
            try:
                self._handle.write(memoryview(block).cast("B"))
            except OSError as exc:
                raise MamaError(f"cannot write the embeddings file {self.workdir / self._relative}: "
                                f"{exc.strerror or exc}") from None
            files[i], offsets[i], counts[i] = self._relative, self._frames, frames
            self._frames += frames
        names = table.column_names
        table = table.set_column(names.index(EMBEDDINGS_COLUMN), EMBEDDINGS_COLUMN,
                                 pa.nulls(table.num_rows, column.type))
        for name, values, kind in zip(REFERENCE_COLUMNS, (files, offsets, counts),
                                      (pa.string(), pa.int64(), pa.int32())):
            array = pa.array(values, kind)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, array)
            else:
                table = table.append_column(name, array)
        return table

    def close(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._handle.fileno())  # before compaction's fsynced table names these bytes
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "EmbeddingAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _list_rows(column) -> Iterable[tuple[int, int, np.ndarray]]:
    """(frames, dim, values as a (frames, dim) array) of each row of a list<list<float>>
    column; (0, 0, empty) for a null or empty row. Ragged rows are a UsageError."""
    frames = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    inner = column.flatten()  # every frame of the column (null rows have none)
    widths = pc.fill_null(pc.list_value_length(inner), 0).to_numpy(zero_copy_only=False)
    values = inner.flatten().to_numpy(zero_copy_only=False)
    frame_start = np.concatenate([[0], np.cumsum(frames)])
    value_start = np.concatenate([[0], np.cumsum(widths)])
    empty = np.zeros((0, 0), np.float32)
    for i in range(len(frames)):
        first, last = int(frame_start[i]), int(frame_start[i + 1])
        if last == first:
            yield 0, 0, empty
            continue
        row_widths = widths[first:last]
        dim = int(row_widths[0])
        if dim == 0 or (row_widths != dim).any():
            raise UsageError("keyframe embeddings of several sizes in one video: rerun keyframes with one embedder")
        block = values[int(value_start[first]) : int(value_start[last])]
        yield last - first, dim, block.reshape(last - first, dim)


class EmbeddingReader:
    """The keyframe embeddings of manifest rows, in either layout.

    Give :meth:`rows` a record batch (or table) read with :data:`READ_COLUMNS`; it
    returns each row's (frames, dim) array, a read-only view of the mapped array file
    (new layout) or of the batch's values (old layout), or None when the row has none
    or its reference cannot be followed (``problems`` counts why, with an example).
    Array files are mapped once and kept open until :meth:`close`.
    """

    def __init__(self, workdir: str | os.PathLike):
        from mama_augment.workpaths import WorkFolder

        self.workdir = Path(workdir)
        self._work = WorkFolder(workdir)
        self._maps: dict[str, np.ndarray | None] = {}
        self._read: dict[str, list[int]] = {}  # per file, the value range handed out since the last batch
        self.problems: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def _note(self, kind: str, example: str) -> None:
        self.problems[kind] = self.problems.get(kind, 0) + 1
        self.examples.setdefault(kind, example)

    def mapped(self, relative: str) -> np.ndarray | None:
        """The flat values of an array file, mapped (None when it cannot be read)."""
        if relative in self._maps:
            return self._maps[relative]
        array = None
        suffix = os.path.splitext(relative)[1]
        try:
            if suffix not in DTYPES:
                raise ItemError("embeddings_missing", f"the embeddings file {relative!r} is not a .f16 or .f32 file")
            path = self._work.file(relative, "embeddings file", missing_kind="embeddings_missing")
            if os.path.getsize(path) >= DTYPES[suffix].itemsize:
                array = np.memmap(path, dtype=DTYPES[suffix], mode="r")
            else:
                array = np.zeros(0, DTYPES[suffix])
        except ItemError as exc:
            self._note(exc.kind, exc.message)
        except OSError as exc:
            self._note("embeddings_missing", f"cannot read {relative}: {exc.strerror or exc}")
        self._maps[relative] = array
        return array

    def rows(self, batch) -> list[np.ndarray | None]:
        # The pages of the previous batch's arrays go back to the kernel: a stream over
        # every video keeps a batch resident, not the whole file (views stay valid).
        self._page_out()
        names = batch.schema.names
        count = batch.num_rows
        out: list[np.ndarray | None] = [None] * count
        if all(name in names for name in REFERENCE_COLUMNS):
            files = batch.column("embeddings_file").to_pylist()
            offsets = batch.column("embeddings_offset").to_pylist()
            counts = batch.column("embeddings_count").to_pylist()
            dims = batch.column("embedding_dim").to_pylist() if "embedding_dim" in names else [None] * count
        else:
            files = [None] * count
        inline = None
        if EMBEDDINGS_COLUMN in names and any(f is None for f in files):
            column = batch.column(EMBEDDINGS_COLUMN)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            inline = _list_rows(column)
        for i in range(count):
            old = next(inline) if inline is not None else None
            if files[i] is None:
                if old is not None and old[0]:
                    out[i] = old[2]
                continue
            out[i] = self._referenced(files[i], offsets[i], counts[i], dims[i])
        return out

    def _referenced(self, relative: str, offset, count, dim) -> np.ndarray | None:
        flat = self.mapped(relative)
        if flat is None:
            return None
        if offset is None or count is None or not dim or offset < 0 or count <= 0:
            self._note("embeddings_missing", f"a row's reference into {relative} is incomplete")
            return None
        start, stop = offset * dim, (offset + count) * dim
        if stop > len(flat):
            self._note("embeddings_missing", f"{relative} ends before the frames a row points at")
            return None
        span = self._read.setdefault(relative, [start, stop])
        span[0], span[1] = min(span[0], start), max(span[1], stop)
        return flat[start:stop].reshape(count, dim)

    def _page_out(self) -> None:
        for relative, (start, stop) in self._read.items():
            flat = self._maps.get(relative)
            if flat is not None:
                page_out(flat, start * flat.itemsize, stop * flat.itemsize)
        self._read.clear()

    def close(self) -> None:
        self._page_out()
        self._maps.clear()

    def __enter__(self) -> "EmbeddingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def embedding_files(workdir: str | os.PathLike) -> list[Path]:
    """The array files this tool wrote in ``embeddings/`` (none through a linked folder)."""
    folder = Path(workdir) / EMBEDDINGS_DIR
    if folder.is_symlink() or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _FILE_NAME.match(p.name) and not p.is_symlink())


def remove_unreferenced(workdir: str | os.PathLike, referenced: Iterable[str | None]) -> int:
    """Delete the array files of ``embeddings/`` that no reference in ``referenced``
    names (every video in them was redone, or the run that wrote them was killed
    before any row). Only while no keyframes writer runs (under its lock)."""
    keep = {name for name in referenced if name}
    removed = 0
    for path in embedding_files(workdir):
        if f"{EMBEDDINGS_DIR}/{path.name}" not in keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


def iter_video_embeddings(workdir: str | os.PathLike, batch_rows: int = 256) -> Iterator[tuple[str, np.ndarray | None]]:
    """(video_id, its keyframe embeddings or None) for every row of ``keyframes.parquet``
    (newest per video, either layout), streamed: memory holds a batch. The arrays of
    the new layout are views of mapped files: copy those kept past the next batch."""
    from mama_augment.manifest import KEYFRAMES, iter_manifest_batches

    with EmbeddingReader(workdir) as reader:
        for batch in iter_manifest_batches(workdir, KEYFRAMES, columns=READ_COLUMNS, batch_rows=batch_rows):
            yield from zip(batch.column("video_id").to_pylist(), reader.rows(batch))
