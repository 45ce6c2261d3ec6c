"""One configuration file for every stage, and the record of what each run used.

A config file is TOML with one table per command, keys named like the command's
options (``num-keyframes`` or ``num_keyframes``)::

    workdir = "mama-work"          # top level: every command that has --workdir

    [keyframes]
    embedder = "pixels"
    num-keyframes = "auto"

    [caption]
    model = "llava"

Options given on the command line override the file. This module knows nothing of
the CLI framework: the CLI hands it, per command, the option names it accepts
(:class:`CommandOptions`) and gets back the per-command defaults to apply, or a
:class:`~mama_augment.errors.UsageError` naming the bad key and the valid ones.

Each stage run records its effective configuration with :func:`record_run_config`
as ``<workdir>/configs/<stage>-<UTC time>.json`` plus ``<workdir>/configs/<stage>.json``
(the latest), so a work folder says how every part of it was made.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterable, Mapping

from mama_augment.checks import read_text_file
from mama_augment.fileio import atomic_write_text
from mama_augment.errors import UsageError

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml = None  # type: ignore[assignment]

CONFIG_ENV = "MAMA_CONFIG"
CONFIGS_DIR = "configs"
# A config file is a few kilobytes; reading stops here (--config /dev/zero).
MAX_CONFIG_BYTES = 4 * 2**20


def normalize_key(key: str) -> str:
    """``num-keyframes``, ``num_keyframes`` and ``--num-keyframes`` are one key."""
    return key.strip().lstrip("-").replace("-", "_").lower()


def display_key(name: str) -> str:
    """How a key is written back: like the command-line option, without dashes in front."""
    return name.replace("_", "-")


@dataclass
class CommandOptions:
    """What one command accepts: canonical parameter names and their aliases.

    ``aliases`` maps every normalized spelling (parameter name, long option names)
    to the canonical parameter name the command's parser uses.
    """

    name: str
    aliases: dict[str, str] = field(default_factory=dict)
    arguments: frozenset[str] = frozenset()
    display: dict[str, str] = field(default_factory=dict)  # canonical name -> shown key

    def display_name(self, name: str) -> str:
        return self.display.get(name, display_key(name))

    def display_names(self) -> list[str]:
        return sorted({self.display_name(name) for name in self.aliases.values()})


# ----------------------------------------------------------------------------- loading


def load_toml(path: str | os.PathLike) -> dict:
    """Parse a TOML file, with errors a user can act on."""
    path = Path(path)
    if _toml is None:  # pragma: no cover - Python 3.10 without tomli
        raise UsageError("reading a TOML config file needs Python 3.11+ or: pip install tomli")
    text = read_text_file(path, "config file", MAX_CONFIG_BYTES)
    try:
        return _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None


def resolve_config(
    data: Mapping[str, Any],
    commands: Mapping[str, CommandOptions],
    source: str = "config file",
) -> dict[str, dict[str, Any]]:
    """Turn a parsed config file into ``{command: {parameter name: value}}``.

    Tables name commands; top-level keys apply to every command that has that option
    (a table's own value wins). Every key must name an option of its command, else a
    :class:`UsageError` lists the valid keys.
    """
    sections: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in commands:
                valid = ", ".join(sorted(commands)) or "(none)"
                raise UsageError(f"{source}: unknown section [{key}]; sections are the commands: {valid}")
            sections[key] = _resolve_section(value, commands[key], source)
        else:
            shared[normalize_key(key)] = (key, value)

    result: dict[str, dict[str, Any]] = {name: {} for name in commands}
    for norm, (key, value) in shared.items():
        takers = [cmd for cmd in commands.values() if norm in cmd.aliases]
        if not takers:
            everywhere = sorted({k for cmd in commands.values() for k in cmd.display_names()})
            raise UsageError(
                f"{source}: unknown top-level key '{key}': no command has an option of that name. "
                f"A top-level key applies to every command with that option ({', '.join(everywhere)}); "
                f"put command-specific keys under a [command] table"
            )
        for cmd in takers:
            result[cmd.name][cmd.aliases[norm]] = value
    for name, values in sections.items():
        result[name].update(values)
    return {name: values for name, values in result.items() if values}


def _resolve_section(table: Mapping[str, Any], command: CommandOptions, source: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in table.items():
        norm = normalize_key(key)
        if norm in command.arguments:
            raise UsageError(
                f"{source}: [{command.name}] '{key}' is an argument of '{command.name}', "
                "not an option; give it on the command line"
            )
        if norm not in command.aliases:
            raise UsageError(
                f"{source}: unknown key '{key}' in [{command.name}]; valid keys: "
                + ", ".join(command.display_names())
            )
        if isinstance(value, dict):
            raise UsageError(f"{source}: [{command.name}] '{key}' must be a value, not a table")
        name = command.aliases[norm]
        if name in seen:
            raise UsageError(
                f"{source}: [{command.name}] sets '{command.display_name(name)}' twice ('{seen[name]}' and '{key}')"
            )
        seen[name] = key
        values[name] = value
    return values


# ----------------------------------------------------------------------------- writing TOML


def toml_value(value: Any) -> str:
    """One value as TOML (strings, numbers, booleans, lists of those, dates)."""
    value = to_jsonable(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are a subset of TOML basic strings'.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() and c.isascii() or c in "-_" for c in key):
        return key
    return json.dumps(key)


def dumps_sections(
    sections: Mapping[str, Mapping[str, Any]],
    notes: Mapping[str, Mapping[str, str]] | None = None,
    header: Iterable[str] = (),
) -> str:
    """Write ``{section: {key: value}}`` as TOML.

    ``None`` values have no TOML form: they are written as comments
    (``# key = (unset)``), so the output parses and can be edited into a config.
    ``notes[section][key]`` is appended as a trailing comment.
    """
    notes = notes or {}
    lines = [f"# {line}" if line else "#" for line in header]
    for name, values in sections.items():
        if lines:
            lines.append("")
        lines.append(f"[{_toml_key(name)}]")
        section_notes = notes.get(name, {})
        for key, value in values.items():
            note = section_notes.get(key)
            if value is None:
                line = f"# {_toml_key(key)} = (unset)"
            else:
                line = f"{_toml_key(key)} = {toml_value(value)}"
            if note:
                line += f"  # {note}"
            lines.append(line)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- run records


def to_jsonable(value: Any) -> Any:
    """Paths, enums, tuples, sets, dataclasses and datetimes as plain JSON values."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v) for v in items]
    return str(value)


def record_run_config(
    workdir: str | os.PathLike,
    stage: str,
    config: Mapping[str, Any] | Any,
    *,
    config_file: str | os.PathLike | None = None,
) -> Path:
    """Record the effective configuration of one stage run in the work folder.

    Writes ``<workdir>/configs/<stage>-<UTC time>.json`` and replaces
    ``<workdir>/configs/<stage>.json`` (the latest run of that stage), both atomically.
    ``config`` is a mapping or a dataclass; paths, enums and tuples are stored as JSON.
    Returns the path of the timestamped record.
    """
    if not stage or any(c in stage for c in "/\\") or stage.startswith("."):
        raise ValueError(f"bad stage name {stage!r}")
    directory = Path(workdir) / CONFIGS_DIR
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {directory}: {exc.strerror or exc}") from None
    from mama_augment import __version__

    now = _dt.datetime.now(_dt.timezone.utc)
    record = {
        "stage": stage,
        "recorded_at": now.isoformat(),
        "mama_augment_version": __version__,
        "config_file": str(Path(config_file).resolve()) if config_file else None,
        "config": to_jsonable(config),
    }
    text = json.dumps(record, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{stage}-{stamp}.json"
    suffix = 1
    while path.exists():  # two records in the same microsecond
        path = directory / f"{stage}-{stamp}-{suffix}.json"
        suffix += 1
    atomic_write_text(path, text, fsync=True)
    atomic_write_text(directory / f"{stage}.json", text, fsync=True)
    return path


def read_run_config(workdir: str | os.PathLike, stage: str) -> dict | None:
    """The latest recorded configuration of ``stage`` (the whole record), or None."""
    path = Path(workdir) / CONFIGS_DIR / f"{stage}.json"
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
