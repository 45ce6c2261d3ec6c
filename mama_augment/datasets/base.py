"""What every benchmark reader shares: the file it reads, what it returns, and how
problems are counted.

A reader turns one file into a :class:`Part`: caption rows (``video_id``, ``caption``,
``split``, ``concept``), or a list of video ids naming a split, or category names. It
never stops at a bad record: the record is skipped and counted in :class:`Problems`
(kind, count, one example), and the caller reports the counts. A file that cannot be
used at all (not the format named, truncated JSON, a pickle) raises
:class:`~mama_augment.errors.UsageError` with a message saying what to do.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from mama_augment.errors import UsageError

# What a file contributes.
ROLE_CAPTIONS = "captions"  # caption rows
ROLE_QUERIES = "queries"  # caption rows that are the only captions of their videos (a test query file)
ROLE_SPLIT_LIST = "split_list"  # the video ids of one split
ROLE_CATEGORIES = "categories"  # names of numbered categories

SPLITS = ("train", "val", "test")
_SPLIT_WORDS = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "validate": "val", "dev": "val",
    "test": "test", "testing": "test", "publictect": "test",  # LSMDC's test file spells it so
}  # fmt: skip
_SPLIT_TOKEN = re.compile(r"^([a-z]+?)(\d[a-z0-9]*)?$")
_UTF8_BOM = b"\xef\xbb\xbf"
_HEAD_BYTES = 65536
_BLOCK_BYTES = 1 << 20
_EXAMPLE_CHARS = 200  # what a problem example may echo of a user's file
LIMIT_ENV = "MAMA_MAX_ANNOTATION_MB"
DEFAULT_LIMIT_MB = 256


def annotation_limit_bytes() -> int:
    """The most an annotation file may hold of what must be read whole (a JSON
    document, or one line): ``$MAMA_MAX_ANNOTATION_MB`` megabytes, 256 by default."""
    value = os.environ.get(LIMIT_ENV, "").strip()
    if not value:
        return DEFAULT_LIMIT_MB * 1_000_000
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not math.isfinite(megabytes) or megabytes <= 0:
        raise UsageError(f"{LIMIT_ENV}={value!r} must be a positive number of megabytes")
    return int(megabytes * 1_000_000)


def clip_text(text: str, limit: int = _EXAMPLE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def too_deep(path) -> UsageError:
    return UsageError(f"{path} is not valid JSON: nested too deeply to read (a damaged or hostile file)")

PICKLE_HINT = (
    "mama-augment never unpickles a file (unpickling runs code from the file). Convert it once, "
    "in an environment you trust, to JSON, e.g. "
    "python -c \"import json, pickle; json.dump(pickle.load(open('{name}', 'rb')), open('{stem}.json', 'w'))\" "
    "and pass {stem}.json"
)


@dataclass
class Problems:
    """Counted problems of the input, each kind with one example."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, example: str, count: int = 1) -> None:
        if count <= 0:
            return
        self.counts[kind] += count
        # An example quotes the user's file: never a whole line of any length.
        self.examples.setdefault(kind, clip_text(example))

    def merge(self, other: "Problems") -> None:
        for kind, count in other.counts.items():
            self.add(kind, other.examples.get(kind, ""), count)

    def lines(self) -> list[str]:
        return [f"{kind}: {count} (e.g. {self.examples.get(kind, '')})" for kind, count in self.counts.most_common()]

    def __bool__(self) -> bool:
        return bool(self.counts)


@dataclass
class Part:
    """What one file gives: parallel columns of caption rows, or a list of ids."""

    path: Path
    format: str
    role: str = ROLE_CAPTIONS
    video_ids: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    concepts: list[str | None] = field(default_factory=list)
    list_split: str | None = None  # ROLE_SPLIT_LIST: the split its ids belong to
    category_names: dict[str, str] = field(default_factory=dict)  # ROLE_CATEGORIES
    paragraph: bool = False  # each caption is a video's sentences joined in time order

    def add(self, video_id: str, caption: str, split: str | None = None, concept: str | None = None) -> None:
        self.video_ids.append(video_id)
        self.captions.append(caption)
        self.splits.append(split)
        self.concepts.append(concept)

    def __len__(self) -> int:
        return len(self.video_ids)


class Source:
    """One input file, read lazily: its head for recognising the format, then either
    line by line (line-based formats, any size) or whole (a JSON document, up to
    :func:`annotation_limit_bytes`)."""

    def __init__(self, path: str | Path, problems: Problems | None = None):
        self.path = Path(path)
        self.problems = problems if problems is not None else Problems()
        if not self.path.exists():
            raise UsageError(f"captions file {self.path} does not exist")
        if not self.path.is_file():
            raise UsageError(f"{self.path} is not a file")

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    @cached_property
    def head_bytes(self) -> bytes:
        """The first bytes of the file: enough to recognise its format."""
        try:
            with open(self.path, "rb") as handle:
                return handle.read(_HEAD_BYTES)
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def head_is_whole(self) -> bool:
        return self.size <= len(self.head_bytes)

    @cached_property
    def _head_lines(self) -> list[str]:
        lines = self.head.splitlines()
        if self.head_is_whole():
            return lines
        lines = lines[:-1]  # cut by the end of the head
        if sum(1 for line in lines if line.strip()) < 2:
            return self.first_lines(5)
        return lines

    def head_lines(self) -> list[str]:
        """The complete lines of the head (for format detection); when the first line
        runs past the head, the first few lines read whole."""
        return self._head_lines

    def is_utf16(self) -> bool:
        return self.head_bytes.startswith((b"\xff\xfe", b"\xfe\xff"))

    def is_pickle(self) -> bool:
        head = self.head_bytes[:2]
        return self.path.suffix.lower() in (".pkl", ".pickle") or (
            len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
        )

    def is_parquet(self) -> bool:
        return self.head_bytes[:4] == b"PAR1"

    def refuse_pickle(self) -> None:
        if self.is_pickle():
            stem = self.path.stem
            raise UsageError(f"{self.path} is a Python pickle. " + PICKLE_HINT.format(name=self.path.name, stem=stem))

    def refuse_binary(self) -> None:
        head = self.head_bytes
        if b"\x00" in head[:4096] and not self.is_utf16() and not self.is_parquet():
            raise UsageError(f"{self.path} is a binary file, not a captions or annotation file")

    def refuse_oversized(self, what: str = "a JSON document") -> None:
        """A file that must be held whole is refused above the cap, before it is read."""
        limit = annotation_limit_bytes()
        if self.size > limit:
            raise UsageError(
                f"{self.path} is {self.size / 1e6:,.0f} MB: over the {limit / 1e6:g} MB cap on an annotation file "
                f"read whole ({what}); set {LIMIT_ENV} to a larger number of megabytes to read it"
            )

    @cached_property
    def text(self) -> str:
        """The whole file as text (refused above the cap): UTF-8 (a BOM is dropped), or
        UTF-16 with a BOM. Bytes that are not UTF-8 are replaced by U+FFFD and counted
        (``non_utf8_text``)."""
        self.refuse_pickle()
        self.refuse_oversized()
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            try:
                return raw.decode("utf-16")
            except UnicodeDecodeError as exc:
                raise UsageError(f"{self.path}: bad UTF-16 text at byte {exc.start}") from None
        if raw.startswith(_UTF8_BOM):
            raw = raw[3:]
        self.refuse_binary()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        for number, line in enumerate(raw.split(b"\n"), 1):
            self._decode_line(line, number)
        return raw.decode("utf-8", errors="replace")

    def _decode_line(self, line: bytes, number: int) -> str:
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problems.add(
                "non_utf8_text",
                f"{self.name} line {number}: byte 0x{line[exc.start : exc.start + 1].hex()} is not UTF-8; such bytes "
                "read as U+FFFD (save the file as UTF-8 to keep them)",
            )
            return line.decode("utf-8", errors="replace")

    @cached_property
    def head(self) -> str:
        """The first few kilobytes as text, for format detection (no counting)."""
        raw = self.head_bytes
        if self.is_utf16():
            return raw[: len(raw) - len(raw) % 2].decode("utf-16", errors="replace")
        if raw.startswith(_UTF8_BOM):
            raw = raw[3:]
        return raw.decode("utf-8", errors="replace")

    def looks_like_json(self) -> bool:
        return self.head.lstrip()[:1] in ("{", "[")

    @cached_property
    def json(self) -> Any:
        """The whole file parsed as one JSON document (refused above the cap)."""
        text = self.text
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            # An unterminated string runs to the end of the file, too.
            truncated = exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated string")
            hint = "; the file ends early: it looks truncated, download or copy it again" if truncated else ""
            raise UsageError(
                f"{self.path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}){hint}"
            ) from None
        except RecursionError:
            raise too_deep(self.path) from None

    def _byte_lines(self, strict: bool = True) -> Iterator[bytes]:
        """The lines of a UTF-8 file as bytes, without the ``\\n``, read in blocks: a
        line longer than the cap, or a NUL byte (a binary or zero-padded file), is an
        error (``strict``) or ends the lines early (format detection)."""
        limit = annotation_limit_bytes()
        pending: list[bytes] = []  # the start of a line that runs past a block
        pending_size = 0
        offset = 0
        try:
            handle = open(self.path, "rb")
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        with handle:
            while True:
                block = handle.read(_BLOCK_BYTES)
                if not block:
                    break
                if b"\x00" in block:
                    if not strict:
                        return
                    where = offset + block.index(b"\x00")
                    raise UsageError(
                        f"{self.path} holds a NUL byte at byte {where:,}: a binary or damaged file (a copy padded "
                        "with zeros?), not a text annotation file"
                    )
                offset += len(block)
                pieces = block.split(b"\n")
                for piece in pieces[:-1]:
                    line = b"".join((*pending, piece)) if pending else piece
                    pending, pending_size = [], 0
                    if len(line) > limit:
                        if not strict:  # detection: the beginning of the line is enough
                            yield line[:limit]
                            return
                        raise self._long_line(limit)
                    yield line
                if pieces[-1]:
                    pending.append(pieces[-1])
                    pending_size += len(pieces[-1])
                if pending_size > limit:
                    if not strict:
                        yield b"".join(pending)[:limit]
                        return
                    raise self._long_line(limit)
        if pending:
            yield b"".join(pending)

    def _long_line(self, limit: int) -> UsageError:
        return UsageError(f"{self.path} has a line longer than the {limit / 1e6:g} MB cap on what is read whole; "
                          f"set {LIMIT_ENV} to a larger number of megabytes to read it")

    def _utf16_lines(self, strict: bool = True) -> Iterator[str]:
        limit = annotation_limit_bytes() // 2
        try:
            handle = open(self.path, encoding="utf-16", newline="")
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        with handle:
            while True:
                try:
                    line = handle.readline(limit + 1)
                except UnicodeDecodeError as exc:
                    if not strict:
                        return
                    raise UsageError(f"{self.path}: bad UTF-16 text ({exc.reason})") from None
                if not line:
                    return
                if len(line) > limit and not line.endswith("\n"):
                    if not strict:
                        yield line
                        return
                    raise self._long_line(limit * 2)
                yield line[:-1] if line.endswith("\n") else line

    def lines(self, strict: bool = True) -> Iterator[str]:
        """Every line of the file as text, without its line end, read as a stream (any
        file size). Bytes that are not UTF-8 read as U+FFFD and are counted
        (``non_utf8_text``); ``strict=False`` (format detection) counts nothing and
        stops quietly where a strict read would fail."""
        self.refuse_pickle()
        if self.is_utf16():
            for line in self._utf16_lines(strict):
                yield line.rstrip("\r")
            return
        self.refuse_binary()
        for number, raw in enumerate(self._byte_lines(strict), 1):
            if number == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[3:]
            line = self._decode_line(raw, number) if strict else raw.decode("utf-8", errors="replace")
            yield line.rstrip("\r")

    def text_stream(self) -> "io.TextIOBase":
        """The lines of the file as one text stream (for a table reader), read lazily."""
        return _LineStream(self.lines())

    def first_lines(self, count: int) -> list[str]:
        """The first ``count`` non-empty lines, each read whole (for format detection)."""
        found = []
        for line in self.lines(strict=False):
            if line.strip():
                found.append(line)
                if len(found) == count:
                    break
        return found

    def json_lines(self) -> Iterator[tuple[int, Any]]:
        """(line number, value) of every JSON line; unreadable lines are counted
        (``malformed_line``, with the line number) and the others used."""
        for number, line in enumerate(self.lines(), 1):
            line = line.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                self.problems.add("malformed_line", f"{self.name} line {number}: not valid JSON: {exc.msg}")
                continue
            except RecursionError:
                self.problems.add("malformed_line", f"{self.name} line {number}: not valid JSON: nested too deeply")
                continue
            yield number, value

    @cached_property
    def _json_lines_layout(self) -> bool:
        lines = self.first_lines(2)
        if len(lines) < 2 or lines[0].lstrip().startswith("["):  # one line, or a JSON list: one document
            return False
        for line in lines:  # the first may be a bad line of a JSON Lines file
            try:
                if isinstance(json.loads(line), dict):
                    return True
            except (ValueError, RecursionError):
                continue
        return False

    def is_json_lines(self) -> bool:
        """Two or more lines, the first or second a complete JSON object (JSON Lines,
        not one document). Lines of any length are read whole."""
        return self.looks_like_json() and self._json_lines_layout

    def records(self) -> Iterator[tuple[int, Any]]:
        """(number, record) of a JSON Lines file, a JSON list, or a lone JSON object."""
        if self.is_json_lines():
            yield from self.json_lines()
            return
        data = self.json
        yield from enumerate(data if isinstance(data, list) else [data])


class _LineStream(io.TextIOBase):
    """Lines joined back into a readable text stream, a few at a time."""

    def __init__(self, lines: Iterator[str]):
        self._lines = lines
        self._buffer = ""

    def readable(self) -> bool:
        return True

    def _fill(self, size: int) -> None:
        pieces = [self._buffer]
        have = len(self._buffer)
        while size < 0 or have < size:
            line = next(self._lines, None)
            if line is None:
                break
            pieces.append(line + "\n")
            have += len(line) + 1
        self._buffer = "".join(pieces)

    def read(self, size: int | None = -1) -> str:
        size = -1 if size is None else size
        self._fill(size)
        if size < 0:
            out, self._buffer = self._buffer, ""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def readline(self, size: int | None = -1) -> str:
        if "\n" not in self._buffer:
            line = next(self._lines, None)
            if line is not None:
                self._buffer += line + "\n"
        end = self._buffer.find("\n") + 1 or len(self._buffer)
        out, self._buffer = self._buffer[:end], self._buffer[end:]
        return out

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def split_from_name(name: str) -> str | None:
    """train / val / test from a file name (``MSRVTT_train.9k.csv``, ``val_list.txt``,
    ``test1ka.jsonl``, ``LSMDC16_annos_training.csv``); None when it names none or
    several."""
    stem = name.lower()
    for suffix in (".gz", ".json", ".jsonl", ".csv", ".tsv", ".txt", ".parquet"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    found = set()
    for token in re.split(r"[^a-z0-9]+", stem):
        match = _SPLIT_TOKEN.match(token)
        if match and match.group(1) in _SPLIT_WORDS:
            found.add(_SPLIT_WORDS[match.group(1)])
    return found.pop() if len(found) == 1 else None


def text_value(value: Any) -> str | None:
    """A caption field as text: strings stripped, token lists joined, anything else None."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return " ".join(t.strip() for t in value if t.strip())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def id_value(value: Any) -> str | None:
    """A video id field as text (numbers such as WebVid's ``videoid`` become strings)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (str, int)):
        text = str(value).strip()
        return text or None
    return None


def add_captions(part: Part, source: Source, video_id: str, captions: list, split: str | None = None) -> None:
    """Add a video's list of captions; an entry that is not text is counted and skipped."""
    for caption in captions:
        text = text_value(caption)
        if text is None:
            source.problems.add("malformed_record", f"{source.name} {video_id}: {str(caption)[:60]!r} is not a caption")
            continue
        part.add(video_id, text, split)


def add_ids(part: Part, source: Source, values, kind: str = "malformed_record") -> None:
    """Add the ids of a split list; an entry that is not one id is counted and skipped."""
    for number, value in enumerate(values, 1):
        video_id = id_value(value)
        if video_id is None or len(video_id.split()) != 1:
            source.problems.add(kind, f"{source.name} entry {number}: {str(value)[:60]!r} is not a video id")
            continue
        part.video_ids.append(video_id)
    if not part.video_ids:
        raise unusable(source, "video ids")


def not_json(source: Source, what: str) -> None:
    """Refuse a JSON file given (with --captions-format) to a line-based reader."""
    if source.looks_like_json():
        raise UsageError(f"{source.path} is JSON, not {what}: check --captions-format (or leave it out)")


def unusable(source: Source, what: str) -> UsageError:
    """The error for a file that gave nothing usable, with the first problem seen."""
    first = next(iter(source.problems.examples.values()), "")
    return UsageError(f"{source.path}: no usable {what} ({first})" if first else f"{source.path}: no usable {what}")


def read_table(source: Source, sep: str = ",", header: bool = True):
    """A delimited text file as a DataFrame of strings (empty cells are empty strings),
    read as a stream of lines (any file size; bytes that are not UTF-8 are counted)."""
    import pandas as pd

    try:
        return pd.read_csv(
            source.text_stream(), sep=sep, dtype=str, keep_default_na=False,
            header=0 if header else None, quoting=3 if sep == "\t" else 0,  # 3: QUOTE_NONE (tab files quote nothing)
        )
    except pd.errors.EmptyDataError:
        raise UsageError(f"{source.path} is empty") from None
    except (pd.errors.ParserError, ValueError) as exc:
        what = "tab" if sep == "\t" else "comma"
        raise UsageError(f"{source.path}: cannot read it as a {what}-separated table: {clip_text(str(exc))}") from None


def header_fields(source: Source) -> list[str]:
    """The first non-empty line's comma-separated fields, lower-cased and stripped."""
    if source.looks_like_json():  # no header to read (and its first line may be the whole file)
        return []
    for line in source.head_lines():
        if line.strip():
            return [f.strip().strip('"').lower() for f in line.split(",")]
    return []
