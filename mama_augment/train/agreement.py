"""The agreement model: how well each (video, caption) pair agrees, scored by a small
model that never trained on the pair (cross-fitted), and the share of wrong pairs
estimated from those scores.

It chooses the meta set and decides whether a run weights at all
(``--meta-noise-threshold``; both in train/data.py).
"""

from __future__ import annotations

import numpy as np


def agreement_losses(video_features: np.ndarray, text_features: np.ndarray, seed: int, folds: int = 5,
                     epochs: int = 2, dim: int = 256, batch_size: int = 128, gallery: int = 4096,
                     with_null: bool = False, max_train: int | None = None, video_of: np.ndarray | None = None):
    """How badly each (video, caption) pair agrees: lower is better.

    Cross-fitted small-loss scoring, as the noisy-label literature picks clean samples
    by their loss under a warm-up model, with one change: a model scores only pairs it
    did not train on. The pairs are split into ``folds``; for each, linear projections
    of the two feature sets are trained with InfoNCE for ``epochs`` on the other folds,
    and each held-out pair's score is its symmetric InfoNCE loss against the other
    pairs of its own fold (in blocks of at most ``gallery``). A wrong caption cannot be
    memorised by the model that scores it, so it scores badly; a warm-up model scoring
    its own training pairs learns the wrong ones within a few epochs.

    ``max_train``: the models train on a sample of at most that many pairs, drawn by the
    seed (None: on every pair); every pair is still scored, by the model of its fold,
    which did not train on it. Below the cap nothing changes. The probes' CPU time and
    memory then stop growing with the pairs: a few linear heads need no more than tens
    of thousands of pairs to rank the rest, and scoring is a forward pass in blocks.

    ``video_of``: pair i's video features are ``video_features[video_of[i]]`` (one row a
    video, shared by its captions) instead of row i.

    ``video_features`` may also make its rows on demand (``take_rows(rows)``, ``shape`` and
    ``len``): then the rows the probes train on are made once and the others a scoring
    block at a time, so memory is bounded by the sample and the block, not the pairs.

    ``with_null=True`` also returns, for every pair, the same score of a deliberately
    wrong pair (its video with another caption of its block) under the same model: the
    scores wrong pairs get, which :func:`wrong_share` compares the real pairs with.
    """
    import torch

    # Built under a forked RNG: scoring must not move the global torch RNG that seeds
    # the model (a run's initialisation does not depend on whether pairs were scored).
    with torch.random.fork_rng(devices=[]):
        return _agreement_losses(video_features, text_features, seed, folds, epochs, dim, batch_size, gallery,
                                 with_null, max_train, video_of)


def _agreement_losses(video_features, text_features, seed, folds, epochs, dim, batch_size, gallery, with_null,
                      max_train, video_of):
    import torch
    import torch.nn.functional as F

    n = len(video_features) if video_of is None else len(video_of)
    rng = np.random.default_rng([seed, 11])
    fold_of = rng.permutation(n) % folds
    # The sample comes from a generator of its own, so that at or below the cap every
    # draw of ``rng`` (folds, epoch orders, wrong pairs) is what it was without one.
    trainable = None
    if max_train is not None and n > max_train:
        trainable = np.zeros(n, dtype=bool)
        trainable[np.random.default_rng([seed, 17]).choice(n, size=max_train, replace=False)] = True
    # float16 features (the feature cache's) stay float16 and a batch is widened on use:
    # the same float32 values, without a float32 copy of every video (0.9 GB at 180 k x 1 280).
    def as_tensor(features):
        features = np.asarray(features)
        return torch.as_tensor(features if features.dtype == np.float16 else np.asarray(features, dtype=np.float32))

    # Rows made on demand (``take_rows``, as :class:`mama_augment.train.data.PooledRows`
    # pools keyframes): those of the pairs the probes train on once (bounded by the
    # sample), the others a scoring block at a time, so no row a video is held.
    lazy = hasattr(video_features, "take_rows")
    text = as_tensor(text_features)
    if lazy:
        width = video_features.shape[1]
        learned = np.flatnonzero(trainable) if trainable is not None else np.arange(n)
        learned = np.unique(learned if video_of is None else video_of[learned])
        video = torch.as_tensor(np.asarray(video_features.take_rows(learned)))
    else:
        video = as_tensor(video_features)
        width = video.shape[1]

    def frames(rows, trained: bool = False):  # the video rows of pairs ``rows``, widened to float32
        picked = rows if video_of is None else video_of[rows]
        if not lazy:
            return video[picked].float()
        if trained:
            return video[np.searchsorted(learned, picked)].float()
        return torch.as_tensor(np.asarray(video_features.take_rows(picked))).float()

    def captions(rows):  # likewise (float32 rows are returned as they are)
        return text[rows].float()

    scores = np.zeros(n, dtype=np.float64)
    null = np.full(n, np.nan, dtype=np.float64)
    generator = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    for fold in range(folds):
        train = np.flatnonzero((fold_of != fold) if trainable is None else (fold_of != fold) & trainable)
        held = np.flatnonzero(fold_of == fold)
        if len(train) < 2 or len(held) == 0:
            continue
        video_head = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, dim))
        text_head = torch.nn.Sequential(torch.nn.LayerNorm(text.shape[1]), torch.nn.Linear(text.shape[1], dim))
        for layer in (video_head[1], text_head[1]):  # seeded, independent of the global RNG
            bound = 1 / layer.in_features ** 0.5
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        log_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
        params = [*video_head.parameters(), *text_head.parameters(), log_scale]
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.2)
        for _ in range(epochs):
            order = train[rng.permutation(len(train))]
            for start in range(0, len(order) - 1, batch_size):
                rows = order[start : start + batch_size]
                if len(rows) < 2:
                    continue
                logits = log_scale.exp() * F.normalize(video_head(frames(rows, True)), dim=-1) @ F.normalize(text_head(captions(rows)), dim=-1).T
                loss = symmetric_cross_entropy(logits)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            scale = log_scale.exp()
            # Projected a block at a time: a fold of 40 k pairs at once would widen
            # 40 k x 1 280 frames to float32 (0.2 GB) and as much again in the norm.
            for start in range(0, len(held), gallery):
                block = np.arange(start, min(start + gallery, len(held)))
                v = F.normalize(video_head(frames(held[block])), dim=-1)
                t = F.normalize(text_head(captions(held[block])), dim=-1)
                logits = scale * v @ t.T  # (videos, captions) of the block
                row_lse, col_lse = torch.logsumexp(logits, 1), torch.logsumexp(logits, 0)
                index = torch.arange(len(block))
                positive = logits[index, index]
                scores[held[block]] = ((row_lse - positive) + (col_lse - positive)).double().numpy()
                if with_null and len(block) > 1:
                    other = torch.as_tensor((np.arange(len(block)) + 1 + rng.integers(len(block) - 1, size=len(block)))
                                            % len(block))
                    wrong = logits[index, other]
                    null[held[block]] = ((row_lse - wrong) + (col_lse[other] - wrong)).double().numpy()
    return (scores, null) if with_null else scores


def wrong_share(scores: np.ndarray, null: np.ndarray) -> float:
    """Estimated share of wrong pairs among scored ones, from :func:`agreement_losses`
    with ``with_null``: a wrong pair scores above the median of the deliberately wrong
    pairs half the time and a right pair rarely, so the share above that median,
    doubled, estimates the share of wrong pairs (the estimator of Storey's false
    discovery rate work, with the null drawn rather than assumed). Right pairs that the
    scoring model cannot tell apart from wrong ones count as wrong."""
    null = null[np.isfinite(null)]
    if len(null) == 0:
        return float("nan")
    return float(min(1.0, 2.0 * np.mean(scores > np.median(null))))


def most_disagreeing(scores: np.ndarray, share: float) -> np.ndarray:
    """Positions of the ``round(share * n)`` pairs that agree least (highest scores):
    what ``--agreement-filter`` leaves out when ``share`` is the estimated wrong share.
    Ties are broken by position, so the choice is a pure function of the scores."""
    count = int(round(min(max(share, 0.0), 1.0) * len(scores)))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.sort(order[:count]).astype(np.int64)


def right_probability(scores: np.ndarray, null: np.ndarray, share: float, bins: int = 20) -> np.ndarray:
    """Per pair, the probability that it is right given its score: 1 - the local false
    discovery rate (Efron) ``share * f_wrong(s) / f(s)``, with ``f_wrong`` the density of
    the deliberately wrong pairs' scores and ``f`` that of all pairs, both counted in
    ``bins`` bins holding equal numbers of pairs. The rate is made non-decreasing in the
    score (a pair that agrees worse is never likelier right) and clipped to [0, 1].

    A hard cut at the estimated share (:func:`most_disagreeing`) treats a borderline
    pair as surely wrong; this gives it the odds its score supports."""
    scores = np.asarray(scores, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if len(scores) == 0 or len(null) == 0 or share <= 0:
        return np.ones(len(scores))
    bins = max(1, min(bins, len(scores) // 10))
    edges = np.quantile(scores, np.linspace(0, 1, bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    edges = np.maximum.accumulate(edges)
    which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    null_which = np.clip(np.searchsorted(edges, null, side="right") - 1, 0, bins - 1)
    pair_density = np.bincount(which, minlength=bins) / len(scores)
    null_density = np.bincount(null_which, minlength=bins) / len(null)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(pair_density > 0, min(share, 1.0) * null_density / pair_density, 1.0)
    rate = np.maximum.accumulate(np.clip(rate, 0.0, 1.0))
    return 1.0 - rate[which]


def symmetric_cross_entropy(logits):
    """InfoNCE of a square block of logits (row i's positive is column i), both
    directions summed, averaged over the rows: the loss of the short probe trainings
    (the agreement scores, the evidence for caption sources), which need neither the
    margin nor the gathering across processes of ``losses.ContrastiveLoss``."""
    import torch
    import torch.nn.functional as F

    labels = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
