"""``run_filter``: flag every ``ok`` generated caption into ``caption_flags.parquet``.

The flags that compare a caption with the rest of the dataset (generic phrases,
near-duplicates) are measured over all captions at once, so every run recomputes
every row from ``captions.parquet``; the costly parts are cached in ``WORKDIR/cache``
(text embeddings, CLIP video embeddings), so a rerun or a resumed run is quick. Rows
go through the manifest's part writer and are compacted at the end; flags of captions
that no longer exist are dropped then. Nothing is ever removed from
``captions.parquet``: exports read the flags and drop what the user asks for.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mama_augment.configfile import record_run_config
from mama_augment.errors import MamaError, UsageError
from mama_augment.fileio import atomic_path
from mama_augment.manifest import (
    CAPTION_FLAGS,
    CAPTIONS,
    KEYFRAMES,
    STATUS_FAILED,
    STATUS_OK,
    PartWriter,
    compact,
    ensure_workdir,
    manifest_path,
    parts_dir,
    utc_now,
    workdir_lock,
)
from mama_augment.quality import FLAG_NAMES
from mama_augment.quality.config import FilterConfig
from mama_augment.quality.duplicates import find_duplicates
from mama_augment.quality.generic import GenericModel
from mama_augment.quality.prompts import PromptBook
from mama_augment.quality.text import PromptEcho, is_truncated, looks_like_instruction, tokens
from mama_augment.stage import StageReport
from mama_augment.workread import caption_sha256, ensure_compacted, generated_captions_table, ok_videos_table

log = logging.getLogger(__name__)
WRITE_CHUNK = 10_000


def _text_embedder(config: FilterConfig, workdir: Path):
    # The sentence encoders of training (same registry, same cache of embeddings).
    from mama_augment.train.text import cached_text_embeddings, get_text_encoder

    encoder = get_text_encoder(config.text_model, device="cpu" if config.device == "auto" else config.device)

    def embed(texts: list[str]) -> np.ndarray:
        vectors = np.asarray(cached_text_embeddings(encoder, texts, workdir / "cache" / "text"), dtype=np.float32)
        if not vectors.flags.writeable:  # straight from the cache file
            vectors = vectors.copy()
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # in place: no second copy
        return vectors

    return encoder.name, embed


def _max_tokens(sampling: str | None) -> int | None:
    try:
        value = json.loads(sampling).get("max_tokens") if sampling else None
    except (ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, (int, float)) else None


def run_filter(config: FilterConfig, workdir: str | os.PathLike, progress: bool = False) -> StageReport:
    """Compute the quality flags of every ``ok`` caption of ``captions.parquet``."""
    started = time.monotonic()
    config.validate()
    workdir = Path(workdir)
    if not manifest_path(workdir, CAPTIONS).exists() and not parts_dir(workdir, CAPTIONS).is_dir():
        raise UsageError(f"no captions manifest in {workdir}: run `mama-augment caption` first")
    workdir = ensure_workdir(workdir)
    report = StageReport(stage="filter", output=manifest_path(workdir, CAPTION_FLAGS))
    ensure_compacted(workdir, CAPTIONS)
    ensure_compacted(workdir, KEYFRAMES)
    with workdir_lock(workdir, "filter"):
        record_run_config(workdir, "filter", config.as_dict())
        damage = _remove_damaged_flags(workdir)
        if damage:
            report.extra["note"] = f"{CAPTION_FLAGS.filename} could not be read ({damage}); every row is computed again"
        ensure_compacted_own(workdir)
        _run_locked(config, workdir, report, progress)
    report.seconds = time.monotonic() - started
    return report


def _remove_damaged_flags(workdir: Path) -> str | None:
    """Delete a ``caption_flags.parquet`` that cannot be read; returns why, or None.

    Every row of it is recomputed by this run from ``captions.parquet``, so a damaged
    file (truncated by a full disk, say) holds nothing that would be lost.
    """
    main = manifest_path(workdir, CAPTION_FLAGS)
    if not main.exists():
        return None
    try:
        pq.read_table(main, columns=list(CAPTION_FLAGS.key))
        return None
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    log.warning("%s cannot be read (%s); computing every row again", main, reason)
    try:
        main.unlink()
    except OSError as exc:
        raise MamaError(f"{main} cannot be read ({reason}) nor removed: {exc.strerror or exc}") from None
    return reason


def ensure_compacted_own(workdir: Path) -> None:
    """Parts of a killed filter run (we hold the filter lock)."""
    if (workdir / ".parts" / CAPTION_FLAGS.name).is_dir():
        compact(workdir, CAPTION_FLAGS)


def _run_locked(config: FilterConfig, workdir: Path, report: StageReport, progress: bool) -> None:
    timings: dict[str, float] = {}
    clock = time.monotonic()
    captions = generated_captions_table(
        workdir, ["caption", "raw_output", "prompt_sha256", "completion_tokens", "sampling"]
    )
    # Columns, not a dict per row: at 200 000 videos a dict per keyframes row (with its
    # list of paths) and a token list per caption held gigabytes.
    videos = ok_videos_table(workdir, ["grid_rows", "grid_cols", "keyframe_paths"])
    grid = {
        video_id: (rows or 1, cols or 1, frames or 0)
        for video_id, rows, cols, frames in zip(
            videos.column("video_id").to_pylist(), videos.column("grid_rows").to_pylist(),
            videos.column("grid_cols").to_pylist(), pc.list_value_length(videos.column("keyframe_paths")).to_pylist())
    }
    frame_paths = videos.select(["video_id", "keyframe_paths"]) if config.clip_model else None
    del videos
    video_ids = captions.column("video_id").to_pylist()
    n = len(video_ids)
    report.total = n
    texts = [t or "" for t in captions.column("caption").to_pylist()]
    timings["read_s"] = time.monotonic() - clock

    # Per caption: length, truncation, echo of the prompt.
    clock = time.monotonic()
    prompts = PromptBook(workdir, extra=config.prompts)
    echo = PromptEcho()
    rendered: dict[tuple, list[str]] = {}
    known = prompts.all()
    word_counts = np.zeros(n, dtype=np.int32)
    truncated = np.zeros(n, bool)
    overlap = np.zeros(n)
    prompt_echo = np.zeros(n, bool)
    max_tokens: dict[str | None, int | None] = {}
    for start in range(0, n, WRITE_CHUNK):
        part = captions.slice(start, WRITE_CHUNK)
        columns = [part.column(c).to_pylist() for c in ("prompt_sha256", "raw_output", "completion_tokens", "sampling")]
        for i, (prompt_sha256, raw_output, completion_tokens, sampling) in enumerate(zip(*columns), start):
            words = tokens(texts[i])
            word_counts[i] = len(words)
            rows, cols, frames = grid.get(video_ids[i], (1, 1, 0))
            key = (prompt_sha256, rows, cols, frames)
            texts_to_compare = rendered.get(key)
            if texts_to_compare is None:
                own = prompts.get(prompt_sha256)
                candidates = ([own] if own else []) + [p for p in known if p is not own]
                texts_to_compare = [p.render(rows, cols, frames or rows * cols) for p in candidates]
                rendered[key] = texts_to_compare
            overlap[i] = echo.overlap(words, texts_to_compare)
            prompt_echo[i] = overlap[i] >= config.echo_threshold or looks_like_instruction(words)
            if sampling not in max_tokens:
                max_tokens[sampling] = _max_tokens(sampling)
            truncated[i] = is_truncated(texts[i], raw_output, completion_tokens, max_tokens[sampling])
    too_short = word_counts < config.min_words
    caption_indexes = captions.column("caption_index").to_pylist()
    del captions
    timings["text_s"] = time.monotonic() - clock

    # Near-duplicates across videos.
    clock = time.monotonic()
    # Only descriptions take part: an empty answer or an echo of the prompt is flagged for
    # what it is, not also as the duplicate of every other one like it.
    text_model, embed = _text_embedder(config, workdir)
    described = np.flatnonzero(~too_short & ~prompt_echo)
    duplicates = find_duplicates([texts[i] for i in described], [video_ids[i] for i in described], embed,
                                 threshold=config.duplicate_threshold, k=config.neighbours, method=config.nn_index)
    duplicates = duplicates.expand(described, n)
    timings["duplicates_s"] = time.monotonic() - clock

    # Generic: frequencies over distinct descriptions (one per near-duplicate group).
    clock = time.monotonic()
    first_of_group: dict[int, int] = {}
    for i in described.tolist():
        first_of_group.setdefault(int(duplicates.distinct_group[i]), i)
    model = GenericModel(config.common_word_df, config.phrase_df, config.phrase_min_count)
    model.fit([tokens(texts[i]) for i in first_of_group.values()])
    del first_of_group
    informative = np.zeros(n, dtype=np.int32)
    generic_flag = np.zeros(n, bool)
    phrases: list[tuple] = [()] * n  # most captions have none: the one empty tuple
    for i in range(n):
        result = model.check(tokens(texts[i]))
        informative[i], generic_flag[i] = result.informative, result.generic
        if result.phrases:
            phrases[i] = result.phrases
    timings["generic_s"] = time.monotonic() - clock

    # Image-text agreement.
    clip_score = np.full(n, np.nan)
    clip_z = np.full(n, np.nan)
    clip_errors: dict[str, tuple[str, str]] = {}
    if config.clip_model:
        clock = time.monotonic()
        from mama_augment.quality.clip import ClipAgreement, agreement

        scorer = ClipAgreement(config.clip_model, device=config.device, batch_size=config.clip_batch_size,
                               frames=config.clip_frames)
        clip_videos = sorted(set(video_ids))
        position = {v: k for k, v in enumerate(clip_videos)}
        paths = dict(zip(frame_paths.column("video_id").to_pylist(), frame_paths.column("keyframe_paths").to_pylist()))
        video_vectors, clip_errors = scorer.embed_videos(
            workdir, [(v, paths.get(v) or []) for v in clip_videos], progress=progress
        )
        del paths
        usable = np.array([v not in clip_errors for v in clip_videos])
        text_vectors = scorer.embed_texts(texts)
        caption_video = np.array([position[v] for v in video_ids], dtype=np.int64)
        clip_score, clip_z = agreement(video_vectors, text_vectors, caption_video, config.clip_others,
                                       config.seed, usable)
        timings["clip_s"] = time.monotonic() - clock

    # Rows.
    clock = time.monotonic()
    config_hash = config.config_hash()
    now = utc_now()
    flag_counts: Counter = Counter()
    flagged = 0
    main = manifest_path(workdir, CAPTION_FLAGS)
    previous = pq.read_table(main, columns=["video_id", "caption_index"]) if main.exists() else None
    with PartWriter(workdir, CAPTION_FLAGS) as writer:
        rows = []
        for i in range(n):
            clip_mismatch = None
            if config.clip_model and not np.isnan(clip_z[i]):
                clip_mismatch = bool(clip_z[i] < config.clip_min_z)
            values = {
                "too_short": bool(too_short[i]),
                "truncated": bool(truncated[i]),
                "generic": bool(generic_flag[i]) and not too_short[i] and not prompt_echo[i],
                "prompt_echo": bool(prompt_echo[i]),
                "near_duplicate": bool(duplicates.near_duplicate[i]),
                "clip_mismatch": clip_mismatch,
            }
            raised = [name for name in FLAG_NAMES if values.get(name)]
            flag_counts.update(raised)
            flagged += bool(raised)
            video_id = video_ids[i]
            error_kind, error = clip_errors.get(video_id, (None, None)) if config.clip_model else (None, None)
            row = {
                "video_id": video_id,
                "caption_index": caption_indexes[i],
                "caption_sha256": caption_sha256(texts[i]),
                "status": STATUS_FAILED if error else STATUS_OK,
                "error_kind": error_kind,
                "error": error,
                "flags": raised,
                "flagged": bool(raised),
                "words": int(word_counts[i]),
                "informative_words": int(informative[i]),
                "generic_phrases": list(phrases[i]),
                "prompt_overlap": float(overlap[i]),
                "duplicate_group": int(duplicates.group[i]) if duplicates.group[i] >= 0 else None,
                "duplicate_videos": int(duplicates.group_videos[i]),
                "duplicate_keep": bool(duplicates.keep[i]),
                "nearest_similarity": None if np.isnan(duplicates.nearest_similarity[i]) else float(duplicates.nearest_similarity[i]),
                "nearest_video_id": duplicates.nearest_video[i],
                "clip_score": None if np.isnan(clip_score[i]) else float(clip_score[i]),
                "clip_zscore": None if np.isnan(clip_z[i]) else float(clip_z[i]),
                "clip_model": config.clip_model,
                "text_model": text_model,
                "config_hash": config_hash,
                "created_at": now,
                **values,
            }
            rows.append(row)
            if error:
                report.add_failure(error_kind, error, video_id)
            else:
                report.done += 1
            if len(rows) >= WRITE_CHUNK:
                writer.write(rows)
                rows = []
        writer.write(rows)
    compact(workdir, CAPTION_FLAGS)
    stale = set()
    if previous is not None and previous.num_rows:
        # Keys of the last run that no caption has now (an Arrow anti-join, not two sets of every key).
        current = pa.table({"video_id": pa.array(video_ids, pa.string()),
                            "caption_index": pa.array(caption_indexes, previous.schema.field("caption_index").type)})
        gone = previous.join(current, keys=["video_id", "caption_index"], join_type="left anti")
        stale = set(zip(gone.column("video_id").to_pylist(), gone.column("caption_index").to_pylist()))
    if stale:
        _drop_rows(main, stale)
    timings["write_s"] = time.monotonic() - clock

    report.extra["flagged"] = flagged
    for name in FLAG_NAMES:
        if name != "clip_mismatch" or config.clip_model:
            report.extra[name] = flag_counts.get(name, 0)
    report.extra["text_model"] = text_model
    report.extra["measured_filler_phrases"] = len(model.measured_phrases)
    if stale:
        report.extra["stale_rows_dropped"] = len(stale)
    report.extra["timings"] = {k: round(v, 3) for k, v in timings.items()}


def _drop_rows(path: Path, keys: set) -> None:
    """Rewrite the compacted manifest without the rows of ``keys`` (captions gone since the last run)."""
    table = pq.read_table(path)
    pairs = zip(table.column("video_id").to_pylist(), table.column("caption_index").to_pylist())
    keep = pa.array([pair not in keys for pair in pairs])
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(table.filter(keep), tmp, compression="zstd")
