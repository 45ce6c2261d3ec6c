"""Find the videos and images to process, and give each a stable ``video_id``.

A source is a folder (walked recursively), a single media file, or a list file:

* ``.txt``: one path per line; blank lines and ``#`` comments are ignored;
* ``.csv`` / ``.parquet``: a ``path`` column and an optional ``video_id`` column.

Relative paths in a list are resolved against the list file's folder.

``video_id`` is, for a folder, the path relative to the folder without its suffix
(``cats/tabby``); for a single file, its stem; for a list entry, the list's
``video_id`` when given, else the path relative to the list's folder without its
suffix (the stem for paths outside it). Derived ids that collide get their suffix
back (``a.avi``, ``a.mp4``) and, if they still collide, a short hash of the path.
Ids given explicitly are never changed; duplicates among them are a usage error.

A listed file that does not exist is kept with ``error`` set, so it becomes a failed
row instead of stopping the run.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import os
import re
import stat as _stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from mama_augment.checks import MAX_NAME_BYTES, decode_text
from mama_augment.errors import UsageError

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4", ".m4v", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".ogv", ".ogg",
        ".wmv", ".flv", ".ts", ".mts", ".m2ts", ".3gp", ".gif",
    }
)  # fmt: skip
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".parquet"})


@dataclass(frozen=True)
class InputItem:
    """One input: its id, absolute path and fingerprint (None when the file is missing)."""

    video_id: str
    path: Path
    size_bytes: int | None
    mtime: float | None
    error: str | None = None  # why it cannot be read, for a listed path that is missing

    @property
    def media_type(self) -> str:
        """ "image" for an image suffix, else "video" (the decoder has the last word)."""
        return "image" if self.path.suffix.lower() in IMAGE_EXTENSIONS else "video"


def fingerprint(path: str | os.PathLike) -> tuple[int | None, float | None]:
    """(size in bytes, modification time) of ``path``; (None, None) when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


_UNSAFE = re.compile(r"[^\w.-]", re.UNICODE)
# Joins the parts of an id in its output name; never left in a sanitised part.
PART_SEPARATOR = "+"
# Comes before the hash of an id whose name had to change; never left in a part either.
HASH_MARK = "~"


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def output_name(video_id: str) -> str:
    """The one file-name component under which a video's outputs are written
    (``frames/<name>/``, ``grids/<name>.jpg``).

    The ``/``-separated parts of the id are joined with ``+`` (``cats/tabby`` ->
    ``cats+tabby``), so the outputs of two ids never nest: ``a`` and ``a/b`` get
    ``frames/a/`` and ``frames/a+b/``. In each part, anything but letters, digits,
    ``_``, ``-`` and ``.`` (and leading dots: no hidden files, no ``..``) becomes
    ``_``; if that changed the id, or the name is longer than 200 bytes (cut there),
    ``~`` and a hash of the id follow. ``+`` and ``~`` never survive inside a part, so
    two ids never get the same name, and most ids keep their own spelling.
    """
    parts = []
    for part in video_id.split("/"):
        safe = _UNSAFE.sub("_", part)
        safe = re.sub(r"^\.+", lambda m: "_" * len(m.group()), safe)
        parts.append(safe or "_")
    name = PART_SEPARATOR.join(parts)
    if name != video_id.replace("/", PART_SEPARATOR) or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        digest = hashlib.sha1(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        name = f"{_truncate_utf8(name, MAX_NAME_BYTES - len(digest) - 1)}{HASH_MARK}{digest}"
    return name


@dataclass(slots=True)  # not frozen: a frozen init costs a call per field, times every input
class _Candidate:
    path: Path | str  # absolute; a str from a folder walk (a Path is made once, for its InputItem)
    base_id: str  # derived id before collisions are resolved
    explicit_id: str | None = None
    error: str | None = None
    real_path: str | None = None  # the path after links, when the walk already knows it
    size_bytes: int | None = None  # the fingerprint, when the walk already took it
    mtime: float | None = None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_folder(root: Path, exclude: Sequence[Path], unreadable: list[str] | None = None) -> list[_Candidate]:
    """Media files under ``root``, sorted by their path relative to it.

    Folders are listed with ``os.scandir``: a file costs one ``stat`` (its
    fingerprint), and its real path is its folder's real path plus its name unless it
    is a link, so a folder of 200 000 videos is walked in about a second.
    """
    found: list[tuple[str, _Candidate]] = []
    seen_dirs: set[tuple[int, int]] = set()
    excluded = {os.path.realpath(p) for p in exclude}
    absolute_root = os.path.abspath(root)
    stack = [("", absolute_root)]  # (path relative to root, "" for root; absolute path)
    while stack:
        relative, folder = stack.pop()
        try:
            stat = os.stat(folder)
            real_folder = os.path.realpath(folder)
            if (stat.st_dev, stat.st_ino) in seen_dirs or real_folder in excluded:
                continue  # a symlink loop, or the work folder inside the input folder
            seen_dirs.add((stat.st_dev, stat.st_ino))
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as error:  # a folder that cannot be listed is skipped, and said
            if unreadable is not None:
                unreadable.append(f"{error.filename or folder}: {error.strerror or error}")
            continue
        subfolders = []
        for entry in entries:
            name = entry.name
            if _is_hidden(name):
                continue
            try:
                is_dir = entry.is_dir()  # follows links, as the walk always has
            except OSError:
                continue
            child_relative = f"{relative}/{name}" if relative else name
            if is_dir:
                subfolders.append((child_relative, entry.path))
                continue
            stem, dot, suffix = name.rpartition(".")
            if not dot or not stem or f".{suffix.lower()}" not in MEDIA_EXTENSIONS:
                continue
            try:
                info = entry.stat()  # follows links: the fingerprint of what is read
            except OSError:
                continue  # a dangling link
            if not _stat.S_ISREG(info.st_mode):
                continue
            real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_folder, name)
            base_id = child_relative[: len(child_relative) - len(suffix) - 1]
            found.append(_Candidate(entry.path, base_id, None, None, real, info.st_size, info.st_mtime))
        stack.extend(sorted(subfolders, reverse=True))
    # By path relative to the root: the id without the suffix sorts ties by suffix.
    found.sort(key=lambda c: c.path[len(absolute_root):])
    return found


def _list_entry(list_file: Path, raw_path: str, explicit_id: str | None) -> _Candidate:
    if "\0" in raw_path or (explicit_id and "\0" in explicit_id):
        raise UsageError(f"list file {list_file} holds a NUL byte in an entry: it is not a list of paths")
    path = Path(raw_path).expanduser()
    if not path.is_absolute():
        path = list_file.parent / path
    path = Path(os.path.abspath(path))
    try:
        base_id = PurePosixPath(path.relative_to(list_file.parent.absolute()).as_posix()).with_suffix("").as_posix()
    except ValueError:
        base_id = path.stem
    error = None
    if not path.exists():
        error = f"file not found: {path} (listed in {list_file.name})"
    elif path.is_dir():
        error = f"{path} is a folder, not a file (listed in {list_file.name})"
    return _Candidate(path, base_id, explicit_id or None, error)


def _read_list(list_file: Path) -> list[_Candidate]:
    suffix = list_file.suffix.lower()
    if suffix in (".txt", ".csv"):
        try:
            text = decode_text(list_file.read_bytes(), "list file", list_file)
        except OSError as exc:
            raise UsageError(f"cannot read list file {list_file}: {exc.strerror or exc}") from None
    if suffix == ".txt":
        entries = [line.strip() for line in text.splitlines()]
        return [_list_entry(list_file, entry, None) for entry in entries if entry and not entry.startswith("#")]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise UsageError(f"list file {list_file} is not a valid CSV file: {exc}") from None
        columns = reader.fieldnames or []
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(list_file)
        except (OSError, pa.ArrowException) as exc:
            raise UsageError(f"cannot read list file {list_file}: {exc}") from None
        columns = table.column_names
        wanted = [c for c in ("path", "video_id") if c in columns]
        rows = table.select(wanted).to_pylist()
    if "path" not in columns:
        raise UsageError(f"list file {list_file} has no 'path' column (columns: {', '.join(columns) or 'none'})")
    candidates = []
    for row in rows:
        raw_path = row.get("path")
        if raw_path is None or not str(raw_path).strip():
            continue
        explicit_id = row.get("video_id")
        explicit_id = str(explicit_id).strip() if explicit_id is not None else None
        candidates.append(_list_entry(list_file, str(raw_path).strip(), explicit_id))
    return candidates


def _assign_ids(candidates: list[_Candidate]) -> list[str]:
    explicit = Counter(c.explicit_id for c in candidates if c.explicit_id)
    duplicates = sorted(i for i, n in explicit.items() if n > 1)
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:10])
        raise UsageError(f"duplicate video_id in the input list: {shown}; each video_id must be unique")
    taken = set(explicit)

    def clashing(ids: list[str]) -> set[str]:
        return {i for i, n in Counter(ids).items() if n > 1} | taken

    ids = [c.explicit_id or c.base_id for c in candidates]
    # Derived ids that clash get their suffix back: a.avi, a.mp4 ...
    clash = clashing(ids)
    ids = [i if c.explicit_id or i not in clash else c.base_id + PurePosixPath(c.path).suffix
           for c, i in zip(candidates, ids)]
    # ... and a hash of their path if that is not enough (the same name in two folders).
    clash = clashing(ids)
    return [i if c.explicit_id or i not in clash else f"{i}~{_short_hash(str(c.path))}" for c, i in zip(candidates, ids)]


def discover_inputs(sources: Iterable[str | os.PathLike], exclude: Sequence[str | os.PathLike] = (),
                    unreadable: list[str] | None = None) -> list[InputItem]:
    """All inputs named by ``sources``, in order, each once, with unique ids.

    ``exclude`` lists folders never to walk into (pass the work folder, so frames a
    previous run wrote are not picked up as images). Folders inside an input folder
    that cannot be listed are skipped; ``unreadable``, when given, receives one
    ``"folder: reason"`` line for each. Raises ``UsageError`` for a
    source that does not exist, a list without a ``path`` column, duplicate explicit
    ids, or when nothing is found.
    """
    # Hundreds of thousands of small objects, none in a cycle: the collector's passes over
    # them cost more than the walk itself, so it waits until the list is built.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _discover(sources, exclude, unreadable)
    finally:
        if collecting:
            gc.enable()


def _discover(sources: Iterable[str | os.PathLike], exclude: Sequence[str | os.PathLike],
              unreadable: list[str] | None) -> list[InputItem]:
    sources = [Path(s).expanduser() for s in sources]
    exclude = [Path(p) for p in exclude]
    candidates: list[_Candidate] = []
    for source in sources:
        if not source.exists():
            raise UsageError(f"input not found: {source}")
        if source.is_dir():
            candidates.extend(_walk_folder(source, exclude, unreadable))
        elif source.suffix.lower() in LIST_EXTENSIONS:
            candidates.extend(_read_list(source))
        else:
            candidates.append(_Candidate(source.absolute(), source.stem))

    unique: list[_Candidate] = []
    seen: set[str] = set()
    for candidate in candidates:
        key = candidate.real_path or os.path.realpath(candidate.path)
        if key not in seen:
            seen.add(key)
            unique.append(candidate)
    if not unique:
        where = ", ".join(str(s) for s in sources) or "(no sources given)"
        raise UsageError(f"no videos or images found in {where}")

    items = []
    for candidate, video_id in zip(unique, _assign_ids(unique)):
        if candidate.error is not None:
            size, mtime = None, None
        elif candidate.real_path is not None:  # taken by the walk
            size, mtime = candidate.size_bytes, candidate.mtime
        else:
            size, mtime = fingerprint(candidate.path)
        items.append(InputItem(video_id, Path(candidate.path), size, mtime, candidate.error))
    return items
