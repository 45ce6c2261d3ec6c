"""``mama-augment config show``: the effective configuration, as a TOML file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from mama_augment.cli._app import app, fail
from mama_augment.cli.config_file import META_CONFIG_FILE, effective_config, leaf_commands, load_defaults
from mama_augment.configfile import CONFIG_ENV, dumps_sections
from mama_augment.errors import UsageError


config_app = typer.Typer(
    name="config",
    help="Inspect the configuration file (--config FILE or $MAMA_CONFIG).",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show_command(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="TOML file to show merged with the defaults (default: the global --config / $MAMA_CONFIG).",
        show_default=False,
    ),
    command: Optional[str] = typer.Option(
        None, "--command", "-c", help="Show only this command's section.", show_default=False
    ),
) -> None:
    """Print the effective configuration (defaults merged with the file) as TOML.

    The output is itself a valid config file; unset options appear as comments and
    values taken from the file are marked.

    Example: mama-augment --config mama.toml config show --command keyframes
    """
    root = ctx.find_root()
    group = root.command
    source: Optional[str]
    if config is not None:
        try:
            file_defaults = load_defaults(ctx, config)
        except UsageError as exc:
            raise fail(str(exc), exc.exit_code) from None
        source = str(config)
    else:
        source = root.meta.get(META_CONFIG_FILE)
        file_defaults = {k: v for k, v in (root.default_map or {}).items() if isinstance(v, dict)}
    names = list(leaf_commands(group))
    if command is not None:
        if command not in names:
            raise fail(f"--command: no command '{command}'; commands: {', '.join(names)}")
        names = [command]
    sections: dict[str, dict[str, Any]] = {}
    notes: dict[str, dict[str, str]] = {}
    origin = os.path.basename(source) if source else None
    for name in names:
        values, from_file = effective_config(ctx, file_defaults, name)
        if not values:
            continue
        sections[name] = values
        notes[name] = {key: f"from {origin}" for key in from_file}
    header = [
        "Effective mama-augment configuration: "
        + (f"defaults merged with {source}." if source else f"defaults (no --config or ${CONFIG_ENV})."),
        "Options given on the command line override these values.",
    ]
    typer.echo(dumps_sections(sections, notes, header=header), nl=False)
