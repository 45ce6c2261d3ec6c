"""``--config FILE`` for every command: the file's values become option defaults.

The global option (on the app callback, also read from ``$MAMA_CONFIG``) loads a TOML
file and installs it as click's ``default_map``: a value in the file replaces an
option's default, an option given on the command line still wins. Every key is
checked against the real options of its command, and every value against the
option's type, before any command runs.

Typer 0.29 carries its own copy of click (``typer._click``), older Typer uses click
itself; the code below touches only what both share (``Context.default_map``,
``Parameter.process_value``, ``param_type_name``, ``Group.commands``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mama_augment.configfile import (
    CommandOptions,
    load_toml,
    normalize_key,
    resolve_config,
    to_jsonable,
)
from mama_augment.errors import UsageError

# Where the callback leaves the path of the loaded file, in the root context's meta.
META_CONFIG_FILE = "mama_augment.config_file"


def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _is_option(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def leaf_commands(group: Any) -> dict[str, Any]:
    """Top-level commands that take options (sub-command groups such as config do not)."""
    return {name: cmd for name, cmd in sorted(group.commands.items()) if not _is_group(cmd)}


def command_options(group: Any) -> dict[str, CommandOptions]:
    """The options of every (non-group) command of ``group``, for the config file."""
    commands: dict[str, CommandOptions] = {}
    for name, command in leaf_commands(group).items():
        aliases: dict[str, str] = {}
        display: dict[str, str] = {}
        arguments: set[str] = set()
        for param in command.params:
            if param.name is None:
                continue
            if getattr(param, "param_type_name", "") == "argument":
                arguments.add(normalize_key(param.name))
                continue
            if not _is_option(param):
                continue
            aliases[normalize_key(param.name)] = param.name
            long_opts = [opt for opt in param.opts if opt.startswith("--")]
            for opt in long_opts:
                aliases[normalize_key(opt)] = param.name
            display[param.name] = long_opts[0][2:] if long_opts else param.name.replace("_", "-")
        commands[name] = CommandOptions(
            name=name, aliases=aliases, arguments=frozenset(arguments - set(aliases)), display=display
        )
    return commands


def _find_param(command: Any, name: str) -> Any:
    for param in command.params:
        if param.name == name:
            return param
    raise KeyError(name)


def _sub_context(root: Any, command: Any, name: str, default_map: dict) -> Any:
    return command.context_class(command, info_name=name, parent=root, default_map=default_map)


def _error_text(exc: BaseException) -> str:
    return str(getattr(exc, "message", "") or exc)


def _checked(root: Any, group: Any, resolved: dict, source: str,
             options: dict[str, CommandOptions]) -> dict[str, dict[str, Any]]:
    """Convert every value with its option's type, so a bad value fails before any run."""
    checked: dict[str, dict[str, Any]] = {}
    for command_name, values in resolved.items():
        command = group.commands[command_name]
        sub_ctx = _sub_context(root, command, command_name, {})
        out: dict[str, Any] = {}
        for name, value in values.items():
            param = _find_param(command, name)
            key = options[command_name].display_name(name)
            takes_many = getattr(param, "multiple", False) or param.nargs != 1
            if takes_many and not isinstance(value, list):
                value = [value]
            if isinstance(value, list) and not takes_many:
                raise UsageError(f"{source}: [{command_name}] {key} takes one value, not a list")
            try:
                param.process_value(sub_ctx, value)
            except (typer.Exit, KeyboardInterrupt):
                raise
            except Exception as exc:  # the parser's BadParameter, TypeError, ValueError
                raise UsageError(
                    f"{source}: [{command_name}] {key} = {value!r}: {_error_text(exc)}"
                ) from None
            out[name] = value
        checked[command_name] = out
    return checked


def load_defaults(ctx: Any, path: Path) -> dict[str, dict[str, Any]]:
    """Read, validate and type-check a config file against the app's commands."""
    root = ctx.find_root()
    group = root.command
    if not _is_group(group):  # pragma: no cover - the app is always a group
        raise UsageError("config files need the full mama-augment app")
    options = command_options(group)
    data = load_toml(path)
    resolved = resolve_config(data, options, source=str(path))
    return _checked(root, group, resolved, str(path), options)


def apply_config_file(ctx: Any, path: Path) -> None:
    """Install a config file as the ``default_map`` of the app (called by the app's
    callback); UsageError for a bad file."""
    defaults = load_defaults(ctx, path)
    merged = dict(ctx.default_map or {})
    for command_name, values in defaults.items():
        merged[command_name] = {**merged.get(command_name, {}), **values}
    ctx.default_map = merged
    ctx.meta[META_CONFIG_FILE] = str(path)


def effective_config(
    ctx: Any,
    file_defaults: dict[str, dict[str, Any]],
    command_name: str,
) -> tuple[dict[str, Any], set[str]]:
    """Every visible option of one command with its effective value, keyed as in a file.

    Returns the values and the keys that came from the config file.
    """
    root = ctx.find_root()
    group = root.command
    command = group.commands[command_name]
    options = command_options(group)[command_name]
    from_file = file_defaults.get(command_name, {})
    sub_ctx = _sub_context(root, command, command_name, dict(from_file))
    values: dict[str, Any] = {}
    sources: set[str] = set()
    for param in command.params:
        if not _is_option(param) or getattr(param, "hidden", False) or param.name is None:
            continue
        value = param.get_default(sub_ctx, call=True)
        if value is not None:
            try:
                value = param.process_value(sub_ctx, value)
            except Exception:  # shown as given; the command itself will complain when run
                pass
        key = options.display_name(param.name)
        values[key] = to_jsonable(value)
        if param.name in from_file:
            sources.add(key)
    return values, sources
