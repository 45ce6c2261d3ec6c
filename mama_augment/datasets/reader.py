"""Read one or several annotation files into one table of caption rows.

Each file is read by its format's reader (named, or recognised from its content) into
a :class:`~mama_augment.datasets.base.Part`; the parts are then put together:

* caption files give rows (``video_id``, ``caption``, ``split``, ``concept``);
* a query file (MSR-VTT's ``MSRVTT_JSFUSION_test.csv``) gives the only captions of its
  videos: their rows from the caption files are dropped (counted in ``notes``);
* split lists decide the splits. When any split list or query file is given, a video
  named in none of them is left out (counted as ``video_not_in_split_lists``); a video
  named in several splits goes to the last of train < val < test, so a test video is
  never trained on (counted as ``video_in_several_split_lists``); list ids are matched to
  the annotation ids with the same rules as keyframes ids (:mod:`.ids`);
* category names (MSR-VTT ``category.txt``) name the concepts.

:func:`load_captions` then maps the ids to ``keyframes.parquet`` ids and reports the ids
that match no video. Nothing is dropped without being counted.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from mama_augment.datasets.base import (
    ROLE_CAPTIONS,
    ROLE_CATEGORIES,
    ROLE_QUERIES,
    ROLE_SPLIT_LIST,
    Part,
    Problems,
    Source,
    clip_text,
    too_deep,
)
from mama_augment.datasets.ids import IdMatch, match_video_ids
from mama_augment.datasets.qa import detect_qa_format
from mama_augment.datasets.registry import FORMATS
from mama_augment.errors import ItemError, UsageError
from mama_augment.workpaths import WorkFolder

_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class CaptionSpec:
    """The captions files of a run and their formats (None: recognise each file)."""

    paths: tuple[str, ...]
    formats: tuple[str, ...] | None = None

    @classmethod
    def of(cls, paths, formats=None) -> "CaptionSpec":
        if isinstance(paths, CaptionSpec):
            return paths
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        return cls(tuple(str(p) for p in paths), parse_formats(formats, len(paths)))

    def label(self) -> str:
        return "+".join(Path(p).name for p in self.paths)


def locate_captions(captions, formats, folders: Sequence[str | os.PathLike]) -> CaptionSpec | None:
    """The captions a run recorded (``captions`` and ``captions_format`` of its config:
    a path or a list of paths) as a :class:`CaptionSpec` of files that exist.

    A relative path is tried as recorded (relative to the folder ``train`` ran in),
    then relative to each of ``folders``. None when nothing is recorded or a file is
    not found.
    """
    values = [captions] if isinstance(captions, str) else captions if isinstance(captions, list) else []
    found = []
    for value in values:
        given = Path(str(value))
        tries = [given] if given.is_absolute() else [given, *(Path(folder) / given for folder in folders)]
        path = next((p for p in tries if p.is_file()), None)
        if path is not None and path is not given:
            # Found in the work folder or a run folder, as a shared config.json named
            # it: the file must be that folder's own (workpaths), not a link out of it.
            folder = folders[tries.index(path) - 1]
            try:
                WorkFolder(folder).file(str(given), "captions file")
            except ItemError as exc:
                raise UsageError(f"{value} named by a run's config: {exc.message} ({exc.kind})") from None
        if path is None:
            return None
        found.append(path)
    return CaptionSpec.of(found, formats) if found else None


@dataclass
class FileInfo:
    path: str
    format: str
    role: str
    rows: int
    split: str | None = None  # split lists


@dataclass
class CaptionSet:
    """Caption rows of one or several files, ready for training or evaluation."""

    frame: pd.DataFrame  # video_id, caption [, split] [, concept]
    problems: Problems
    files: list[FileInfo]
    paragraph: bool = False  # every caption is a paragraph (DiDeMo, ActivityNet)
    notes: list[str] = field(default_factory=list)
    match: IdMatch | None = None

    @property
    def formats(self) -> list[str]:
        return list(dict.fromkeys(f.format for f in self.files))


def parse_formats(formats, count: int) -> tuple[str, ...] | None:
    """``--captions-format``: one name for every file, or one per file (comma-separated)."""
    if formats is None or formats == "" or formats == []:
        return None
    names = [n.strip() for n in (formats.split(",") if isinstance(formats, str) else formats) if n and n.strip()]
    if not names:
        return None
    unknown = [n for n in names if n not in FORMATS and n != "auto"]
    if unknown:
        raise UsageError(f"unknown captions format {unknown[0]!r}: one of auto, {', '.join(FORMATS)}")
    if len(names) == 1:
        names = names * count
    if len(names) != count:
        raise UsageError(f"--captions-format names {len(names)} formats for {count} captions files: give one, or one per file")
    return tuple(names)


def detect_format(source: Source) -> str:
    """The name of the first format that recognises ``source``."""
    source.refuse_pickle()
    if not source.head_bytes.strip() and source.head_is_whole():
        raise UsageError(f"{source.path} is empty")
    source.refuse_binary()
    qa_format = detect_qa_format(source)  # before the caption formats: MSVD's youtube_mapping.txt reads as captions
    if qa_format is not None:
        raise UsageError(f"{source.path} is a video question-answering file ({qa_format}), not captions: "
                         "check it with `mama-augment datasets`")
    for name, fmt in FORMATS.items():
        if fmt.detect(source):
            return name
    head = source.head.lstrip()
    if head[:1] in ("{", "[") and '"answer"' in head[:4096] and ('"options"' in head or '"candidates"' in head or '"caption"' in head):
        raise UsageError(f"{source.path} is a multiple-choice file: pass it to `mama-augment evaluate --multiple-choice`")
    first = next((line for line in head.splitlines() if line.strip()), "")[:80]
    raise UsageError(
        f"cannot tell the format of {source.path} (it begins {first!r}); name it with --captions-format, one of "
        f"{', '.join(FORMATS)} (`mama-augment datasets` describes each)"
    )


def read_file(path: str | Path, format: str | None = None, problems: Problems | None = None) -> Part:
    source = Source(path, problems)
    try:
        if format and format != "auto":
            if format not in FORMATS:
                raise UsageError(f"unknown captions format {format!r}: one of {', '.join(FORMATS)}")
            _check_forced(source, format)
            name = format
        else:
            name = detect_format(source)
        source.refuse_pickle()
        return FORMATS[name].reader(source)
    except RecursionError:
        # Deep nesting that got past the JSON parser (a reader's str() of a value).
        raise too_deep(source.path) from None


def _check_forced(source: Source, name: str) -> None:
    """A named format is trusted unless the file is plainly another one."""
    source.refuse_pickle()
    source.refuse_binary()
    if FORMATS[name].detect(source):
        return
    try:
        other = detect_format(source)
    except UsageError:
        return  # recognised as nothing: the user's word stands
    raise UsageError(f"{source.path} looks like {other} ({FORMATS[other].benchmark}), not {name}: "
                     "check --captions-format (or leave it out)")


def _file_key(path: str) -> tuple[str, int, int]:
    try:
        stat = Path(path).stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def read_annotations(spec: CaptionSpec | str | Sequence[str], formats=None, allow_empty: bool = False) -> CaptionSet:
    """Read and combine the files of ``spec`` (see the module doc); no id matching.

    A captions file that yields no caption row (a header only), or files whose rows
    are all left out, are a UsageError naming the file; with ``allow_empty`` (the
    ``datasets`` check) they are counted as ``no_caption_rows`` instead."""
    spec = CaptionSpec.of(spec, formats)
    if not spec.paths:
        raise UsageError("no captions file given")
    seen = {}
    for path in spec.paths:
        key = _file_key(path)[0]
        if key in seen:
            raise UsageError(f"captions file given twice: {path}")
        seen[key] = path
    keys = tuple(_file_key(p) for p in spec.paths)
    result = _read_cached(spec, keys)
    if not allow_empty:
        refuse_empty(result)
    # Callers may change the frame; the cached one stays as read.
    return CaptionSet(result.frame.copy(), _copy(result.problems), list(result.files), result.paragraph,
                      list(result.notes))


def refuse_empty(result: CaptionSet) -> None:
    """A given captions file that holds nothing must not let a run go on without it."""
    empty = [f.path for f in result.files if f.role in (ROLE_CAPTIONS, ROLE_QUERIES) and f.rows == 0]
    if empty:
        raise UsageError(f"{empty[0]} holds no caption rows (a header only?): give a file with captions, "
                         "or leave it out")
    if not len(result.frame):
        first = next(iter(result.problems.examples.items()), None)
        why = f" ({first[0]}: {first[1]})" if first else ""
        names = ", ".join(f.path for f in result.files if f.role in (ROLE_CAPTIONS, ROLE_QUERIES))
        raise UsageError(f"no usable caption row in {names}{why}")


def _copy(problems: Problems) -> Problems:
    out = Problems()
    out.merge(problems)
    return out


@functools.lru_cache(maxsize=4)
def _read_cached(spec: CaptionSpec, keys) -> CaptionSet:  # keys: file identity, so an edited file is read again
    problems = Problems()
    parts = []
    for number, path in enumerate(spec.paths):
        fmt = spec.formats[number] if spec.formats else None
        parts.append(read_file(path, fmt, problems))
    return combine(parts, problems)


def combine(parts: list[Part], problems: Problems) -> CaptionSet:
    captions = [p for p in parts if p.role == ROLE_CAPTIONS]
    queries = [p for p in parts if p.role == ROLE_QUERIES]
    lists = [p for p in parts if p.role == ROLE_SPLIT_LIST]
    categories: dict[str, str] = {}
    for part in parts:
        if part.role == ROLE_CATEGORIES:
            categories.update(part.category_names)
    files = [FileInfo(str(p.path), p.format, p.role, len(p.video_ids), p.list_split) for p in parts]
    if not captions and not queries:
        raise UsageError("the captions files hold no captions: only split lists or category names were given")
    empty_files = [p for p in captions + queries if not len(p)]
    if empty_files:
        problems.add("no_caption_rows", f"{empty_files[0].path}: no caption rows (a header only?)", len(empty_files))
    notes: list[str] = []

    video_ids = [v for p in captions for v in p.video_ids]
    texts = [c for p in captions for c in p.captions]
    splits = [s for p in captions for s in p.splits]
    concepts = [categories.get(c, c) if c else c for p in captions for c in p.concepts]

    if queries:
        concept_of = dict(zip(video_ids, concepts))
        queried = {v for p in queries for v in p.video_ids}
        keep = [i for i, v in enumerate(video_ids) if v not in queried]
        replaced = len(video_ids) - len(keep)
        if replaced:
            notes.append(f"{replaced} caption(s) of the {len(queried)} videos of the query file(s) replaced by its captions")
        video_ids, texts, splits, concepts = ([column[i] for i in keep] for column in (video_ids, texts, splits, concepts))
        for part in queries:
            video_ids += part.video_ids
            texts += part.captions
            splits += part.splits
            concepts += [concept_of.get(v) for v in part.video_ids]

    if lists or queries:
        splits = _splits_from_lists(lists, queries, video_ids, problems, notes)
        keep = [i for i, s in enumerate(splits) if s is not None]
        video_ids, texts, splits, concepts = ([column[i] for i in keep] for column in (video_ids, texts, splits, concepts))

    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        problems.add("empty_caption", f"{video_ids[empty[0]]} (left out)", len(empty))
        keep = [i for i, t in enumerate(texts) if t]
        video_ids, texts, splits, concepts = ([column[i] for i in keep] for column in (video_ids, texts, splits, concepts))
    frame = pd.DataFrame({"video_id": video_ids, "caption": texts})
    if any(s is not None for s in splits):
        frame["split"] = splits
    if any(c is not None for c in concepts):
        frame["concept"] = concepts
    duplicated = frame.duplicated(["video_id", "caption"])
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        problems.add("duplicate_caption", f"{first.video_id}: {first.caption[:60]!r} (kept: benchmarks count every row)",
                     int(duplicated.sum()))
    paragraph = all(p.paragraph for p in captions + queries)
    return CaptionSet(frame, problems, files, paragraph, notes)


def _splits_from_lists(lists: list[Part], queries: list[Part], video_ids: list[str], problems: Problems,
                       notes: list[str]) -> list[str | None]:
    annotated = list(dict.fromkeys(video_ids))
    split_of: dict[str, str] = {}
    conflicts = []

    def assign(video_id: str, split: str) -> None:
        old = split_of.get(video_id)
        if old is not None and old != split:
            conflicts.append(video_id)
            split = max(old, split, key=lambda s: _SPLIT_ORDER.get(s, -1))
        split_of[video_id] = split

    for part in lists:
        listed = list(dict.fromkeys(part.video_ids))
        if len(listed) < len(part.video_ids):
            problems.add("duplicate_list_entry", f"{Path(part.path).name}: an id listed twice (counted once)",
                         len(part.video_ids) - len(listed))
        match = match_video_ids(listed, annotated)
        for list_id in listed:
            if list_id in match.mapping:
                assign(match.mapping[list_id], part.list_split)
        missing = match.unmatched + list(match.ambiguous)
        if missing:
            problems.add("split_list_id_without_captions", f"{Path(part.path).name}: {', '.join(missing[:3])}", len(missing))
    for part in queries:
        for video_id, split in zip(part.video_ids, part.splits):
            assign(video_id, split or "test")
    if conflicts:
        problems.add("video_in_several_split_lists",
                     f"{conflicts[0]} (kept in the later of train < val < test, never trained on)", len(set(conflicts)))
    left_out = [v for v in annotated if v not in split_of]
    if left_out:
        problems.add("video_not_in_split_lists", f"{left_out[0]} (left out: the split lists and query files decide the splits)",
                     len(left_out))
    return [split_of.get(v) for v in video_ids]


def load_captions(spec, formats=None, video_ids: Sequence[str] | None = None, allow_empty: bool = False) -> CaptionSet:
    """:func:`read_annotations`, then map ids to ``video_ids`` (keyframes ids) when given.

    Ids that match no video keep their own id and are counted (``unmatched_video_id``,
    ``ambiguous_video_id``); when none matches at all the error shows both kinds of id.
    """
    result = read_annotations(spec, formats, allow_empty=allow_empty)
    if video_ids is None:
        return result
    distinct = result.frame["video_id"].unique().tolist()
    match = match_video_ids(distinct, video_ids)
    result.match = match
    if distinct and not match.mapping:
        raise no_video_matches(CaptionSpec.of(spec), distinct, video_ids)
    count_unmatched(match, result.problems)
    if any(k != v for k, v in match.mapping.items()):
        result.frame["video_id"] = result.frame["video_id"].map(lambda v: match.mapping.get(v, v))
    return result


def count_unmatched(match: IdMatch, problems: Problems) -> None:
    """The ids that match no video (``unmatched_video_id``) or several (``ambiguous_video_id``)."""
    if match.unmatched:
        problems.add("unmatched_video_id", ", ".join(clip_text(v, 60) for v in match.unmatched[:5]), len(match.unmatched))
    if match.ambiguous:
        first = next(iter(match.ambiguous.items()))
        problems.add("ambiguous_video_id", f"{clip_text(first[0], 60)} -> {' | '.join(first[1][:3])}", len(match.ambiguous))


def no_video_matches(spec: CaptionSpec, annotation_ids: Sequence[str], video_ids: Sequence[str]) -> UsageError:
    """The error of captions files none of whose ids names a video of ``keyframes.parquet``."""
    return UsageError(
        f"none of the {len(annotation_ids)} video ids of {spec.label()} names a video in "
        f"keyframes.parquet (captions: {', '.join(repr(clip_text(v, 60)) for v in list(annotation_ids)[:3])}; keyframes: "
        f"{', '.join(repr(clip_text(v, 60)) for v in list(video_ids)[:3])}); see `mama-augment datasets FILES -w WORKDIR`"
    )


def captions_by_video(spec, formats=None, video_ids=None) -> dict[str, list[str]]:
    """``video_id -> [caption, ...]`` of captions files in any format of
    :mod:`mama_augment.datasets` (ids mapped to ``video_ids`` when given), empty
    captions left out."""
    frame = load_captions(spec, formats, video_ids=video_ids).frame
    captions: dict[str, list[str]] = {}
    for video_id, caption in zip(frame["video_id"].tolist(), frame["caption"].tolist()):
        if caption:
            captions.setdefault(video_id, []).append(caption)
    return captions
