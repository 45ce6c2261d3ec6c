"""The evidence step (train/evidence.py): a caption source that hurts is left out, one
that helps is kept, and ``--generated-weight`` overrides the decision."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import mama_augment.cli.train  # noqa: F401  (registers the commands)
from mama_augment.cli._app import app
from mama_augment.train.config import TrainConfig
from mama_augment.train.evidence import _project, decide_weight, measure_sources, sample_videos
from train_helpers import make_workdir

runner = CliRunner()


def test_decision_rule_keeps_what_helps_and_drops_what_hurts_or_adds_little():
    assert decide_weight([3.0, 4.0])[0] == 1.0
    assert decide_weight([-2.0, -3.0])[0] == 0.0
    # Adding little is not worth a source's cost: left out.
    assert decide_weight([0.2, 0.6])[0] == 0.0
    assert decide_weight([1.2, 1.2])[0] == 0.0
    # Above the bar a source is kept fully (the rule has no half weight).
    assert decide_weight([1.8, 1.9])[0] == 1.0
    # Two differences far apart (one fold lucky) still decide by their mean: a bar of
    # two standard errors would drop sources that helped.
    weight, stderr, _ = decide_weight([0.8, 3.2])
    assert weight == 1.0 and stderr > 1.0


def _synthetic(seed: int = 0, n_videos: int = 400, dim: int = 24):
    """Videos of 20 concepts; a caption's features are its video's direction seen
    through a fixed map, plus noise. Originals for a quarter of the videos only, so
    right captions of the others carry information; wrong ones belong to another
    concept's video."""
    rng = np.random.default_rng(seed)
    concepts = rng.normal(size=(20, dim))
    concept_of = rng.integers(20, size=n_videos)
    video = concepts[concept_of] + 0.5 * rng.normal(size=(n_videos, dim))
    mapping = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    texts, caption_video, source = [], [], []

    def caption(of_video: int, owner: int, name):
        texts.append((concepts[concept_of[of_video]] + 0.5 * rng.normal(size=dim)) @ mapping)
        caption_video.append(owner)
        source.append(name)

    for v in range(n_videos):
        if v % 4 == 0:
            caption(v, v, None)  # original
        else:
            caption(v, v, "right captioner / p1")
        # a captioner that always describes another concept's video
        other = int(rng.choice(np.flatnonzero(concept_of != concept_of[v])))
        caption(other, v, "wrong captioner / p2")
    ids = [f"vid{v:04d}" for v in range(n_videos)]
    return ids, video.astype(np.float32), np.asarray(texts, np.float32), np.asarray(caption_video), source


def test_a_source_that_hurts_is_left_out_and_one_that_helps_is_kept():
    ids, video, text, caption_video, source = _synthetic()
    evidence = measure_sources(ids, video, text, caption_video, source, np.arange(len(text)), seed=0, epochs=6)
    assert evidence.skipped is None
    by_source = {e.source: e for e in evidence.sources}
    assert by_source["right captioner / p1"].weight == 1.0, by_source
    assert by_source["wrong captioner / p2"].weight == 0.0, by_source
    assert by_source["right captioner / p1"].r1_with > by_source["right captioner / p1"].r1_without
    assert evidence.weights == {"right captioner / p1": 1.0, "wrong captioner / p2": 0.0}
    assert len(by_source["wrong captioner / p2"].differences) == 2  # 2 folds x 1 seed, paired


def test_the_projection_keeps_the_top_principal_directions():
    rng = np.random.default_rng(3)
    features = (rng.normal(size=(300, 80)) * np.linspace(3.0, 0.1, 80)).astype(np.float32)
    projected = _project(features, 16)
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:16].T
    # The same directions, in the same order (each up to its sign).
    cosines = np.abs((projected * reference).sum(0)) / np.linalg.norm(projected, axis=0) / np.linalg.norm(reference, axis=0)
    assert projected.shape == (300, 16) and projected.dtype == np.float32
    assert cosines.min() > 0.999
    assert _project(features[:, :8], 16).shape == (300, 8)  # narrower than asked: unchanged


def test_without_original_captions_the_evidence_step_is_skipped_and_says_so():
    ids, video, text, caption_video, source = _synthetic()
    generated_only = [c for c in range(len(text)) if source[c] is not None]
    evidence = measure_sources(ids, video, text, caption_video, source, generated_only, seed=0)
    assert evidence.sources == [] and "no original captions" in evidence.skipped
    assert set(evidence.weights.values()) == {1.0}
    assert "skipped" in evidence.lines()[0]


def _train(workdir, captions, name, *extra):
    return runner.invoke(app, [
        "train", "--captions", str(captions), "--workdir", str(workdir), "--text-model", "hashing",
        "--epochs", "1", "--batch-size", "16", "--name", name, "--no-progress", *extra,
    ])


def test_generated_weight_override_and_the_recorded_evidence(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=200, generated=True)
    result = _train(workdir, captions, "auto")
    assert result.exit_code == 0, result.output
    assert "generated_captions:" in result.output and "holdout t2v R@1" in result.output
    run = workdir / "runs" / "auto"
    config = json.loads((run / "config.json").read_text())
    assert config["generated_weight"] == "auto"
    evidence = config["extra"]["generated_evidence"]
    assert evidence["mode"] == "auto" and len(evidence["sources"]) == 1
    row = evidence["sources"][0]
    assert {"r1_with", "r1_without", "differences", "weight"} <= set(row)
    assert config["extra"]["generated_weights"] == {row["source"]: row["weight"]}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["generated_evidence"]["sources"][0]["weight"] == row["weight"]
    assert 0 <= summary["evidence_share"] <= 1

    # Left out by the user: no generated caption is a training pair, and no evidence is gathered.
    result = _train(workdir, captions, "none", "--generated-weight", "0")
    assert result.exit_code == 0, result.output
    none = json.loads((workdir / "runs" / "none" / "config.json").read_text())
    assert none["generated_weight"] == 0.0 and set(none["extra"]["generated_weights"].values()) == {0.0}
    assert none["extra"]["generated_evidence"]["sources"] == []
    kept = json.loads((run / "summary.json").read_text())["data"]["train_pairs"]
    dropped = json.loads((workdir / "runs" / "none" / "summary.json").read_text())["data"]["train_pairs"]
    generated_train_pairs = row["train_pairs"]
    assert dropped == (kept if row["weight"] == 0 else kept - generated_train_pairs)

    result = _train(workdir, captions, "half", "--generated-weight", "0.5")
    assert result.exit_code == 0, result.output
    half = json.loads((workdir / "runs" / "half" / "summary.json").read_text())
    assert half["data"]["train_pairs"] == dropped + generated_train_pairs


@pytest.mark.parametrize("value", ["2", "-0.5", "some", "nan"])
def test_a_bad_generated_weight_is_a_usage_error(tmp_path, value):
    workdir, captions = make_workdir(tmp_path, n_videos=30)
    result = _train(workdir, captions, "bad", "--generated-weight", value)
    assert result.exit_code == 2
    assert "--generated-weight" in result.output


def test_paper_sets_the_papers_weighting():
    config = TrainConfig(captions="c.csv", paper=True).validate()
    assert (config.meta_weighting, config.meta_select, config.meta_holdout, config.generated_weight) == (
        True, "random", True, 1.0)
    assert not config.meta_weighting_decided_by_data
    with pytest.raises(Exception, match="--paper"):
        TrainConfig(captions="c.csv", paper=True, loss="infonce").validate()


def test_paper_option_on_the_command_line(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=120, generated=True)
    result = _train(workdir, captions, "paper", "--paper", "--meta-fraction", "0.1")
    assert result.exit_code == 0, result.output
    config = json.loads((workdir / "runs" / "paper" / "config.json").read_text())
    assert config["paper"] is True and config["meta_weighting"] is True
    assert (config["meta_select"], config["meta_holdout"], config["generated_weight"]) == ("random", True, 1.0)
    assert config["extra"]["generated_evidence"]["sources"] == []  # no evidence gathered
    assert "meta_weighting: on" in result.output


class _Killed(Exception):
    pass


def test_a_resumed_run_keeps_the_weights_it_began_with(tmp_path):
    from mama_augment.train.loop import run_train

    workdir, captions = make_workdir(tmp_path, n_videos=160, generated=True)
    config = dict(captions=str(captions), text_model="hashing", epochs=2, batch_size=16, progress=False,
                  checkpoint_every=1, generated_weight=0.5, name="killed")

    def kill(step):
        if step == 3:
            raise _Killed()

    with pytest.raises(_Killed):
        run_train(TrainConfig(**config), workdir, step_callback=kill)
    began = json.loads((workdir / "runs" / "killed" / "config.json").read_text())["extra"]["generated_weights"]
    assert set(began.values()) == {0.5}
    run_train(TrainConfig(name="killed", resume=True, progress=False), workdir)
    summary = json.loads((workdir / "runs" / "killed" / "summary.json").read_text())
    assert summary["generated_evidence"]["mode"] == "recorded"
    assert summary["generated_evidence"]["weights"] == began


def test_the_sample_keeps_every_caption_of_its_videos_and_at_most_the_cap():
    caption_video = np.repeat(np.arange(100), 3)  # three captions a video
    train = np.arange(300)[np.arange(300) % 5 != 0]  # some captions are not training pairs
    assert sample_videos(caption_video, train, 0, seed=1) is train
    assert sample_videos(caption_video, train, len(train), seed=1) is train
    kept = sample_videos(caption_video, train, 100, seed=1)
    assert 95 <= len(kept) <= 100 and np.all(np.diff(kept) > 0) and np.isin(kept, train).all()
    chosen = np.unique(caption_video[kept])
    assert np.array_equal(kept, train[np.isin(caption_video[train], chosen)])  # whole videos
    assert np.array_equal(kept, sample_videos(caption_video, train, 100, seed=1))  # by the seed
    assert not np.array_equal(kept, sample_videos(caption_video, train, 100, seed=2))


def test_the_evidence_step_above_the_sample_runs_on_a_sample_of_the_videos(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=200, generated=True)
    assert _train(workdir, captions, "all", "--agreement-sample", "0").exit_code == 0
    result = _train(workdir, captions, "capped", "--agreement-sample", "150")
    assert result.exit_code == 0, result.output
    assert "judged on the videos of" in result.output
    every = json.loads((workdir / "runs" / "all" / "config.json").read_text())["extra"]["generated_evidence"]
    capped = json.loads((workdir / "runs" / "capped" / "config.json").read_text())["extra"]["generated_evidence"]
    assert "sampled_pairs" not in every
    assert capped["sampled_pairs"] <= 150 < capped["train_pairs"]
    # The source's pairs are counted among all the training pairs, as without the cap.
    assert capped["sources"][0]["train_pairs"] == every["sources"][0]["train_pairs"]
    # At or above the run's pairs the cap changes nothing.
    assert _train(workdir, captions, "above", "--agreement-sample", str(capped["train_pairs"])).exit_code == 0
    above = json.loads((workdir / "runs" / "above" / "config.json").read_text())["extra"]["generated_evidence"]
    assert above["sources"] == every["sources"] and above["weights"] == every["weights"]


def test_the_holdout_is_searched_in_galleries_above_their_size():
    from mama_augment.train.evidence import _train_and_score

    ids, video, text, caption_video, source = _synthetic(n_videos=300)
    originals = np.flatnonzero([s is None for s in source])
    held_c = originals[::2]
    held_v = np.unique(caption_video[held_c])
    fit = np.setdiff1d(np.arange(len(text)), held_c)
    args = (video, text, fit, caption_video, held_c, held_v, 3, 2)
    whole = _train_and_score(*args)
    assert _train_and_score(*args, gallery=len(held_v)) == whole  # one gallery: the whole holdout
    small = _train_and_score(*args, gallery=8)
    # Among 8 videos a caption finds its own far above chance (12.5 %), and more often
    # than among all of them: each gallery is scored against its own captions.
    assert small[0] > whole[0] and small[0] > 40, (small, whole)
