"""The best epoch's weights are kept next to the last ones, ``evaluate`` uses them by
default and says so in ``eval.json``; ``--checkpoint last`` and runs without a
validation split use the last weights."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mama_augment.cli.train  # noqa: F401  (registers the commands)
from mama_augment.cli._app import app
from mama_augment.errors import UsageError
from mama_augment.train.config import TrainConfig
from mama_augment.train.evaluate import evaluate_run
from mama_augment.train.loop import run_train, validation_score
from mama_augment.train.runs import RunPaths, run_weights
from train_helpers import make_workdir

runner = CliRunner()


def _config(captions, **overrides):
    base = dict(captions=str(captions), text_model="hashing", epochs=6, batch_size=16, lr=3e-3, progress=False,
                meta_fraction=0.1, embed_dim=32, name="run")
    base.update(overrides)
    return TrainConfig(**base)


def _evals(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "eval"]


def test_best_epoch_is_kept_and_evaluated_by_default(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=160)
    report = run_train(_config(captions), workdir)
    run = Path(report.extra["run"])
    evals = _evals(run)
    assert len(evals) == 6
    scores = [(r["t2v_R@1"] + r["v2t_R@1"]) / 2 for r in evals]
    best_epoch = max(range(len(scores)), key=lambda e: (scores[e], -e))  # the first of equal scores
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["epoch"] == best_epoch and summary["best"]["val_R@1"] == pytest.approx(scores[best_epoch])
    assert [r["best"] for r in evals][best_epoch] is True
    assert report.extra["best_epoch"] == best_epoch + 1
    assert (run / RunPaths.BEST_MODEL).exists() and (run / "model.safetensors").exists()

    # The default evaluation loads the best epoch's weights: on the validation split it
    # reproduces that epoch's logged numbers, and --checkpoint last the last epoch's.
    best = evaluate_run(run, split="val")
    assert best["checkpoint"] == "best" and best["checkpoint_epoch"] == best_epoch + 1
    assert validation_score(best) == pytest.approx(scores[best_epoch])
    last = evaluate_run(run, split="val", checkpoint="last")
    assert last["checkpoint"] == "last"
    assert last["text_to_video"]["R@1"] == pytest.approx(evals[-1]["t2v_R@1"])
    assert last["video_to_text"]["R@1"] == pytest.approx(evals[-1]["v2t_R@1"])
    stored = json.loads((run / "eval.json").read_text())
    assert stored["val"]["checkpoint"] == "best" and stored["val@last"]["checkpoint"] == "last"


def test_without_a_validation_split_the_last_weights_are_used(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=100)
    report = run_train(_config(captions, val_fraction=0.0, epochs=2, loss="infonce"), workdir)
    run = Path(report.extra["run"])
    assert not (run / RunPaths.BEST_MODEL).exists()
    assert json.loads((run / "summary.json").read_text())["best"] is None
    assert run_weights(run)["checkpoint"] == "last"
    result = evaluate_run(run, split="test")
    assert result["checkpoint"] == "last"
    with pytest.raises(UsageError, match="--checkpoint"):
        run_weights(run, "middle")


def test_evaluate_cli_says_which_checkpoint(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=100)
    run = Path(run_train(_config(captions, epochs=2, loss="infonce"), workdir).extra["run"])
    result = runner.invoke(app, ["evaluate", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert "best checkpoint (epoch" in result.output
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--checkpoint", "last"])
    assert result.exit_code == 0 and "last checkpoint" in result.output
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--checkpoint", "first"])
    assert result.exit_code == 2 and "--checkpoint" in result.output
