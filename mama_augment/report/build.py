"""Build ``<workdir>/report/index.html``: the work folder's data, to be looked at.

The report is one HTML file with inline CSS, script and data; it needs no server
and no network and opens from disk (``file://``). Images are not embedded: by default
the page points at the work folder's own JPEGs and pictures with relative paths
(``../grids/...``, ``../frames/...``, ``../runs/...``), so the report costs almost no
disk and stays valid while it sits inside the work folder. With ``copy_images`` the
referenced files are copied (hard-linked when possible) into ``report/media/`` and
the report folder can be moved or shared on its own.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import json
import math
import os
import posixpath
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from mama_augment.fileio import atomic_path, atomic_write_text
from mama_augment.errors import MamaError, UsageError
from mama_augment.manifest import CAPTIONS, KEYFRAMES, STATUS_OK, read_manifest
from mama_augment.quality.report import attach_flags
from mama_augment.report.assets import CSS, JS
from mama_augment.status import list_runs, workdir_status

REPORT_DIR = "report"
MEDIA_DIR = "media"
DEFAULT_PAGE_SIZE = 50
MAX_FAILED_ROWS = 2000
RUN_PICTURES = ("training.png", "loss_weight.png")

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


def read_original_captions(path: str | os.PathLike) -> dict[str, list[str]]:
    """``video_id -> [caption, ...]`` from a .csv, .jsonl/.json or .parquet file."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"captions file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype={"video_id": str, "caption": str}, keep_default_na=False)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype={"video_id": str, "caption": str})
        elif suffix == ".json":
            frame = pd.read_json(path, dtype={"video_id": str, "caption": str})
        elif suffix == ".parquet":
            frame = pd.read_parquet(path, columns=None)
        else:
            raise UsageError(f"captions file {path}: expected .csv, .jsonl or .parquet")
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot read captions file {path}: {exc}") from None
    missing = [c for c in ("video_id", "caption") if c not in frame.columns]
    if missing:
        raise UsageError(
            f"captions file {path} needs the columns video_id and caption; missing: {', '.join(missing)}"
        )
    captions: dict[str, list[str]] = defaultdict(list)
    for video_id, caption in zip(frame["video_id"].tolist(), frame["caption"].tolist()):
        if video_id is None or caption is None:
            continue
        text = str(caption).strip()
        if text and text.lower() != "nan":
            captions[str(video_id)].append(text)
    return dict(captions)


def find_captions_file(workdir: Path, runs: list[dict]) -> Path | None:
    """The original captions a training run used: newest run first, then configs/train.json."""
    candidates: list[tuple[str, Path]] = []
    for run in sorted(runs, key=lambda r: _mtime(Path(r["path"]) / "config.json"), reverse=True):
        value = (run.get("config") or {}).get("captions")
        if isinstance(value, str) and value:
            candidates.append((value, Path(run["path"])))
    from mama_augment.configfile import read_run_config

    record = read_run_config(workdir, "train")
    if record and isinstance((record.get("config") or {}).get("captions"), str):
        candidates.append((record["config"]["captions"], workdir))
    for value, base in candidates:
        given = Path(value)
        tries = [given] if given.is_absolute() else [given, workdir / given, base / given]
        for path in tries:
            if path.is_file():
                return path
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
        base = os.path.relpath(self.workdir, self.output).replace(os.sep, "/")
        self._prefix = "" if base == "." else base + "/"

    def url(self, rel: str | None) -> str | None:
        if not rel:
            return None
        norm = posixpath.normpath(rel.replace(os.sep, "/"))
        inside = not (norm == ".." or norm.startswith("../") or posixpath.isabs(norm))
        source = os.path.join(self.workdir, norm) if inside else os.path.normpath(os.path.join(self.workdir, norm))
        if not os.path.isfile(source):
            self.missing += 1
            return None
        if not inside:
            return quote(os.path.relpath(source, self.output).replace(os.sep, "/"))
        if self.copy:
            _link_or_copy(Path(source), Path(self.output) / MEDIA_DIR / norm)
            return quote(f"{MEDIA_DIR}/{norm}")
        return quote(self._prefix + norm)


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
            url = media.url(rel)
            t = _finite(times[k]) if k < len(times) else None
            frames.append([url, t] if url else [None, t, rel])
        grid_url = media.url(row.get("grid_path"))
        record: dict[str, Any] = {"id": video_id, "meta": _meta_line(row), "grid": grid_url, "frames": frames}
        if not grid_url:
            record["gridMissing"] = row.get("grid_path") or "no grid"
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


def _json_for_script(value: Any) -> str:
    """JSON that cannot end the ``<script>`` element it sits in."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ----------------------------------------------------------------------------- HTML pieces

esc = html.escape


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _num_class(value: Any) -> str:
    return ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _table(columns: list[str], rows: Iterable[list[Any]], first_header: bool = False) -> str:
    out = ["<table>", "<thead><tr>"]
    out += [f"<th>{esc(str(c))}</th>" for c in columns]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for k, value in enumerate(row):
            tag = "th" if first_header and k == 0 else "td"
            out.append(f"<{tag}{_num_class(value)}>{esc(_fmt(value))}</{tag}>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _flat(value: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, inner in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(inner, dict):
            out.update(_flat(inner, name))
        else:
            out[name] = inner
    return out


def eval_tables(evaluation: Any) -> str:
    """Render an ``eval.json``: one block per entry (split) when it holds several.

    ``mama-augment evaluate`` writes ``{"test": {result}, "val:other.csv": {result}}``;
    a bare result is accepted too.
    """
    if isinstance(evaluation, dict) and evaluation and all(
        isinstance(v, dict) and any(isinstance(x, (dict, list)) for x in v.values()) for v in evaluation.values()
    ):
        return "".join(
            f'<div class="eval" data-split="{esc(str(key))}"><h4>split {esc(str(key))}</h4>{_eval_result(value)}</div>'
            for key, value in evaluation.items()
        )
    return _eval_result(evaluation)


def _eval_result(evaluation: Any) -> str:
    """One evaluation result whatever its exact shape.

    Scalars become a key/value table; a mapping of mappings (``{"text_to_video":
    {"R@1": ..}}``) becomes a table with one row per key; a list of mappings
    (``per_concept`` rows) becomes a table with one row per item.
    """
    if not isinstance(evaluation, dict):
        return f"<pre>{esc(json.dumps(evaluation, indent=2, default=str))}</pre>"
    parts = []
    scalars = [(k, v) for k, v in evaluation.items() if _is_scalar(v)]
    metric_rows = {k: v for k, v in evaluation.items() if isinstance(v, dict) and all(_is_scalar(x) for x in v.values())}
    nested = {k: v for k, v in evaluation.items() if isinstance(v, dict) and k not in metric_rows}
    lists = {k: v for k, v in evaluation.items() if isinstance(v, list)}
    if metric_rows:
        columns = list(dict.fromkeys(c for row in metric_rows.values() for c in row))
        parts.append(_table(["", *columns], ([k, *[v.get(c) for c in columns]] for k, v in metric_rows.items()), True))
    if scalars:
        parts.append(_table(["", "value"], ([k, v] for k, v in scalars), True))
    for name, table in nested.items():
        rows = {k: (_flat(v) if isinstance(v, dict) else {"value": v}) for k, v in table.items()}
        columns = list(dict.fromkeys(c for row in rows.values() for c in row))
        title = "Per-concept" if "concept" in name.lower() else name
        parts.append(f"<h4>{esc(title)} <span class=\"muted\">({esc(name)})</span></h4>")
        parts.append(_table([name.rstrip("s") if "concept" in name.lower() else "", *columns],
                            ([k, *[row.get(c) for c in columns]] for k, row in rows.items()), True))
    for name, items in lists.items():
        dict_items = [_flat(i) for i in items if isinstance(i, dict)]
        title = "Per-concept" if "concept" in name.lower() else name
        parts.append(f"<h4>{esc(title)} <span class=\"muted\">({esc(name)})</span></h4>")
        if dict_items:
            columns = list(dict.fromkeys(c for row in dict_items for c in row))
            parts.append(_table(columns, ([row.get(c) for c in columns] for row in dict_items)))
        else:
            parts.append(f"<p>{esc(_fmt(items))}</p>")
    return "".join(parts)


def _totals_html(status: dict, originals_note: str) -> str:
    kf = status["stages"]["keyframes"]
    cap = status["stages"]["captions"]
    runs = status["stages"]["runs"]

    def cell(value: Any) -> Any:
        return "?" if value is None else value

    rows = [
        ["keyframes", kf["rows"], kf["done"], kf["failed"], "unknown without inputs",
         ", ".join(f"{k} {v}" for k, v in (kf.get("embedders") or {}).items())],
        ["captions", cap["rows"], cap["done"], cap["failed"], cell(cap.get("pending")),
         ", ".join(dict.fromkeys(f"{m['model']} / prompt {m['prompt_name']}" for m in cap.get("models", [])))],
        ["training runs", runs["count"], runs["evaluated"], runs["with_errors"], "",
         "done: evaluated; failed: with files that cannot be read"],
    ]
    out = [_table(["stage", "rows", "done", "failed", "pending", "notes"], rows, True)]
    out.append(f'<p class="muted">Original captions: {esc(originals_note)}</p>')
    for problem in status["problems"]:
        out.append(f'<p class="problem">{esc(problem)}</p>')
    return "".join(out)


def _runs_html(runs: list[dict], media: Media) -> str:
    if not runs:
        return '<p class="none">No training runs yet (<code>mama-augment train</code>).</p>'
    out = ['<div class="runs">']
    for run in runs:
        out.append(f'<article class="run" data-run="{esc(run["name"])}"><h3>{esc(run["name"])}</h3>')
        facts = [(k, run[k]) for k in ("loss", "backbone", "margin", "epochs", "batch_size", "augment", "seed", "step", "epoch")
                 if k in run]
        if facts:
            out.append('<p class="muted">' + " \u00b7 ".join(f"{esc(k)} {esc(_fmt(v))}" for k, v in facts) + "</p>")
        for error in run.get("errors", []):
            out.append(f'<p class="problem">cannot read {esc(error)}</p>')
        pictures = [p for p in RUN_PICTURES if p in run.get("pictures", [])]
        pictures += [p for p in run.get("pictures", []) if p not in pictures]
        if pictures:
            out.append('<div class="pictures">')
            for name in pictures:
                url = media.url(f"runs/{run['name']}/{name}")
                if url:
                    out.append(f'<figure><img loading="lazy" src="{esc(url)}" alt="{esc(name)} of {esc(run["name"])}">'
                               f"<figcaption>{esc(name)}</figcaption></figure>")
            out.append("</div>")
        if run.get("evaluated"):
            out.append("<h4>Evaluation (eval.json)</h4>")
            out.append(eval_tables(run.get("eval")))
        else:
            out.append('<p class="none">Not evaluated yet (<code>mama-augment evaluate --run ...</code>).</p>')
        if run.get("last_metrics"):
            last = {k: v for k, v in run["last_metrics"].items() if _is_scalar(v)}
            out.append(f"<details><summary>last of {run['metrics_rows']} rows of metrics.jsonl</summary>")
            out.append(_table(["", "value"], ([k, v] for k, v in last.items()), True))
            out.append("</details>")
        out.append("</article>")
    out.append("</div>")
    return "".join(out)


def _failed_html(keyframes: list[dict], caption_rows: list[dict], limit: int) -> tuple[str, int]:
    failed_kf = [r for r in keyframes if r["status"] != STATUS_OK]
    failed_cap = [r for r in caption_rows if r["status"] != STATUS_OK]
    total = len(failed_kf) + len(failed_cap)
    if not total:
        return '<p class="none">No failed inputs.</p>', 0
    out = []
    kinds = Counter((("keyframes", r.get("error_kind") or "unknown") for r in failed_kf))
    kinds.update((("caption", r.get("error_kind") or "unknown") for r in failed_cap))
    out.append(_table(["stage", "error kind", "count"], ([s, k, n] for (s, k), n in kinds.most_common())))
    rows = [["keyframes", r["video_id"], r.get("path") or "", r.get("error_kind") or "unknown", r.get("error") or ""]
            for r in failed_kf]
    rows += [["caption", r["video_id"], f"caption #{r['caption_index']} \u00b7 {r.get('model') or ''}",
              r.get("error_kind") or "unknown", r.get("error") or ""] for r in failed_cap]
    shown = rows[:limit]
    out.append('<table id="failed-table"><thead><tr><th>stage</th><th>video_id</th><th>input</th>'
               "<th>error kind</th><th>reason</th></tr></thead><tbody>")
    for stage, video_id, what, kind, reason in shown:
        out.append(f'<tr class="failed-row"><td>{esc(stage)}</td><td>{esc(video_id)}</td><td>{esc(what)}</td>'
                   f'<td>{esc(kind)}</td><td class="reason">{esc(reason)}</td></tr>')
    out.append("</tbody></table>")
    if len(rows) > limit:
        out.append(f'<p class="muted">{len(rows) - limit} more failed rows are not listed; '
                   "see the manifests (status = 'failed').</p>")
    return "".join(out), total


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mama-augment">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header class="top">
<h1>{title}</h1>
<div class="sub">work folder {workdir} \u00b7 written {written}</div>
<nav class="sections"><a href="#totals">Totals</a><a href="#videos">Videos ({n_videos})</a><a href="#runs">Training runs ({n_runs})</a><a href="#failed">Failed ({n_failed})</a></nav>
</header>
<main>
<section id="totals"><h2>Totals per stage</h2>{totals}</section>
<section id="videos"><h2>Videos</h2>
<noscript><p class="problem">The video cards are drawn by JavaScript; allow scripts for this file.</p></noscript>
<div class="toolbar">
<input type="search" id="search" placeholder="Search video_id or caption words" aria-label="Search videos" autocomplete="off">
<span id="match-count" class="muted"></span>
<span class="pager" id="pager-top"><button type="button" class="prev">\u2039 prev</button><span class="label"></span><button type="button" class="next">next \u203a</button></span>
</div>
<div id="cards"></div>
<div class="pager" id="pager-bottom" style="margin-top:12px"><button type="button" class="prev">\u2039 prev</button><span class="label"></span><button type="button" class="next">next \u203a</button></div>
</section>
<section id="runs"><h2>Training runs</h2>{runs}</section>
<section id="failed"><h2>Failed inputs</h2>{failed}</section>
</main>
<script id="mama-data" type="application/json">{data}</script>
<script>{js}</script>
</body>
</html>
"""


# ----------------------------------------------------------------------------- entry point


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
    if page_size < 1:
        raise UsageError("--page-size must be at least 1")
    status = workdir_status(workdir)  # raises UsageError for a missing work folder
    out_dir = Path(output) if output is not None else workdir / REPORT_DIR
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the report folder {out_dir}: {exc.strerror or exc}") from None
    media = Media(workdir, out_dir, copy_images)
    summary = ReportSummary(path=out_dir / "index.html", problems=list(status["problems"]))

    keyframes: list[dict] = []
    if status["stages"]["keyframes"]["error"] is None:
        with contextlib.suppress(MamaError):
            keyframes = _rows(read_manifest(workdir, KEYFRAMES, columns=_KF_COLUMNS))
    caption_rows: list[dict] = []
    if status["stages"]["captions"]["error"] is None:
        with contextlib.suppress(MamaError):
            caption_rows = _rows(read_manifest(workdir, CAPTIONS, columns=_CAP_COLUMNS))
    keyframes.sort(key=lambda r: r["video_id"])
    attach_flags(workdir, caption_rows)
    captions_by_video: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(caption_rows, key=lambda r: (r["video_id"], r["caption_index"])):
        captions_by_video[row["video_id"]].append(row)

    runs = list_runs(workdir)
    originals: dict[str, list[str]] = {}
    source = Path(captions_file) if captions_file is not None else find_captions_file(workdir, runs)
    if source is not None:
        originals = read_original_captions(source)
        summary.originals_file = str(source)
    ok_ids = {r["video_id"] for r in keyframes if r["status"] == STATUS_OK}
    matched = {v: caps for v, caps in originals.items() if v in ok_ids}
    summary.originals = sum(len(c) for c in matched.values())
    if source is None:
        originals_note = "none loaded; pass --captions FILE (video_id, caption) to show them beside the generated ones."
    else:
        unmatched = len(originals) - len(matched)
        originals_note = (
            f"{summary.originals} caption(s) for {len(matched)} of {len(ok_ids)} videos from {source}"
            + (f"; {unmatched} video_id(s) in that file have no keyframes row" if unmatched else "")
        )

    videos = _video_records(keyframes, captions_by_video, matched, media)
    failed_html, failed_total = _failed_html(keyframes, caption_rows, max_failed_rows)
    runs_html = _runs_html(runs, media)
    summary.videos = len(videos)
    summary.failed = failed_total
    summary.runs = len(runs)
    summary.missing_images = media.missing
    data = {"pageSize": page_size, "hasOriginals": source is not None, "videos": videos}
    page_title = title or f"mama-augment report \u2014 {workdir.resolve().name}"
    page = PAGE.format(
        title=esc(page_title),
        css=CSS,
        js=JS,
        workdir=esc(str(workdir.resolve())),
        written=esc(_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        n_videos=len(videos),
        n_runs=len(runs),
        n_failed=failed_total,
        totals=_totals_html(status, originals_note),
        runs=runs_html,
        failed=failed_html,
        data=_json_for_script(data),
    )
    atomic_write_text(summary.path, page)
    return summary

