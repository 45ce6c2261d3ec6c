"""The agreement variants under caption noise: ``--agreement-filter`` leaves out the
estimated share of least agreeing pairs, ``--agreement-prior`` scales each pair's
weight by its probability of being right; both only where the estimate says noisy."""

import numpy as np
import pandas as pd

from mama_augment.train.agreement import agreement_losses, most_disagreeing, right_probability, wrong_share
from mama_augment.train.config import TrainConfig
from mama_augment.train.data import build_data
from train_helpers import make_workdir


def _config(captions, **overrides):
    base = dict(captions=str(captions), text_model="hashing", progress=False, loss="infonce")
    base.update(overrides)
    return TrainConfig(**base)


def _data(config, workdir):
    """The run's pairs as ``train`` builds them: scored with the run's caption encoder."""
    import torch

    from mama_augment.train.backbones import get_backbone

    embedder = get_backbone(config.backbone).caption_embedder(config, workdir, torch.device("cpu"))
    return build_data(config, workdir, caption_embedder=embedder)


def _wrong_caption_ids(data, captions_file) -> set[int]:
    """Caption ids whose caption names another concept than its video's (shuffled)."""
    truth = pd.read_csv(captions_file, dtype=str)
    concept = dict(zip(truth.video_id, truth.concept))
    return {c for c, text in enumerate(data.texts)
            if not text.endswith(" " + concept[data.videos.video_ids[data.caption_video[c]]])}


def test_most_disagreeing_takes_the_highest_scores():
    scores = np.array([0.1, 5.0, 0.3, 4.0, 0.2, 3.0])
    np.testing.assert_array_equal(most_disagreeing(scores, 0.5), [1, 3, 5])
    assert most_disagreeing(scores, 0.0).size == 0
    assert len(most_disagreeing(scores, 1.0)) == len(scores)


def test_right_probability_is_low_for_shuffled_pairs_and_never_rises_with_the_score():
    rng = np.random.default_rng(0)
    cause = rng.normal(size=(800, 12))
    video = (cause @ rng.normal(size=(12, 48)) + 0.5 * rng.normal(size=(800, 48))).astype(np.float32)
    text = (cause @ rng.normal(size=(12, 24)) + 0.5 * rng.normal(size=(800, 24))).astype(np.float32)
    shuffled = rng.random(800) < 0.3
    text[shuffled] = text[rng.permutation(np.flatnonzero(shuffled))]
    scores, null = agreement_losses(video, text, seed=0, with_null=True)
    prior = right_probability(scores, null, wrong_share(scores, null))
    assert ((prior >= 0) & (prior <= 1)).all()
    assert prior[shuffled].mean() < 0.5 * prior[~shuffled].mean()
    order = np.argsort(scores)
    assert (np.diff(prior[order]) <= 1e-12).all()
    np.testing.assert_array_equal(right_probability(scores, null, 0.0), np.ones(len(scores)))


def test_agreement_filter_leaves_out_the_estimated_share_mostly_wrong_pairs(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=400, shuffled_fraction=0.4)
    data = _data(_config(captions, agreement_filter=True), workdir)
    plain = _data(_config(captions), workdir)
    kept = set(np.concatenate(data.train_captions).tolist())
    before = set(np.concatenate(plain.train_captions).tolist())
    dropped = before - kept
    assert data.wrong_share is not None and data.wrong_share >= 0.1
    assert len(dropped) == data.agreement_filtered == int(round(data.wrong_share * len(before)))
    wrong = _wrong_caption_ids(plain, captions) & before
    # wrong pairs are likelier left out than right ones (here "right" counts a caption
    # shuffled onto its own concept with another attribute, which the scores see as wrong)
    assert len(wrong - kept) / len(wrong) > 1.5 * len(dropped - wrong) / len(before - wrong)
    assert data.summary()["agreement_filtered"] == len(dropped)


def test_agreement_filter_and_prior_stay_off_on_clean_captions(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=300)
    data = _data(_config(captions, agreement_filter=True, agreement_prior=True), workdir)
    assert data.wrong_share is not None and data.wrong_share < 0.1
    assert data.agreement_filtered == 0 and data.pair_prior is None


def test_agreement_prior_scales_the_weights_of_the_training_pairs(tmp_path):
    """The prior reaches the loss: a run's per-caption weight table is the prior, low on
    wrong pairs, and 1 for captions that are not training pairs."""
    from mama_augment.train.loop import TrainRecipe

    workdir, captions = make_workdir(tmp_path, n_videos=300, shuffled_fraction=0.4)
    recipe = TrainRecipe(_config(captions, agreement_prior=True, epochs=1, batch_size=32, embed_dim=32), workdir)
    recipe.setup()
    data = recipe.data
    assert data.pair_prior is not None and recipe.source_weights is not None
    np.testing.assert_allclose(recipe.source_weights.cpu().numpy(), data.pair_prior)
    train = np.concatenate(data.train_captions)
    wrong = np.asarray(sorted(_wrong_caption_ids(data, captions) & set(train.tolist())))
    right = np.setdiff1d(train, wrong)
    assert data.pair_prior[wrong].mean() < 0.6 * data.pair_prior[right].mean()
    outside = np.setdiff1d(np.arange(len(data.texts)), train)
    assert (data.pair_prior[outside] == 1).all()
    recipe.train()  # the weighted loss trains
    assert recipe.step == recipe.total_steps


def test_the_agreement_prior_is_on_by_default_with_mama_only():
    assert TrainConfig(captions="c.csv").validate().agreement_prior is True
    assert TrainConfig(captions="c.csv", loss="infonce").validate().agreement_prior is False
    assert TrainConfig(captions="c.csv", paper=True).validate().agreement_prior is False
    assert TrainConfig(captions="c.csv", agreement_prior=False).validate().agreement_prior is False


def _config_of_a_run_from_before(tmp_path, field: str) -> TrainConfig:
    """The config a run resumes with when its config.json predates ``field``."""
    import json

    from mama_augment.train.runs import RunPaths, load_run_config

    paths = RunPaths.of(tmp_path, "old")
    paths.root.mkdir(parents=True)
    stored = TrainConfig(captions="c.csv").to_dict()
    del stored[field]
    paths.config.write_text(json.dumps(stored))
    return load_run_config(paths)


def test_a_run_from_before_the_agreement_prior_resumes_without_it(tmp_path):
    assert _config_of_a_run_from_before(tmp_path, "agreement_prior").agreement_prior is False


def _paired_features(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cause = rng.normal(size=(n, 8))
    video = (cause @ rng.normal(size=(8, 40)) + 0.5 * rng.normal(size=(n, 40))).astype(np.float32)
    text = (cause @ rng.normal(size=(8, 24)) + 0.5 * rng.normal(size=(n, 24))).astype(np.float32)
    return video, text


def test_agreement_sample_caps_the_pairs_the_probes_train_on_and_scores_every_pair(monkeypatch):
    """With 300 pairs and a cap of 100, the five fold models train on 4/5 of the 100
    sampled pairs each, for 2 epochs (800 pair rows in all instead of 2 400), and
    still score all 300 pairs."""
    from mama_augment.train import agreement

    trained_rows = []
    loss = agreement.symmetric_cross_entropy

    def counting(logits):
        trained_rows.append(len(logits))
        return loss(logits)

    monkeypatch.setattr(agreement, "symmetric_cross_entropy", counting)
    video, text = _paired_features(300)
    scores, null = agreement_losses(video, text, seed=0, with_null=True, max_train=100, batch_size=512)
    assert sum(trained_rows) == 2 * 4 * 100
    assert scores.shape == (300,) and np.isfinite(scores).all() and np.isfinite(null).all()
    trained_rows.clear()
    agreement_losses(video, text, seed=0, with_null=True, batch_size=512)
    assert sum(trained_rows) == 2 * 4 * 300


def test_agreement_sample_at_or_above_the_pairs_changes_nothing():
    """At or below the cap the scores are bit for bit those without one; blocks of 64
    make the held-out folds span several blocks (projected a block at a time)."""
    video, text = _paired_features(700, seed=1)
    plain = agreement_losses(video, text, seed=3, with_null=True, gallery=64)
    for cap in (700, 10_000):
        capped = agreement_losses(video, text, seed=3, with_null=True, gallery=64, max_train=cap)
        np.testing.assert_array_equal(capped[0], plain[0])
        np.testing.assert_array_equal(capped[1], plain[1])
    below = agreement_losses(video, text, seed=3, with_null=True, gallery=64, max_train=350)
    assert not np.array_equal(below[0], plain[0])


def test_agreement_sample_reaches_the_meta_set_and_the_estimate(tmp_path):
    """``agreement_sample`` of the config caps both agreement scorings of build_data: at
    or above the training pairs the data are those of an uncapped run, below it the
    meta set chosen by agreement moves."""
    workdir, captions = make_workdir(tmp_path, n_videos=300, shuffled_fraction=0.3)
    runs = {cap: build_data(_config(captions, loss="mama", meta_weighting=True, meta_fraction=0.1,
                                     agreement_sample=cap), workdir)
            for cap in (0, 100_000, 60)}
    uncapped, above, below = runs[0], runs[100_000], runs[60]
    np.testing.assert_array_equal(above.meta_videos, uncapped.meta_videos)
    np.testing.assert_array_equal(above.meta_captions, uncapped.meta_captions)
    assert above.wrong_share == uncapped.wrong_share
    assert not np.array_equal(below.meta_videos, uncapped.meta_videos)


def test_a_run_from_before_the_agreement_sample_resumes_uncapped(tmp_path):
    assert _config_of_a_run_from_before(tmp_path, "agreement_sample").agreement_sample == 0
    assert TrainConfig(captions="c.csv").validate().agreement_sample == 50_000


def test_dense_above_the_cap_fits_the_reduction_on_a_sample(monkeypatch):
    """TF-IDF rows beyond ``cap`` are reduced by an SVD fitted on ``cap`` of them (its
    work arrays grow with the rows it is fitted on), every row still reduced; at or
    below the cap, the fit on every row as before."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    from mama_augment.train.data import _dense

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    features = TfidfVectorizer().fit_transform([" ".join(rng.choice(words, size=8)) for _ in range(900)])
    fitted_rows = []
    fit = TruncatedSVD.fit

    def counting(self, X, y=None):
        fitted_rows.append(X.shape[0])
        return fit(self, X, y)

    monkeypatch.setattr(TruncatedSVD, "fit", counting)
    reduced = _dense(features, cap=400, chunk=128)
    assert fitted_rows == [400]
    assert reduced.shape == (900, 256) and reduced.dtype == np.float16 and np.isfinite(reduced).all()
    assert (np.abs(reduced).sum(axis=1) > 0).all()
    np.testing.assert_array_equal(_dense(features, cap=900), _dense(features))


def test_scored_pairs_share_one_pooled_row_a_video(tmp_path, monkeypatch):
    """With every pair scored (the agreement prior), a video's captions share its pooled
    frames: one row a video, float32 at or below the cap and float16 above it."""
    from mama_augment.train import data as data_module

    seen = []
    real = data_module.agreement_losses

    def recording(video_features, text_features, seed, **kwargs):
        seen.append((video_features.shape[0], video_features.dtype, len(text_features), kwargs.get("max_train")))
        return real(video_features, text_features, seed, **kwargs)

    monkeypatch.setattr(data_module, "agreement_losses", recording)
    workdir, captions = make_workdir(tmp_path, n_videos=200, generated=True, shuffled_fraction=0.3)
    for cap in (0, 100):
        seen.clear()
        data = build_data(_config(captions, loss="mama", agreement_prior=True, augment="add", agreement_sample=cap),
                          workdir)
        rows, dtype, pairs, max_train = seen[0]
        scored = data.train_captions.values
        assert pairs == len(scored) > rows == len(np.unique(data.caption_video[scored]))
        assert dtype == (np.float16 if cap else np.float32) and max_train == (cap or None)


def test_the_meta_set_reuses_the_pair_scores_pooled_rows_and_chooses_the_same(tmp_path, monkeypatch):
    """With the pairs scored first (the agreement prior), the meta set takes its pooled
    rows from the scoring instead of pooling the same videos again: the same rows (the
    float16 mean of float16 frames), so the same meta set as pooling anew."""
    from mama_augment.train import data as data_module

    frames = np.random.default_rng(0).normal(size=(7, 64)).astype(np.float16)
    assert np.array_equal(frames.mean(axis=0), np.asarray(frames, np.float32).mean(axis=0).astype(np.float16))

    workdir, captions = make_workdir(tmp_path, n_videos=300, shuffled_fraction=0.3)
    config = _config(captions, loss="mama", meta_weighting=True, meta_fraction=0.1, agreement_prior=True)
    calls = []
    original = data_module.PairScores.pooled_rows
    monkeypatch.setattr(data_module.PairScores, "pooled_rows",
                        lambda self, v: calls.append(original(self, v)) or calls[-1])
    reused = build_data(config, workdir)
    assert calls and calls[0] is not None  # the rows came from the scoring
    monkeypatch.setattr(data_module.PairScores, "pooled_rows", lambda self, v: None)
    anew = build_data(config, workdir)
    np.testing.assert_array_equal(reused.meta_videos, anew.meta_videos)
    np.testing.assert_array_equal(reused.meta_captions, anew.meta_captions)


class _RowsOnDemand:
    """Video rows made when asked for (as ``PooledRows`` pools them), counting the rows."""

    def __init__(self, rows):
        self.rows, self.shape, self.made = rows, rows.shape, 0

    def __len__(self):
        return len(self.rows)

    def take_rows(self, picked):
        self.made += len(picked)
        return self.rows[np.asarray(picked)]


def test_rows_made_on_demand_score_as_the_rows_held():
    video, text = _paired_features(700, seed=2)
    video = video.astype(np.float16)
    owners = np.repeat(np.arange(350), 2)  # two captions a video
    held = agreement_losses(video[:350], text, seed=5, with_null=True, gallery=64, max_train=200, video_of=owners)
    lazy = _RowsOnDemand(video[:350])
    made = agreement_losses(lazy, text, seed=5, with_null=True, gallery=64, max_train=200, video_of=owners)
    np.testing.assert_array_equal(made[0], held[0])
    np.testing.assert_array_equal(made[1], held[1])
    # the sample's videos once, then every pair's video once a scoring block
    assert lazy.made <= 200 + 700


def test_above_the_cap_build_data_pools_videos_as_the_probes_ask(tmp_path, monkeypatch):
    """Above ``agreement_sample``, where the pooled rows would pass ``POOLED_ROWS_BUDGET``,
    the pair scores and the meta set read them on demand (``PooledRows``), and choose
    what the rows held would have chosen."""
    from mama_augment.train import data as data_module

    workdir, captions = make_workdir(tmp_path, n_videos=300, shuffled_fraction=0.3)
    config = _config(captions, loss="mama", meta_weighting=True, meta_fraction=0.1, agreement_prior=True,
                     agreement_sample=60)
    monkeypatch.setattr(data_module, "POOLED_ROWS_BUDGET", 0)  # every pooled table counts as large here
    taken = []
    original = data_module.PooledRows.take_rows
    monkeypatch.setattr(data_module.PooledRows, "take_rows", lambda self, rows: taken.append(len(rows)) or original(self, rows))
    on_demand = build_data(config, workdir)
    assert taken
    monkeypatch.setattr(data_module, "FrameRows", type("NotFrameRows", (), {}))  # every row pooled and held
    held = build_data(config, workdir)
    np.testing.assert_array_equal(on_demand.meta_videos, held.meta_videos)
    np.testing.assert_array_equal(on_demand.pair_prior, held.pair_prior)
    assert on_demand.wrong_share == held.wrong_share
