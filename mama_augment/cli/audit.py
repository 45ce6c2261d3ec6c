"""``mama-augment audit``: the training pairs a run's weighting net trusts least."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mama_augment.cli._app import app, call_library, fail

_SOURCES = ("original", "generated", "all")
# Exit code of an audit of a run trained without meta-weighting: the losses are still
# listed and exported, but the weights that were asked for do not exist.
NO_WEIGHTS_EXIT_CODE = 1


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


@app.command("audit")
def audit_command(
    run: Path = typer.Option(..., "--run", help="A finished run folder (WORKDIR/runs/NAME)."),
    top: int = typer.Option(20, "--top", help="How many of the least-trusted pairs to print."),
    source: str = typer.Option("all", "--source", help="Which captions: original, generated or all."),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the whole ranked list to FILE.csv or FILE.parquet."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold",
        help="Weight below which a pair counts as distrusted (mean weight is 1); with --export, only those "
             "pairs are written. Default for the summary: 0.5.",
        show_default=False,
    ),
) -> None:
    """List the training pairs the meta-learned weighting trusts least.

    Reads RUN/pair_weights.parquet (written at the end of every train run): the pairs
    with the lowest weight (ties: higher loss first), with caption, source, loss,
    weight and the grid image to look at. A run trained without meta-weighting has no
    weights: the pairs are listed by loss instead and the exit code is 1.

    Example: mama-augment audit --run mama-work/runs/mama-features-seed0 --top 20 --export distrusted.csv --threshold 0.5
    """
    import pandas as pd

    from mama_augment.train.audit import audit_run, export_audit

    if source not in _SOURCES:
        raise fail(f"--source must be one of {', '.join(_SOURCES)}, not {source!r}")
    if export is not None and export.suffix.lower() not in (".csv", ".parquet"):
        raise fail(f"--export must end in .csv or .parquet, not {export.name}")
    result = call_library(audit_run, run, top=top, source=source, threshold=threshold)
    if not result.weighted:
        typer.secho(f"{run}: {result.note or 'no weights in this run'}; listing the highest-loss pairs instead.",
                    fg=typer.colors.YELLOW, err=True)
    elif result.note:
        typer.secho(f"note: {result.note}", err=True)

    rows = result.top_rows
    title = "least-trusted pairs" if result.weighted else "highest-loss pairs"
    typer.echo(f"{title} of {run} ({source} captions), {len(rows)} of {len(result.ranked)}:")
    typer.echo(f"{'rank':>4}  {'weight':>8}  {'loss':>6}  {'source':<9}  {'video_id':<16}  {'caption':<48}  grid")
    for row in rows.itertuples(index=False):
        weight = f"{row.weight_used:8.3g}" if result.weighted else f"{'-':>8}"  # what the ranking reads
        source_name = row.caption_source + (f"#{int(row.caption_index)}" if pd.notna(row.caption_index) else "")
        typer.echo(f"{row.rank:>4}  {weight}  {row.loss:6.3f}  {source_name:<9}  {_short(row.video_id, 16):<16}  "
                   f"{_short(row.caption, 48):<48}  {row.grid_path or '-'}")
    typer.echo(result.summary_line())
    if export is not None:
        written = call_library(export_audit, result, export)
        what = f"pairs with weight < {threshold:g}" if threshold is not None and result.weighted else "ranked pairs"
        typer.echo(f"exported {written} {what} to {export}")
    if not result.weighted:
        raise typer.Exit(NO_WEIGHTS_EXIT_CODE)
