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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mama_augment.datasets.splits import normalize_split, split_of_video
from mama_augment.errors import UsageError
from mama_augment.manifest import CAPTIONS, read_manifest
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

    video_ids: list[str]
    keyframe_embeddings: list[np.ndarray]  # (frames, dim) float16 each (views of one array); may be empty
    keyframe_paths: list[list[str]]  # relative to the work folder
    concepts: list[str | None]

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
    videos: VideoTable
    texts: list[str]
    caption_source: list[str]
    caption_concept: list[str | None]
    caption_video: np.ndarray  # caption id -> video index
    video_split: list[str]
    train_videos: np.ndarray  # video indices in the training stream
    train_captions: list[np.ndarray]  # per train video: its caption ids
    meta_videos: np.ndarray
    meta_captions: np.ndarray  # one caption id per meta pair (aligned with meta_videos)
    issues: Counter = field(default_factory=Counter)
    issue_examples: dict[str, str] = field(default_factory=dict)
    # caption id -> caption_index in captions.parquet (generated captions), else None
    caption_index: list[int | None] = field(default_factory=list)
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
        caption_ids = [
            c
            for c, v in enumerate(self.caption_video)
            if self.caption_source[c] == self.eval_source and self.video_split[v] == name
        ]
        videos = sorted({int(self.caption_video[c]) for c in caption_ids})
        position = {v: i for i, v in enumerate(videos)}
        return SplitPairs(
            np.asarray(videos, dtype=np.int64),
            np.asarray(caption_ids, dtype=np.int64),
            np.asarray([position[int(self.caption_video[c])] for c in caption_ids], dtype=np.int64),
        )

    @property
    def num_train_pairs(self) -> int:
        return int(sum(len(c) for c in self.train_captions))

    def summary(self) -> dict:
        counts = Counter(self.video_split[v] for v in range(len(self.videos)))
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
                        [None] * len(loaded.video_ids))
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
    index_of = {v: i for i, v in enumerate(videos.video_ids)}
    captions_path = captions_override or config.captions

    texts: list[str] = []
    sources: list[str] = []
    concepts: list[str | None] = []
    caption_video: list[int] = []
    caption_index: list[int | None] = []
    split_votes: dict[int, Counter] = {}
    has_split = False
    if captions_path:
        frame = _read_captions(captions_path, None if captions_override else getattr(config, "captions_format", None),
                               videos.video_ids, issues, examples)
        has_split = "split" in frame.columns and frame["split"].notna().any()
        has_concept = "concept" in frame.columns
        for row in frame.itertuples(index=False):
            video_id, caption = row.video_id, row.caption
            if not caption:
                _note(issues, examples, "empty_caption", 1, video_id)
                continue
            if video_id not in index_of:
                _note(issues, examples, "caption_without_video", 1, video_id)
                continue
            v = index_of[video_id]
            if has_split:
                raw = getattr(row, "split")
                split = normalize_split(raw)
                if split is None:
                    _note(issues, examples, "unknown_split", 1, f"{video_id}: {raw!r}")
                    continue
                split_votes.setdefault(v, Counter())[split] += 1
            texts.append(caption)
            sources.append(SOURCE_ORIGINAL)
            concepts.append(getattr(row, "concept") if has_concept else None)
            caption_video.append(v)
            caption_index.append(None)

    if config.augment == "add":
        generated = generated_captions_table(workdir, ["caption"])
        flag_reason = _flag_filter(config, workdir, issues, examples)
        if generated.num_rows:
            for row in generated.to_pandas().itertuples(index=False):
                caption = (row.caption or "").strip()
                if not caption:
                    _note(issues, examples, "empty_generated_caption", 1, row.video_id)
                    continue
                if row.video_id not in index_of:
                    _note(issues, examples, "generated_caption_without_video", 1, row.video_id)
                    continue
                dropped = flag_reason(row.video_id, int(row.caption_index), row.caption) if flag_reason else None
                if dropped:
                    _note(issues, examples, f"generated_caption_dropped_{dropped}", 1,
                          f"{row.video_id}#{int(row.caption_index)}")
                    continue
                texts.append(caption)
                sources.append(SOURCE_GENERATED)
                concepts.append(None)
                caption_video.append(index_of[row.video_id])
                caption_index.append(int(row.caption_index))

    eval_source = SOURCE_ORIGINAL if captions_path else _generated_only(workdir, sources, issues)
    caption_video_arr = np.asarray(caption_video, dtype=np.int64)
    captioned = set(caption_video)
    _note(issues, examples, "video_without_captions", len(videos) - len(captioned),
          next((v for i, v in enumerate(videos.video_ids) if i not in captioned), ""))

    # A video's concept: the most common concept of its original captions.
    concept_votes: dict[int, Counter] = {}
    for c, v in enumerate(caption_video):
        if concepts[c] is not None:
            concept_votes.setdefault(v, Counter())[concepts[c]] += 1
    videos.concepts = [concept_votes[i].most_common(1)[0][0] if i in concept_votes else None for i in range(len(videos))]

    video_split: list[str] = []
    for i, video_id in enumerate(videos.video_ids):
        votes = split_votes.get(i)
        if has_split and votes and len(votes) > 1:
            _note(issues, examples, "video_in_several_splits", 1, video_id)
        video_split.append(split_of_video(video_id, votes, has_split, config.test_fraction, config.val_fraction))

    # Generated captions of val/test videos would leak them into training: drop them.
    train_caps: dict[int, list[int]] = {}
    for c, v in enumerate(caption_video):
        if video_split[v] == "train" and (keep_caption is None or keep_caption(c)):
            train_caps.setdefault(v, []).append(c)

    use_weighting, wrong, scored = config.use_meta_weighting, None, None
    reads_agreement = "agreement" in getattr(config, "meta_inputs", "loss").split(",") and use_weighting
    uses_scores = bool(getattr(config, "agreement_filter", False) or getattr(config, "agreement_prior", False)
                       or reads_agreement)
    if config.meta_weighting_decided_by_data or uses_scores:
        # The filter and the prior need every pair's score; the estimate alone a sample.
        scored = _score_training_pairs(config, videos, texts, caption_video, train_caps, caption_embedder,
                                       every_pair=uses_scores)
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
                config, workdir, videos, index_of, texts, sources, concepts, caption_video, train_caps,
                caption_embedder, issues, examples, video_split,
            )
        except MetaSetTooSmall as exc:
            if config.meta_weighting:  # asked for by name: say what would let it run
                raise UsageError(f"{exc}: add videos, lower --meta-fraction, or pass --no-meta-weighting") from None
            # Not asked for either way: a first try on a handful of clips should train.
            use_weighting, off_why = False, f"{exc}: trained without the meta-weighting (margin loss alone)"
            log.warning("%s", off_why)
    caption_index += [None] * (len(texts) - len(caption_index))  # meta-set captions
    held_out = set(int(v) for v in meta_videos) if config.meta_holdout else set()
    train_videos = np.asarray(sorted(v for v in train_caps if v not in held_out), dtype=np.int64)
    data = TrainData(
        videos=videos,
        texts=texts,
        caption_source=sources,
        caption_concept=concepts,
        caption_video=caption_video_arr,
        video_split=video_split,
        train_videos=train_videos,
        train_captions=[np.asarray(train_caps[int(v)], dtype=np.int64) for v in train_videos],
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


def _select_meta(config, workdir, videos, index_of, texts, sources, concepts, caption_video, train_caps,
                 caption_embedder, issues, examples, video_split) -> tuple[list[int], list[int]]:
    if config.meta_set:
        frame = _read_captions(config.meta_set, None, videos.video_ids, issues, examples, prefix="meta_set_")
        meta_v, meta_c = [], []
        for row in frame.itertuples(index=False):
            if not row.caption or row.video_id not in index_of:
                _note(issues, examples, "meta_pair_without_video", 1, row.video_id)
                continue
            if video_split[index_of[row.video_id]] != "train":
                # The meta step would tune the weighting on a video the run is judged on.
                _note(issues, examples, "meta_pair_of_val_or_test_video", 1, row.video_id)
                continue
            meta_v.append(index_of[row.video_id])
            texts.append(row.caption)
            sources.append("meta")
            concepts.append(getattr(row, "concept", None) if "concept" in frame.columns else None)
            caption_video.append(index_of[row.video_id])
            meta_c.append(len(texts) - 1)
        if len(meta_v) < 2:
            raise UsageError(f"the meta set {config.meta_set} has fewer than 2 usable pairs")
        return meta_v, meta_c

    # Candidates: original captions of training videos (human captions are the clean ones).
    candidates = [c for v, caps in sorted(train_caps.items()) for c in caps if sources[c] == SOURCE_ORIGINAL]
    if not candidates:
        candidates = [c for v, caps in sorted(train_caps.items()) for c in caps]
    n_videos = len(train_caps)
    count = max(2, int(round(config.meta_fraction * len(candidates))))
    if n_videos - count < 2:
        raise MetaSetTooSmall(f"too few training videos ({n_videos}) to hold out a meta set of {count}")
    rng = np.random.default_rng([config.seed, 7])
    # One candidate caption per video, so held-out videos equal meta pairs.
    first_of_video: dict[int, int] = {}
    for c in candidates:
        first_of_video.setdefault(caption_video[c], c)
    per_video = list(first_of_video.values())
    text_features = None
    if any(concepts[c] is not None for c in per_video):
        groups: dict[str, list[int]] = {}
        for c in per_video:
            groups.setdefault(str(concepts[c]), []).append(c)
        method = "concept"
    else:
        text_features = _text_features(per_video, texts, caption_embedder)
        groups = _kmeans_groups(per_video, text_features, count, config.seed)
        method = "kmeans"
    scores = None
    if config.meta_select == "agreement":
        video_features = [videos.keyframe_embeddings[caption_video[c]] for c in per_video]
        if any(len(e) == 0 for e in video_features):
            log.warning("meta set: some videos have no keyframe embeddings, so it is drawn at random")
        else:
            if text_features is None:
                text_features = _text_features(per_video, texts, caption_embedder)
            pooled = np.stack([e.mean(axis=0) for e in video_features])
            losses = agreement_losses(pooled, _dense(text_features), config.seed)
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


def _score_training_pairs(config, videos, texts, caption_video, train_caps, caption_embedder,
                          every_pair: bool = False) -> PairScores | None:
    """Agreement scores of the training pairs, original and generated: at most
    ``WRONG_SHARE_SAMPLE`` pairs drawn by the seed (enough for the share of wrong pairs,
    :func:`wrong_share`), or ``every_pair``; None when videos have no keyframe
    embeddings to score with."""
    pairs = [c for v in sorted(train_caps) for c in train_caps[v]]
    if len(pairs) < 20:
        return None
    if len(pairs) > WRONG_SHARE_SAMPLE and not every_pair:
        rng = np.random.default_rng([config.seed, 13])
        pairs = sorted(rng.choice(pairs, size=WRONG_SHARE_SAMPLE, replace=False).tolist())
    embeddings = videos.keyframe_embeddings
    if embeddings is None or any(len(embeddings[caption_video[c]]) == 0 for c in pairs):
        log.warning("meta-weighting: some videos have no keyframe embeddings, so the share of wrong pairs "
                    "cannot be estimated; the weighting stays on")
        return None
    pooled = np.stack([np.asarray(embeddings[caption_video[c]], dtype=np.float32).mean(axis=0) for c in pairs])
    text_features = _dense(_text_features(pairs, texts, caption_embedder))
    scores, null = agreement_losses(pooled, text_features, config.seed, with_null=True)
    return PairScores(np.asarray(pairs, dtype=np.int64), scores, null)


def _drop_disagreeing(train_caps: dict[int, list[int]], scored: PairScores, share: float) -> int:
    """Leave the ``share`` of scored pairs that agree least out of ``train_caps`` (in
    place; a video left without captions leaves the training stream); how many."""
    dropped = set(scored.caption_ids[most_disagreeing(scored.scores, share)].tolist())
    for v in list(train_caps):
        kept = [c for c in train_caps[v] if c not in dropped]
        if kept:
            train_caps[v] = kept
        else:
            del train_caps[v]
    return len(dropped)


def _text_features(caption_ids, texts, caption_embedder):
    """Caption features for grouping and agreement: the sentence encoder's, else
    TF-IDF vectors of the captions (sparse)."""
    sample = [texts[c] for c in caption_ids]
    if caption_embedder is not None:
        return np.asarray(caption_embedder(sample), dtype=np.float32)
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer().fit_transform(sample)


def _pad_ones(values: np.ndarray | None, length: int) -> np.ndarray | None:
    """Per-caption values extended with ones to ``length`` (the meta-set captions added
    after scoring count as right)."""
    if values is None:
        return None
    return np.concatenate([values, np.ones(length - len(values), dtype=np.float32)])


def _dense(features) -> np.ndarray:
    """Dense rows for the agreement model; sparse TF-IDF is reduced to 256 dimensions."""
    if isinstance(features, np.ndarray):
        return features
    from sklearn.decomposition import TruncatedSVD

    k = max(1, min(256, features.shape[1] - 1, features.shape[0] - 1))
    return TruncatedSVD(n_components=k, random_state=0).fit_transform(features).astype(np.float32)


def _kmeans_groups(caption_ids, features, count, seed) -> dict[str, list[int]]:
    from sklearn.cluster import KMeans

    k = max(2, min(32, count // 2, len(caption_ids)))
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(features)
    groups: dict[str, list[int]] = {}
    for c, label in zip(caption_ids, labels):
        groups.setdefault(f"cluster{int(label):02d}", []).append(c)
    return groups


def steps_per_epoch(data: TrainData, batch_size: int, captions: str = "one") -> int:
    if captions == "all":
        size = min(batch_size, len(data.train_videos))
        per_round = np.bincount(np.asarray([len(c) for c in data.train_captions]))[::-1].cumsum()[::-1][1:]
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
    captions = np.asarray(
        [data.train_captions[k][int(p * len(data.train_captions[k]))] for k, p in zip(order, pick)], dtype=np.int64
    )
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

