"""Video-caption pairs for training and evaluation.

Sources:

* videos: ``<workdir>/keyframes.parquet`` rows with status ``ok``;
* original captions: ``--captions FILE`` (``.csv``, ``.jsonl`` or ``.parquet``) with
  ``video_id`` and ``caption``, optionally ``split`` (train/val/test) and ``concept``,
  or a benchmark's own annotation files (see :mod:`mama_augment.datasets`);
* generated captions: ``<workdir>/captions.parquet`` rows with status ``ok``
  (``--augment add``), used for training videos only.

Without a ``split`` column a video's split comes from a hash of its id, so it never
changes between runs or machines. An epoch holds every training (video, caption) pair,
or every training video with one of its captions (``epoch_captions``), batched by an
RNG seeded with (seed, epoch): no state to save for an exact resume. The meta set is a
few original pairs, taken evenly across concepts: a ``--meta-set`` file, or drawn from
the training pairs, by default the ones whose video and caption agree most
(:func:`mama_augment.train.agreement.agreement_losses`), so a meta set drawn from noisy captions is nearly clean.
Its videos are trained on too unless ``meta_holdout``. Problems with the inputs are
counted in ``issues`` and reported; they do not stop the run.
"""

from __future__ import annotations

import logging
from array import array
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mama_augment.datasets.splits import SPLITS, normalize_split, split_of_video
from mama_augment.errors import UsageError
from mama_augment.manifest import CAPTIONS, read_manifest
from mama_augment.memory import release_freed
from mama_augment.train.columns import CategoryColumn, FrameRows, NullableInts, Ragged, TextColumn
# The agreement model lives in its own module; its names stay importable from here.
from mama_augment.train.agreement import (  # noqa: F401
    agreement_losses,
    most_disagreeing,
    right_probability,
    wrong_share,
)
from mama_augment.workread import generated_captions_table

log = logging.getLogger(__name__)

SOURCE_ORIGINAL = "original"
SOURCE_GENERATED = "generated"


def _read_captions(paths, formats, video_ids, issues: Counter, examples: dict, prefix: str = "") -> pd.DataFrame:
    """Captions files in any format of :mod:`mama_augment.datasets`, their ids mapped to
    ``video_ids``; the readers' counted problems join ``issues``."""
    from mama_augment.datasets import load_captions

    loaded = load_captions(paths, formats, video_ids=video_ids)
    for kind, count in loaded.problems.counts.items():
        _note(issues, examples, prefix + kind, count, loaded.problems.examples.get(kind, ""))
    return loaded.frame


@dataclass
class VideoTable:
    """The videos a run can see, in a fixed order (index = position)."""

    video_ids: Sequence[str]  # a TextColumn when loaded from a work folder
    keyframe_embeddings: Sequence[np.ndarray]  # (frames, dim) float16 each (FrameRows: views of mapped tables); may be empty
    keyframe_paths: Sequence[list[str]]  # relative to the work folder
    concepts: Sequence[str | None]

    def __len__(self) -> int:
        return len(self.video_ids)

    def subset(self, indices: Sequence[int]) -> "VideoTable":
        return VideoTable(
            [self.video_ids[i] for i in indices],
            [self.keyframe_embeddings[i] for i in indices],
            [self.keyframe_paths[i] for i in indices],
            [self.concepts[i] for i in indices],
        )


@dataclass
class SplitPairs:
    """Evaluation pairs of one split: the gallery videos and the caption queries."""

    videos: np.ndarray  # indices into TrainData.videos
    captions: np.ndarray  # caption ids (into TrainData.texts)
    caption_video: np.ndarray  # for each caption, its position in ``videos``

    def __len__(self) -> int:
        return len(self.videos)


@dataclass
class TrainData:
    """A run's videos and captions. The per-caption and per-video sequences are the
    compact columns of :mod:`mama_augment.train.columns` (read like lists), so that
    hundreds of thousands of captions hold a few buffers rather than an object each."""

    videos: VideoTable
    texts: Sequence[str]  # TextColumn
    caption_source: Sequence[str]  # CategoryColumn
    caption_concept: Sequence[str | None]  # CategoryColumn
    caption_video: np.ndarray  # caption id -> video index
    video_split: Sequence[str]  # CategoryColumn
    train_videos: np.ndarray  # video indices in the training stream
    train_captions: Sequence[np.ndarray]  # per train video: its caption ids (Ragged)
    meta_videos: np.ndarray
    meta_captions: np.ndarray  # one caption id per meta pair (aligned with meta_videos)
    issues: Counter = field(default_factory=Counter)
    issue_examples: dict[str, str] = field(default_factory=dict)
    # caption id -> caption_index in captions.parquet (generated captions), else None
    caption_index: Sequence[int | None] = field(default_factory=list)  # NullableInts
    # Estimated share of wrong training pairs (meta-weighting "auto"), None when not estimated
    wrong_share: float | None = None
    meta_weighting: bool = False  # whether the meta set was chosen for meta-weighting
    # Why a run that did not ask for it either way trains without the weighting (too little data)
    meta_weighting_off_why: str | None = None
    # The captions val/test are judged on: original, or generated when there are no
    # original captions (then the numbers measure agreement with the captioner)
    eval_source: str = SOURCE_ORIGINAL
    # --agreement-filter: training pairs left out as the least agreeing (0: none)
    agreement_filtered: int = 0
    # --agreement-prior: per caption id, the probability from its agreement score that
    # the pair is right (to --agreement-prior-power), a factor of its weight in the loss; None: not used
    pair_prior: np.ndarray | None = None
    # per caption id, that probability itself (1 for pairs not scored): the weighting
    # net's second input with --meta-inputs loss,agreement; None where the pairs were not
    # scored or the estimate read clean
    pair_agreement: np.ndarray | None = None

    def split(self, name: str) -> SplitPairs:
        """Videos of ``name`` with at least one evaluation caption (``eval_source``), and those captions."""
        caption_video = np.asarray(self.caption_video, dtype=np.int64)
        wanted = (_equal_mask(self.caption_source, self.eval_source)[: len(caption_video)]
                  & _equal_mask(self.video_split, name)[caption_video])
        caption_ids = np.flatnonzero(wanted).astype(np.int64)
        videos = np.unique(caption_video[caption_ids]).astype(np.int64)
        return SplitPairs(videos, caption_ids, np.searchsorted(videos, caption_video[caption_ids]).astype(np.int64))

    @property
    def num_train_pairs(self) -> int:
        if isinstance(self.train_captions, Ragged):
            return len(self.train_captions.values)
        return int(sum(len(c) for c in self.train_captions))

    def summary(self) -> dict:
        counts = Counter(islice(self.video_split, len(self.videos)))
        sources = Counter(self.caption_source)
        return {
            "videos": len(self.videos),
            "train_videos": int(len(self.train_videos)),
            "val_videos": counts.get("val", 0),
            "test_videos": counts.get("test", 0),
            "meta_pairs": int(len(self.meta_videos)),
            "original_captions": sources.get(SOURCE_ORIGINAL, 0),
            "generated_captions": sources.get(SOURCE_GENERATED, 0),
            "train_pairs": self.num_train_pairs,
            "eval_captions": self.eval_source,
            **({"estimated_wrong_share": round(self.wrong_share, 4)} if self.wrong_share is not None else {}),
            **({"agreement_filtered": self.agreement_filtered} if self.agreement_filtered else {}),
            **{f"issue_{k}": v for k, v in sorted(self.issues.items())},
        }


def _equal_mask(values: Sequence, value) -> np.ndarray:
    """Whether each item of ``values`` (a column or a list) equals ``value``."""
    if isinstance(values, CategoryColumn):
        return values.mask(value)
    return np.asarray([v == value for v in values], dtype=bool)


def _frame_counts(videos: VideoTable, indices: np.ndarray) -> np.ndarray:
    """How many keyframe embeddings each of the videos ``indices`` has."""
    rows = videos.keyframe_embeddings
    if isinstance(rows, FrameRows):
        return rows.counts[indices] if rows.read else np.zeros(len(indices), np.int64)
    return np.asarray([len(rows[int(v)]) for v in indices], dtype=np.int64)


def _mean_frames(frames: np.ndarray) -> np.ndarray:
    """A video's pooled row for the agreement probes and the evidence step: the mean of
    its keyframe embeddings, computed in float32."""
    return np.asarray(frames, dtype=np.float32).mean(axis=0)


# Above --agreement-sample, pooled rows that would take more than this are pooled on
# demand instead (:class:`PooledRows`): held, they are pooled once (at 200 k videos
# 0.46 GB, and 35 s of a run's start faster than pooling them as asked for); on demand,
# memory stops growing with the videos (23 GB held at 9 M training videos).
POOLED_ROWS_BUDGET = 1 << 30


def _pool_on_demand(videos: VideoTable, count: int, above_cap: bool) -> bool:
    rows = videos.keyframe_embeddings
    return above_cap and isinstance(rows, FrameRows) and count * rows.dim * 2 > POOLED_ROWS_BUDGET


class PooledRows:
    """Mean-pooled keyframe embeddings of the videos ``indices``, pooled when asked for
    (``take_rows``), in float16: the rows :func:`_pooled` would stack, without holding one a
    video (180 k x 1 280 is 0.46 GB; 23 GB at 9 M training videos)."""

    def __init__(self, videos: VideoTable, indices):
        self.videos = videos
        self.indices = np.asarray(indices, dtype=np.int64)
        self.shape = (len(self.indices), videos.keyframe_embeddings.dim)
        self.dtype = np.dtype(np.float16)

    def __len__(self) -> int:
        return len(self.indices)

    def take_rows(self, rows) -> np.ndarray:
        return _pooled(self.videos, self.indices[np.asarray(rows, dtype=np.int64)], _mean_frames, dtype=np.float16)


def _pooled(videos: VideoTable, indices, function, dtype=None, chunk: int = 8192) -> np.ndarray:
    """``function`` (a video's frames -> one row) of each of the videos ``indices``, as
    one array (``dtype``: that of the rows, or narrowed to it). Stacked a chunk at a
    time: a list of 180 k row arrays, then its stack, held the rows twice and ~0.1 KB
    of object a row besides."""
    out = None
    for start in range(0, len(indices), chunk):
        block = np.stack(_each_video(videos, indices[start : start + chunk], function))
        if out is None:
            out = np.empty((len(indices), *block.shape[1:]), dtype=dtype or block.dtype)
        out[start : start + len(block)] = block
    return out if out is not None else np.zeros((0, 0), dtype=dtype or np.float32)


def _each_video(videos: VideoTable, indices: list[int], function) -> list:
    """``function`` of each video's keyframe embeddings; from the feature cache without
    keeping every page read resident (:meth:`FrameRows.each`)."""
    rows = videos.keyframe_embeddings
    if isinstance(rows, FrameRows):
        return rows.each(indices, function)
    return [function(rows[v]) for v in indices]


class _VideoLookup:
    """Video index of ids (-1 for an id without a video), through Arrow where the ids
    are strings: no dict of every video's id is made."""

    def __init__(self, video_ids: Sequence[str]):
        self.video_ids = video_ids
        self._arrow = None
        self._dict: dict | None = None

    def positions(self, ids) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            values = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids, pa.string())
            if self._arrow is None:
                known = self.video_ids
                self._arrow = known.to_arrow() if isinstance(known, TextColumn) else pa.array(list(known), pa.large_string())
            found = pc.index_in(values.cast(pa.large_string()), value_set=self._arrow)
            return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        except (pa.ArrowException, TypeError, ValueError):  # ids that are not all strings: as a dict saw them
            if self._dict is None:
                self._dict = {v: i for i, v in enumerate(self.video_ids)}
            return np.asarray([self._dict.get(v, -1) for v in ids], dtype=np.int64)


@dataclass
class _TrainCaptions:
    """The training videos (sorted) and each one's caption ids (ascending)."""

    videos: np.ndarray
    captions: Ragged

    def __len__(self) -> int:
        return len(self.videos)

    @classmethod
    def of(cls, caption_ids: np.ndarray, caption_video: np.ndarray) -> "_TrainCaptions":
        caption_ids = np.asarray(caption_ids, dtype=np.int64)
        ordered = caption_ids[np.argsort(caption_video[caption_ids], kind="stable")]
        videos, starts = np.unique(caption_video[ordered], return_index=True)
        return cls(videos.astype(np.int64), Ragged(ordered, np.append(starts, len(ordered))))


def _split_winners(vote_video: np.ndarray, vote_split: np.ndarray, videos: int) -> tuple[np.ndarray, np.ndarray]:
    """Per video, the split most of its votes name (index into SPLITS; -1: no vote),
    ties going to the split voted for first (as ``Counter.most_common`` breaks them in
    :func:`split_of_video`), and whether it had votes for several splits."""
    winner = np.full(videos, -1, dtype=np.int64)
    several = np.zeros(videos, dtype=bool)
    if len(vote_video):
        first_choice, counts = _most_common(vote_video, vote_split.astype(np.int64), len(SPLITS))
        voted = np.flatnonzero(counts)
        winner[voted] = first_choice[voted]
        keys = np.unique(vote_video * len(SPLITS) + vote_split)
        several = np.bincount(keys // len(SPLITS), minlength=videos) > 1
    return winner, several


def _most_common(owner: np.ndarray, value: np.ndarray, values: int) -> tuple[np.ndarray, np.ndarray]:
    """For each owner (0..max), the value it holds most often, ties to the value it
    held first (``Counter.most_common(1)`` on values counted in order), and its count
    of items (0: none; its value is then meaningless)."""
    owners = int(owner.max()) + 1 if len(owner) else 0
    keys, first, counts = np.unique(owner * values + value, return_index=True, return_counts=True)
    key_owner = keys // values
    order = np.lexsort((first, -counts, key_owner))  # by owner, most votes, earliest
    best = order[np.r_[True, key_owner[order][1:] != key_owner[order][:-1]]] if len(order) else order
    choice = np.zeros(owners, dtype=np.int64)
    choice[key_owner[best]] = keys[best] % values
    return choice, np.bincount(owner, minlength=owners)


def _video_concepts(concepts: CategoryColumn, caption_video: np.ndarray, videos: int) -> CategoryColumn:
    """Each video's concept: the most common of its captions' concepts (None when none
    names one), ties to the concept named first."""
    codes = concepts.codes()[: len(caption_video)]
    named = np.flatnonzero(codes != concepts.code_of(None)) if len(codes) else np.zeros(0, np.int64)
    result = CategoryColumn()
    if not len(named):
        result.extend([None] * videos)
        return result
    choice, counts = _most_common(caption_video[named], codes[named].astype(np.int64), len(concepts.names))
    chosen = np.full(videos, -1, dtype=np.int64)
    chosen[: len(choice)] = np.where(counts > 0, choice, -1)
    result.extend(concepts.names[c] if c >= 0 else None for c in chosen.tolist())
    return result


def _note(issues: Counter, examples: dict, kind: str, count: int, example: str) -> None:
    from mama_augment.datasets.base import clip_text

    if count <= 0:
        return
    issues[kind] += count
    examples.setdefault(kind, clip_text(example))  # quotes a user's file: never a whole line


def load_videos(workdir: Path, need: str, rank: int = 0, world_size: int = 1) -> tuple[VideoTable, Counter, dict]:
    """Usable videos of ``keyframes.parquet`` sorted by id (``need``: the column the
    backbone reads, ``keyframe_embeddings`` or ``keyframe_paths``). Streamed: the
    embeddings are views of one float16 array cached in the work folder
    (:mod:`mama_augment.train.video_cache`); under torchrun each rank reads its share
    of them into that array."""
    from mama_augment.train.video_cache import load_usable_videos

    wait = None
    if world_size > 1:  # torch only where a process group exists
        from functools import partial

        from mama_augment.train.distributed import barrier

        wait = partial(barrier, world_size)
    loaded = load_usable_videos(workdir, need, rank, world_size, wait)
    videos = VideoTable(loaded.video_ids, loaded.keyframe_embeddings, loaded.keyframe_paths,
                        CategoryColumn([None] * len(loaded.video_ids)))
    return videos, loaded.issues, loaded.examples


def _even_sample(groups: dict[str, list[int]], count: int, rng: np.random.Generator,
                 scores: dict[int, float] | None = None) -> list[int]:
    """Round-robin over groups (sorted by name), at most half of each group, until
    ``count`` items are taken: shuffled members, or with ``scores`` the lowest first."""
    queues = {}
    for name in sorted(groups):
        members = list(groups[name])
        rng.shuffle(members)
        if scores is None:
            queues[name] = members[: len(members) // 2]
        else:  # worst first, so pop() takes the best; ties keep the shuffled order
            members.sort(key=lambda m: -scores[m])
            queues[name] = members[len(members) - len(members) // 2 :]
    taken: list[int] = []
    while len(taken) < count and any(queues.values()):
        for name in sorted(queues):
            if queues[name] and len(taken) < count:
                taken.append(queues[name].pop())
    return taken


def build_data(
    config,
    workdir: str | Path,
    need: str = "keyframe_embeddings",
    caption_embedder: Callable[[Sequence[str]], np.ndarray] | None = None,
    captions_override: str | None = None,
    keep_caption: Callable[[int], bool] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> TrainData:
    """Join videos and captions, split them and choose the meta set.

    ``keep_caption(caption_id)`` False leaves that caption out of the training pairs
    (the sources the evidence step drops, train/evidence.py); it stays in ``texts``, so
    caption ids and the text-embedding cache are those of a run that keeps it. Every
    rank of a distributed run calls it (``rank``, ``world_size``: the video features
    are read once between them)."""
    workdir = Path(workdir)
    videos, issues, examples = load_videos(workdir, need, rank, world_size)
    lookup = _VideoLookup(videos.video_ids)
    captions_path = captions_override or config.captions

    # Compact columns, filled a caption at a time (see mama_augment.train.columns).
    texts = TextColumn()
    sources = CategoryColumn()
    concepts = CategoryColumn()
    caption_video = array("q")
    caption_index = NullableInts()
    # Split votes, one (video, split) a caption: reduced to a split a video below.
    vote_video, vote_split = array("q"), array("b")
    has_split = False
    if captions_path:
        frame = _read_captions(captions_path, None if captions_override else getattr(config, "captions_format", None),
                               videos.video_ids, issues, examples)
        has_split = "split" in frame.columns and frame["split"].notna().any()
        has_concept = "concept" in frame.columns
        found = lookup.positions(frame["video_id"].tolist()) if len(frame) else np.zeros(0, np.int64)
        for k, row in enumerate(frame.itertuples(index=False)):
            video_id, caption = row.video_id, row.caption
            if not caption:
                _note(issues, examples, "empty_caption", 1, video_id)
                continue
            v = int(found[k])
            if v < 0:
                _note(issues, examples, "caption_without_video", 1, video_id)
                continue
            if has_split:
                raw = getattr(row, "split")
                split = normalize_split(raw)
                if split is None:
                    _note(issues, examples, "unknown_split", 1, f"{video_id}: {raw!r}")
                    continue
                vote_video.append(v)
                vote_split.append(SPLITS.index(split))
            texts.append(caption)
            sources.append(SOURCE_ORIGINAL)
            concepts.append(getattr(row, "concept") if has_concept else None)
            caption_video.append(v)
            caption_index.append(None)
        del frame

    if config.augment == "add":
        generated = generated_captions_table(workdir, ["caption"])
        flag_reason = _flag_filter(config, workdir, issues, examples)
        if generated.num_rows:
            found = lookup.positions(generated.column("video_id"))
            start = 0
            for batch in generated.to_batches(max_chunksize=8192):  # a batch of Python strings at a time
                ids = batch.column("video_id").to_pylist()
                indices = batch.column("caption_index").to_pylist()
                for k, raw in enumerate(batch.column("caption").to_pylist()):
                    video_id, index = ids[k], int(indices[k])
                    caption = (raw or "").strip()
                    if not caption:
                        _note(issues, examples, "empty_generated_caption", 1, video_id)
                        continue
                    v = int(found[start + k])
                    if v < 0:
                        _note(issues, examples, "generated_caption_without_video", 1, video_id)
                        continue
                    dropped = flag_reason(video_id, index, raw) if flag_reason else None
                    if dropped:
                        _note(issues, examples, f"generated_caption_dropped_{dropped}", 1, f"{video_id}#{index}")
                        continue
                    texts.append(caption)
                    sources.append(SOURCE_GENERATED)
                    concepts.append(None)
                    caption_video.append(v)
                    caption_index.append(index)
                start += batch.num_rows
        del generated

    eval_source = SOURCE_ORIGINAL if captions_path else _generated_only(workdir, sources, issues)
    caption_video_arr = np.array(caption_video, dtype=np.int64)  # a copy: the meta set appends to caption_video
    captioned = np.zeros(len(videos), dtype=bool)
    captioned[caption_video_arr] = True
    uncaptioned = np.flatnonzero(~captioned)
    _note(issues, examples, "video_without_captions", len(uncaptioned),
          videos.video_ids[int(uncaptioned[0])] if len(uncaptioned) else "")

    # A video's concept: the most common concept of its original captions.
    videos.concepts = _video_concepts(concepts, caption_video_arr, len(videos))

    video_split = CategoryColumn()
    if has_split:
        winner, several = _split_winners(np.frombuffer(vote_video, np.int64) if len(vote_video) else np.zeros(0, np.int64),
                                         np.frombuffer(vote_split, np.int8) if len(vote_split) else np.zeros(0, np.int8),
                                         len(videos))
        if several.any():
            _note(issues, examples, "video_in_several_splits", int(several.sum()),
                  videos.video_ids[int(np.flatnonzero(several)[0])])
        video_split.extend(SPLITS[w] if w >= 0 else "train" for w in winner.tolist())
    else:
        video_split.extend(split_of_video(video_id, None, False, config.test_fraction, config.val_fraction)
                           for video_id in videos.video_ids)
    del vote_video, vote_split

    # Generated captions of val/test videos would leak them into training: drop them.
    train_ids = np.flatnonzero(video_split.mask("train")[caption_video_arr])
    if keep_caption is not None:
        train_ids = train_ids[np.asarray([bool(keep_caption(int(c))) for c in train_ids], dtype=bool)]
    train_caps = _TrainCaptions.of(train_ids, caption_video_arr)

    use_weighting, wrong, scored = config.use_meta_weighting, None, None
    reads_agreement = "agreement" in getattr(config, "meta_inputs", "loss").split(",") and use_weighting
    uses_scores = bool(getattr(config, "agreement_filter", False) or getattr(config, "agreement_prior", False)
                       or reads_agreement)
    if config.meta_weighting_decided_by_data or uses_scores:
        # What reading the captions freed goes back to the system before the pooled rows
        # and the probes come (~0.2 GB at 200 k videos, else under the run's peak).
        release_freed()
        # The filter and the prior need every pair's score; the estimate alone a sample.
        scored = _score_training_pairs(config, videos, texts, caption_video, train_caps, caption_embedder,
                                       every_pair=uses_scores,
                                       keep_pooled=use_weighting and config.meta_select == "agreement"
                                       and not config.meta_set)
        wrong = wrong_share(scored.scores, scored.null) if scored is not None else None
    noisy = wrong is not None and wrong >= config.meta_noise_threshold
    if config.meta_weighting_decided_by_data:
        # "auto": the weighting is there for wrong pairs, and costs where there are none.
        if wrong is not None and not noisy:
            use_weighting = False
            log.info("estimated share of wrong training pairs %.1f %% < %.1f %% (--meta-noise-threshold): "
                     "no meta-weighting (--meta-weighting turns it on)", 100 * wrong, 100 * config.meta_noise_threshold)
        elif wrong is not None:
            log.info("estimated share of wrong training pairs %.1f %%: meta-weighting on", 100 * wrong)
    filtered, prior, agreement = 0, None, None
    if scored is not None and noisy and getattr(config, "agreement_filter", False):
        filtered = _drop_disagreeing(train_caps, scored, wrong)
        log.info("--agreement-filter: left out the %d training pairs (%.1f %%, the estimated wrong share) whose "
                 "video and caption agree least", filtered, 100 * wrong)
    if scored is not None and noisy and (getattr(config, "agreement_prior", False) or reads_agreement):
        agreement = np.ones(len(texts), dtype=np.float32)
        agreement[scored.caption_ids] = right_probability(scored.scores, scored.null, wrong)
        if getattr(config, "agreement_prior", False):
            prior = agreement ** np.float32(getattr(config, "agreement_prior_power", 1.0))
    meta_videos, meta_captions, off_why = [], [], None
    if use_weighting:
        try:
            meta_videos, meta_captions = _select_meta(
                config, workdir, videos, lookup, texts, sources, concepts, caption_video, train_caps,
                caption_embedder, issues, examples, video_split, scored,
            )
        except MetaSetTooSmall as exc:
            if config.meta_weighting:  # asked for by name: say what would let it run
                raise UsageError(f"{exc}: add videos, lower --meta-fraction, or pass --no-meta-weighting") from None
            # Not asked for either way: a first try on a handful of clips should train.
            use_weighting, off_why = False, f"{exc}: trained without the meta-weighting (margin loss alone)"
            log.warning("%s", off_why)
    caption_index += [None] * (len(texts) - len(caption_index))  # meta-set captions
    held_out = np.asarray(sorted(int(v) for v in meta_videos) if config.meta_holdout else [], dtype=np.int64)
    kept = ~np.isin(train_caps.videos, held_out)
    train_videos = train_caps.videos[kept]
    rows = train_caps.captions
    train_captions = Ragged(rows.values[np.repeat(kept, rows.lengths())],
                            np.concatenate([[0], np.cumsum(rows.lengths()[kept])]))
    data = TrainData(
        videos=videos,
        texts=texts,
        caption_source=sources,
        caption_concept=concepts,
        caption_video=caption_video_arr,
        video_split=video_split,
        train_videos=train_videos,
        train_captions=train_captions,
        meta_videos=np.asarray(meta_videos, dtype=np.int64),
        meta_captions=np.asarray(meta_captions, dtype=np.int64),
        issues=issues,
        issue_examples=examples,
        caption_index=caption_index,
        wrong_share=wrong,
        meta_weighting=use_weighting,
        meta_weighting_off_why=off_why,
        eval_source=eval_source,
        agreement_filtered=filtered,
        pair_prior=_pad_ones(prior, len(texts)),  # meta-set captions: 1
        pair_agreement=_pad_ones(agreement, len(texts)),
    )
    if len(data.train_videos) < 2 and captions_override is None:  # evaluation files need no training videos
        raise UsageError(
            f"only {len(data.train_videos)} training video(s) have captions: check --captions and that "
            "its video_id values match keyframes.parquet" if captions_path else
            f"only {len(data.train_videos)} training video(s) have generated captions: caption more videos "
            "(`mama-augment caption`) or lower --val-fraction / --test-fraction"
        )
    return data


def _select_meta(config, workdir, videos, lookup, texts, sources, concepts, caption_video, train_caps,
                 caption_embedder, issues, examples, video_split,
                 scored: PairScores | None = None) -> tuple[list[int], list[int]]:
    if config.meta_set:
        frame = _read_captions(config.meta_set, None, videos.video_ids, issues, examples, prefix="meta_set_")
        meta_v, meta_c = [], []
        found = lookup.positions(frame["video_id"].tolist()) if len(frame) else np.zeros(0, np.int64)
        for k, row in enumerate(frame.itertuples(index=False)):
            v = int(found[k])
            if not row.caption or v < 0:
                _note(issues, examples, "meta_pair_without_video", 1, row.video_id)
                continue
            if video_split[v] != "train":
                # The meta step would tune the weighting on a video the run is judged on.
                _note(issues, examples, "meta_pair_of_val_or_test_video", 1, row.video_id)
                continue
            meta_v.append(v)
            texts.append(row.caption)
            sources.append("meta")
            concepts.append(getattr(row, "concept", None) if "concept" in frame.columns else None)
            caption_video.append(v)
            meta_c.append(len(texts) - 1)
        if len(meta_v) < 2:
            raise UsageError(f"the meta set {config.meta_set} has fewer than 2 usable pairs")
        return meta_v, meta_c

    # Candidates: original captions of training videos (human captions are the clean ones).
    pairs = train_caps.captions.values  # by video, then caption id
    candidates = pairs[_equal_mask(sources, SOURCE_ORIGINAL)[pairs]]
    if not len(candidates):
        candidates = pairs
    n_videos = len(train_caps)
    count = max(2, int(round(config.meta_fraction * len(candidates))))
    if n_videos - count < 2:
        raise MetaSetTooSmall(f"too few training videos ({n_videos}) to hold out a meta set of {count}")
    rng = np.random.default_rng([config.seed, 7])
    # One candidate caption per video, so held-out videos equal meta pairs.
    candidate_video = np.frombuffer(caption_video, np.int64)[candidates] if len(candidates) else candidates
    per_video = candidates[np.unique(candidate_video, return_index=True)[1]].tolist()
    text_features = None
    cap = _agreement_cap(config)
    above = cap is not None and len(per_video) > cap
    # Above the cap the sentence encoder's rows are held in float16 (180 k x 512 is
    # 0.37 GB in float32); k-means and the probes widen what they take.
    narrow = np.float16 if above else np.float32
    if any(concepts[c] is not None for c in per_video):
        groups: dict[str, list[int]] = {}
        for c in per_video:
            groups.setdefault(str(concepts[c]), []).append(c)
        method = "concept"
    else:
        text_features = _text_features(per_video, texts, caption_embedder, narrow)
        groups = _kmeans_groups(per_video, text_features, count, config.seed, cap)
        method = "kmeans"
    scores = None
    if config.meta_select == "agreement":
        per_video_video = [caption_video[c] for c in per_video]
        if (_frame_counts(videos, np.asarray(per_video_video, dtype=np.int64)) == 0).any():
            log.warning("meta set: some videos have no keyframe embeddings, so it is drawn at random")
        else:
            if text_features is None:
                text_features = _text_features(per_video, texts, caption_embedder, narrow)
            # Pooled once for the pair scores when they came first (the same rows).
            pooled = scored.pooled_rows(per_video_video) if scored is not None else None
            if scored is not None:
                scored.pooled = None
            if pooled is None and _pool_on_demand(videos, len(per_video_video), above):
                pooled = PooledRows(videos, per_video_video)  # the same rows, pooled as asked for
            if pooled is None:
                pooled = _pooled(videos, per_video_video, lambda e: e.mean(axis=0))
            losses = agreement_losses(pooled, _dense(text_features, cap), config.seed, max_train=cap)
            del pooled
            scores = dict(zip(per_video, losses.tolist()))
    chosen = _even_sample(groups, count, rng, scores)
    log.info("meta set: %d pairs from %d %s groups, %s", len(chosen), len(groups), method,
             "most agreeing first" if scores is not None else "at random")
    return [caption_video[c] for c in chosen], chosen


class MetaSetTooSmall(UsageError):
    """Too few training videos to draw a meta set from."""


def _flag_filter(config, workdir: Path, issues: Counter, examples: dict):
    """``--drop-flags`` / ``--dedupe`` as export applies them: a function
    (video_id, caption_index, caption) -> why the generated caption is dropped, or None;
    None when no flag option is set. Captions without current flags (none, or flags of
    another text: captioned again after `filter`) are kept and counted, as export does."""
    from mama_augment.export.select import FlagFilter
    from mama_augment.workread import caption_sha256
    from mama_augment.manifest import CAPTION_FLAGS, manifest_path

    rule = FlagFilter.from_option(getattr(config, "drop_flags", None), getattr(config, "dedupe", False))
    if not rule.active:
        return None
    if not manifest_path(workdir, CAPTION_FLAGS).exists():
        raise UsageError("--drop-flags and --dedupe need caption_flags.parquet: run `mama-augment filter` first")
    table = read_manifest(workdir, CAPTION_FLAGS, columns=["caption_sha256", "flags", "duplicate_keep"])
    rows = {(r["video_id"], int(r["caption_index"])): r for r in table.to_pylist()}

    def reason(video_id: str, caption_index: int, caption: str) -> str | None:
        row = rows.get((video_id, caption_index))
        if row is None or row["caption_sha256"] != caption_sha256(caption):
            _note(issues, examples, "generated_caption_without_current_flags", 1, f"{video_id}#{caption_index}")
            return None
        return rule.reason(list(row["flags"] or []), row["duplicate_keep"])

    return reason


def _generated_only(workdir: Path, sources: list[str], issues: Counter) -> str:
    """No original captions: the generated ones are trained on and judged on. Stops
    (UsageError) when there are none to train on, saying what to run first."""
    if SOURCE_GENERATED in sources:
        return SOURCE_GENERATED
    dropped = sum(n for kind, n in issues.items() if kind.startswith("generated_caption_dropped_"))
    if dropped:
        raise UsageError(f"--drop-flags / --dedupe dropped all {dropped} generated captions: nothing is left to "
                         "train on; drop fewer flags, or pass --captions FILE")
    raise UsageError(
        f"no generated captions to train on in {workdir / CAPTIONS.filename} (no ok rows): run "
        f"`mama-augment caption --workdir {workdir} --model MODEL` first, or pass --captions FILE "
        "with the videos' original captions"
    )


WRONG_SHARE_SAMPLE = 50_000  # pairs scored for the estimate: a share needs no more


@dataclass
class PairScores:
    """Cross-fitted agreement scores of training pairs (:func:`agreement_losses`), with
    the scores of deliberately wrong pairs under the same models (``null``)."""

    caption_ids: np.ndarray
    scores: np.ndarray
    null: np.ndarray
    # The pooled keyframe embeddings of the scored pairs' videos (sorted), kept when the
    # meta set is chosen next: it pools the same training videos the same way.
    pooled_videos: np.ndarray | None = None
    pooled: np.ndarray | None = None

    def pooled_rows(self, video_indices) -> np.ndarray | None:
        """The meta set's pooled rows (float16, as the mean of float16 frames is) of
        ``video_indices``, when every one of them was pooled here; else None."""
        if self.pooled is None or not len(video_indices):
            return None
        wanted = np.asarray(video_indices, dtype=np.int64)
        place = np.minimum(np.searchsorted(self.pooled_videos, wanted), len(self.pooled_videos) - 1)
        if not np.array_equal(self.pooled_videos[place], wanted):
            return None
        if len(place) == len(self.pooled) and np.array_equal(place, np.arange(len(place))):
            return self.pooled.astype(np.float16, copy=False)  # every scored video, in order: no copy
        return np.take(self.pooled, place, axis=0).astype(np.float16, copy=False)


def _score_training_pairs(config, videos, texts, caption_video, train_caps, caption_embedder,
                          every_pair: bool = False, keep_pooled: bool = False) -> PairScores | None:
    """Agreement scores of the training pairs, original and generated: at most
    ``WRONG_SHARE_SAMPLE`` pairs drawn by the seed (enough for the share of wrong pairs,
    :func:`wrong_share`), or ``every_pair``; None when videos have no keyframe
    embeddings to score with."""
    pairs = train_caps.captions.values.tolist()  # by video, then caption id
    if len(pairs) < 20:
        return None
    if len(pairs) > WRONG_SHARE_SAMPLE and not every_pair:
        rng = np.random.default_rng([config.seed, 13])
        pairs = sorted(rng.choice(pairs, size=WRONG_SHARE_SAMPLE, replace=False).tolist())
    embeddings = videos.keyframe_embeddings
    paired = np.frombuffer(caption_video, np.int64)[np.asarray(pairs, dtype=np.int64)]
    if embeddings is None or (_frame_counts(videos, paired) == 0).any():
        log.warning("meta-weighting: some videos have no keyframe embeddings, so the share of wrong pairs "
                    "cannot be estimated; the weighting stays on")
        return None
    # One pooled row a video, shared by its captions (with every pair, ~3 a video).
    # Above the cap the probes see a sample anyway, and the rows are kept at float16:
    # 180 k videos x 1 280 is 0.46 GB so, not 0.92 GB. At or below it, float32 as ever.
    cap = _agreement_cap(config)
    above = cap is not None and len(pairs) > cap
    scored_videos, video_of = np.unique(paired, return_inverse=True)
    if _pool_on_demand(videos, len(scored_videos), above):
        # The rows pooled as the probes ask for them (the same float16 values): held for
        # the sample and a block, not for every scored video.
        pooled = PooledRows(videos, scored_videos)
    else:
        pooled = _pooled(videos, scored_videos, _mean_frames, dtype=np.float16 if above else None)
    # Above the cap the sentence encoder's rows are float16 too (the probes widen a batch).
    text_features = _dense(_text_features(pairs, texts, caption_embedder, np.float16 if above else np.float32), cap)
    scores, null = agreement_losses(pooled, text_features, config.seed, with_null=True, max_train=cap,
                                    video_of=video_of.reshape(-1))
    del text_features
    if not keep_pooled or videos.keyframe_embeddings.dtype != np.float16 or isinstance(pooled, PooledRows):
        scored_videos, pooled = None, None
    return PairScores(np.asarray(pairs, dtype=np.int64), scores, null, scored_videos, pooled)


def _agreement_cap(config) -> int | None:
    """Most pairs the agreement probes train on (``--agreement-sample``; 0: all)."""
    cap = int(getattr(config, "agreement_sample", 0) or 0)
    return cap if cap > 0 else None


def _drop_disagreeing(train_caps: _TrainCaptions, scored: PairScores, share: float) -> int:
    """Leave the ``share`` of scored pairs that agree least out of ``train_caps`` (in
    place; a video left without captions leaves the training stream); how many."""
    dropped = np.unique(scored.caption_ids[most_disagreeing(scored.scores, share)])
    rows = train_caps.captions
    kept = ~np.isin(rows.values, dropped)
    lengths = np.add.reduceat(kept.astype(np.int64), rows.offsets[:-1]) if len(rows.values) else rows.lengths()
    lengths[rows.lengths() == 0] = 0  # reduceat reads one value for an empty row
    remaining = lengths > 0
    train_caps.videos = train_caps.videos[remaining]
    train_caps.captions = Ragged(rows.values[kept], np.concatenate([[0], np.cumsum(lengths[remaining])]))
    return len(dropped)


def _text_features(caption_ids, texts, caption_embedder, dtype=np.float32):
    """Caption features for grouping and agreement: the sentence encoder's (``dtype``;
    looked up in the cache of every caption of the run, which the model reads too), else
    TF-IDF vectors of the captions (sparse)."""
    if caption_embedder is not None:
        return np.asarray(caption_embedder(texts, rows=np.asarray(list(caption_ids), dtype=np.int64), dtype=dtype))
    sample = [texts[c] for c in caption_ids]
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer().fit_transform(sample)


def _pad_ones(values: np.ndarray | None, length: int) -> np.ndarray | None:
    """Per-caption values extended with ones to ``length`` (the meta-set captions added
    after scoring count as right)."""
    if values is None:
        return None
    return np.concatenate([values, np.ones(length - len(values), dtype=np.float32)])


def _dense(features, cap: int | None = None, chunk: int = 16384) -> np.ndarray:
    """Dense rows for the agreement model; sparse TF-IDF is reduced to 256 dimensions.

    Above ``cap`` rows the reduction is fitted on a seeded sample of ``cap`` of them and
    applied a chunk at a time into float16 (the agreement model widens a batch on use):
    fitted on all 540 k captions of 200 k videos, the randomized SVD's float64 work
    arrays alone are ~1 GB each, and the rows would be 0.55 GB in float32."""
    if isinstance(features, np.ndarray):
        return features
    from sklearn.decomposition import TruncatedSVD

    n = features.shape[0]
    fitted = n if cap is None or n <= cap else cap
    svd = TruncatedSVD(n_components=max(1, min(256, features.shape[1] - 1, fitted - 1)), random_state=0)
    if fitted == n:
        return svd.fit_transform(features).astype(np.float32)
    svd.fit(features[np.sort(np.random.default_rng([0, 19]).choice(n, size=fitted, replace=False))])
    out = np.empty((n, svd.components_.shape[0]), dtype=np.float16)
    for start in range(0, n, chunk):
        out[start : start + chunk] = svd.transform(features[start : start + chunk])
    return out


def _kmeans_groups(caption_ids, features, count, seed, cap: int | None = None,
                   chunk: int = 16384) -> dict[str, list[int]]:
    """The captions in up to 32 k-means groups of their features. Above ``cap`` captions
    the centres are fitted on a seeded sample of ``cap`` of them and every caption takes
    its nearest (at 180 k captions the fit on all took 30 s of a run's start); at or
    below it, fitted on all, as ever."""
    from sklearn.cluster import KMeans

    k = max(2, min(32, count // 2, len(caption_ids)))
    model = KMeans(n_clusters=k, n_init=3, random_state=seed)
    n = features.shape[0]

    def wide(rows):  # float16 rows (held so above the cap) widened a block at a time
        return rows.astype(np.float32) if getattr(rows, "dtype", None) == np.float16 else rows

    if cap is None or n <= cap:
        labels = model.fit_predict(wide(features))
    else:
        model.fit(wide(features[np.sort(np.random.default_rng([seed, 31]).choice(n, size=cap, replace=False))]))
        labels = np.concatenate([model.predict(wide(features[start : start + chunk])) for start in range(0, n, chunk)])
    groups: dict[str, list[int]] = {}
    for c, label in zip(caption_ids, labels):
        groups.setdefault(f"cluster{int(label):02d}", []).append(c)
    return groups


def _caption_counts(train_captions) -> np.ndarray:
    if isinstance(train_captions, Ragged):
        return train_captions.lengths()
    return np.asarray([len(c) for c in train_captions], dtype=np.int64)


def steps_per_epoch(data: TrainData, batch_size: int, captions: str = "one") -> int:
    if captions == "all":
        size = min(batch_size, len(data.train_videos))
        per_round = np.bincount(_caption_counts(data.train_captions))[::-1].cumsum()[::-1][1:]
        return max(1, int(sum(n // size for n in per_round)))
    return max(1, len(data.train_videos) // batch_size)


def epoch_batches(data: TrainData, epoch: int, seed: int, batch_size: int,
                  captions: str = "one") -> list[tuple[np.ndarray, np.ndarray]]:
    """(video indices, caption ids) of every batch of ``epoch``, a pure function of
    (seed, epoch): a resumed run sees the same batches. Every batch has the same size.

    ``captions="one"``: every training video once, with one of its captions drawn at
    random. ``"all"``: every (video, caption) pair once, in rounds: round k holds the
    k-th caption (in a random order) of every video with more than k, so no batch
    holds a video twice (its other caption would be a false negative); each round is
    shuffled and cut into full batches, and the batches of all rounds are shuffled.
    As with ``one``, what does not fill a last batch of a round waits for the next
    epoch."""
    if captions == "all":
        rng = np.random.default_rng([seed, epoch, 1])
        size = min(batch_size, len(data.train_videos))
        rounds: dict[int, list[int]] = {}
        for caps in data.train_captions:
            for k, c in enumerate(caps[rng.permutation(len(caps))]):
                rounds.setdefault(k, []).append(int(c))
        batches = []
        for k in sorted(rounds):
            members = np.asarray(rounds[k], dtype=np.int64)[rng.permutation(len(rounds[k]))]
            batches += [members[i * size : (i + 1) * size] for i in range(len(members) // size)]
        return [(data.caption_video[batches[i]], batches[i]) for i in rng.permutation(len(batches))]
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(len(data.train_videos))
    pick = rng.random(len(order))
    videos = data.train_videos[order]
    rows = data.train_captions
    if isinstance(rows, Ragged):  # the same draw as below, for every video at once
        captions = rows.values[rows.offsets[order] + (pick * rows.lengths()[order]).astype(np.int64)]
    else:
        captions = np.asarray([rows[k][int(p * len(rows[k]))] for k, p in zip(order, pick)], dtype=np.int64)
    size = min(batch_size, len(order))
    n = steps_per_epoch(data, batch_size)
    return [(videos[i * size : (i + 1) * size], captions[i * size : (i + 1) * size]) for i in range(n)]


def meta_batch(data: TrainData, step: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, step, 2])
    size = min(size, len(data.meta_videos))
    pick = np.sort(rng.choice(len(data.meta_videos), size=size, replace=False))
    return data.meta_videos[pick], data.meta_captions[pick]


def describe_issues(data: TrainData) -> list[str]:
    lines = []
    for kind, count in data.issues.most_common():
        lines.append(f"{kind}: {count} (e.g. {data.issue_examples.get(kind, '')})")
    return lines

