"""What a work folder holds: rows done / failed / pending per stage, errors, models, disk.

``workdir_status(workdir)`` reads only small columns of the manifests (never the
keyframe embeddings) and never raises for a damaged file: a manifest or run it cannot
read is reported with the reason, so ``mama-augment status`` is the first thing to run
on a work folder that looks wrong.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mama_augment.configfile import CONFIGS_DIR, read_run_config
from mama_augment.errors import MamaError, UsageError
from mama_augment.manifest import (
    CAPTIONS,
    KEYFRAMES,
    STATUS_FAILED,
    STATUS_OK,
    ManifestSpec,
    manifest_path,
    parts_dir,
    read_manifest,
)
from mama_augment.train.runs import QA_TASK, RUNS_DIR, RunPaths
from mama_augment.workread import is_ok

TOP_ERROR_KINDS = 10
UNKNOWN_KIND = "unknown"

_KEYFRAMES_COLUMNS = ["status", "error_kind", "error", "embedder", "decode_backend", "media_type", "created_at"]
_CAPTIONS_COLUMNS = ["status", "error_kind", "error", "model", "prompt_name", "backend", "created_at"]


def _most_common(values) -> list[tuple[str, int]]:
    """(value, count) of an Arrow string array, most common first, ties in the order
    first seen (as ``Counter.most_common``), nulls and empty strings left out.

    Counted by Arrow: a work folder of hundreds of thousands of rows never becomes
    Python lists.
    """
    import numpy as np
    import pyarrow.compute as pc

    values = pc.drop_null(values)
    values = values.filter(pc.not_equal(values, ""))
    if len(values) == 0:
        return []
    counted = pc.value_counts(values)  # in the order each value is first seen
    names = counted.field("values").to_pylist()
    counts = counted.field("counts").to_numpy()
    order = np.argsort(-counts, kind="stable")
    return [(names[i], int(counts[i])) for i in order]


def _error_kinds(table) -> list[dict]:
    """Most common error kinds of the failed rows, each with one example message."""
    import pyarrow.compute as pc

    failed = table.filter(pc.invert(is_ok(table.column("status"))))
    if failed.num_rows == 0:
        return []
    kinds = pc.fill_null(failed.column("error_kind"), "")
    kinds = pc.if_else(pc.equal(kinds, ""), UNKNOWN_KIND, kinds)
    messages = failed.column("error")
    top = _most_common(kinds)[:TOP_ERROR_KINDS]
    result = []
    for kind, count in top:
        first = pc.index(kinds, kind).as_py()  # the first failed row of this kind
        result.append({"kind": kind, "count": count, "example": messages[first].as_py() or ""})
    return result


def _count_status(status, value: str) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(pc.equal(status, value)).as_py() or 0)


def _inspect_parts(workdir: Path, spec: ManifestSpec) -> tuple[int, list[dict]]:
    """Number of part files not yet compacted, and the ones that cannot be read."""
    directory = parts_dir(workdir, spec)
    if not directory.is_dir():
        return 0, []
    parts = sorted(directory.glob("part-*.parquet"))
    unreadable = []
    for part in parts:
        try:
            pq.read_metadata(part)
        except Exception as exc:  # any damage: truncated, not Parquet, unreadable
            unreadable.append({"path": str(part.relative_to(workdir)), "error": _short(exc)})
    return len(parts), unreadable


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(workdir: Path, spec: ManifestSpec, columns: list[str]) -> tuple[Any, dict]:
    """The merged manifest (selected columns) and the facts every stage reports."""
    info: dict[str, Any] = {
        "manifest": spec.filename,
        "exists": manifest_path(workdir, spec).exists(),
        "error": None,
    }
    parts, unreadable = _inspect_parts(workdir, spec)
    info["uncompacted_parts"] = parts
    info["unreadable_parts"] = unreadable
    if not info["exists"] and parts == 0:
        return None, info
    try:
        table = read_manifest(workdir, spec, columns=columns)
    except MamaError as exc:
        info["error"] = _short(exc)
        return None, info
    except Exception as exc:  # a schema mismatch or another damage pyarrow reports
        info["error"] = f"cannot read {spec.filename}: {_short(exc)}"
        return None, info
    if parts:
        info["exists"] = True
    return table, info


def _last_written(table) -> str | None:
    import pyarrow.compute as pc

    latest = pc.max(table.column("created_at")).as_py()
    return latest.isoformat() if latest is not None else None


def _keyframes_status(workdir: Path) -> tuple[dict, Any]:
    """The keyframes facts, and the ids of its ``ok`` rows (an Arrow array; None when
    the manifest cannot be read)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table, info = _read(workdir, KEYFRAMES, _KEYFRAMES_COLUMNS)
    info.update(rows=0, done=0, failed=0, pending=None)
    info["pending_note"] = "keyframes cannot know what is pending without its inputs; rerun it to resume"
    if table is None:
        return info, (pa.array([], pa.string()) if info["error"] is None else None)
    status = table.column("status")
    ok = is_ok(status)
    info["rows"] = table.num_rows
    info["done"] = _count_status(status, STATUS_OK)
    info["failed"] = _count_status(status, STATUS_FAILED)
    info["error_kinds"] = _error_kinds(table)
    info["embedders"] = dict(_most_common(table.column("embedder").filter(ok)))
    info["decoders"] = dict(_most_common(table.column("decode_backend")))
    info["media_types"] = dict(_most_common(table.column("media_type")))
    info["last_written"] = _last_written(table)
    ok_ids = pc.unique(table.column("video_id").filter(ok))
    return info, ok_ids


def _captions_per_video(workdir: Path, max_index: int | None) -> int:
    """How many captions each grid should get: the last caption run's setting."""
    record = read_run_config(workdir, "caption")
    if record:
        value = (record.get("config") or {}).get("num_captions")
        if isinstance(value, int) and value > 0:
            return value
    return (max_index if max_index is not None else -1) + 1


def _captions_status(workdir: Path, ok_ids) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table, info = _read(workdir, CAPTIONS, _CAPTIONS_COLUMNS)
    info.update(rows=0, done=0, failed=0, pending=None, videos_pending=None, models=[])
    per_video = pa.table({"video_id": pa.array([], pa.string()), "video_id_count": pa.array([], pa.int64())})
    max_index = None
    if table is not None:
        status = table.column("status")
        max_index = pc.max(table.column("caption_index")).as_py()
        info["rows"] = table.num_rows
        info["done"] = _count_status(status, STATUS_OK)
        info["failed"] = _count_status(status, STATUS_FAILED)
        info["error_kinds"] = _error_kinds(table)
        per_video = table.select(["video_id"]).group_by("video_id", use_threads=False).aggregate(
            [("video_id", "count")])
        combos = pa.table({
            "model": pc.fill_null(table.column("model"), ""),
            "prompt_name": pc.fill_null(table.column("prompt_name"), ""),
            "backend": pc.fill_null(table.column("backend"), ""),
            "ok": is_ok(status),
        }).group_by(["model", "prompt_name", "backend", "ok"], use_threads=False).aggregate([("ok", "count")])
        models: dict[tuple, dict] = {}
        for combo in combos.to_pylist():  # one row per model, prompt, backend and outcome: few
            model, prompt, backend = combo["model"], combo["prompt_name"], combo["backend"]
            entry = models.setdefault(
                (model, prompt, backend),
                {"model": model, "prompt_name": prompt, "backend": backend, "ok": 0, "failed": 0},
            )
            entry["ok" if combo["ok"] else "failed"] += combo["ok_count"]
        info["models"] = sorted(models.values(), key=lambda e: -(e["ok"] + e["failed"]))
        info["last_written"] = _last_written(table)
        info["videos_captioned"] = per_video.num_rows
    elif info["error"] is not None:
        return info
    if ok_ids is not None:
        captions_per_video = _captions_per_video(workdir, max_index)
        info["captions_per_video"] = captions_per_video
        where = pc.index_in(ok_ids, value_set=per_video.column("video_id"))
        written = pc.fill_null(pc.take(per_video.column("video_id_count"), where), 0).to_numpy()
        info["pending"] = int(np.maximum(0, captions_per_video - written).sum())
        info["videos_pending"] = int(pc.sum(pc.is_null(where)).as_py() or 0)
        info["pending_note"] = (
            f"{captions_per_video} caption(s) per ok keyframes row, minus the caption rows already written"
        )
    else:
        info["pending_note"] = "unknown: keyframes.parquet cannot be read"
    return info


# ----------------------------------------------------------------------------- runs


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _norm_metric(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def find_metric(evaluation: dict, direction: str, metric: str = "r@1") -> float | None:
    """A headline number of ``eval.json`` whatever its nesting.

    ``direction`` is ``t2v`` or ``v2t``; keys such as ``text_to_video.R@1``,
    ``t2v_r1`` or ``t2v.R1`` all match. Per-concept entries are ignored.
    """
    words = {"t2v": ("t2v", "texttovideo", "text2video"), "v2t": ("v2t", "videototext", "video2text")}[direction]
    wanted = _norm_metric(metric)
    flat = list(_flatten(evaluation).items())
    flat.sort(key=lambda item: not item[0].lower().startswith("test"))  # the test split first
    for path, value in flat:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        norm = _norm_metric(path)
        if "concept" in path.lower():
            continue
        if any(w in norm for w in words) and norm.endswith(wanted):
            return float(value)
    return None


def _count_lines_and_last(path: Path) -> tuple[int, dict | None]:
    count = 0
    last_line = None
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                count += 1
                last_line = line
    last = None
    if last_line is not None:
        try:
            last = json.loads(last_line)
        except ValueError:
            last = None  # a line cut by a kill: the count still says how far it got
    return count, last if isinstance(last, dict) else None


def read_run(run_dir: Path) -> dict:
    """One training run folder: its configuration, progress and evaluation."""
    run: dict[str, Any] = {"name": run_dir.name, "path": str(run_dir), "errors": []}
    paths = RunPaths(run_dir)
    config_path = paths.config
    config: dict = {}
    if config_path.exists():
        try:
            loaded = json.loads(config_path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as exc:
            run["errors"].append(f"{RunPaths.CONFIG}: {_short(exc)}")
    # config.json may hold the options at the top or under "config".
    options = config.get("config") if isinstance(config.get("config"), dict) else config
    run["config"] = options
    for key in ("loss", "backbone", "margin", "epochs", "batch_size", "augment", "seed"):
        if key in options:
            run[key] = options[key]
    if options.get("task") == QA_TASK:
        run["task"] = QA_TASK
        run["base_run"] = options.get("base_run")
    metrics_path = paths.metrics
    run["metrics_rows"] = 0
    if metrics_path.exists():
        try:
            count, last = _count_lines_and_last(metrics_path)
            run["metrics_rows"] = count
            run["last_metrics"] = last
            if last:
                for key in ("step", "epoch"):
                    if key in last:
                        run[key] = last[key]
        except OSError as exc:
            run["errors"].append(f"{RunPaths.METRICS}: {_short(exc)}")
    eval_path = paths.eval
    run["evaluated"] = False
    if eval_path.exists():
        try:
            evaluation = json.loads(eval_path.read_text(encoding="utf-8"))
            run["evaluated"] = True
            run["eval"] = evaluation
            if isinstance(evaluation, dict) and run.get("task") == QA_TASK:
                run["qa_accuracy"] = qa_accuracy(evaluation)
            elif isinstance(evaluation, dict):
                run["t2v_r1"] = find_metric(evaluation, "t2v")
                run["v2t_r1"] = find_metric(evaluation, "v2t")
        except (OSError, ValueError) as exc:
            run["errors"].append(f"{RunPaths.EVAL}: {_short(exc)}")
    run["pictures"] = sorted(p.name for p in run_dir.glob("*.png"))
    run["checkpoints"] = sorted(p.name for p in run_dir.glob("*.safetensors"))
    return run


def qa_accuracy(evaluation: dict) -> float | None:
    """A QA run's headline accuracy: test before val, trained heads before zero-shot."""
    for split in ("test", "val"):
        entry = evaluation.get(split)
        if not isinstance(entry, dict):
            continue
        for kind in ("trained", "zero_shot"):
            score = entry.get(kind)
            if isinstance(score, dict) and isinstance(score.get("accuracy"), (int, float)):
                return float(score["accuracy"])
    return None


def list_runs(workdir: Path) -> list[dict]:
    runs_dir = workdir / RUNS_DIR
    if not runs_dir.is_dir():
        return []
    return [read_run(d) for d in sorted(runs_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def _runs_status(workdir: Path) -> dict:
    runs = list_runs(workdir)
    summary_keys = ("name", "loss", "backbone", "margin", "epochs", "step", "epoch", "metrics_rows",
                    "evaluated", "t2v_r1", "v2t_r1", "task", "qa_accuracy", "pictures", "checkpoints", "errors")
    return {
        "count": len(runs),
        "evaluated": sum(1 for r in runs if r["evaluated"]),
        "with_errors": sum(1 for r in runs if r["errors"]),
        "runs": [{k: r[k] for k in summary_keys if k in r} for r in runs],
    }


# ----------------------------------------------------------------------------- disk


def _tree_size(path: Path) -> tuple[int, int]:
    """Bytes and files under ``path`` (files themselves count too); links not followed."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size, 1
    except OSError:
        return 0, 0
    total = files = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                            files += 1
                    except OSError:
                        continue
        except OSError:
            continue
    return total, files


def disk_usage(workdir: Path) -> list[dict]:
    """Size of every top-level entry of the work folder, largest first."""
    rows = []
    for entry in sorted(workdir.iterdir()):
        size, files = _tree_size(entry)
        rows.append({"name": entry.name + ("/" if entry.is_dir() else ""), "bytes": size, "files": files})
    rows.sort(key=lambda r: (-r["bytes"], r["name"]))
    return rows


def workdir_status(workdir: str | os.PathLike) -> dict:
    """Everything ``mama-augment status`` shows, as plain JSON-able data.

    Keys: ``workdir``, ``stages`` (``keyframes``, ``captions``, ``runs``), ``configs``
    (the recorded configuration of each stage's latest run), ``disk`` and
    ``disk_total_bytes``, ``problems`` (one line per file that could not be read).
    """
    workdir = Path(workdir)
    if not workdir.exists():
        raise UsageError(f"the work folder {workdir} does not exist")
    if not workdir.is_dir():
        raise UsageError(f"the work folder {workdir} is not a folder")
    keyframes, ok_ids = _keyframes_status(workdir)
    captions = _captions_status(workdir, ok_ids)
    runs = _runs_status(workdir)
    configs = {}
    config_dir = workdir / CONFIGS_DIR
    if config_dir.is_dir():
        for path in sorted(config_dir.glob("*.json")):
            record = read_run_config(workdir, path.stem)
            if record is not None and record.get("stage") == path.stem:
                configs[path.stem] = {"path": str(path.relative_to(workdir)), "recorded_at": record.get("recorded_at")}
    disk = disk_usage(workdir)
    problems = []
    for stage in (keyframes, captions):
        if stage["error"]:
            problems.append(stage["error"])
        for part in stage["unreadable_parts"]:
            problems.append(f"{part['path']}: {part['error']} (its rows are ignored and will be redone)")
    for run in runs["runs"]:
        for error in run.get("errors", []):
            problems.append(f"{RUNS_DIR}/{run['name']}/{error}")
    return {
        "workdir": str(workdir),
        "stages": {"keyframes": keyframes, "captions": captions, "runs": runs},
        "configs": configs,
        "disk": disk,
        "disk_total_bytes": sum(r["bytes"] for r in disk),
        "problems": problems,
    }
