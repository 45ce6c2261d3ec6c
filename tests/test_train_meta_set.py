"""The meta set drawn from the training pairs: chosen by agreement it is nearly clean
even when the captions are not, it stays spread over concepts, and with
``meta_holdout=False`` its videos stay in the training stream."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mama_augment.errors import UsageError
from mama_augment.train.config import TrainConfig
from mama_augment.train.data import agreement_losses, build_data, wrong_share
from train_helpers import make_workdir


def _config(captions, **overrides):
    # The meta set exists only with the weighting: on here unless a test says otherwise.
    base = dict(captions=str(captions), text_model="hashing", progress=False, meta_fraction=0.1, meta_weighting=True)
    base.update(overrides)
    return TrainConfig(**base)


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    return float(((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))


def test_agreement_losses_rank_mismatched_pairs_last():
    """Paired features share a hidden cause; 30 % of the pairs are shuffled. Held-out
    losses put the shuffled pairs high (AUC ~0.95 measured; a constant score gives
    0.5), and a warm-up model that had trained on them would not (see the docstring)."""
    rng = np.random.default_rng(0)
    n, k = 600, 12
    cause = rng.normal(size=(n, k))
    video = cause @ rng.normal(size=(k, 48)) + 0.5 * rng.normal(size=(n, 48))
    text = cause @ rng.normal(size=(k, 24)) + 0.5 * rng.normal(size=(n, 24))
    shuffled = rng.random(n) < 0.3
    picked = np.flatnonzero(shuffled)
    text[picked] = text[rng.permutation(picked)]
    scores = agreement_losses(video.astype(np.float32), text.astype(np.float32), seed=0)
    assert scores.shape == (n,) and np.isfinite(scores).all()
    assert _auc(scores, shuffled) > 0.8
    # deterministic for a seed, different for another
    np.testing.assert_array_equal(scores, agreement_losses(video.astype(np.float32), text.astype(np.float32), seed=0))
    assert not np.array_equal(scores, agreement_losses(video.astype(np.float32), text.astype(np.float32), seed=1))


def _meta_noise(data, truth: dict) -> float:
    return float(np.mean([truth[(data.videos.video_ids[v], data.texts[c])]
                          for v, c in zip(data.meta_videos, data.meta_captions)]))


@pytest.mark.parametrize("concepts", [True, False])
def test_agreement_meta_set_is_cleaner_than_a_random_one(tmp_path, concepts):
    """400 videos, 30 % of captions shuffled; the meta set is 10 % of the training
    pairs, spread over concepts (the concept column, else k-means clusters). Measured
    share of shuffled pairs in it, seeds 0-2: random 0.28-0.38, agreement 0.06-0.13
    (a shuffled caption here often names the right concept, and the hashing text
    features are weak; on the emoji benchmarks 0.01-0.05 against 0.25-0.31)."""
    _, clean_path = make_workdir(tmp_path / "clean", n_videos=400)
    workdir, noisy_path = make_workdir(tmp_path, n_videos=400, shuffled_fraction=0.3)
    clean, noisy = pd.read_csv(clean_path), pd.read_csv(noisy_path)
    if not concepts:
        noisy = noisy.drop(columns="concept")
        noisy.to_csv(noisy_path, index=False)
    truth = {(v, c): c != right for v, c, right in zip(noisy.video_id, noisy.caption, clean.caption)}
    shares = {}
    for select in ("random", "agreement"):
        data = build_data(_config(noisy_path, meta_select=select), workdir)
        shares[select] = _meta_noise(data, truth)
        if concepts:
            assert len({data.videos.concepts[v] for v in data.meta_videos}) >= 4
    assert shares["random"] >= 0.25
    assert shares["agreement"] <= 0.15


def test_meta_holdout_decides_whether_meta_videos_are_trained_on(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=200)
    held = build_data(_config(captions, meta_holdout=True), workdir)
    kept = build_data(_config(captions, meta_holdout=False), workdir)
    np.testing.assert_array_equal(held.meta_videos, kept.meta_videos)
    assert not set(held.meta_videos.tolist()) & set(held.train_videos.tolist())
    assert set(kept.meta_videos.tolist()) <= set(kept.train_videos.tolist())
    assert len(kept.train_videos) == len(held.train_videos) + len(held.meta_videos)


def test_bad_meta_select_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--meta-select"):
        TrainConfig(captions="x.csv", meta_select="best").validate()


def test_an_epoch_of_all_captions_holds_each_pair_at_most_once_and_no_video_twice_in_a_batch(tmp_path):
    from mama_augment.train.data import epoch_batches, steps_per_epoch

    workdir, captions = make_workdir(tmp_path, n_videos=200, generated=True)
    data = build_data(_config(captions, epoch_captions="all"), workdir)
    pairs = np.concatenate(data.train_captions)
    rounds = max(len(c) for c in data.train_captions)
    assert rounds == 2 and len(pairs) > len(data.train_videos)  # generated captions add pairs
    seen = []
    for epoch in (0, 1):
        batches = epoch_batches(data, epoch, 3, 16, "all")
        assert len(batches) == steps_per_epoch(data, 16, "all")
        assert len(batches) > steps_per_epoch(data, 16, "one")
        used = np.concatenate([c for _, c in batches])
        assert len(set(used.tolist())) == len(used) and set(used.tolist()) <= set(pairs.tolist())
        assert len(pairs) - len(used) < 16 * rounds  # at most a partial batch per round waits
        for videos, caption_ids in batches:
            assert len(videos) == 16 and len(set(videos.tolist())) == len(videos)
            np.testing.assert_array_equal(videos, data.caption_video[caption_ids])
        seen.append(batches)
    again = epoch_batches(data, 1, 3, 16, "all")
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(seen[1], again))  # a pure function of (seed, epoch)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(seen[0], again))


def test_a_meta_set_file_never_brings_in_val_or_test_videos(tmp_path):
    """A curated meta-set file that also lists evaluation videos: their pairs are left out
    and counted (the weighting must not be tuned on what the run is judged on)."""
    workdir, captions = make_workdir(tmp_path, n_videos=120, with_split=True)
    frame = pd.read_csv(captions, dtype=str, keep_default_na=False)
    held = frame[frame.split != "train"].head(4)
    train = frame[frame.split == "train"].head(6)
    meta_file = tmp_path / "meta.csv"
    pd.concat([train, held])[["video_id", "caption"]].to_csv(meta_file, index=False)
    data = build_data(_config(captions, meta_set=str(meta_file)), workdir)
    names = {data.videos.video_ids[int(v)] for v in data.meta_videos}
    assert names == set(train.video_id)
    assert data.issues["meta_pair_of_val_or_test_video"] == len(held)


def _paired_features(n: int, shuffled_fraction: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    cause = rng.normal(size=(n, 12))
    video = cause @ rng.normal(size=(12, 48)) + 0.5 * rng.normal(size=(n, 48))
    text = cause @ rng.normal(size=(12, 24)) + 0.5 * rng.normal(size=(n, 24))
    picked = np.flatnonzero(rng.random(n) < shuffled_fraction)
    text[picked] = text[rng.permutation(picked)]
    return video.astype(np.float32), text.astype(np.float32), len(picked) / n


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5])
def test_wrong_share_estimates_the_share_of_shuffled_pairs(fraction):
    """Measured on these features, seeds 0-1: 0.00, 0.10, 0.28, 0.49 for 0 %, 10 %, 30 %
    and 50 % shuffled; on the emoji sets 0.01-0.03 clean and 0.31-0.36 for 30 %."""
    video, text, truth = _paired_features(800, fraction)
    scores, null = agreement_losses(video, text, seed=0, with_null=True)
    assert np.isfinite(null).all() and null.shape == scores.shape
    assert abs(wrong_share(scores, null) - truth) <= 0.06


def test_scoring_pairs_leaves_the_global_torch_rng_alone():
    import torch

    video, text, _ = _paired_features(200, 0.3)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    agreement_losses(video, text, seed=0, with_null=True)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("shuffled, weighted", [(0.0, False), (0.4, True)])
def test_auto_weighting_follows_the_estimated_share_of_wrong_pairs(tmp_path, shuffled, weighted):
    """``--loss mama`` without --meta-weighting/--no-meta-weighting weights only noisy
    data; the decision and the estimate are recorded in the run, and on clean data the
    run is exactly InfoNCE (same weights for the same seed)."""
    import json

    from mama_augment.train.loop import run_train
    from safetensors.numpy import load_file

    workdir, captions = make_workdir(tmp_path, n_videos=300, shuffled_fraction=shuffled)
    common = dict(epochs=2, batch_size=32, embed_dim=32, meta_weighting=None)
    run = Path(run_train(_config(captions, name="auto", **common), workdir).extra["run"])
    stored = json.loads((run / "config.json").read_text())
    assert stored["meta_weighting"] is weighted
    estimate = stored["extra"]["estimated_wrong_share"]
    assert (estimate >= 0.1) is weighted
    assert json.loads((run / "summary.json").read_text())["data"]["estimated_wrong_share"] == pytest.approx(estimate, abs=1e-4)
    assert (run / "weighting_net.safetensors").exists() is weighted
    if not weighted:
        plain = Path(run_train(_config(captions, name="plain", loss="infonce", **common), workdir).extra["run"])
        ours, theirs = load_file(run / "model.safetensors"), load_file(plain / "model.safetensors")
        for key in theirs:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6)
        forced = Path(run_train(_config(captions, name="forced", **{**common, "meta_weighting": True}), workdir).extra["run"])
        assert (forced / "weighting_net.safetensors").exists()


def test_meta_noise_threshold_is_checked():
    with pytest.raises(UsageError, match="--meta-noise-threshold"):
        TrainConfig(captions="x.csv", meta_noise_threshold=1.5).validate()
