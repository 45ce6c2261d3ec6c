"""``run_filter``: flag every ``ok`` generated caption into ``caption_flags.parquet``.

The flags that compare a caption with the rest of the dataset (generic phrases,
near-duplicates) are measured over all captions at once, so every run recomputes
every row from ``captions.parquet``; the costly parts are cached in ``WORKDIR/cache``
(text embeddings, CLIP video embeddings), so a rerun or a resumed run is quick. Rows
are streamed once into a new ``caption_flags.parquet`` that replaces the last run's;
flags of captions that no longer exist are gone with it. Nothing is ever removed from
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
from mama_augment.manifest import (
    CAPTION_FLAGS,
    CAPTIONS,
    KEYFRAMES,
    STATUS_FAILED,
    STATUS_OK,
    compact,
    ensure_workdir,
    manifest_path,
    parts_dir,
    read_manifest,
    utc_now,
    workdir_lock,
    write_whole_manifest,
)
from mama_augment.memory import release_freed
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


def _floats(values: np.ndarray) -> pa.Array:
    """float64 with NaN (not measured) as null."""
    return pa.array(values, pa.float64(), mask=np.isnan(values))


class _FlagColumns:
    """The flags of every caption as boolean columns, in ``FLAG_NAMES`` order."""

    def __init__(self, clip_mismatch: np.ndarray | None, **flags: np.ndarray):
        self._flags = {name: np.asarray(flags[name], bool) for name in FLAG_NAMES if name != "clip_mismatch"}
        self._matrix = np.column_stack([
            *self._flags.values(),
            # Not measured (no model, or no frames) is not raised.
            np.zeros(len(flags["too_short"]), bool) if clip_mismatch is None else clip_mismatch == 1,
        ])

    def bools(self) -> dict[str, np.ndarray]:
        return self._flags

    def raised(self, rows: slice) -> pa.ListArray:
        """Per caption, the names of its raised flags (``FLAG_NAMES`` order)."""
        matrix = self._matrix[rows]
        offsets = np.zeros(len(matrix) + 1, dtype=np.int32)
        np.cumsum(matrix.sum(axis=1), out=offsets[1:])
        names = np.asarray(FLAG_NAMES, dtype=object)[np.nonzero(matrix)[1]]  # row by row, flags in order
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(names.tolist(), pa.string()))

    def any_raised(self, rows: slice) -> np.ndarray:
        return self._matrix[rows].any(axis=1)

    def counts(self) -> Counter:
        return Counter({name: int(count) for name, count in zip(FLAG_NAMES, self._matrix.sum(axis=0)) if count})

    def flagged(self) -> int:
        return int(self.any_raised(slice(None)).sum())


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
    part = None
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
    del captions, part, grid, rendered  # ``part``, a slice, kept every buffer of the table alive
    # Arrow's allocator keeps what the tables above freed (~250 MB at 400 000 captions) for
    # its own reuse, but nothing below allocates through it: the search's index would come
    # on top of it, at the peak of the run. Handed back to the system here.
    release_freed()
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
    # Streamed: the word lists of every distinct caption held at once took ~220 MB at
    # 400 000 captions.
    model.fit((tokens(texts[i]) for i in first_of_group.values()), documents_count=len(first_of_group))
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

    # Rows, a column at a time (a dict per caption and the per-row merges of the part
    # writer cost more than every check above at 400 000 captions), streamed once into
    # the table: every run computes every row, so the new table replaces the old one.
    clock = time.monotonic()
    main = manifest_path(workdir, CAPTION_FLAGS)
    previous = read_manifest(workdir, CAPTION_FLAGS, columns=list(CAPTION_FLAGS.key)) \
        if main.exists() or parts_dir(workdir, CAPTION_FLAGS).is_dir() else None
    clip_mismatch = None
    if config.clip_model:
        clip_mismatch = np.where(np.isnan(clip_z), np.nan, clip_z < config.clip_min_z)
    columns = _FlagColumns(
        too_short=too_short, truncated=truncated, generic=generic_flag & ~too_short & ~prompt_echo,
        prompt_echo=prompt_echo, near_duplicate=duplicates.near_duplicate, clip_mismatch=clip_mismatch,
    )
    failed = np.zeros(n, bool)
    if clip_errors:
        failed = np.fromiter((v in clip_errors for v in video_ids), bool, count=n)
        for i in np.flatnonzero(failed).tolist():
            report.add_failure(*clip_errors[video_ids[i]], video_ids[i])
    report.done += int(n - failed.sum())
    constants = {"clip_model": config.clip_model, "text_model": text_model, "config_hash": config.config_hash(),
                 "created_at": utc_now()}

    def tables():
        for start in range(0, n, WRITE_CHUNK):
            stop = min(n, start + WRITE_CHUNK)
            part = slice(start, stop)
            raised = columns.raised(part)
            errors = [clip_errors.get(v, (None, None)) for v in video_ids[part]] if clip_errors else None
            yield pa.table({
                "video_id": pa.array(video_ids[part], pa.string()),
                "caption_index": pa.array(caption_indexes[part], pa.int32()),
                "caption_sha256": pa.array([caption_sha256(t) for t in texts[part]], pa.string()),
                "status": pa.array(np.where(failed[part], STATUS_FAILED, STATUS_OK).tolist(), pa.string()),
                "error_kind": pa.array([e[0] for e in errors] if errors else [None] * (stop - start), pa.string()),
                "error": pa.array([e[1] for e in errors] if errors else [None] * (stop - start), pa.string()),
                "flags": raised,
                "flagged": pa.array(columns.any_raised(part)),
                "words": pa.array(word_counts[part], pa.int32()),
                "informative_words": pa.array(informative[part], pa.int32()),
                "generic_phrases": pa.array(phrases[part], pa.list_(pa.string())),
                "prompt_overlap": pa.array(overlap[part], pa.float64()),
                "duplicate_group": pa.array(duplicates.group[part], pa.int64(), mask=duplicates.group[part] < 0),
                "duplicate_videos": pa.array(duplicates.group_videos[part], pa.int32()),
                "duplicate_keep": pa.array(duplicates.keep[part]),
                "nearest_similarity": _floats(duplicates.nearest_similarity[part]),
                "nearest_video_id": pa.array(duplicates.nearest_video[part], pa.string()),
                "clip_score": _floats(clip_score[part]),
                "clip_zscore": _floats(clip_z[part]),
                **{name: pa.array(flag[part]) for name, flag in columns.bools().items()},
                "clip_mismatch": _floats(clip_mismatch[part]).cast(pa.bool_()) if clip_mismatch is not None
                else pa.nulls(stop - start, pa.bool_()),
                **{name: pa.array([value] * (stop - start), CAPTION_FLAGS.schema.field(name).type)
                   for name, value in constants.items()},
            })

    write_whole_manifest(workdir, CAPTION_FLAGS, tables())
    flag_counts = columns.counts()
    flagged = columns.flagged()
    stale = 0
    if previous is not None and previous.num_rows:
        # Keys of the last run that no caption has now (an Arrow anti-join, not two sets of every key).
        current = pa.table({"video_id": pa.array(video_ids, pa.string()),
                            "caption_index": pa.array(caption_indexes, previous.schema.field("caption_index").type)})
        stale = previous.join(current, keys=["video_id", "caption_index"], join_type="left anti").num_rows
    timings["write_s"] = time.monotonic() - clock

    report.extra["flagged"] = flagged
    for name in FLAG_NAMES:
        if name != "clip_mismatch" or config.clip_model:
            report.extra[name] = flag_counts.get(name, 0)
    report.extra["text_model"] = text_model
    report.extra["measured_filler_phrases"] = len(model.measured_phrases)
    if stale:
        report.extra["stale_rows_dropped"] = stale
    report.extra["timings"] = {k: round(v, 3) for k, v in timings.items()}

