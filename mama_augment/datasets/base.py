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

import json
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
        self.examples.setdefault(kind, example)

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
    """One input file, decoded and parsed lazily and at most once."""

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
    def raw(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def is_pickle(self) -> bool:
        head = self.raw[:2]
        return self.path.suffix.lower() in (".pkl", ".pickle") or (
            len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
        )

    def is_parquet(self) -> bool:
        return self.raw[:4] == b"PAR1"

    def refuse_pickle(self) -> None:
        if self.is_pickle():
            stem = self.path.stem
            raise UsageError(f"{self.path} is a Python pickle. " + PICKLE_HINT.format(name=self.path.name, stem=stem))

    def refuse_binary(self) -> None:
        raw = self.raw
        if b"\x00" in raw[:4096] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")) and not self.is_parquet():
            raise UsageError(f"{self.path} is a binary file, not a captions or annotation file")

    @cached_property
    def text(self) -> str:
        """The file as text: UTF-8 (a BOM is dropped), or UTF-16 with a BOM. Bytes that
        are not UTF-8 are replaced by U+FFFD and counted (``non_utf8_text``)."""
        self.refuse_pickle()
        raw = self.raw
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            try:
                return raw.decode("utf-16")
            except UnicodeDecodeError as exc:
                raise UsageError(f"{self.path}: bad UTF-16 text at byte {exc.start}") from None
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        self.refuse_binary()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        bad_lines = []
        for number, line in enumerate(raw.split(b"\n"), 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad_lines.append((number, line[exc.start : exc.start + 1].hex()))
        first_line, first_byte = bad_lines[0]
        self.problems.add(
            "non_utf8_text",
            f"{self.name} line {first_line}: byte 0x{first_byte} is not UTF-8; such bytes read as U+FFFD "
            "(save the file as UTF-8 to keep them)",
            len(bad_lines),
        )
        return raw.decode("utf-8", errors="replace")

    @cached_property
    def head(self) -> str:
        """The first few kilobytes as text, for format detection (no counting)."""
        raw = self.raw[:65536]
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            return self.text[:65536]
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        return raw.decode("utf-8", errors="replace")

    def looks_like_json(self) -> bool:
        return self.head.lstrip()[:1] in ("{", "[")

    @cached_property
    def json(self) -> Any:
        """The whole file parsed as one JSON document."""
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

    def json_lines(self) -> Iterator[tuple[int, Any]]:
        """(line number, value) of every JSON line; unreadable lines are counted."""
        for number, line in enumerate(self.text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                self.problems.add("malformed_line", f"{self.name} line {number}: {exc.msg}")

    def is_json_lines(self) -> bool:
        """Two or more lines, each a complete JSON object (JSON Lines, not one document)."""
        lines = [line for line in self.head.splitlines()[:3] if line.strip()]
        if len(lines) < 2:  # a one-line file is one JSON document
            return False
        try:
            return all(isinstance(json.loads(line), dict) for line in lines[:2])
        except json.JSONDecodeError:
            return False

    def records(self) -> Iterator[tuple[int, Any]]:
        """(number, record) of a JSON Lines file, a JSON list, or a lone JSON object."""
        if self.is_json_lines():
            yield from self.json_lines()
            return
        data = self.json
        yield from enumerate(data if isinstance(data, list) else [data])

    def lines(self) -> list[str]:
        return self.text.splitlines()


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
    """A delimited text file as a DataFrame of strings (empty cells are empty strings)."""
    import io

    import pandas as pd

    try:
        return pd.read_csv(
            io.StringIO(source.text), sep=sep, dtype=str, keep_default_na=False,
            header=0 if header else None, quoting=3 if sep == "\t" else 0,  # 3: QUOTE_NONE (tab files quote nothing)
        )
    except pd.errors.EmptyDataError:
        raise UsageError(f"{source.path} is empty") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise UsageError(f"{source.path}: cannot read it as a {'tab' if sep == chr(9) else 'comma'}-separated table: {exc}") from None


def header_fields(source: Source) -> list[str]:
    """The first non-empty line's comma-separated fields, lower-cased and stripped."""
    for line in source.head.splitlines():
        if line.strip():
            return [f.strip().strip('"').lower() for f in line.split(",")]
    return []
