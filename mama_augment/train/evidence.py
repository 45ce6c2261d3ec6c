"""Evidence for every caption source: does a captioner's output make the model better?

The loss-based weighting (train/meta.py) finds single wrong captions, but it cannot see
that a whole *source* of captions (a weak captioner, a prompt that invites filler)
costs more than it brings: on the emoji benchmark keyword captions cost InfoNCE 1.4-2.5
R@1 even when every one of them was right. So before training, with
``--generated-weight auto`` (the default), each source of generated captions (one
``model`` + prompt of ``captions.parquet``) is put to a test on the run's own
*training* videos (never val or test):

1. the training videos are cut into ``FOLDS`` parts by a hash of their id; each part
   in turn is the holdout and the others the fit part;
2. short cheap trainings (linear heads on the frozen pooled keyframe embeddings and
   caption features, InfoNCE) fit the fit part's original captions alone, and the
   originals plus each source's captions;
3. each is scored on the holdout videos against their ORIGINAL captions (text->video
   R@1, at the best of its epochs, as the real run keeps its best validation epoch);
4. the paired differences (same fold, same initialisation) decide the source's weight
   with :func:`decide_weight`: 0 (left out) or 1 (kept).

Without original captions among the training videos there is nothing to judge a
source against, so the step is skipped (and says so); the generated captions are then
used fully.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

ORIGINAL = None  # the source key of an original caption
FOLDS = 2  # parts of the training videos, each the holdout once
SEEDS = 1  # initialisations per fold: FOLDS * SEEDS paired differences per source
EPOCHS = 8  # of each short training; scored after each epoch, the best kept
# Video features are projected once onto their top principal directions, so each short
# training costs a fraction of the real one (the video side was 1280-wide).
VIDEO_DIMS = 256
# The decision on the mean paired difference d (text->video R@1 points): the source is
# kept (1) when d >= KEEP_AT, else left out (0). Chosen on validation folds (4 folds of
# both emoji sets, 5 generated settings; benchmarks/train_selection.py, RESULTS.md
# "Generated captions by evidence"): bars of 1.5 to 2.0 gave the best mean of (default -
# the better InfoNCE), 1.8 also the best worst case. No half weight (no run favoured
# it) and no standard-error bar (with two differences it drops sources that help).
KEEP_AT = 1.8
MIN_HOLDOUT_VIDEOS = 20  # below this a holdout R@1 is mostly noise: the step is skipped
# Most holdout videos searched together (one gallery); above it the holdout is cut into
# galleries of this size. The bar above was chosen on holdouts of fewer videos.
HOLDOUT_GALLERY = 2048


@dataclass
class SourceEvidence:
    """What one caption source added on the held-out training videos."""

    source: str
    train_pairs: int  # its pairs among the training pairs
    r1_without: float  # holdout text->video R@1 with the original captions alone (mean over folds and seeds)
    r1_with: float  # ... with the originals and this source
    differences: list[float]  # of text->video R@1, paired, per fold and seed: what decides
    difference: float  # their mean
    stderr: float
    weight: float  # the decision
    reason: str
    v2t_difference: float = 0.0  # video->text R@1, the same way (reported, not deciding)


@dataclass
class Evidence:
    """The evidence step of one run: its decisions, or why it was skipped."""

    weights: dict[str, float] = field(default_factory=dict)  # source -> weight of its pairs
    sources: list[SourceEvidence] = field(default_factory=list)
    skipped: str | None = None  # why no evidence was gathered (then weights are all 1)
    mode: str = "auto"  # auto (by evidence) or the --generated-weight given
    seconds: float = 0.0
    sampled: tuple[int, int] | None = None  # (pairs the step ran on, training pairs) when capped

    def as_dict(self) -> dict:
        out = {"mode": self.mode, "weights": dict(self.weights), "skipped": self.skipped,
               "seconds": round(self.seconds, 3), "sources": [asdict(s) for s in self.sources]}
        if self.sampled is not None:
            out["sampled_pairs"], out["train_pairs"] = self.sampled
        return out

    def lines(self) -> list[str]:
        """What a user reads: one line per source, or why there was no evidence (the
        summary prints them after ``generated_captions:``, the log after the same words)."""
        if self.skipped:
            return [self.skipped]
        if self.mode != "auto":
            return [f"weight {w:g} for {s} (--generated-weight {self.mode})" for s, w in self.weights.items()]
        lines = [
            f"of {e.source}: holdout t2v R@1 {e.r1_with:.2f} with them, {e.r1_without:.2f} "
            f"without ({e.difference:+.2f} +- {e.stderr:.2f}) -> weight {e.weight:g} ({e.reason})"
            for e in self.sources
        ]
        if self.sampled is not None:
            lines.append(f"judged on the videos of {self.sampled[0]:,} of the {self.sampled[1]:,} training pairs "
                         "(--agreement-sample)")
        return lines


def decide_weight(differences: Sequence[float], keep_at: float = KEEP_AT) -> tuple[float, float, str]:
    """(weight, standard error, reason) from paired holdout differences (with - without)."""
    d = np.asarray(differences, dtype=float)
    mean = float(d.mean())
    stderr = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    if mean >= keep_at:
        return 1.0, stderr, f"adds at least {keep_at:g}"
    return 0.0, stderr, f"adds less than {keep_at:g}"


def hash_fold(video_id: str, folds: int) -> int:
    """A video's evidence fold: stable, and independent of the train/val/test hash."""
    digest = hashlib.sha256(("evidence:" + video_id).encode("utf-8")).hexdigest()
    return int(digest[:16], 16) % folds


def _train_and_score(video_features, text_features, fit_pairs, caption_video, holdout_captions,
                     holdout_videos, seed: int, epochs: int, dim: int = 256,
                     batch_size: int = 128, gallery: int = 0) -> tuple[float, float]:
    """Linear heads trained with InfoNCE on ``fit_pairs`` (caption ids); the holdout
    text->video R@1 (in %) of the epoch where it was best, and the video->text R@1 there.

    ``holdout_videos`` (sorted) are searched in galleries of at most ``gallery`` of them
    (0: the default, ``HOLDOUT_GALLERY``): each caption among its gallery's videos, each
    video among its gallery's captions. One gallery is the whole holdout up to that size;
    above it the cost of an epoch's scoring grows with the holdout, not its square
    (8 k x 8 k at a sample of 50 k pairs), and R@1 stays on the scale of galleries the
    decision's bar was chosen on."""
    gallery = gallery or HOLDOUT_GALLERY
    import torch
    import torch.nn.functional as F

    from mama_augment.train.agreement import symmetric_cross_entropy

    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 17])
    video = torch.as_tensor(video_features)
    text = torch.as_tensor(text_features)
    heads = []
    for width in (video.shape[1], text.shape[1]):
        linear = torch.nn.Linear(width, dim)
        bound = 1 / width ** 0.5
        with torch.no_grad():  # seeded here, so a pair of runs differs only in its data
            linear.weight.uniform_(-bound, bound, generator=generator)
            linear.bias.uniform_(-bound, bound, generator=generator)
        heads.append(torch.nn.Sequential(torch.nn.LayerNorm(width), linear))
    video_head, text_head = heads
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    optimizer = torch.optim.AdamW([*video_head.parameters(), *text_head.parameters(), log_scale],
                                  lr=1e-3, weight_decay=0.2)
    fit_pairs = np.asarray(fit_pairs, dtype=np.int64)
    holdout_videos = np.asarray(holdout_videos, dtype=np.int64)
    holdout_captions = np.asarray(holdout_captions, dtype=np.int64)
    position = np.searchsorted(holdout_videos, np.asarray(caption_video)[holdout_captions])
    blocks = []  # (videos, captions, each caption's video's place among the block's videos)
    for first in range(0, len(holdout_videos), gallery):
        mine = (position >= first) & (position < first + gallery)
        blocks.append((torch.as_tensor(holdout_videos[first : first + gallery]),
                       torch.as_tensor(holdout_captions[mine]), torch.as_tensor(position[mine] - first)))
    best = (-1.0, -1.0)
    for _ in range(epochs):
        order = fit_pairs[rng.permutation(len(fit_pairs))]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            if len(rows) < 2:
                continue
            owners = torch.as_tensor(caption_video[rows])
            logits = log_scale.exp() * F.normalize(video_head(video[owners]), dim=-1) @ \
                F.normalize(text_head(text[torch.as_tensor(rows)]), dim=-1).T
            # Two captions of one video in a batch are not each other's negatives.
            same = (owners[:, None] == owners[None, :]) & ~torch.eye(len(rows), dtype=torch.bool)
            logits = logits.masked_fill(same, float("-inf"))
            loss = symmetric_cross_entropy(logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                log_scale.clamp_(0.0, math.log(200.0))
        with torch.no_grad():
            t2v_hits, v2t_hits = [], []
            for held_v, held_c, truth in blocks:
                sims = F.normalize(text_head(text[held_c]), dim=-1) @ F.normalize(video_head(video[held_v]), dim=-1).T
                t2v_hits.append((sims.argmax(dim=1) == truth).float())
                # v2t: a video's best caption is any of its own
                top_caption = sims.T.contiguous().argmax(dim=1)
                v2t_hits.append((truth[top_caption] == torch.arange(len(held_v))).float())
            t2v = float(torch.cat(t2v_hits).mean())
            v2t = float(torch.cat(v2t_hits).mean())
        best = max(best, (100 * t2v, 100 * v2t))
    return best


def _project(features: np.ndarray, dims: int) -> np.ndarray:
    """Centred features on their top ``dims`` principal directions (unchanged when narrower)."""
    if features.shape[1] <= dims or features.shape[0] <= dims:
        return np.ascontiguousarray(features)
    from scipy.linalg import eigh  # scikit-learn's dependency

    centred = np.asarray(features - features.mean(axis=0), dtype=np.float32)
    # The top eigenvectors of the covariance span the same directions as the top right
    # singular vectors: a full SVD of (videos x width) took a third of the evidence step,
    # the top ``dims`` eigenpairs of the (width x width) covariance a tenth of that.
    width = centred.shape[1]
    _, vectors = eigh(centred.T @ centred, subset_by_index=[width - dims, width - 1])  # ascending
    return np.ascontiguousarray(centred @ vectors[:, ::-1], dtype=np.float32)


def measure_sources(video_ids: Sequence[str], video_features: np.ndarray, text_features: np.ndarray,
                    caption_video: np.ndarray, caption_source: Sequence[str | None],
                    train_captions: Sequence[int], seed: int = 0, folds: int = FOLDS, seeds: int = SEEDS,
                    epochs: int = EPOCHS) -> Evidence:
    """The evidence for every generated source among ``train_captions``.

    ``video_features``: one row per video (pooled keyframe embeddings);
    ``text_features``: one row per caption id; ``caption_source[c]``: None for an
    original caption, else its source's name. Only training captions are given.
    """
    import torch

    started = time.time()
    caption_video = np.asarray(caption_video, dtype=np.int64)
    train_captions = np.asarray(train_captions, dtype=np.int64)
    sources = sorted({caption_source[c] for c in train_captions if caption_source[c] is not ORIGINAL})
    evidence = Evidence()
    if not sources:
        evidence.skipped = "none among the training pairs"
        return evidence
    originals = train_captions[[caption_source[c] is ORIGINAL for c in train_captions]]
    if len(originals) == 0:
        evidence.skipped = ("no original captions among the training videos to judge them against: "
                            "evidence step skipped, every generated caption used fully")
        evidence.weights = {s: 1.0 for s in sources}
        return evidence
    fold_of_video = {int(v): hash_fold(video_ids[int(v)], folds) for v in set(caption_video[train_captions].tolist())}
    fold_of = np.asarray([fold_of_video[int(caption_video[c])] for c in train_captions])
    is_original = np.asarray([caption_source[c] is ORIGINAL for c in train_captions])
    held_sizes = [len({int(caption_video[c]) for c in train_captions[(fold_of == f) & is_original]}) for f in range(folds)]
    if min(held_sizes) < MIN_HOLDOUT_VIDEOS:
        evidence.skipped = (f"too few training videos with original captions ({sum(held_sizes)}) to hold some out: "
                            "evidence step skipped, every generated caption used fully")
        evidence.weights = {s: 1.0 for s in sources}
        return evidence
    video_features = _project(np.asarray(video_features, dtype=np.float32), VIDEO_DIMS)
    text_features = np.ascontiguousarray(text_features, dtype=np.float32)
    without: list[float] = []
    with_source: dict[str, list[float]] = {s: [] for s in sources}
    # Under a forked RNG: the evidence must not move the generator that initialises the model.
    with torch.random.fork_rng(devices=[]):
        for fold in range(folds):
            fit = train_captions[fold_of != fold]
            held_c = train_captions[(fold_of == fold) & is_original]
            held_v = np.asarray(sorted({int(caption_video[c]) for c in held_c}), dtype=np.int64)
            fit_original = fit[[caption_source[c] is ORIGINAL for c in fit]]
            for repeat in range(seeds):
                run_seed = int(np.random.default_rng([seed, fold, repeat, 23]).integers(1 << 31))
                args = (caption_video, held_c, held_v, run_seed, epochs)
                without.append(_train_and_score(video_features, text_features, fit_original, *args))
                for source in sources:
                    pairs = fit[[caption_source[c] is ORIGINAL or caption_source[c] == source for c in fit]]
                    with_source[source].append(_train_and_score(video_features, text_features, pairs, *args))
    for source in sources:
        differences = [a[0] - b[0] for a, b in zip(with_source[source], without)]
        v2t = float(np.mean([a[1] - b[1] for a, b in zip(with_source[source], without)]))
        weight, stderr, reason = decide_weight(differences)
        evidence.sources.append(SourceEvidence(
            source=source, train_pairs=int(sum(caption_source[c] == source for c in train_captions)),
            r1_without=float(np.mean([r[0] for r in without])),
            r1_with=float(np.mean([r[0] for r in with_source[source]])),
            differences=[round(d, 3) for d in differences], difference=float(np.mean(differences)),
            stderr=stderr, weight=weight, reason=reason, v2t_difference=v2t,
        ))
        evidence.weights[source] = weight
    evidence.seconds = time.time() - started
    return evidence


def source_name(model, prompt_name, prompt_sha256) -> str:
    """A source as a user reads it: the model and the prompt (its file name, else its hash)."""
    model = model if isinstance(model, str) and model else "unknown model"
    if isinstance(prompt_name, str) and prompt_name:
        return f"{model} / {prompt_name}"
    if isinstance(prompt_sha256, str) and prompt_sha256:
        return f"{model} / prompt {prompt_sha256[:12]}"
    return model


def caption_sources(workdir, data) -> list[str | None]:
    """For every caption id of ``data``: None (an original or meta caption) or the name
    of the generated caption's source, from ``captions.parquet``'s model and prompt."""
    from mama_augment.workread import generated_captions_table

    # Training took its generated captions from the ok rows: the failed ones are never needed.
    table = generated_captions_table(workdir, ["model", "prompt_name", "prompt_sha256"]).to_pydict()
    name_of = {
        (video_id, int(index)): source_name(model, prompt, sha)
        for video_id, index, model, prompt, sha in zip(table["video_id"], table["caption_index"], table["model"],
                                                       table["prompt_name"], table["prompt_sha256"])
    }
    names: list[str | None] = []
    for c, index in enumerate(data.caption_index):
        if index is None or data.caption_source[c] != "generated":
            names.append(ORIGINAL)
        else:
            names.append(name_of.get((data.videos.video_ids[int(data.caption_video[c])], int(index)), "unknown model"))
    return names


def _video_features(data, videos: np.ndarray | None = None) -> np.ndarray | None:
    """Pooled keyframe embeddings (float32), one row per video of ``videos`` (None: every
    video), stacked a chunk at a time; None when one of them has none."""
    from mama_augment.train.data import _frame_counts, _mean_frames, _pooled

    if videos is None:
        videos = np.arange(len(data.videos.video_ids), dtype=np.int64)
    if not len(videos) or (_frame_counts(data.videos, videos) == 0).any():
        return None
    return _pooled(data.videos, videos, _mean_frames, np.float32)


def sample_videos(caption_video: np.ndarray, train: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """The training captions ``train`` of a seeded sample of their videos, every caption
    of a chosen video kept, as many videos as hold at most ``cap`` captions together (in
    caption id order); ``train`` itself when it holds no more than ``cap``."""
    if cap <= 0 or len(train) <= cap:
        return train
    owners = caption_video[train]
    videos, place = np.unique(owners, return_inverse=True)
    order = np.random.default_rng([seed, 29]).permutation(len(videos))
    held = np.cumsum(np.bincount(place, minlength=len(videos))[order])
    chosen = np.zeros(len(videos), dtype=bool)
    chosen[order[: max(1, int(np.searchsorted(held, cap, side="right")))]] = True
    return np.sort(train[chosen[place]])


def gather_evidence(data, sources: list[str | None], seed: int, caption_embedder=None, sample: int = 0) -> Evidence:
    """:func:`measure_sources` on a run's training pairs: ``data`` as ``build_data``
    returns it, ``sources`` from :func:`caption_sources`.

    ``sample`` > 0 bounds the step: with more training pairs than that, it runs on a
    seeded sample of the training videos holding at most ``sample`` pairs (every caption
    of a chosen video), so its time and memory stop growing with the data (scoring a
    holdout of N videos against N captions alone is N x N; 90 k x 90 k at 200 k videos).
    At or below it nothing changes."""
    from mama_augment.train.data import _dense, _text_features

    started = time.time()
    train = np.asarray(data.train_captions.values if hasattr(data.train_captions, "values")
                       else [c for caps in data.train_captions for c in caps], dtype=np.int64)
    generated = np.fromiter((sources[c] is not ORIGINAL for c in train), dtype=bool, count=len(train))
    if not generated.any():
        return Evidence(skipped="none among the training pairs")
    caption_video = np.asarray(data.caption_video, dtype=np.int64)
    kept = sample_videos(caption_video, train, sample, seed)
    if len(kept) == len(train):
        video_features = _video_features(data)
        if video_features is not None:
            # The same list of texts the model embeds, so the cache serves both.
            text_features = _dense(_text_features(range(len(data.texts)), data.texts, caption_embedder))
            evidence = measure_sources(data.videos.video_ids, video_features, text_features, caption_video,
                                       sources, train, seed=seed)
    else:
        # The sample's videos and captions renumbered in their order (which keeps every
        # draw of the step's generators a function of the sample alone).
        videos, local_video = np.unique(caption_video[kept], return_inverse=True)
        video_features = _video_features(data, videos)
        if video_features is not None:
            # The encoder's rows from the cache of every caption (the model's too); TF-IDF of the sample.
            text_features = _dense(_text_features(kept, data.texts, caption_embedder))
            evidence = measure_sources([data.videos.video_ids[int(v)] for v in videos], video_features,
                                       text_features, local_video, [sources[int(c)] for c in kept],
                                       np.arange(len(kept), dtype=np.int64), seed=seed)
            counts = Counter(sources[int(c)] for c in train[generated])
            for source in evidence.sources:  # what the source has among all the training pairs
                source.train_pairs = counts.get(source.source, source.train_pairs)
            evidence.sampled = (len(kept), len(train))
    if video_features is None:
        names = sorted({sources[int(c)] for c in train[generated]})
        return Evidence(weights={s: 1.0 for s in names},
                        skipped="the videos have no keyframe embeddings to gather evidence with: evidence step "
                                "skipped, every generated caption used fully (--generated-weight sets a weight)")
    evidence.seconds = time.time() - started
    return evidence


def fixed_weights(sources: list[str | None], weight: float, mode: str) -> Evidence:
    """Every generated source at the weight the user gave (no evidence gathered)."""
    names = sorted({s for s in sources if s is not ORIGINAL})
    return Evidence(weights={s: weight for s in names}, mode=mode)
