"""``mama-augment report``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mama_augment.cli._app import DEFAULT_WORKDIR, WORKDIR_HELP, app, call_library, parse_workdir


@app.command("report")
def report_command(
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", "-w", parser=parse_workdir, metavar="PATH", help=WORKDIR_HELP),
    captions: Optional[Path] = typer.Option(
        None,
        "--captions",
        help=(
            "Original captions (.csv, .jsonl or .parquet with video_id, caption) shown beside the "
            "generated ones. Default: the captions file recorded by the newest training run."
        ),
        show_default=False,
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Report folder (default: WORKDIR/report).", show_default=False
    ),
    page_size: int = typer.Option(50, help="Video cards per page."),
    copy_images: bool = typer.Option(
        False,
        "--copy-images",
        help="Copy (hard-link when possible) the grids, keyframes and run pictures into the report "
        "folder so it can be moved or shared alone; by default the page points into the work folder.",
    ),
) -> None:
    """Write an HTML report of the work folder: grids, keyframes and captions side by side.

    WORKDIR/report/index.html opens from disk in any browser (no server, no network):
    one card per video with its grid, keyframes and timestamps, the original caption(s)
    beside every generated one, training runs with their plots and evaluation, failed
    inputs with their reasons, a search box and pages.

    Example: mama-augment report --workdir mama-work --captions captions.csv
    """
    from mama_augment.report import build_report_summary

    summary = call_library(
        build_report_summary, workdir, captions, output, page_size=page_size, copy_images=copy_images
    )
    typer.echo(
        f"report: {summary.path} ({summary.videos} videos, {summary.failed} failed rows, "
        f"{summary.runs} training runs)"
    )
    if summary.originals_file:
        typer.echo(f"original captions: {summary.originals} from {summary.originals_file}")
    if summary.missing_images:
        typer.secho(f"{summary.missing_images} image(s) referenced by the manifests are missing on disk",
                    fg=typer.colors.YELLOW, err=True)
    for problem in summary.problems:
        typer.secho(f"problem: {problem}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"open: {summary.path.resolve().as_uri()}")
