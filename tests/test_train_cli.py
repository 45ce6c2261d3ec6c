"""``mama-augment train`` and ``evaluate`` driven in-process through CliRunner."""

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mama_augment.cli.train  # noqa: F401  (registers the commands)
from mama_augment.cli._app import app
from mama_augment.report.build import find_captions_file
from mama_augment.train.config import TrainConfig
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
    # The run is recorded like every stage run, so the report finds its captions file.
    recorded = json.loads((workdir / "configs" / "train.json").read_text())
    assert recorded["stage"] == "train" and recorded["config"]["captions"] == str(captions)
    assert find_captions_file(workdir, []).paths == (str(captions),)


def test_every_train_config_field_is_an_option_and_a_config_file_key(tmp_path):
    command = next(c for c in app.registered_commands if c.name == "train")
    options = set(inspect.signature(command.callback).parameters)
    # progress is --progress/--no-progress; extra holds free-form notes of library callers.
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in options | {"progress", "extra"}]
    assert missing == []

    # A value set only in the TOML file reaches the run's config.json.
    workdir, captions = make_workdir(tmp_path, n_videos=40)
    config_file = tmp_path / "mama.toml"
    config_file.write_text('[train]\nembed-dim = 24\nhead-hidden = 8\ntemporal = "mean"\ngrad-clip = 0.5\n'
                           'log-every = 3\nmeta-batch-size = 4\neps = 1e-5\n')
    result = runner.invoke(app, ["--config", str(config_file), "train", "--captions", str(captions),
                                 "--workdir", str(workdir), "--text-model", "hashing", "--epochs", "1",
                                 "--batch-size", "8", "--name", "toml", "-q"])
    assert result.exit_code == 0, result.output
    saved = json.loads((workdir / "runs" / "toml" / "config.json").read_text())
    assert {k: saved[k] for k in ("embed_dim", "head_hidden", "temporal", "grad_clip", "log_every",
                                  "meta_batch_size", "eps")} == {
        "embed_dim": 24, "head_hidden": 8, "temporal": "mean", "grad_clip": 0.5, "log_every": 3,
        "meta_batch_size": 4, "eps": 1e-5}


@pytest.mark.parametrize("args, message", [
    (["--loss", "triplet"], "--loss"),
    (["--margin", "2.0"], "--margin"),
    (["--backbone", "clip"], "--backbone-model"),
    (["--batch-size", "1"], "--batch-size"),
    (["--temporal", "lstm"], "temporal"),
    (["--device", "tpu"], "--device"),
    (["--agreement-sample", "-1"], "--agreement-sample"),
])
def test_bad_options_are_usage_errors(tmp_path, args, message):
    workdir, captions = make_workdir(tmp_path, n_videos=30)
    result = runner.invoke(app, ["train", "--captions", str(captions), "--workdir", str(workdir),
                                 "--text-model", "hashing", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_inputs_are_clean_errors(tmp_path):
    # Without --captions train takes the generated captions: a missing work folder says what to run first.
    result = runner.invoke(app, ["train", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "mama-augment keyframes" in result.output
    result = runner.invoke(app, ["train", "--augment", "none", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "--captions" in result.output
    result = runner.invoke(app, ["train", "--captions", str(tmp_path / "none.csv"), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "Error" in result.output
    result = runner.invoke(app, ["train", "--resume", "--name", "nope", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "nothing to resume" in result.output
    result = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "w" / "runs" / "nope")])
    assert result.exit_code == 2 and "not a run folder" in result.output


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One short finished run, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("small-run")
    workdir, captions = make_workdir(root, n_videos=40)
    result = runner.invoke(app, ["train", "--captions", str(captions), "--workdir", str(workdir), "--text-model",
                                 "hashing", "--epochs", "1", "--batch-size", "8", "--name", "small", "--no-progress"])
    assert result.exit_code == 0, result.output
    return workdir / "runs" / "small"


def test_multiple_choice_with_rejected_items_says_so_and_exits_1(small_run, tmp_path):
    good = {"video_id": "v0000", "candidates": ["a red dog", "a blue car"], "answer": 0}
    bad = [{"video_id": "v0001", "candidates": ["only one"], "answer": 0}] * 6
    bad += [{"video_id": "v0002", "candidates": ["a", "b"], "answer": 7}] * 3
    bad += [{"video_id": "not-a-video", "candidates": ["a", "b"], "answer": 0}]
    choice = tmp_path / "choice.jsonl"
    choice.write_text("".join(json.dumps(item) + "\n" for item in [good, *bad]))
    result = runner.invoke(app, ["evaluate", "--run", str(small_run), "--multiple-choice", str(choice)])
    assert result.exit_code == 1, result.output
    assert "10 of 11 items rejected" in result.output
    assert "malformed_record: 9" in result.output and "video_not_in_keyframes: 1" in result.output
    entry = json.loads((small_run / "eval.json").read_text())["test"]["multiple_choice"]
    assert entry["items"] == 1 and entry["rejected_items"] == 10

    choice.write_text(json.dumps(good) + "\n")
    result = runner.invoke(app, ["evaluate", "--run", str(small_run), "--multiple-choice", str(choice)])
    assert result.exit_code == 0, result.output
    assert "rejected" not in result.output


def test_audit_of_a_run_with_a_damaged_config_exits_1(small_run, tmp_path):
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(small_run, run)
    (run / "config.json").write_text("{not json")
    result = runner.invoke(app, ["audit", "--run", str(run)])
    assert result.exit_code == 1, result.output
    assert "config.json" in result.output and "damaged" in result.output and "Traceback" not in result.output


def test_resume_refuses_options_it_would_ignore(small_run):
    workdir = small_run.parent.parent
    result = runner.invoke(app, ["train", "--resume", "--name", "small", "-w", str(workdir), "--epochs", "2", "-q"])
    assert result.exit_code == 2, result.output
    assert "--epochs" in result.output and "config.json" in result.output
