"""Compact columns for the per-video and per-caption tables of a training run.

A run over 200 k videos holds ~600 k captions, 200 k ids, 2.4 M keyframe paths and a
frame array view per video. As Python lists those are an object each (a ``str`` is
49 bytes before its first character, an array view over 100), several hundred MB
before the first step. The columns here keep the same values in a few flat buffers
and make the Python object only when an item is asked for, so the code that reads
``texts[c]`` or iterates ``caption_source`` reads them as it read the lists.

* :class:`TextColumn`: strings as UTF-8 bytes and end offsets (append-only);
* :class:`CategoryColumn`: values from a small set (sources, splits, concepts, None
  included) as a code each;
* :class:`NullableInts`: integers or None;
* :class:`Ragged`: a run of int64 values per row (a training video's caption ids);
* :class:`FrameRows`: each video's keyframe embeddings, row ranges of one array or of
  one of several (the embeddings files, mapped);
* :class:`ListColumn`: lists of strings (keyframe paths) kept as an Arrow array.

No torch here: the data module and the benchmarks import it.
"""

from __future__ import annotations

from array import array
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

_DECODE_CHUNK = 4096  # items decoded a time while iterating
T = TypeVar("T")


def _index(i, length: int) -> int:
    i = int(i)  # numpy integers index too
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError("column index out of range")
    return i


class _Column:
    """What the columns share: the sequence protocol over ``_item``."""

    def __len__(self) -> int:  # pragma: no cover - every column defines it
        raise NotImplementedError

    def _item(self, i: int):  # pragma: no cover - every column defines it
        raise NotImplementedError

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self._item(i) for i in range(*key.indices(len(self)))]
        if isinstance(key, (list, tuple, np.ndarray)):
            return [self[i] for i in np.asarray(key).reshape(-1).tolist()]
        return self._item(_index(key, len(self)))

    def __iter__(self) -> Iterator:
        for i in range(len(self)):
            yield self._item(i)

    def __eq__(self, other) -> bool:
        if isinstance(other, (_Column, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable, compared by value

    def __bool__(self) -> bool:
        return len(self) > 0

    def tolist(self) -> list:
        return list(self)

    def __repr__(self) -> str:
        head = ", ".join(repr(v) for v in self[:3])
        return f"{type(self).__name__}([{head}{', ...' if len(self) > 3 else ''}], len={len(self)})"


class TextColumn(_Column):
    """Strings, stored as UTF-8 bytes and the end offset of each (append-only)."""

    def __init__(self, strings: Iterable[str] = ()):
        self._bytes = bytearray()
        self._ends = array("q")
        self.extend(strings)

    def append(self, text: str) -> None:
        self._bytes += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._bytes))

    def extend(self, strings: Iterable[str]) -> None:
        for text in strings:
            self.append(text)

    @classmethod
    def from_arrow(cls, values) -> "TextColumn":
        """From an Arrow string array (or chunked array) without nulls, copying its bytes
        and offsets once (no Python string is made)."""
        import pyarrow as pa

        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
        if values.null_count:
            raise ValueError("a text column holds no nulls")
        values = values.cast(pa.large_string())
        column = cls()
        if len(values):
            offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + len(values) + 1]
            first, last = int(offsets[0]), int(offsets[-1])
            column._bytes = bytearray(memoryview(values.buffers()[2])[first:last])
            column._ends = array("q", (offsets[1:] - first).tobytes())
        return column

    def to_arrow(self):
        """The strings as an Arrow ``large_string`` array."""
        import pyarrow as pa

        offsets = np.concatenate([[0], np.frombuffer(self._ends, dtype=np.int64)]) if len(self._ends) else np.zeros(1, np.int64)
        return pa.LargeStringArray.from_buffers(len(self), pa.py_buffer(offsets.astype(np.int64)),
                                                pa.py_buffer(bytes(self._bytes)))

    def __len__(self) -> int:
        return len(self._ends)

    def _item(self, i: int) -> str:
        start = self._ends[i - 1] if i else 0
        return self._bytes[start : self._ends[i]].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        # Slices, not a memoryview: a view left open by an unfinished loop would stop
        # the column from growing.
        data, start = self._bytes, 0
        for end in self._ends:
            yield data[start:end].decode("utf-8", "surrogatepass")
            start = end

    def nbytes(self) -> int:
        return len(self._bytes) + self._ends.itemsize * len(self._ends)


class CategoryColumn(_Column):
    """Values of a small set (any hashable, None too), a 32-bit code each. Items come
    back as the objects first appended, so ``is`` comparisons keep their meaning."""

    def __init__(self, values: Iterable = ()):
        self._names: list = []
        self._code_of: dict = {}
        self._codes = array("i")
        self.extend(values)

    def append(self, value) -> None:
        code = self._code_of.get(value)
        if code is None:
            code = self._code_of[value] = len(self._names)
            self._names.append(value)
        self._codes.append(code)

    def extend(self, values: Iterable) -> None:
        for value in values:
            self.append(value)

    def __len__(self) -> int:
        return len(self._codes)

    def _item(self, i: int):
        return self._names[self._codes[i]]

    def __iter__(self):
        names = self._names
        for code in self._codes:
            yield names[code]

    @property
    def names(self) -> list:
        """The distinct values, in the order first appended (a code is a position here)."""
        return self._names

    def code_of(self, value) -> int:
        """The code of ``value`` (-1 when no item has it)."""
        code = self._code_of.get(value)
        return -1 if code is None else code

    def codes(self) -> np.ndarray:
        return np.frombuffer(self._codes, dtype=np.int32) if len(self._codes) else np.zeros(0, np.int32)

    def mask(self, value) -> np.ndarray:
        """Whether each item equals ``value``, as a boolean array."""
        code = self._code_of.get(value)
        if code is None:
            return np.zeros(len(self), dtype=bool)
        return self.codes() == code


_NONE = -(2**63)  # int64's lowest value stands for None


class NullableInts(_Column):
    """Integers or None (64-bit; the lowest int64 is taken for None)."""

    def __init__(self, values: Iterable[int | None] = ()):
        self._values = array("q")
        self.extend(values)

    def append(self, value: int | None) -> None:
        self._values.append(_NONE if value is None else int(value))

    def extend(self, values: Iterable[int | None]) -> None:
        for value in values:
            self.append(value)

    def __iadd__(self, values: Iterable[int | None]) -> "NullableInts":
        self.extend(values)
        return self

    def __len__(self) -> int:
        return len(self._values)

    def _item(self, i: int) -> int | None:
        value = self._values[i]
        return None if value == _NONE else value


class Ragged(_Column):
    """A run of int64 values per row: row ``k`` is ``values[offsets[k]:offsets[k + 1]]``
    (a read-only view, as a list of arrays would hand out)."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values = np.asarray(values, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.values.flags.writeable = False

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]]) -> "Ragged":
        lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
        values = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if len(rows) else np.zeros(0, np.int64)
        return cls(values, np.concatenate([[0], np.cumsum(lengths)]))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _item(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def __eq__(self, other) -> bool:
        if isinstance(other, (_Column, list, tuple)):
            return len(self) == len(other) and all(np.array_equal(a, b) for a, b in zip(self, other))
        return NotImplemented


class FrameRows(_Column):
    """Each video's keyframe embeddings: rows ``offsets[k] : offsets[k] + counts[k]`` of
    ``tables[table[k]]``, made into a view when asked for; a video with
    ``counts[k] == 0`` has an empty (0, 0) array.

    ``frames`` is one (rows, dim) array (the feature cache's copy, mapped), a list of
    them with ``table`` naming each video's (the keyframes stage's embeddings files,
    mapped where they lie), or None when the embeddings were not read (no ``tables``)."""

    def __init__(self, frames: np.ndarray | Sequence[np.ndarray] | None, offsets: np.ndarray, counts: np.ndarray,
                 table: np.ndarray | None = None):
        if frames is None:
            self.tables: list[np.ndarray] = []
        elif isinstance(frames, (list, tuple)):
            self.tables = list(frames)
        else:
            self.tables = [frames]
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.table = (np.zeros(len(self.counts), np.int32) if table is None
                      else np.asarray(table, dtype=np.int32))
        if len(self.table) != len(self.counts):
            raise ValueError("a table number for every video")

    @property
    def read(self) -> bool:
        """Whether the embeddings were read (else every video has none)."""
        return bool(self.tables)

    @property
    def dim(self) -> int:
        """Values a frame (0 when not read)."""
        return int(self.tables[0].shape[1]) if self.tables else 0

    @property
    def dtype(self) -> np.dtype:
        return self.tables[0].dtype if self.tables else np.dtype(np.float16)

    def __len__(self) -> int:
        return len(self.counts)

    def _item(self, i: int) -> np.ndarray:
        count = int(self.counts[i])
        if not self.tables or count == 0:
            return np.zeros((0, 0), self.dtype)
        start = int(self.offsets[i])
        return self.tables[self.table[i]][start : start + count]

    def each(self, indices: Sequence[int], function: Callable[[np.ndarray], T], chunk: int = 2048) -> list[T]:
        """``function(self[i])`` for each of ``indices``, in order. Where the frames are a
        file mapping, the pages a chunk of videos read are handed back to the kernel
        before the next chunk: a pass over every video (pooling 200 k videos' frames, say)
        would otherwise leave the whole file resident in this process (GBs)."""
        results: list[T] = []
        for start in range(0, len(indices), chunk):
            part = [int(i) for i in indices[start : start + chunk]]
            results.extend(function(self._item(i)) for i in part)
            self._release(part)
        return results

    def _release(self, videos: list[int]) -> None:
        from mama_augment.frame_embeddings import page_out

        if not self.tables or not videos:
            return
        videos = np.asarray(videos, dtype=np.int64)
        tables = self.table[videos]
        for t in np.unique(tables).tolist():
            mine = videos[tables == t]
            frames = self.tables[t]
            row_bytes = frames.strides[0]
            first = int(self.offsets[mine].min())
            last = int((self.offsets[mine] + self.counts[mine]).max())
            page_out(frames, first * row_bytes, last * row_bytes)


class ListColumn(_Column):
    """Lists of strings (a video's keyframe paths), held as one Arrow list array: an
    item becomes a Python list only when asked for."""

    def __init__(self, values):
        import pyarrow as pa

        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
        elif not isinstance(values, pa.Array):
            values = pa.array(list(values), pa.list_(pa.string()))
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def _item(self, i: int) -> list[str]:
        return self.values[i].as_py() or []

    def __iter__(self) -> Iterator[list[str]]:
        for start in range(0, len(self.values), _DECODE_CHUNK):
            for item in self.values.slice(start, _DECODE_CHUNK).to_pylist():
                yield item or []
