"""Build ``<workdir>/report/index.html``: gather the work folder's data for the page.

This module reads the manifests, the runs and the original captions and turns them
into the records the page shows; ``report/html.py`` holds the HTML pieces and
``report/assets.py`` the page's CSS and script.

The report is ``index.html`` (inline CSS and script, the totals, runs and failed
inputs) and ``data/``: the video cards in files of ``CHUNK_VIDEOS`` videos, loaded as
scripts when a page shows them, and their search texts, loaded when the user searches.
It needs no server and no network and opens from disk (``file://``); the page's size
and the build's memory do not grow with the number of videos. Images are not embedded: by default
the page points at the work folder's own JPEGs and pictures with relative paths
(``../grids/...``, ``../frames/...``, ``../runs/...``), so the report costs almost no
disk and stays valid while it sits inside the work folder. With ``copy_images`` the
referenced files are copied (hard-linked when possible) into ``report/media/`` and
the report folder can be moved or shared on its own.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import posixpath
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow.compute as pc

from mama_augment.checks import check_number
from mama_augment.fileio import atomic_path, atomic_write_text
from mama_augment.datasets import CaptionSpec, locate_captions
from mama_augment.errors import ItemError, MamaError, UsageError
from mama_augment.manifest import CAPTIONS, KEYFRAMES, STATUS_OK, read_manifest
from mama_augment.quality.report import attach_flag_rows, flags_table
from mama_augment.report.assets import CSS, JS
from mama_augment.report.html import PAGE, esc, failed_html, json_for_script, runs_html, totals_html
from mama_augment.status import list_runs, workdir_status
from mama_augment.datasets import captions_by_video as read_captions_file
from mama_augment.train.runs import RunPaths
from mama_augment.workpaths import PATH_OUTSIDE_WORKDIR, WorkFolder, writable_folder
from mama_augment.workread import is_ok

REPORT_DIR = "report"
MEDIA_DIR = "media"
DEFAULT_PAGE_SIZE = 50
DATA_DIR = "data"
# Videos per data file: a page loads the one or two files its cards are in, whatever
# the number of videos, and the build holds one chunk's rows as Python objects at a time.
CHUNK_VIDEOS = 500
MAX_FAILED_ROWS = 2000

_KF_COLUMNS = [
    "path", "status", "error_kind", "error", "media_type", "duration_s", "fps", "width", "height",
    "num_sampled", "keyframe_times_s", "keyframe_paths", "grid_path", "embedder",
]
_CAP_COLUMNS = ["caption", "status", "error_kind", "error", "model", "preset", "prompt_name", "seed"]


@dataclass
class ReportSummary:
    """What ``build_report`` wrote, for the CLI to print."""

    path: Path
    videos: int = 0
    failed: int = 0
    runs: int = 0
    originals_file: str | None = None
    originals: int = 0
    missing_images: int = 0
    problems: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- original captions


def find_captions_file(workdir: Path, runs: list[dict]):
    """The original captions a training run used, as a ``CaptionSpec`` (files and
    formats): newest run first, then configs/train.json. None when no run names files
    that still exist."""
    from mama_augment.configfile import read_run_config

    candidates: list[tuple[dict, Path]] = []
    for run in sorted(runs, key=lambda r: _mtime(RunPaths(Path(r["path"])).config), reverse=True):
        candidates.append((run.get("config") or {}, Path(run["path"])))
    record = read_run_config(workdir, "train")
    if record:
        candidates.append((record.get("config") or {}, workdir))
    for config, base in candidates:
        try:
            spec = locate_captions(config.get("captions"), config.get("captions_format"), [workdir, base])
        except MamaError:
            continue
        if spec is not None:
            return spec
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# ----------------------------------------------------------------------------- media


class Media:
    """Turns work-folder-relative paths into URLs relative to the report folder.

    Plain string work (no ``resolve`` per file): a report of 10 000 videos has
    over 100 000 images.
    """

    def __init__(self, workdir: Path, output: Path, copy: bool):
        self.workdir = os.path.abspath(workdir)
        self.output = os.path.abspath(output)
        self.copy = copy
        self.missing = 0
        self.outside = 0  # paths in the manifests that lead out of the work folder (path_outside_workdir)
        self.work = WorkFolder(workdir)
        self._media_folders: set[str] = set()  # folders of report/media/ checked to hold no link
        base = os.path.relpath(self.workdir, self.output).replace(os.sep, "/")
        self._prefix = "" if base == "." else base + "/"

    def url(self, rel: str | None) -> str | None:
        return self.check(rel)[0]

    def check(self, rel: str | None) -> tuple[str | None, str | None]:
        """(the URL of ``rel``, None) or (None, the error kind that keeps it off the page)."""
        if not rel:
            return None, None
        try:
            # The work folder's own file or nothing: a link that leads out is never
            # linked into report/media/ or pointed at.
            source = self.work.file(rel, "image")
        except ItemError as exc:
            if exc.kind == PATH_OUTSIDE_WORKDIR:
                self.outside += 1
            else:
                self.missing += 1
            return None, exc.kind
        norm = posixpath.normpath(rel.replace(os.sep, "/"))
        if self.copy:
            folder = posixpath.dirname(f"{MEDIA_DIR}/{norm}")
            if folder not in self._media_folders:
                try:
                    writable_folder(self.output, folder)
                except ItemError as exc:  # report/media/... reached through a link: nothing is written there
                    self.outside += 1
                    return None, exc.kind
                self._media_folders.add(folder)
            _link_or_copy(Path(source), Path(self.output) / MEDIA_DIR / norm)
            return quote(f"{MEDIA_DIR}/{norm}"), None
        return quote(self._prefix + norm), None


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        stat = source.stat()
        existing = target.stat()
        if existing.st_size == stat.st_size and existing.st_mtime >= stat.st_mtime:
            return
    except OSError:
        pass
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)


# ----------------------------------------------------------------------------- shown paths

# An absolute POSIX path inside a message (not the "//" of a URL).
_ABSOLUTE = re.compile(r"(?<![\w:/.~-])/[^\s'\"<>:;,()]+")


class ShownPaths:
    """Paths as the page shows them: relative to the work folder, never the machine's
    absolute paths (a report is shared; where the data sat on one machine is not its
    business)."""

    def __init__(self, workdir: Path):
        self.root = os.path.abspath(workdir)

    def path(self, value: Any) -> Any:
        if not isinstance(value, str) or not os.path.isabs(value):
            return value
        return os.path.relpath(value, self.root).replace(os.sep, "/")

    def text(self, value: Any) -> Any:
        """``value`` with every absolute path in it made relative."""
        if not isinstance(value, str) or "/" not in value:
            return value
        return _ABSOLUTE.sub(lambda m: self.path(m.group()), value)

    def tree(self, value: Any) -> Any:
        """A JSON-like value with every string passed through :meth:`text`."""
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        return self.text(value)


# ----------------------------------------------------------------------------- data


def _finite(value: Any) -> Any:
    """NaN and infinities have no JSON form; they show as unknown."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _meta_line(row: dict) -> str:
    row = {k: _finite(v) for k, v in row.items()}
    bits = []
    if row.get("media_type") == "image":
        bits.append("image")
    elif row.get("duration_s") is not None:
        bits.append(f"{row['duration_s']:.1f} s")
    if row.get("width") and row.get("height"):
        bits.append(f"{row['width']}\u00d7{row['height']}")
    if row.get("fps") and row.get("media_type") != "image":
        bits.append(f"{row['fps']:.3g} fps")
    times = row.get("keyframe_times_s") or []
    bits.append(f"{len(times)} keyframe{'s' if len(times) != 1 else ''}")
    if row.get("num_sampled"):
        bits.append(f"of {row['num_sampled']} sampled")
    if row.get("embedder"):
        bits.append(str(row["embedder"]))
    if row.get("path"):
        bits.append(str(row["path"]))
    return " \u00b7 ".join(bits)


def _refused(rel: str | None, kind: str | None) -> str | None:
    """What the page says instead of an image: the path, and why when it is not simply missing."""
    return f"{rel} ({kind})" if rel and kind == PATH_OUTSIDE_WORKDIR else rel


def _video_records(keyframes: list[dict], captions: dict[str, list[dict]],
                   originals: dict[str, list[str]], media: Media) -> list[dict]:
    records = []
    for row in keyframes:
        if row["status"] != STATUS_OK:
            continue
        video_id = row["video_id"]
        paths = row.get("keyframe_paths") or []
        times = row.get("keyframe_times_s") or []
        frames = []
        for k, rel in enumerate(paths):
            url, kind = media.check(rel)
            t = _finite(times[k]) if k < len(times) else None
            frames.append([url, t] if url else [None, t, _refused(rel, kind)])
        grid_url, kind = media.check(row.get("grid_path"))
        record: dict[str, Any] = {"id": video_id, "meta": _meta_line(row), "grid": grid_url, "frames": frames}
        if not grid_url:
            record["gridMissing"] = _refused(row.get("grid_path"), kind) or "no grid"
        if video_id in originals:
            record["orig"] = originals[video_id]
        gen = []
        for cap in captions.get(video_id, []):
            entry: dict[str, Any] = {
                "i": cap["caption_index"],
                "ok": cap["status"] == STATUS_OK,
                "m": cap.get("preset") or cap.get("model"),
                "p": cap.get("prompt_name"),
                "s": cap.get("seed"),
            }
            if entry["ok"]:
                entry["t"] = cap.get("caption") or ""
                if cap.get("flags") is not None:
                    entry["f"] = cap["flags"]
            else:
                entry["k"] = cap.get("error_kind")
                entry["e"] = cap.get("error") or ""
            if cap.get("preset") and cap.get("model") and cap["preset"] != cap["model"]:
                entry["m"] = f"{cap['preset']} ({cap['model']})"
            gen.append(entry)
        if gen:
            record["gen"] = gen
        records.append(record)
    return records


class _ByVideo:
    """The rows of a table sorted by ``video_id`` for a range of ids, as dicts, on demand."""

    def __init__(self, table):
        self.table = table
        self.ids = table.column("video_id").to_numpy(zero_copy_only=False) if table is not None else None

    def rows(self, first: str, last: str) -> list[dict]:
        if self.table is None:
            return []
        start = int(np.searchsorted(self.ids, first, side="left"))
        stop = int(np.searchsorted(self.ids, last, side="right"))
        return self.table.slice(start, stop - start).to_pylist()


def _haystack(record: dict) -> str:
    """What the search box matches for a video: its id, captions and flags."""
    parts = [record["id"], *record.get("orig", [])]
    for entry in record.get("gen", []):
        if entry.get("t"):
            parts.append(entry["t"])
        if entry.get("f"):
            parts.append(" ".join(entry["f"]))
    return "\n".join(parts).lower()


def chunk_file(kind: str, number: int) -> str:
    """``data/videos-0000.js``: a script (not JSON: a page opened from disk may not fetch
    files, but it may load scripts) handing its records to the page."""
    return f"{DATA_DIR}/{kind}-{number:04d}.js"


def _write_chunk(out_dir: Path, kind: str, number: int, value: Any) -> None:
    atomic_write_text(out_dir / chunk_file(kind, number),
                      f"mamaReportData({json.dumps(kind)},{number},{json_for_script(value)});\n")


def _write_chunks(data_dir: Path, keyframes, captions: _ByVideo, flags: _ByVideo,
                  originals: dict[str, list[str]], media: Media, shown: ShownPaths) -> int:
    """Write the video cards ``CHUNK_VIDEOS`` at a time (``data/videos-NNNN.js``) and their
    search texts (``data/search-NNNN.js``, small: what a search loads); returns how many
    chunks. Older chunk files past the new count are removed."""
    out_dir = data_dir.parent
    count = 0
    total = keyframes.num_rows if keyframes is not None else 0
    for start in range(0, total, CHUNK_VIDEOS):
        rows = keyframes.slice(start, CHUNK_VIDEOS).to_pylist()
        for row in rows:
            row["path"], row["error"] = shown.path(row.get("path")), shown.text(row.get("error"))
        first, last = rows[0]["video_id"], rows[-1]["video_id"]
        caption_rows = captions.rows(first, last)
        attach_flag_rows(flags.rows(first, last), caption_rows)
        by_video: dict[str, list[dict]] = defaultdict(list)
        for row in caption_rows:
            row["error"] = shown.text(row.get("error"))
            by_video[row["video_id"]].append(row)
        records = _video_records(rows, by_video, originals, media)
        _write_chunk(out_dir, "videos", count, records)
        _write_chunk(out_dir, "search", count, [_haystack(r) for r in records])
        count += 1
    for kind in ("videos", "search"):
        for path in data_dir.glob(f"{kind}-*.js"):
            match = re.fullmatch(rf"{kind}-(\d{{4,}})\.js", path.name)
            if match and int(match.group(1)) >= count:
                with contextlib.suppress(OSError):
                    path.unlink()
    return count


# ----------------------------------------------------------------------------- entry point

# Every page this module writes carries it in its head (report/html.py PAGE).
_OWN_PAGE_MARK = b'<meta name="generator" content="mama-augment">'


def check_replaceable(page: Path) -> None:
    """UsageError unless ``page`` is absent or a report this tool wrote: a folder named
    with -w or --output may hold someone's own index.html, which is never replaced."""
    if not os.path.lexists(page):
        return
    try:
        if not page.is_symlink() and page.is_file():
            with open(page, "rb") as handle:
                if _OWN_PAGE_MARK in handle.read(4096):
                    return
    except OSError:
        pass
    raise UsageError(f"{page} exists and is not a report written by mama-augment: it is left as it is; "
                     "remove it or choose another folder with --output")


def _is_ok(table):
    return is_ok(table.column("status"))


def _rows(table) -> list[dict]:
    return table.to_pylist() if table is not None else []


def build_report(
    workdir: str | os.PathLike,
    captions_file: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    copy_images: bool = False,
    max_failed_rows: int = MAX_FAILED_ROWS,
    title: str | None = None,
) -> Path:
    """Write the HTML report of a work folder and return the path of its ``index.html``.

    ``captions_file`` holds the original captions (``video_id``, ``caption``; .csv,
    .jsonl or .parquet); without it the file recorded by the newest training run is
    used when it can be found. ``output`` is the report folder (default
    ``<workdir>/report``). See :func:`build_report_summary` for the counts.
    """
    return build_report_summary(
        workdir, captions_file, output, page_size=page_size, copy_images=copy_images,
        max_failed_rows=max_failed_rows, title=title,
    ).path


def build_report_summary(
    workdir: str | os.PathLike,
    captions_file: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    copy_images: bool = False,
    max_failed_rows: int = MAX_FAILED_ROWS,
    title: str | None = None,
) -> ReportSummary:
    """:func:`build_report`, returning what was written (counts, problems) as well."""
    workdir = Path(workdir)
    check_number(page_size, "--page-size", minimum=1)
    status = workdir_status(workdir)  # raises UsageError for a missing work folder
    out_dir = Path(output) if output is not None else workdir / REPORT_DIR
    if output is None:
        try:  # the work folder's report/ is the tool's own: a link there leads elsewhere
            writable_folder(workdir, REPORT_DIR)
        except ItemError as exc:
            raise UsageError(f"{exc.message}; nothing is written through it (use --output)") from None
    check_replaceable(out_dir / "index.html")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the report folder {out_dir}: {exc.strerror or exc}") from None
    media = Media(workdir, out_dir, copy_images)
    summary = ReportSummary(path=out_dir / "index.html", problems=list(status["problems"]))
    try:  # report/data/ reached through a link: nothing is written through it
        data_dir = writable_folder(out_dir, DATA_DIR)
        data_dir.mkdir(parents=True, exist_ok=True)
    except ItemError as exc:
        raise UsageError(f"{exc.message}; nothing is written through it") from None
    except OSError as exc:
        raise UsageError(f"cannot create the report folder {out_dir / DATA_DIR}: {exc.strerror or exc}") from None

    # Arrow tables sorted by video_id; rows become Python dicts one chunk of videos at a
    # time, so memory holds the columns the page shows, not a dict per row of everything.
    keyframes = None
    if status["stages"]["keyframes"]["error"] is None:
        with contextlib.suppress(MamaError):
            keyframes = read_manifest(workdir, KEYFRAMES, columns=_KF_COLUMNS).sort_by("video_id")
    captions = None
    if status["stages"]["captions"]["error"] is None:
        with contextlib.suppress(MamaError):
            captions = read_manifest(workdir, CAPTIONS, columns=_CAP_COLUMNS).sort_by(
                [("video_id", "ascending"), ("caption_index", "ascending")])
    flags = flags_table(workdir)
    if flags is not None:
        flags = flags.sort_by("video_id")
    ok_keyframes = keyframes.filter(_is_ok(keyframes)) if keyframes is not None else None
    failed_keyframes = _rows(keyframes.filter(pc.invert(_is_ok(keyframes)))) if keyframes is not None else []
    failed_captions = _rows(captions.filter(pc.invert(_is_ok(captions)))) if captions is not None else []

    shown = ShownPaths(workdir)
    for row in failed_keyframes:
        row["path"], row["error"] = shown.path(row.get("path")), shown.text(row.get("error"))
    for row in failed_captions:
        row["error"] = shown.text(row.get("error"))
    runs = list_runs(workdir)
    originals: dict[str, list[str]] = {}
    source = CaptionSpec.of(captions_file) if captions_file is not None else find_captions_file(workdir, runs)
    ok_id_list = ok_keyframes.column("video_id").to_pylist() if ok_keyframes is not None else []
    ok_ids = set(ok_id_list)
    if source is not None:
        originals = read_captions_file(source, video_ids=ok_id_list or None)
        summary.originals_file = " + ".join(source.paths)
    matched = {v: caps for v, caps in originals.items() if v in ok_ids}
    summary.originals = sum(len(c) for c in matched.values())
    if source is None:
        originals_note = "none loaded; pass --captions FILE (video_id, caption) to show them beside the generated ones."
    else:
        unmatched = len(originals) - len(matched)
        originals_note = (
            f"{summary.originals} caption(s) for {len(matched)} of {len(ok_ids)} videos from {' + '.join(shown.path(str(Path(p).absolute())) for p in source.paths)}"
            + (f"; {unmatched} video_id(s) in that file have no keyframes row" if unmatched else "")
        )
    del ok_ids, originals

    chunks = _write_chunks(data_dir, ok_keyframes, _ByVideo(captions), _ByVideo(flags), matched, media, shown)
    failed_part, failed_total = failed_html(failed_keyframes, failed_captions, max_failed_rows)
    runs_part = runs_html(shown.tree(runs), media)
    summary.videos = len(ok_id_list)
    summary.failed = failed_total
    summary.runs = len(runs)
    summary.missing_images = media.missing
    if media.outside:
        summary.problems.append(f"{PATH_OUTSIDE_WORKDIR}: {media.outside} image path(s) in the manifests lead "
                                "outside the work folder; they are not linked")
    data = {"pageSize": page_size, "hasOriginals": source is not None, "total": len(ok_id_list),
            "chunkSize": CHUNK_VIDEOS, "chunks": chunks}
    page_title = title or f"mama-augment report \u2014 {workdir.resolve().name}"
    page = PAGE.format(
        title=esc(page_title),
        css=CSS,
        js=JS,
        workdir=esc(workdir.resolve().name),
        written=esc(_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        n_videos=len(ok_id_list),
        n_runs=len(runs),
        n_failed=failed_total,
        totals=totals_html(shown.tree({**status, "problems": summary.problems}), originals_note),
        runs=runs_part,
        failed=failed_part,
        data=json_for_script(data),
    )
    atomic_write_text(summary.path, page)
    return summary

