"""``run_export``: the work folder -> shards of a format, resumable and atomic per shard.

The export is a deterministic stream: ``ok`` videos of ``keyframes.parquet`` in
``video_id`` order, joined with their captions, weights and flags, filtered, cut into
samples (a video, or one caption of a video) numbered from 0, and grouped into shards
of ``shard_size`` samples. Each shard is written atomically by the format and then
recorded by a small JSON file in ``OUT/.mama-export/shards/``; that record is what
makes a shard done. A killed export, run again with the same options and inputs,
walks the same stream, skips recorded shards and writes the rest: no shard is written
twice, none is half there. Temporary files a kill left behind are removed first.

The export folder holds only what the export wrote; ``index.json`` (written last)
lists the options, the inputs, every shard and the counts of what was dropped and why.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

from mama_augment import __version__
from mama_augment.caption.prompts import DEFAULT_PROMPT, load_prompt
from mama_augment.errors import UsageError
from mama_augment.export.registry import get_format
from mama_augment.export.base import ShardContext, finish_files
from mama_augment.export.config import ExportConfig
from mama_augment.export.records import Sample, VideoItem
from mama_augment.export.select import Selector, validate_filters
from mama_augment.export.sources import (
    PAIR_WEIGHTS_FILE,
    JoinCounts,
    ensure_compacted,
    file_fingerprint,
    iter_videos,
    load_run_weights,
    original_caption_batches,
    pair_weight_batches,
    sorted_rows,
)
from mama_augment.fileio import atomic_write_text
from mama_augment.manifest import CAPTION_FLAGS, CAPTIONS, KEYFRAMES, manifest_path, parts_dir, workdir_lock
from mama_augment.quality.prompts import PromptBook
from mama_augment.stage import StageReport

log = logging.getLogger(__name__)

STATE_DIR = ".mama-export"
STATE_FILE = "state.json"
INDEX_FILE = "index.json"
_TMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")


# ----------------------------------------------------------------------------- the export folder


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def _check_out(out: Path) -> dict | None:
    """The state of an existing export in ``out``; refuse folders that are not exports."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    state = _read_json(out / STATE_DIR / STATE_FILE)
    if state is None and out.is_dir() and any(p.name != STATE_DIR for p in out.iterdir()):
        raise UsageError(f"--out {out} is not empty and holds no mama-augment export; choose a new or empty folder")
    return state


def _clear(out: Path) -> None:
    """Remove an earlier export from ``out`` (known to be ours), keeping the lock."""
    for child in out.iterdir():
        if child.name == STATE_DIR:
            for inner in child.iterdir():
                if inner.name != ".locks":
                    shutil.rmtree(inner) if inner.is_dir() else inner.unlink()
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _remove_temporaries(out: Path) -> int:
    """Files a killed export left under temporary names (``atomic_path``'s ``.NAME.tmp-HEX``)."""
    removed = 0
    for folder, _, files in os.walk(out):
        for name in files:
            if _TMP_NAME.match(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


# ----------------------------------------------------------------------------- inputs


def _originals_path(config: ExportConfig, workdir: Path) -> Path | None:
    if config.captions is not None:
        path = Path(config.captions)
        if not path.is_file():
            raise UsageError(f"captions file not found: {path}")
        return path
    if config.run is None:
        return None
    recorded = _read_json(Path(config.run) / "config.json") or {}
    options = recorded.get("config") if isinstance(recorded.get("config"), dict) else recorded
    value = options.get("captions")
    if not isinstance(value, str) or not value:
        return None
    given = Path(value)
    for path in ([given] if given.is_absolute() else [given, Path(config.run) / given, workdir / given]):
        if path.is_file():
            return path
    log.warning("the run's captions file %s is not found; exporting generated captions only", value)
    return None


def _samples(item: VideoItem, unit: str, start: int) -> list[Sample]:
    if unit == "video":
        return [Sample(key=f"{start:09d}", video=item)]
    return [Sample(key=f"{start + i:09d}", video=item, caption=entry) for i, entry in enumerate(item.captions)]


# ----------------------------------------------------------------------------- the run


def run_export(config: ExportConfig, workdir: str | os.PathLike, progress: bool = False) -> StageReport:
    """Export the work folder's videos and captions to ``config.out`` in ``config.format``."""
    started = time.monotonic()
    workdir = Path(workdir)
    fmt = get_format(config.format)
    unit = config.unit or fmt.units[0]
    if unit not in fmt.units:
        raise UsageError(f"--unit {unit} is not available for {fmt.name}; choose {' or '.join(fmt.units)}")
    if config.shard_size < 1:
        raise UsageError("--shard-size must be at least 1")
    validate_filters(config)
    if not manifest_path(workdir, KEYFRAMES).exists() and not parts_dir(workdir, KEYFRAMES).is_dir():
        raise UsageError(f"no keyframes manifest in {workdir}: run `mama-augment keyframes` first")
    for spec in (KEYFRAMES, CAPTIONS, CAPTION_FLAGS):
        ensure_compacted(workdir, spec)
    flags_path = manifest_path(workdir, CAPTION_FLAGS)
    if (config.drop_flags or config.dedupe) and not flags_path.exists():
        raise UsageError("--drop-flags and --dedupe need caption_flags.parquet: run `mama-augment filter` first")
    with_flags = flags_path.exists()
    originals = _originals_path(config, workdir)
    needs_weights = config.min_weight is not None or bool(config.drop_least_trusted)
    weights = load_run_weights(Path(config.run), config.drop_least_trusted, needs_weights) if config.run else None
    prompts = PromptBook(workdir, extra=[config.prompt] if config.prompt else [])
    fallback_prompt = load_prompt(config.prompt or DEFAULT_PROMPT)

    inputs = {
        "keyframes": file_fingerprint(manifest_path(workdir, KEYFRAMES)),
        "captions": file_fingerprint(manifest_path(workdir, CAPTIONS)),
        "caption_flags": file_fingerprint(flags_path) if with_flags else None,
        "original_captions": file_fingerprint(originals),
        "pair_weights": file_fingerprint(weights.path) if weights else None,
    }
    identity_hash = config.identity_hash(unit, inputs)
    out = Path(config.out)
    state = _check_out(out)
    state_dir = out / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)

    report = StageReport(stage="export", output=out)
    with workdir_lock(state_dir, "export"):
        state = _read_json(state_dir / STATE_FILE) or state
        if state is not None and (config.overwrite or state.get("identity_hash") != identity_hash):
            if not config.overwrite:
                raise UsageError(
                    f"{out} holds an export made with other options or inputs; pass --overwrite to replace it, "
                    "or choose another --out"
                )
            _clear(out)
            state = None
        if state is not None and state.get("complete"):
            index = _read_json(out / INDEX_FILE) or {}
            report.total = report.skipped = int(index.get("counts", {}).get("samples", 0))
            report.extra.update({"format": fmt.name, "note": "already complete; nothing to do"})
            report.seconds = time.monotonic() - started
            return report
        removed = _remove_temporaries(out)
        if removed:
            log.info("removed %d temporary file(s) of an interrupted export", removed)
        _write_json(state_dir / STATE_FILE, {
            "identity_hash": identity_hash,
            "format": fmt.name,
            "unit": unit,
            "complete": False,
            "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        })
        shards = _export_shards(
            config, workdir, fmt, unit, out, state_dir, originals, weights, with_flags, prompts, fallback_prompt,
            report, progress,
        )
        files = [f for shard in shards["shards"] for f in shard["files"]]
        files += finish_files(fmt, out, state_dir / "parts", shards["shards"])
        index = {
            "format": fmt.name,
            "unit": unit,
            "mama_augment_version": __version__,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "workdir": str(workdir.resolve()),
            "options": config.identity(unit, inputs),
            "counts": shards["counts"],
            "files": files,
            "shards": [
                {k: shard[k] for k in ("index", "samples", "planned", "first_video_id", "last_video_id", "failed", "files")}
                for shard in shards["shards"]
            ],
        }
        if fmt.name == "webdataset" and shards["shards"]:
            index["urls"] = f"shard-{{000000..{len(shards['shards']) - 1:06d}}}.tar"
        _write_json(out / INDEX_FILE, index)
        _write_json(state_dir / STATE_FILE, {
            "identity_hash": identity_hash, "format": fmt.name, "unit": unit, "complete": True,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        })
        for leftover in ("parts", "tmp"):
            shutil.rmtree(state_dir / leftover, ignore_errors=True)
    report.seconds = time.monotonic() - started
    report.extra.update({
        "format": fmt.name, "unit": unit, "index": str(out / INDEX_FILE), "shards": len(shards["shards"]),
        "videos": shards["counts"]["videos"], "captions": shards["counts"]["captions"],
    })
    return report


def _count_failures(report: StageReport, failures: list[dict]) -> None:
    """Samples that could not be written (this run's, and those of shards written before)."""
    for failure in failures:
        report.failed += 1
        report.failures_by_kind[failure["error_kind"]] += 1
        report.failure_examples.setdefault(failure["error_kind"], f"{failure['video_id']}: {failure['error']}")


def _export_shards(config, workdir, fmt, unit, out, state_dir, originals, weights, with_flags, prompts,
                   fallback_prompt, report, progress) -> dict:
    shard_dir = state_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    parts = state_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / "tmp"
    recorded = {}
    for path in shard_dir.glob("shard-*.json"):
        record = _read_json(path)
        if record is not None:
            recorded[int(record["index"])] = record

    join = JoinCounts()
    selector = Selector(config, weights)
    original_rows = (
        sorted_rows(original_caption_batches(originals, config.batch_rows), "video_id", tmp, config.sort_memory_rows)
        if originals is not None else None
    )
    weight_rows = (
        sorted_rows(pair_weight_batches(weights.path, config.batch_rows), "video_id", tmp, config.sort_memory_rows)
        if weights is not None else None
    )
    videos: Iterator[VideoItem] = iter_videos(
        workdir, originals=original_rows, weights=weight_rows, with_flags=with_flags,
        batch_rows=config.batch_rows, counts=join,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit="video", desc=f"export {fmt.name}", dynamic_ncols=True, smoothing=0.1)

    shards: list[dict] = []
    buffer: list[Sample] = []
    counter = {"samples": 0, "prompts_unknown": 0}

    def flush(samples: list[Sample]) -> None:
        index = len(shards)
        planned = {
            "index": index,
            "planned": len(samples),
            "first_key": samples[0].key,
            "last_key": samples[-1].key,
            "first_video_id": samples[0].video.video_id,
            "last_video_id": samples[-1].video.video_id,
        }
        record = recorded.get(index)
        if record is not None:
            if any(record.get(k) != v for k, v in planned.items()):
                raise UsageError(
                    f"shard {index} of the interrupted export in {out} does not match what the inputs give now; "
                    "pass --overwrite to start over"
                )
            report.skipped += record["samples"]
            _count_failures(report, record["failed"])
            shards.append(record)
            return
        ctx = ShardContext(workdir=workdir, out=out, parts=parts, index=index, config=config, unit=unit,
                           prompts=prompts, fallback_prompt=fallback_prompt)
        result = fmt.write_shard(ctx, samples)
        record = {
            **planned,
            "samples": result.written,
            "videos": len({s.video.video_id for s in samples}),
            "captions": sum(len(s.captions) for s in samples),
            "failed": result.failed,
            "files": result.files,
            "prompts_unknown": ctx.prompts_unknown,
        }
        _write_json(shard_dir / f"shard-{index:06d}.json", record)
        report.done += result.written
        _count_failures(report, result.failed)
        shards.append(record)

    for item in videos:
        if bar is not None:
            bar.update(1)
        item = selector.select(item)
        if item is None:
            continue
        for sample in _samples(item, unit, counter["samples"]):
            buffer.append(sample)
            counter["samples"] += 1
            if len(buffer) >= config.shard_size:
                flush(buffer)
                buffer = []
    if buffer:
        flush(buffer)
    if bar is not None:
        bar.close()
    report.total = counter["samples"]
    selection = selector.counts.as_dict()
    counts = {
        "samples": counter["samples"],
        "written": sum(s["samples"] for s in shards),
        "failed": sum(len(s["failed"]) for s in shards),
        "videos": selection["videos_out"],
        "captions": sum(selection["captions_out"].values()),
        **selection,
        "videos_failed_in_keyframes": join.videos_failed,
        "generated_failed": join.generated_failed,
        "flags_missing": join.flags_missing,
        "flags_stale": join.flags_stale,
        "rows_without_video": dict(join.orphans),
        "prompts_unknown": sum(s.get("prompts_unknown", 0) for s in shards),
        "weights": None if weights is None else {
            "run": str(Path(config.run).resolve()),
            "file": PAIR_WEIGHTS_FILE,
            "weighted": weights.weighted,
            "pairs_in_run": weights.total_pairs,
            "least_trusted_threshold": weights.least_trusted_threshold,
        },
        "original_captions": str(Path(originals).resolve()) if originals is not None else None,
    }
    for key in ("flags_missing", "flags_stale", "videos_without_captions", "kept_without_weight", "kept_without_flags"):
        if counts.get(key):
            report.extra[key] = counts[key]
    for reason, count in selection["dropped"].items():
        report.extra[f"dropped_{reason}"] = count
    return {"shards": shards, "counts": counts}
