"""Per-pair weights (``pair_weights.parquet``) and ``mama-augment audit``: the weighting
net finds planted shuffled captions, the file is complete and survives a resume, and
the CLI prints, exports and says clearly when a run has no weights."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import mama_augment.cli.audit  # noqa: F401  (registers the command)
from mama_augment.cli._app import app
from mama_augment.errors import UsageError
from mama_augment.train.audit import (
    META_NOTE, META_WEIGHTED, PAIR_WEIGHTS_SCHEMA, audit_run, export_audit, scoring_batches,
)
from mama_augment.train.config import TrainConfig
from mama_augment.train.loop import run_train
from train_helpers import make_workdir

runner = CliRunner()


def _config(captions, **overrides):
    base = dict(captions=str(captions), text_model="hashing", epochs=8, batch_size=32, lr=3e-3,
                progress=False, meta_fraction=0.1, embed_dim=64, head_hidden=128)
    base.update(overrides)
    if base.get("loss", "mama") == "mama":  # these tests are about the weighting: on whatever the data
        base.setdefault("meta_weighting", True)
    return TrainConfig(**base)


def _shuffled_run(root: Path, seed: int = 0):
    """A run on 400 generated videos, 30 % of whose captions are shuffled, with a clean
    meta set of 40 pairs; returns (run folder, video_id -> shuffled)."""
    _, clean_path = make_workdir(root / "clean", n_videos=400, seed=seed)
    workdir, noisy_path = make_workdir(root, n_videos=400, seed=seed, shuffled_fraction=0.3)
    clean, noisy = pd.read_csv(clean_path), pd.read_csv(noisy_path)
    meta = root / "meta.csv"
    clean.iloc[np.random.default_rng(seed).choice(len(clean), 40, replace=False)].to_csv(meta, index=False)
    config = _config(noisy_path, augment="none", epochs=15, meta_lr=1e-2, meta_set=str(meta), seed=seed)
    report = run_train(config, workdir)
    return Path(report.extra["run"]), dict(zip(noisy.video_id, noisy.caption != clean.caption))


def test_shuffled_pairs_get_low_weights_and_fill_the_top_of_the_audit(tmp_path):
    """Seed 0, 283 training pairs of which K = 85 shuffled (chance precision 0.30).
    Measured: mean weight shuffled / correct 0.12 (0.04-0.30 over seeds 0-4), precision
    of the K least-trusted pairs 0.88 (0.77-0.95), of the top 20 1.00 (all seeds).
    Asserted: ratio < 0.5, precision@K >= 0.6 and precision@20 >= 0.8, also when ties in
    weight are broken against the audit (lower loss first), so the ranking is the
    weights' doing: a flat weighting function (all weights 1) gives ratio 1.0 and, with
    that tie-break, a precision below chance."""
    run, shuffled = _shuffled_run(tmp_path)
    result = audit_run(run, top=20)
    ranked = result.ranked.assign(shuffled=result.ranked.video_id.map(shuffled))
    assert ranked.shuffled.notna().all()
    k = int(ranked.shuffled.sum())
    assert 60 <= k <= 110
    ratio = ranked[ranked.shuffled].weight.mean() / ranked[~ranked.shuffled].weight.mean()
    assert ratio < 0.5
    last = ranked[ranked.shuffled].mean_weight_last_epoch.mean() / ranked[~ranked.shuffled].mean_weight_last_epoch.mean()
    assert last < 0.5
    assert ranked.head(k).shuffled.mean() >= 0.6
    assert ranked.head(20).shuffled.mean() >= 0.8
    adversarial = ranked.sort_values(["weight", "loss"], ascending=[True, True])
    assert adversarial.head(k).shuffled.mean() >= 0.6
    assert adversarial.head(20).shuffled.mean() >= 0.8
    # the printed list is the head of the ranked one, least trusted first
    assert list(result.top_rows.pair_id) == list(ranked.head(20).pair_id)
    assert result.top_rows.weight.is_monotonic_increasing


def test_pair_weights_file_with_generated_captions(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=160, generated=True)
    # Every generated caption a training pair, whatever the evidence would decide.
    report = run_train(_config(captions, epochs=3, batch_size=16, generated_weight=1.0), workdir)
    run = Path(report.extra["run"])
    table = pq.read_table(run / "pair_weights.parquet")
    assert table.schema.remove_metadata() == PAIR_WEIGHTS_SCHEMA
    assert table.schema.metadata[META_WEIGHTED] == b"true"
    frame = table.to_pandas()
    assert frame.pair_id.is_unique
    assert not frame.duplicated(["video_id", "caption_source", "caption_index"]).any()
    generated, original = frame[frame.caption_source == "generated"], frame[frame.caption_source == "original"]
    assert len(generated) and len(original)
    assert (generated.caption_index == 0).all() and original.caption_index.isna().all()
    assert generated.caption.str.startswith("a video of a").all()
    assert frame.concept.notna().all()
    assert frame.weight.mean() == pytest.approx(1.0)
    assert frame.weight_raw.between(0, 1).all()
    np.testing.assert_allclose(frame.weight / frame.weight_raw, frame.weight.iloc[0] / frame.weight_raw.iloc[0])
    # a pair is drawn at most once per epoch: recorded weights exist for about the
    # pairs drawn in the last epoch, and only for those
    seen = frame.last_epoch_steps > 0
    assert set(frame.last_epoch_steps) <= {0, 1} and seen.sum() > len(frame) // 3
    assert frame.mean_weight_last_epoch[seen].notna().all() and frame.mean_weight_last_epoch[~seen].isna().all()


def test_scoring_batches_never_hold_a_video_twice():
    rng = np.random.default_rng(0)
    pair_video = np.concatenate([np.arange(100), rng.choice(100, 60), rng.choice(20, 5), [7]])
    batches = scoring_batches(pair_video, 16, seed=1)
    positions = np.concatenate(batches)
    assert sorted(positions.tolist()) == list(range(len(pair_video)))  # every pair scored once
    for batch in batches:
        assert len(set(pair_video[batch].tolist())) == len(batch) >= 2
        assert len(batch) <= 2 * 16
    again = scoring_batches(pair_video, 16, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


class _Killed(Exception):
    pass


def test_recorded_weights_survive_a_kill_in_the_last_epoch(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=120)
    config = dict(epochs=2, batch_size=16, checkpoint_every=1)
    full = run_train(_config(captions, name="full", **config), workdir)
    assert full.total // 2 >= 3

    def kill(step):
        if step == full.total - 1:
            raise _Killed()

    with pytest.raises(_Killed):
        run_train(_config(captions, name="killed", **config), workdir, step_callback=kill)
    run_train(TrainConfig(name="killed", resume=True, progress=False), workdir)
    a = pd.read_parquet(Path(full.extra["run"]) / "pair_weights.parquet")
    b = pd.read_parquet(workdir / "runs" / "killed" / "pair_weights.parquet")
    assert a.last_epoch_steps.sum() > 0
    pd.testing.assert_frame_equal(a.drop(columns="grid_path"), b.drop(columns="grid_path"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_cli")
    workdir, captions = make_workdir(root, n_videos=120, generated=True)
    weighted = run_train(_config(captions, epochs=3, batch_size=16, name="weighted", generated_weight=1.0), workdir)
    plain = run_train(_config(captions, epochs=2, batch_size=16, name="plain", loss="infonce"), workdir)
    return Path(weighted.extra["run"]), Path(plain.extra["run"])


def test_audit_library_ranks_and_counts(runs):
    weighted, plain = runs
    result = audit_run(weighted, top=5, source="generated", threshold=0.9)
    assert result.weighted and set(result.ranked.caption_source) == {"generated"}
    assert list(result.ranked["rank"]) == list(range(1, len(result.ranked) + 1))
    order = list(zip(result.ranked.weight, -result.ranked.loss))
    assert order == sorted(order)
    below = (result.ranked.weight < 0.9).sum()
    assert result.below.get("generated", 0) == below and len(result.export_rows) == below
    assert f"{below} of {len(result.ranked)} pairs have weight < 0.9" in result.summary_line()
    unweighted = audit_run(plain)
    assert not unweighted.weighted and "without meta-weighting" in unweighted.note
    assert unweighted.ranked.loss.is_monotonic_decreasing and unweighted.ranked.weight.isna().all()
    with pytest.raises(UsageError, match="--source"):
        audit_run(weighted, source="human")
    with pytest.raises(UsageError, match="--export"):
        export_audit(result, weighted / "out.txt")


def test_audit_cli_prints_exports_and_summarises(runs, tmp_path):
    weighted, _ = runs
    help_ = runner.invoke(app, ["audit", "--help"], terminal_width=200)
    assert help_.exit_code == 0 and "Example:" in help_.output
    for option in ("--run", "--top", "--source", "--export", "--threshold"):
        assert option in help_.output, option
    result = runner.invoke(app, ["audit", "--run", str(weighted), "--top", "7"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("least-trusted pairs") and "rank" in lines[1]
    assert len([line for line in lines if line[:4].strip().isdigit()]) == 7
    assert "pairs have weight < 0.5" in lines[-1] and "generated" in lines[-1] and "original" in lines[-1]
    whole = tmp_path / "all.parquet"
    result = runner.invoke(app, ["audit", "--run", str(weighted), "--export", str(whole)])
    assert result.exit_code == 0, result.output
    exported = pd.read_parquet(whole)
    assert len(exported) == len(pd.read_parquet(weighted / "pair_weights.parquet"))
    assert exported.weight.is_monotonic_increasing and list(exported["rank"][:3]) == [1, 2, 3]
    some = tmp_path / "below.csv"
    result = runner.invoke(app, ["audit", "--run", str(weighted), "--source", "original", "--threshold", "1.0",
                                 "--export", str(some)])
    assert result.exit_code == 0, result.output
    below = pd.read_csv(some)
    assert (below.weight < 1.0).all() and set(below.caption_source) <= {"original"}
    assert f"exported {len(below)} pairs with weight < 1" in result.output


def test_audit_cli_without_meta_weighting_and_bad_input(runs, tmp_path):
    _, plain = runs
    out = tmp_path / "losses.csv"
    result = runner.invoke(app, ["audit", "--run", str(plain), "--export", str(out)])
    assert result.exit_code == 1
    assert "without meta-weighting" in result.output and "highest-loss pairs" in result.output
    losses = pd.read_csv(out)
    assert losses.loss.is_monotonic_decreasing and losses.weight.isna().all()
    assert pq.read_schema(plain / "pair_weights.parquet").metadata[META_NOTE].startswith(b"this run was trained")
    result = runner.invoke(app, ["audit", "--run", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not a run folder" in result.output
    result = runner.invoke(app, ["audit", "--run", str(plain), "--source", "human"])
    assert result.exit_code == 2 and "--source" in result.output
    result = runner.invoke(app, ["audit", "--run", str(plain), "--export", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "--export" in result.output
