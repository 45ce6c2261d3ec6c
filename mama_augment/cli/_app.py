"""The Typer application object and the helpers every command shares.

Only the ``mama_augment.cli`` package imports Typer. A command parses its options,
calls one library function, prints a summary and sets the exit code:
0 all ok, 1 some items (or the stage) failed, 2 usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer

from mama_augment.errors import MamaError, UsageError
from mama_augment.stage import StageReport

app = typer.Typer(
    name="mama-augment",
    help=(
        "Keyframes, vision-language captions and MAMA contrastive training for "
        "video-text datasets. Stages share one work folder (--workdir)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        envvar="MAMA_CONFIG",
        help=(
            "TOML file of option values: one table per command (keyframes, caption, train, ...), "
            "keys named like the options; options given on the command line override it."
        ),
        show_default=False,
    ),
) -> None:
    if config is not None and not ctx.resilient_parsing:
        from mama_augment.cli.config_file import apply_config_file

        try:
            apply_config_file(ctx, config)
        except UsageError as exc:
            raise fail(str(exc), exc.exit_code) from None


WORKDIR_HELP = "Work folder that holds every stage's output."
DEFAULT_WORKDIR = Path("mama-work")


def parse_workdir(value: str | Path) -> Path:
    """``--workdir``: an empty value would silently mean the current folder."""
    if not str(value).strip():
        raise typer.BadParameter("must not be empty (write . for the current folder)")
    return Path(value)


CAPTIONS_FORMAT_HELP = (
    "Format of the --captions files (default: recognised from each file's content): one name, or one per file "
    "comma-separated; `mama-augment datasets` lists them."
)


def caption_paths(paths: Optional[list[Path]]) -> str | list[str] | None:
    """Repeated ``--captions``: one file as a string (as a run's config.json always held
    it), several as a list."""
    if not paths:
        return None
    return str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]


T = TypeVar("T")


def fail(message: str, code: int = 2) -> "typer.Exit":
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def call_library(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run a library call, turning run-level errors into clean CLI errors."""
    try:
        return fn(*args, **kwargs)
    except MamaError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        typer.secho("Interrupted; finished items are saved, rerun to resume.", err=True)
        raise typer.Exit(130) from None


def print_report(report: StageReport) -> None:
    """Print a stage summary and, when items failed, a table of error kinds."""
    out = typer.echo
    out(
        f"{report.stage}: {report.done} done, {report.skipped} skipped, "
        f"{report.failed} failed of {report.total} in {report.seconds:.1f} s"
    )
    if report.output:
        out(f"manifest: {report.output}")
    for key, value in report.extra.items():
        if isinstance(value, (str, int, float, Path)):
            out(f"{key}: {value}")
    if report.failures_by_kind:
        width = max(len(k) for k in report.failures_by_kind)
        out("")
        out(f"{'error kind'.ljust(width)}  count  example")
        for kind, count in report.failures_by_kind.most_common():
            example = report.failure_examples.get(kind, "")
            if len(example) > 100:
                example = example[:97] + "..."
            out(f"{kind.ljust(width)}  {count:5d}  {example}")


def finish(report: StageReport) -> None:
    print_report(report)
    if report.exit_code:
        raise typer.Exit(report.exit_code)