"""``mama-augment train`` and ``evaluate`` driven in-process through CliRunner."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mama_augment.cli.train  # noqa: F401  (registers the commands)
from mama_augment.cli._app import app
from train_helpers import make_workdir

runner = CliRunner()


def test_help_lists_the_commands_and_options():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "train" in result.output and "evaluate" in result.output
    train_help = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert train_help.exit_code == 0
    for option in ("--captions", "--augment", "--backbone", "--backbone-model", "--text-model", "--loss", "--margin",
                   "--meta-weighting", "--no-meta-weighting", "--meta-every", "--meta-lr", "--meta-hidden",
                   "--meta-set", "--meta-fraction", "--virtual-lr", "--epochs", "--batch-size", "--lr",
                   "--weight-decay", "--warmup", "--seed", "--device", "--name", "--resume", "--workdir"):
        assert option in train_help.output, option
    assert "Example:" in train_help.output
    eval_help = runner.invoke(app, ["evaluate", "--help"], terminal_width=200)
    assert eval_help.exit_code == 0 and "--run" in eval_help.output and "Example:" in eval_help.output


def test_train_then_evaluate(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=100)
    result = runner.invoke(app, [
        "train", "--captions", str(captions), "--workdir", str(workdir), "--text-model", "hashing",
        "--epochs", "3", "--batch-size", "16", "--meta-fraction", "0.1", "--name", "cli", "-q",
    ])
    assert result.exit_code == 0, result.output
    assert "train:" in result.output and "val_t2v_R@1" in result.output
    run = workdir / "runs" / "cli"
    assert json.loads((run / "config.json").read_text())["loss"] == "mama"
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert "text to video" in result.output and "R@1" in result.output and "eval.json" in result.output
    assert (run / "eval.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--loss", "triplet"], "--loss"),
    (["--margin", "2.0"], "--margin"),
    (["--backbone", "clip"], "--backbone-model"),
    (["--batch-size", "1"], "--batch-size"),
])
def test_bad_options_are_usage_errors(tmp_path, args, message):
    workdir, captions = make_workdir(tmp_path, n_videos=30)
    result = runner.invoke(app, ["train", "--captions", str(captions), "--workdir", str(workdir),
                                 "--text-model", "hashing", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_inputs_are_clean_errors(tmp_path):
    result = runner.invoke(app, ["train", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "--captions" in result.output
    result = runner.invoke(app, ["train", "--captions", str(tmp_path / "none.csv"), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "Error" in result.output
    result = runner.invoke(app, ["train", "--resume", "--name", "nope", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "nothing to resume" in result.output
    result = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "w" / "runs" / "nope")])
    assert result.exit_code == 2 and "not a run folder" in result.output
