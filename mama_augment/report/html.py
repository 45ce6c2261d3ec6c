"""The HTML pieces of the report: tables, the runs and failed-inputs sections, the page.

Pure functions of the data ``report/build.py`` gathers; everything a user or a file
provides is escaped here.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from typing import Any, Iterable

from mama_augment.manifest import STATUS_OK
from mama_augment.train.runs import GENERATED_CAPTIONS_NOTE, QA_TASK, RUNS_DIR, RunPaths


def json_for_script(value: Any) -> str:
    """JSON that cannot end the ``<script>`` element it sits in."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


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


def qa_eval_html(evaluation: Any) -> str:
    """A question-answering run's ``eval.json``: per split, the accuracy of the trained
    heads and of zero-shot, overall and per question type, then a few questions with
    the model's answer next to the truth."""
    if not isinstance(evaluation, dict):
        return eval_tables(evaluation)
    parts = []
    for split, entry in evaluation.items():
        if not isinstance(entry, dict):
            continue
        parts.append(f'<div class="eval qa" data-split="{esc(str(split))}"><h4>split {esc(str(split))}</h4>')
        counts = [f"{entry.get('questions', '?')} questions",
                  f"{entry.get('open_ended_questions', 0)} open-ended",
                  f"{entry.get('multiple_choice_questions', 0)} multiple-choice"]
        if entry.get("answer_coverage") is not None:
            counts.append(f"the {entry.get('answers')} answers cover {_fmt(entry['answer_coverage'])} % of the open-ended")
        if entry.get("questions_without_video"):
            counts.append(f"{entry['questions_without_video']} left out (no video)")
        parts.append(f'<p class="muted">{esc(" · ".join(counts))}</p>')
        scores = {label: entry[key] for label, key in (("trained", "trained"), ("zero-shot", "zero_shot"))
                  if isinstance(entry.get(key), dict)}
        types = list(dict.fromkeys(t for score in scores.values() for t in (score.get("by_type") or {})))
        if scores:
            columns = ["", "accuracy %", *[f"{t} ({(s.get('by_type') or {}).get(t, {}).get('questions', '')})"
                                           for s in list(scores.values())[:1] for t in types]]
            rows = [[label, score.get("accuracy"),
                     *[((score.get("by_type") or {}).get(t) or {}).get("accuracy") for t in types]]
                    for label, score in scores.items()]
            parts.append(_table(columns, rows, True))
        examples = [e for e in entry.get("examples") or [] if isinstance(e, dict)]
        if examples:
            source = "trained heads" if entry.get("examples_from") == "trained" else "zero-shot"
            parts.append(f'<h4>{len(examples)} questions and the answers of the {esc(source)}</h4>')
            parts.append('<table class="qa-examples"><thead><tr><th>video_id</th><th>type</th><th>question</th>'
                         "<th>candidates</th><th>truth</th><th>answer</th><th></th></tr></thead><tbody>")
            for e in examples:
                right = e.get("correct") is True
                mark = "\u2713" if right else "\u2717"
                parts.append(
                    f'<tr class="{"right" if right else "wrong"}"><td>{esc(_fmt(e.get("video_id")))}</td>'
                    f'<td>{esc(_fmt(e.get("type")))}</td><td>{esc(_fmt(e.get("question")))}</td>'
                    f'<td>{esc(" | ".join(str(c) for c in e.get("candidates") or []))}</td>'
                    f'<td>{esc(_fmt(e.get("answer")))}</td><td>{esc(_fmt(e.get("predicted")))}</td>'
                    f"<td>{mark}</td></tr>"
                )
            parts.append("</tbody></table>")
        parts.append("</div>")
    return "".join(parts)


def totals_html(status: dict, originals_note: str) -> str:
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


def run_eval_captions(run: dict) -> str | None:
    """original or generated: the captions a run was validated on (no --captions:
    generated), or None when its config.json could not be read."""
    config = run.get("config")
    if not isinstance(config, dict) or not config:
        return None
    extra = config.get("extra") if isinstance(config.get("extra"), dict) else {}
    return extra.get("eval_captions") or ("original" if config.get("captions") else "generated")


def runs_html(runs: list[dict], media: Any) -> str:
    if not runs:
        return '<p class="none">No training runs yet (<code>mama-augment train</code>).</p>'
    out = ['<div class="runs">']
    for run in runs:
        out.append(f'<article class="run" data-run="{esc(run["name"])}"><h3>{esc(run["name"])}</h3>')
        facts = [(k, run[k]) for k in ("loss", "backbone", "margin", "epochs", "batch_size", "augment", "seed", "step", "epoch")
                 if k in run]
        if run.get("task") == QA_TASK:
            facts = [("question answering on", run.get("base_run")), *facts]
        if facts:
            out.append('<p class="muted">' + " \u00b7 ".join(f"{esc(k)} {esc(_fmt(v))}" for k, v in facts) + "</p>")
        for error in run.get("errors", []):
            out.append(f'<p class="problem">cannot read {esc(error)}</p>')
        if run_eval_captions(run) == "generated":
            out.append(f'<p class="problem" data-eval-captions="generated">Trained and validated on generated '
                       f'captions alone: {esc(GENERATED_CAPTIONS_NOTE)}.</p>')
        pictures = [p for p in RunPaths.PICTURES if p in run.get("pictures", [])]
        pictures += [p for p in run.get("pictures", []) if p not in pictures]
        if pictures:
            out.append('<div class="pictures">')
            for name in pictures:
                url = media.url(f"{RUNS_DIR}/{run['name']}/{name}")
                if url:
                    out.append(f'<figure><img loading="lazy" src="{esc(url)}" alt="{esc(name)} of {esc(run["name"])}">'
                               f"<figcaption>{esc(name)}</figcaption></figure>")
            out.append("</div>")
        if run.get("evaluated") and run.get("task") == QA_TASK:
            out.append("<h4>Question answering (eval.json)</h4>")
            out.append(qa_eval_html(run.get("eval")))
        elif run.get("evaluated"):
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


def failed_html(keyframes: list[dict], caption_rows: list[dict], limit: int) -> tuple[str, int]:
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
