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


def test_a_run_from_before_the_agreement_prior_resumes_without_it(tmp_path):
    import json

    from mama_augment.train.runs import RunPaths, load_run_config

    paths = RunPaths.of(tmp_path, "old")
    paths.root.mkdir(parents=True)
    stored = TrainConfig(captions="c.csv").to_dict()
    del stored["agreement_prior"]
    paths.config.write_text(json.dumps(stored))
    assert load_run_config(paths).agreement_prior is False
