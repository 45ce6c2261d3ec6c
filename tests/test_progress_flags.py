"""One spelling of the progress option on every command that shows progress:
``--progress/--no-progress``, with the older ``--quiet/-q`` kept (hidden) where it was."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.stage import StageReport

runner = CliRunner()

# command -> (module that holds the stage function, its name, minimal arguments)
COMMANDS = {
    "keyframes": ("mama_augment.keyframes.stage", "run_keyframes", ["clip.mp4"]),
    "caption": ("mama_augment.caption.stage", "run_caption", []),
    "train": ("mama_augment.train.loop", "run_train", ["--captions", "captions.csv"]),
    "filter": ("mama_augment.quality.stage", "run_filter", []),
    "export": ("mama_augment.export.stage", "run_export", ["-f", "csv", "-o", "out"]),
}
HAD_QUIET = ("keyframes", "train")


@pytest.fixture
def shown(monkeypatch):
    """Replace each stage with a recorder of whether it was asked to show progress."""
    import importlib

    seen = {}
    for command, (module, name, _) in COMMANDS.items():
        def recorder(*args, _command=command, **kwargs):
            if "progress" in kwargs:
                seen[_command] = kwargs["progress"]
            else:  # train carries it in its config
                seen[_command] = args[0].progress
            return StageReport(stage=_command)

        monkeypatch.setattr(importlib.import_module(module), name, recorder)
    return seen


def _invoke(command, *flags):
    args = COMMANDS[command][2]
    return runner.invoke(app, [command, *args, *flags], env={"MAMA_CONFIG": ""})


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_progress_and_no_progress_on_every_command(shown, command):
    for flags, expected in (((), True), (("--progress",), True), (("--no-progress",), False)):
        result = _invoke(command, *flags)
        assert result.exit_code == 0, (command, flags, result.output)
        assert shown[command] is expected, (command, flags)
    help_text = runner.invoke(app, [command, "--help"], terminal_width=200).output
    assert "--no-progress" in help_text and "--quiet" not in help_text


@pytest.mark.parametrize("command", HAD_QUIET)
@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_quiet_still_works_where_it_existed(shown, command, flag):
    result = _invoke(command, flag)
    assert result.exit_code == 0, result.output
    assert shown[command] is False
