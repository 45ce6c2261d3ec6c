"""``mama-augment datasets``: the benchmark formats, and a check of annotation files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mama_augment.cli._app import app, call_library, parse_workdir


def _keyframe_ids(workdir: Path) -> list[str]:
    from mama_augment.errors import UsageError
    from mama_augment.workread import ok_video_ids

    video_ids = ok_video_ids(workdir)
    if not video_ids:
        raise UsageError(f"no keyframes found in {workdir} (no video with status ok): run `mama-augment keyframes` "
                         "first, or leave out --workdir")
    return video_ids


@app.command("datasets")
def datasets_command(
    files: Optional[List[Path]] = typer.Argument(None, help="Annotation files to check (as --captions of train would read them)."),
    captions_format: Optional[str] = typer.Option(None, "--captions-format", help="Format of the files (default: recognised from content): one name, or one per file comma-separated."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", "-w", parser=parse_workdir, metavar="PATH", help="Also match the video ids to WORKDIR/keyframes.parquet and report the unmatched ones."),
    show: int = typer.Option(10, "--show", help="Unmatched ids to print."),
    unmatched: Optional[Path] = typer.Option(None, "--unmatched", help="Write every unmatched and ambiguous id to this file, one per line (needs --workdir)."),
) -> None:
    """List the benchmark annotation formats that --captions reads, or check files.

    Without FILES: every format with its files and one example command. With FILES:
    reads them as train would (formats, splits from split lists, ids matched to
    WORKDIR's keyframes) and prints what it found and every problem counted; video
    question answering files are recognised and checked as questions. Exit
    code 0 when every row and id is usable, 1 when some are not, 2 when the files
    cannot be used.

    Example: mama-augment datasets

    Example: mama-augment datasets MSRVTT_data.json MSRVTT_train.9k.csv MSRVTT_JSFUSION_test.csv -w mama-work
    """
    from mama_augment.checks import check_number
    from mama_augment.datasets.check import check_files, format_listing
    from mama_augment.datasets.qa import describe_qa, load_qa, qa_failed, qa_files_given, qa_format_listing

    call_library(check_number, show, "--show", minimum=0, maximum=1_000_000)

    if not files:
        typer.echo("Formats read by --captions (train, evaluate) and --meta-set; recognised from content, "
                   "or named with --captions-format:\n")
        for line in format_listing():
            typer.echo(line)
        typer.echo("\nMultiple-choice files (evaluate --multiple-choice): JSON(L) items of video_id (or clip_name, "
                   "video), candidates (or options), answer.")
        typer.echo("\nVideo question answering files (checked here; answered by `mama-augment qa --questions`):\n")
        for line in qa_format_listing():
            typer.echo(line)
        return
    if unmatched is not None and workdir is None:
        raise typer.BadParameter("--unmatched needs --workdir (the ids are matched to its keyframes)")
    video_ids = call_library(_keyframe_ids, workdir) if workdir is not None else None
    if call_library(qa_files_given, files, captions_format):
        qa = call_library(load_qa, files, captions_format, video_ids)
        for line in describe_qa(qa, show):
            typer.echo(line)
        _write_unmatched(unmatched, qa.match)
        if qa_failed(qa):
            raise typer.Exit(1)
        return
    check = call_library(check_files, files, captions_format, video_ids)
    for line in check.lines(show):
        typer.echo(line)
    _write_unmatched(unmatched, check.loaded.match)
    if check.failed:
        raise typer.Exit(1)


def _write_unmatched(unmatched: Optional[Path], match) -> None:
    from mama_augment.fileio import atomic_write_text

    if unmatched is not None and match is not None:
        atomic_write_text(unmatched, "".join(f"{v}\n" for v in [*match.unmatched, *match.ambiguous]))
        typer.echo(f"written: {unmatched}")
