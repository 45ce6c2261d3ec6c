"""One config file for every command: loading, override order, errors, ``config show``,
the shipped example, and the per-run configuration records."""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import json
import pkgutil
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import mama_augment.cli as cli_package
import mama_augment.cli.config  # noqa: F401  (registers `config`)
import mama_augment.cli.report  # noqa: F401
import mama_augment.cli.status  # noqa: F401
from mama_augment.cli import app
from mama_augment.cli.config_file import command_options, load_defaults
from mama_augment.configfile import (
    CommandOptions,
    dumps_sections,
    record_run_config,
    read_run_config,
    resolve_config,
)
from mama_augment.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mama.toml"

# Every command module present registers itself; the example config is checked against
# all of them (commands still being written elsewhere are skipped with the reason).
for _module in pkgutil.iter_modules(cli_package.__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"mama_augment.cli.{_module.name}")


def run(args, env=None):
    return CliRunner().invoke(app, args, env={"MAMA_CONFIG": "", **(env or {})})


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def captured(monkeypatch):
    """Replace the keyframes stage with a recorder of the config it was given."""
    import mama_augment.keyframes.stage as stage
    from mama_augment.stage import StageReport

    seen = {}

    def fake_run_keyframes(inputs, workdir, config, progress=True):
        seen.update(inputs=inputs, workdir=workdir, config=config)
        return StageReport(stage="keyframes")

    monkeypatch.setattr(stage, "run_keyframes", fake_run_keyframes)
    return seen


# ----------------------------------------------------------------------------- resolve_config


OPTIONS = {
    "keyframes": CommandOptions("keyframes", {"fps": "fps", "num_keyframes": "num_keyframes", "workdir": "workdir"},
                                frozenset({"inputs"})),
    "status": CommandOptions("status", {"workdir": "workdir", "json": "as_json", "as_json": "as_json"}),
}


def test_resolve_config_keys_and_sections():
    data = {"workdir": "w", "keyframes": {"num-keyframes": "auto", "FPS": 3}, "status": {"json": True}}
    assert resolve_config(data, OPTIONS) == {
        "keyframes": {"workdir": "w", "num_keyframes": "auto", "fps": 3},
        "status": {"workdir": "w", "as_json": True},
    }
    # A section's own value beats the top-level one.
    assert resolve_config({"workdir": "w", "status": {"workdir": "x"}}, OPTIONS)["status"] == {"workdir": "x"}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"keyframes": {"fpss": 3}}, "unknown key 'fpss' in [keyframes]; valid keys: fps, num-keyframes, workdir"),
        ({"keyframs": {"fps": 3}}, "unknown section [keyframs]; sections are the commands: keyframes, status"),
        ({"speed": 3}, "unknown top-level key 'speed'"),
        ({"keyframes": {"inputs": ["a"]}}, "'inputs' is an argument of 'keyframes'"),
        ({"keyframes": {"fps": 3, "FPS": 4}}, "sets 'fps' twice"),
    ],
)
def test_resolve_config_errors(data, message):
    with pytest.raises(UsageError) as info:
        resolve_config(data, OPTIONS, source="mama.toml")
    assert message in str(info.value)


def test_dumps_sections_round_trips():
    sections = {"keyframes": {"fps": 2.0, "grid": 'say "3x4"\n', "unset": None, "flag": False, "list": [1, "a"]}}
    text = dumps_sections(sections, {"keyframes": {"fps": "from mama.toml"}}, header=["hello"])
    assert "# unset = (unset)" in text and "fps = 2.0  # from mama.toml" in text
    assert tomllib.loads(text) == {"keyframes": {"fps": 2.0, "grid": 'say "3x4"\n', "flag": False, "list": [1, "a"]}}


# ----------------------------------------------------------------------------- the CLI


def test_file_overrides_defaults_and_command_line_overrides_file(tmp_path, captured):
    config = write(tmp_path / "mama.toml", 'workdir = "from-file"\n[keyframes]\nfps = 3\nembedder = "pixels"\n'
                                           'num_keyframes = "auto"\nretry-failed = true\n')
    result = run(["--config", str(config), "keyframes", "in.mp4", "--fps", "5"])
    assert result.exit_code == 0, result.output
    cfg = captured["config"]
    assert cfg.fps == 5.0  # command line wins
    assert cfg.embedder == "pixels" and cfg.num_keyframes is None and cfg.retry_failed is True  # the file
    assert cfg.knn == 5  # default
    assert captured["workdir"] == Path("from-file")  # top-level key
    assert captured["inputs"] == [Path("in.mp4")]


def test_config_from_environment(tmp_path, captured):
    config = write(tmp_path / "env.toml", "[keyframes]\nknn = 7\n")
    result = run(["keyframes", "in.mp4"], env={"MAMA_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert captured["config"].knn == 7
    # --config on the command line beats the environment.
    other = write(tmp_path / "other.toml", "[keyframes]\nknn = 9\n")
    result = run(["--config", str(other), "keyframes", "in.mp4"], env={"MAMA_CONFIG": str(config)})
    assert result.exit_code == 0 and captured["config"].knn == 9


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[keyframes]\nfpss = 3\n", ["unknown key 'fpss' in [keyframes]", "valid keys:", "num-keyframes", "max-frames"]),
        ("[keyframes]\nfps = 'fast'\n", ["[keyframes] fps = 'fast'"]),
        ("[keyframes]\nfps = [1, 2]\n", ["fps takes one value, not a list"]),
        ("[nope]\nx = 1\n", ["unknown section [nope]", "keyframes", "status"]),
        ("[keyframes\n", ["is not valid TOML"]),
    ],
)
def test_bad_config_file_exits_2(tmp_path, captured, text, expected):
    config = write(tmp_path / "bad.toml", text)
    result = run(["--config", str(config), "keyframes", "in.mp4"])
    assert result.exit_code == 2, result.output
    for fragment in expected:
        assert fragment in result.output
    assert "Traceback" not in result.output and not captured


def test_missing_config_file_exits_2(tmp_path):
    result = run(["--config", str(tmp_path / "none.toml"), "status", "-w", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_config_that_is_a_pipe_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock():
        # Were the pipe opened for reading, the command would wait for a writer
        # forever: after a while this writer releases it so that the test ends.
        if not done.wait(20):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    helper = threading.Thread(target=unblock, daemon=True)
    helper.start()
    try:
        result = run(["--config", str(fifo), "status", "-w", str(tmp_path)])
    finally:
        done.set()
        helper.join()
    assert result.exit_code == 2, result.output
    assert "not a regular file" in result.output and str(fifo) in result.output


def test_config_show(tmp_path):
    config = write(tmp_path / "mama.toml", 'workdir = "w"\n[keyframes]\nfps = 3\n[report]\npage-size = 7\n')
    result = run(["--config", str(config), "config", "show"])
    assert result.exit_code == 0, result.output
    shown = tomllib.loads(result.output)
    assert shown["keyframes"]["fps"] == 3.0 and shown["keyframes"]["knn"] == 5
    assert shown["keyframes"]["workdir"] == "w" and shown["status"]["workdir"] == "w"
    assert shown["report"]["page-size"] == 7 and shown["report"]["copy-images"] is False
    assert "fps = 3.0  # from mama.toml" in result.output
    assert "# embed-model = (unset)" in result.output

    # --config on the sub-command and --command to pick one section.
    only = run(["config", "show", "--config", str(config), "--command", "report"])
    assert only.exit_code == 0, only.output
    assert list(tomllib.loads(only.output)) == ["report"]
    defaults = run(["config", "show", "-c", "keyframes"])
    assert tomllib.loads(defaults.output)["keyframes"]["fps"] == 2.0 and "from" not in defaults.output.split("\n", 2)[2]
    bad = run(["config", "show", "--command", "nope"])
    assert bad.exit_code == 2 and "no command 'nope'" in bad.output


def test_help_lists_config_option_and_commands():
    result = run(["--help"])
    assert result.exit_code == 0
    for word in ("--config", "config", "report", "status"):
        assert word in result.output
    for command in (["config", "show", "--help"], ["report", "--help"], ["status", "--help"]):
        assert run(command).exit_code == 0


# ----------------------------------------------------------------------------- the shipped example


def _root_context():
    group = typer.main.get_command(app)
    return group.context_class(group, info_name="mama-augment")


def _example_sections() -> list[str]:
    return [k for k, v in tomllib.loads(EXAMPLE.read_text()).items() if isinstance(v, dict)]


def test_example_config_covers_every_stage():
    sections = set(_example_sections())
    assert {"keyframes", "caption", "train", "evaluate", "report"} <= sections
    # A stage command added later needs its table in the example too.
    registered = set(command_options(typer.main.get_command(app)))
    assert registered - sections <= {"status"}


@pytest.mark.parametrize("section", _example_sections())
def test_example_config_section_is_valid(tmp_path, section):
    """Every key of the example is a real option of its command and every value parses."""
    ctx = _root_context()
    if section not in ctx.command.commands:
        pytest.skip(f"command '{section}' is not registered (its CLI module is not in mama_augment/cli yet)")
    data = tomllib.loads(EXAMPLE.read_text())
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    single = tmp_path / f"{section}.toml"
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items() if k in command_options(ctx.command)[section].aliases]
    single.write_text("\n".join(lines) + f"\n[{section}]\n" + _section_text(section))
    defaults = load_defaults(ctx, single)
    assert set(defaults[section]) >= {command_options(ctx.command)[section].aliases[k.replace("-", "_")]
                                      for k in data[section]}


def _section_text(section: str) -> str:
    """The example's own lines of one table (so its exact spelling is what is checked)."""
    text = EXAMPLE.read_text()
    start = text.index(f"[{section}]\n") + len(section) + 3
    end = text.find("\n[", start)
    return text[start:] if end < 0 else text[start:end + 1]


# ----------------------------------------------------------------------------- run records


def test_record_run_config(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Options:
        fps: float = 2.0
        workdir: Path = Path("w")
        sizes: tuple = (1, 2)

    first = record_run_config(tmp_path, "keyframes", Options(), config_file=tmp_path / "mama.toml")
    second = record_run_config(tmp_path, "keyframes", {"fps": 3.0})
    assert first != second and first.parent == tmp_path / "configs"
    assert first.name.startswith("keyframes-") and first.name.endswith("Z.json")
    record = json.loads(first.read_text())
    assert record["stage"] == "keyframes" and record["config"] == {"fps": 2.0, "workdir": "w", "sizes": [1, 2]}
    assert record["config_file"].endswith("mama.toml") and record["recorded_at"].endswith("+00:00")
    latest = read_run_config(tmp_path, "keyframes")
    assert latest["config"] == {"fps": 3.0}
    assert sorted(p.name for p in (tmp_path / "configs").iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ValueError):
        record_run_config(tmp_path, "../evil", {})
