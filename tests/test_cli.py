"""The CLI as a whole: every command has help, appears in the README, and the docs match."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.manifest import MANIFESTS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
runner = CliRunner()


def _command_names() -> list[str]:
    names = []
    for command in app.registered_commands:
        names.append(command.name or command.callback.__name__.replace("_", "-"))
    for group in app.registered_groups:
        names.append(group.name or group.typer_instance.info.name)
    return names


def test_top_level_help_lists_every_command_with_a_line():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in _command_names():
        assert re.search(rf"│ {re.escape(name)}\s+\S", result.output), f"{name} has no help line"


@pytest.mark.parametrize("name", _command_names())
def test_every_command_has_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("name", _command_names())
def test_every_command_is_in_the_readme(name):
    assert f"mama-augment {name}" in README


@pytest.mark.parametrize("spec", list(MANIFESTS.values()), ids=list(MANIFESTS))
def test_readme_documents_every_manifest_column(spec):
    missing = [name for name in spec.schema.names if f"`{name}`" not in README]
    assert not missing, f"README lacks {spec.filename} columns: {missing}"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    commands = [line for line in blocks[0].splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, "the README opens with the run command and the test command"
    assert commands[1] in ci
    assert "keyframes examples/videos" in commands[0]
