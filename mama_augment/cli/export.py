"""``mama-augment export``: the augmented dataset in a format other trainers read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mama_augment.cli._app import (
    CAPTIONS_FORMAT_HELP,
    DEFAULT_WORKDIR,
    WORKDIR_HELP,
    app,
    call_library,
    caption_paths,
    fail,
    finish,
    parse_workdir,
)
from mama_augment.export import FORMATS
from mama_augment.export.config import ALL_FLAGS, MAX_SHARD_SIZE, SOURCES, SPLIT_BY, UNITS, ExportConfig
from mama_augment.quality import FLAG_NAMES

_D = ExportConfig(format="webdataset", out=Path("."))  # defaults live in ExportConfig
_FILTERS = "Filters"


def _split_list(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


@app.command("export")
def export_command(
    format: Annotated[str, typer.Option("--format", "-f", help=f"One of: {', '.join(FORMATS)}.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", parser=parse_workdir, metavar="PATH", help="Export folder (new or empty; an interrupted export there is resumed).", show_default=False)],
    workdir: Annotated[Path, typer.Option("--workdir", "-w", parser=parse_workdir, metavar="PATH", help=WORKDIR_HELP)] = DEFAULT_WORKDIR,
    run: Annotated[Optional[Path], typer.Option("--run", help="A finished training run (WORKDIR/runs/NAME): its pair_weights.parquet gives each pair's learned weight.", show_default=False)] = None,
    captions: Annotated[Optional[list[Path]], typer.Option("--captions", metavar="FILE", help="Original captions, repeatable, any --captions format of train: .csv/.jsonl/.parquet with video_id, caption [, split, concept], or a benchmark's own files. Default: the captions the --run was trained on.", show_default=False)] = None,
    captions_format: Annotated[Optional[str], typer.Option("--captions-format", metavar="NAME", help=CAPTIONS_FORMAT_HELP, show_default=False)] = None,
    shard_size: Annotated[int, typer.Option(help=f"Samples per shard (a tar, a Parquet file, a part); at most {MAX_SHARD_SIZE:,}.")] = _D.shard_size,
    unit: Annotated[Optional[str], typer.Option(help=f"Sample unit: {' or '.join(UNITS)} (webdataset only; default video there, pair elsewhere except clip-vip).", show_default=False)] = None,
    images: Annotated[bool, typer.Option("--images/--no-images", help="Copy the grids (and keyframes) into the export; without, exports point at the work folder's files.")] = _D.images,
    keyframes: Annotated[bool, typer.Option("--keyframes/--no-keyframes", help="Also carry the keyframe JPEGs (webdataset video unit).")] = _D.keyframes,
    prompt: Annotated[Optional[str], typer.Option(help="Prompt name or .txt file: the LLaVA instruction for original captions and for captions whose prompt text is not found (default: the default prompt).", show_default=False)] = None,
    sources: Annotated[str, typer.Option(help="Caption sources to export, comma-separated: original,generated.", rich_help_panel=_FILTERS)] = ",".join(SOURCES),
    min_weight: Annotated[Optional[float], typer.Option(help="Drop pairs whose learned weight is below W (mean weight is 1; needs --run). Pairs not in the run are kept.", rich_help_panel=_FILTERS, show_default=False)] = None,
    drop_least_trusted: Annotated[Optional[float], typer.Option(help="Drop the P percent of the run's pairs with the lowest weight (the audit's ranking; needs --run).", rich_help_panel=_FILTERS, show_default=False)] = None,
    drop_flags: Annotated[Optional[str], typer.Option(help=f"Drop generated captions with these quality flags (from `mama-augment filter`), comma-separated, or '{ALL_FLAGS}': {', '.join(FLAG_NAMES)}.", rich_help_panel=_FILTERS, show_default=False)] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="Keep one caption of every near-duplicate group (from `mama-augment filter`).", rich_help_panel=_FILTERS)] = False,
    split: Annotated[Optional[str], typer.Option(help="Only videos of this split: train, val or test, the videos `train` used as such (see --split-by).", rich_help_panel=_FILTERS, show_default=False)] = None,
    split_by: Annotated[str, typer.Option(help="How --split places a video: " + "; ".join(f"{k} = {v}" for k, v in SPLIT_BY.items()) + ".", rich_help_panel=_FILTERS)] = _D.split_by,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an export already in --out (only an export made by this tool).")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Export videos and captions for other trainers: WebDataset, Hugging Face, LLaVA, CLIP-ViP, csv/jsonl.

    Streams the work folder (keyframes, captions, optionally a run's learned weights
    and the quality flags of `filter`) into shards written atomically; a killed export
    resumes where it stopped. OUT/index.json lists the options, shards and counts.

    Example: mama-augment export -w mama-work --format webdataset --out wds --run mama-work/runs/mama-features-seed0 --drop-least-trusted 10 --drop-flags all

    Example: mama-augment export -w msrvtt-work --format hf --out msrvtt-hf --captions MSRVTT_data.json --captions MSRVTT_train.9k.csv --captions MSRVTT_JSFUSION_test.csv --split train
    """
    if format not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if unit is not None and unit not in UNITS:
        raise fail(f"--unit must be one of {', '.join(UNITS)}, not {unit!r}")
    config = ExportConfig(
        format=format, out=out, run=run, captions=caption_paths(captions), captions_format=captions_format,
        sources=_split_list(sources), min_weight=min_weight,
        drop_least_trusted=drop_least_trusted, drop_flags=_split_list(drop_flags), dedupe=dedupe, split=split,
        split_by=split_by,
        unit=unit, shard_size=shard_size, images=images, keyframes=keyframes, prompt=prompt, overwrite=overwrite,
    )
    from mama_augment.export.stage import run_export

    report = call_library(run_export, config, workdir, progress=progress)
    finish(report)
