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
from mama_augment.datasets import CaptionSpec, Problems, locate_captions
from mama_augment.errors import MamaError, UsageError
from mama_augment.export.registry import get_format
from mama_augment.export.base import ShardContext, finish_files
from mama_augment.export.config import ExportConfig
from mama_augment.export.records import Sample, VideoItem
from mama_augment.export.select import Selector, SplitRule
from mama_augment.export.sources import JoinCounts, iter_videos, original_caption_rows, sorted_rows
from mama_augment.fileio import atomic_write_text
from mama_augment.manifest import (
    CAPTION_FLAGS,
    CAPTIONS,
    KEYFRAMES,
    make_folder,
    manifest_path,
    parts_dir,
    workdir_lock,
)
from mama_augment.quality.prompts import PromptBook
from mama_augment.stage import StageReport
from mama_augment.train.audit import load_run_weights, pair_weight_batches
from mama_augment.train.runs import RunPaths, load_run_config
from mama_augment.workread import ensure_compacted, file_fingerprint, ok_video_ids

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


def _read_state(out: Path) -> dict | None:
    return _read_json(out / STATE_DIR / STATE_FILE)


def _check_out(out: Path, overwrite: bool) -> dict | None:
    """The state of an existing export in ``out``; refuse folders that are not exports.

    A folder with our state folder but no readable state file is an export whose state
    was damaged: only ``--overwrite`` may start it over.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    state_dir = out / STATE_DIR
    if state_dir.exists() and not state_dir.is_dir():
        raise MamaError(f"--out {out}: {STATE_DIR} is a file, not the folder where an export keeps its state; "
                        "choose another --out")
    state = _read_state(out)
    if state is None and out.is_dir() and any(p.name != STATE_DIR for p in out.iterdir()):
        if not state_dir.is_dir():
            raise UsageError(f"--out {out} is not empty and holds no mama-augment export; choose a new or empty folder")
        if not overwrite:
            raise MamaError(f"the export in {out} is damaged: {STATE_DIR}/{STATE_FILE} is missing or unreadable; "
                            "pass --overwrite to start it over")
    return state


def _shard_record(path: Path, out: Path, parts: Path) -> dict | None:
    """A shard's record, when it is whole and every file it names is there; None means
    the shard is written again."""
    record = _read_json(path)
    if record is None:
        return None
    index = record.get("index")
    fields_ok = (
        isinstance(index, int) and not isinstance(index, bool) and path.name == f"shard-{index:06d}.json"
        and isinstance(record.get("samples"), int)
        and all(isinstance(record.get(k), str) for k in ("first_key", "last_key", "first_video_id", "last_video_id"))
        and isinstance(record.get("planned"), int)
        and isinstance(record.get("files"), list) and all(_inside(f) for f in record["files"])
        and isinstance(record.get("parts", []), list) and all(_inside(p) for p in record.get("parts", []))
        and isinstance(record.get("pictures", []), list) and all(_inside(p) for p in record.get("pictures", []))
        and isinstance(record.get("failed"), list)
        and all(isinstance(f, dict) and {"video_id", "error_kind", "error"} <= f.keys() for f in record["failed"])
    )
    if not fields_ok:
        log.warning("the record %s is damaged; its shard is written again", path)
        return None
    present = [out / f for f in record["files"]] + [parts / p for p in record.get("parts", [])]
    if not all(path.is_file() for path in present):
        log.warning("files of shard %d are missing; it is written again", index)
        return None
    return record


def _inside(name) -> bool:
    """A relative path that stays in its folder."""
    return isinstance(name, str) and bool(name) and not Path(name).is_absolute() and ".." not in Path(name).parts


def _owned_files(out: Path) -> set[str]:
    """The files (relative to ``out``) that the export's own records say it wrote:
    ``index.json`` and the files it lists, and every shard record's files and pictures."""
    owned = {INDEX_FILE}
    index = _read_json(out / INDEX_FILE) or {}
    if isinstance(index.get("files"), list):
        owned.update(f for f in index["files"] if _inside(f))
    shard_dir = out / STATE_DIR / "shards"
    for path in sorted(shard_dir.glob("shard-*.json")) if shard_dir.is_dir() else ():
        record = _read_json(path) or {}
        for key in ("files", "pictures"):
            if isinstance(record.get(key), list):
                owned.update(f for f in record[key] if _inside(f))
    return owned


def _clear(out: Path) -> list[str]:
    """Remove an earlier export from ``out`` (known to be ours): only the files its
    records name, then the folders this left empty, keeping the lock and the sort runs
    of this export's inputs. Returns the files left in place (relative to ``out``):
    the export did not write them, so they are not its to delete."""
    root = os.path.realpath(out)
    for rel in sorted(_owned_files(out)):
        path = out / rel
        # A recorded name under a folder that now leads elsewhere (a link) is not ours.
        if os.path.commonpath([root, os.path.realpath(path.parent)]) != root:
            continue
        if path.is_symlink() or path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            _remove_empty_parents(path.parent, out)
    state_dir = out / STATE_DIR
    for inner in state_dir.iterdir() if state_dir.is_dir() else ():
        if inner.name not in (".locks", "tmp"):
            shutil.rmtree(inner) if inner.is_dir() and not inner.is_symlink() else inner.unlink()
    left = []
    for folder, dirs, files in os.walk(out):
        if Path(folder) == out:
            dirs[:] = [d for d in dirs if d != STATE_DIR]
        left += [os.path.relpath(os.path.join(folder, name), out) for name in files]
    return sorted(left)


def _remove_empty_parents(folder: Path, out: Path) -> None:
    while folder != out and out in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): everything above stays too
            return
        folder = folder.parent


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


def _originals_spec(config: ExportConfig, workdir: Path) -> CaptionSpec | None:
    """The original captions: ``--captions`` (and ``--captions-format``), else the
    captions the ``--run`` was trained on, as its config.json records them."""
    if config.captions:
        spec = CaptionSpec.of(config.captions, config.captions_format)
        for path in spec.paths:
            if not Path(path).is_file():
                raise UsageError(f"--captions {path}: no such file")
        return spec
    if config.run is None:
        return None
    paths = RunPaths(Path(config.run))
    if not paths.config.is_file():
        raise UsageError(f"--run {paths.root} is not a training run folder (no {RunPaths.CONFIG})")
    recorded = load_run_config(paths)
    if not recorded.captions:
        return None
    spec = locate_captions(recorded.captions, recorded.captions_format, [workdir, paths.root])
    if spec is None:
        log.warning("the run's captions %s are not found; exporting generated captions only", recorded.captions)
    return spec


def _split_fractions(config: ExportConfig) -> dict | None:
    """The hash split's fractions ``--split`` places videos with (``--split-by train``):
    the ``--run``'s, else train's defaults; None where no hash split can be used."""
    if config.split is None or config.split_by != "train":
        return None
    from mama_augment.train.config import TrainConfig

    if config.run is None:
        trained = TrainConfig()
    else:
        paths = RunPaths(Path(config.run))
        if not paths.config.is_file():
            raise UsageError(f"--run {paths.root} is not a training run folder (no {RunPaths.CONFIG})")
        trained = load_run_config(paths)
    return {"test_fraction": trained.test_fraction, "val_fraction": trained.val_fraction}


def _split_rule(config: ExportConfig, originals: CaptionSpec | None, splits: set[str],
                fractions: dict | None) -> SplitRule | None:
    """How ``--split`` places each video, once the original captions' splits are known."""
    if config.split is None:
        return None
    if config.split_by == "column":
        _check_split(config.split, originals, splits)
        return SplitRule(config.split, "column")
    from mama_augment.datasets.splits import SPLIT_ALIASES, SPLITS, normalize_split

    if normalize_split(config.split) is None:
        there = f" (there: {', '.join(sorted(splits))})" if splits else ""
        raise UsageError(f"--split {config.split!r} is not a split train makes: {', '.join(SPLITS)} "
                         f"(also spelt {', '.join(a for a in SPLIT_ALIASES if a not in SPLITS)}); to select by "
                         f"the captions' own split values use --split-by column{there}")
    return SplitRule(config.split, "train", has_split=bool(splits), **(fractions or {}))


def _check_split(split: str | None, originals: CaptionSpec | None, splits: set[str]) -> None:
    """``--split-by column``: ``--split`` must name a split of the original captions: an
    unknown one would drop every video and leave an empty export."""
    if split is None or split in splits:
        return
    if originals is None:
        raise UsageError(f"--split {split} selects videos by the split of the original captions: "
                         "give --captions (or a --run trained on captions)")
    if not splits:
        raise UsageError(f"--split {split}: the original captions ({', '.join(map(str, originals.paths))}) "
                         "give no split to any video")
    raise UsageError(f"--split {split!r} is not a split of the original captions; "
                     f"choose one of: {', '.join(sorted(splits))}")


def _samples(item: VideoItem, unit: str, start: int) -> list[Sample]:
    if unit == "video":
        return [Sample(key=f"{start:09d}", video=item)]
    return [Sample(key=f"{start + i:09d}", video=item, caption=entry) for i, entry in enumerate(item.captions)]


# ----------------------------------------------------------------------------- the run


def run_export(config: ExportConfig, workdir: str | os.PathLike, progress: bool = False) -> StageReport:
    """Export the work folder's videos and captions to ``config.out`` in ``config.format``."""
    started = time.monotonic()
    config.validate()
    workdir = Path(workdir)
    fmt = get_format(config.format)
    unit = config.unit or fmt.units[0]
    if unit not in fmt.units:
        raise UsageError(f"--unit {unit} is not available for {fmt.name}; choose {' or '.join(fmt.units)}")
    if not manifest_path(workdir, KEYFRAMES).exists() and not parts_dir(workdir, KEYFRAMES).is_dir():
        raise UsageError(f"no keyframes manifest in {workdir}: run `mama-augment keyframes` first")
    for spec in (KEYFRAMES, CAPTIONS, CAPTION_FLAGS):
        ensure_compacted(workdir, spec)
    flags_path = manifest_path(workdir, CAPTION_FLAGS)
    if (config.drop_flags or config.dedupe) and not flags_path.exists():
        raise UsageError("--drop-flags and --dedupe need caption_flags.parquet: run `mama-augment filter` first")
    with_flags = flags_path.exists()
    originals = _originals_spec(config, workdir)
    needs_weights = config.min_weight is not None or bool(config.drop_least_trusted)
    weights = load_run_weights(Path(config.run), config.drop_least_trusted, needs_weights) if config.run else None
    prompts = PromptBook(workdir, extra=[config.prompt] if config.prompt else [])
    fallback_prompt = load_prompt(config.prompt or DEFAULT_PROMPT)

    inputs = {
        "keyframes": file_fingerprint(manifest_path(workdir, KEYFRAMES)),
        "captions": file_fingerprint(manifest_path(workdir, CAPTIONS)),
        "caption_flags": file_fingerprint(flags_path) if with_flags else None,
        "original_captions": None if originals is None else {
            "files": [file_fingerprint(Path(p)) for p in originals.paths], "formats": originals.formats,
        },
        "pair_weights": file_fingerprint(weights.path) if weights else None,
    }
    split_fractions = _split_fractions(config)
    identity_hash = config.identity_hash(unit, inputs, split_fractions)
    out = Path(config.out)
    state = _check_out(out, config.overwrite)
    created = not out.exists()
    state_dir = out / STATE_DIR
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a folder the user named that cannot be written: their choice to change
        raise UsageError(f"--out {out} cannot be written ({exc.strerror or exc}); choose a folder you can write to") \
            from None

    report = StageReport(stage="export", output=out)
    with workdir_lock(state_dir, "export"):
        state = _read_state(out)
        replace = config.overwrite or (state is not None and state.get("identity_hash") != identity_hash)
        if replace and state is not None and not config.overwrite:
            raise UsageError(
                f"{out} holds an export made with other options or inputs; pass --overwrite to replace it, "
                "or choose another --out"
            )
        if not replace and state is not None and state.get("complete"):
            index = _read_json(out / INDEX_FILE) or {}
            report.total = report.skipped = int(index.get("counts", {}).get("samples", 0))
            report.extra.update({"format": fmt.name, "note": "already complete; nothing to do"})
            report.seconds = time.monotonic() - started
            return report
        # The original captions are read (and sorted) before anything is written or
        # replaced, so a file that cannot be used leaves the folder as it was.
        shutil.rmtree(state_dir / "tmp", ignore_errors=True)  # sort runs of a killed export
        problems = Problems()
        splits: set[str] = set()
        try:
            original_rows = (
                original_caption_rows(originals, ok_video_ids(workdir), state_dir / "tmp", config.batch_rows,
                                      config.sort_memory_rows, problems, splits)
                if originals is not None else None
            )
            split_rule = _split_rule(config, originals, splits, split_fractions)
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        if replace:
            kept = _clear(out)  # an earlier export, or one whose state was damaged (see _check_out)
            if kept:
                log.warning("--overwrite left %d file(s) in %s that the export did not write, e.g. %s",
                            len(kept), out, kept[0])
                report.extra["kept_files"] = (
                    f"{len(kept)} file(s) the export did not write were left in {out}, e.g. {kept[0]}")
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
            config, workdir, fmt, unit, out, state_dir, original_rows, weights, with_flags, prompts, fallback_prompt,
            report, progress, split_rule,
        )
        shards["counts"]["original_captions"] = None if originals is None else {
            "files": [str(Path(p).resolve()) for p in originals.paths],
            "formats": list(originals.formats) if originals.formats else None,
            "problems": dict(problems.counts),
        }
        for kind, count in problems.counts.items():
            report.extra[f"original_captions_{kind}"] = count
        files = [f for shard in shards["shards"] for f in shard["files"]]
        files += finish_files(fmt, out, state_dir / "parts", shards["shards"])
        index = {
            "format": fmt.name,
            "unit": unit,
            "mama_augment_version": __version__,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "workdir": str(workdir.resolve()),
            "options": config.identity(unit, inputs, split_fractions),
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
    if split_rule is not None:
        report.extra["split"] = split_rule.describe()
    return report


def _count_failures(report: StageReport, failures: list[dict]) -> None:
    """Samples that could not be written (this run's, and those of shards written before)."""
    for failure in failures:
        report.failed += 1
        report.failures_by_kind[failure["error_kind"]] += 1
        report.failure_examples.setdefault(failure["error_kind"], f"{failure['video_id']}: {failure['error']}")


def _export_shards(config, workdir, fmt, unit, out, state_dir, original_rows, weights, with_flags, prompts,
                   fallback_prompt, report, progress, split_rule: SplitRule | None = None) -> dict:
    shard_dir = make_folder(state_dir / "shards")
    parts = make_folder(state_dir / "parts")
    tmp = state_dir / "tmp"
    recorded = {}
    for path in shard_dir.glob("shard-*.json"):
        record = _shard_record(path, out, parts)
        if record is not None:
            recorded[record["index"]] = record

    join = JoinCounts()
    selector = Selector(config, weights.dropped_pair_ids if weights is not None else None, split_rule)
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
            "pictures": result.pictures,
            "parts": sorted(p.name for p in parts.glob(f"part-{index:06d}.*")),
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
            "file": RunPaths.PAIR_WEIGHTS,
            "weighted": weights.weighted,
            "pairs_in_run": weights.total_pairs,
            "least_trusted_threshold": weights.least_trusted_threshold,
        },
    }
    for key in ("flags_missing", "flags_stale", "videos_without_captions", "kept_without_weight", "kept_without_flags"):
        if counts.get(key):
            report.extra[key] = counts[key]
    for reason, count in selection["dropped"].items():
        report.extra[f"dropped_{reason}"] = count
    return {"shards": shards, "counts": counts}
