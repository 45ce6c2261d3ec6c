"""``mama-augment keyframes``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mama_augment.cli._app import DEFAULT_WORKDIR, WORKDIR_HELP, app, call_library, fail, finish, parse_workdir
from mama_augment.embed import embedder_help
from mama_augment.engines import engine_help
from mama_augment.keyframes.config import KeyframesConfig
from mama_augment.video import BACKEND_CHOICES as DECODERS

_D = KeyframesConfig()


def _parse_num_keyframes(value: str) -> Optional[int]:
    if value.strip().lower() == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise fail(f"--num-keyframes must be a whole number or 'auto', not {value!r}") from None


@app.command("keyframes")
def keyframes_command(
    ctx: typer.Context,
    inputs: List[Path] = typer.Argument(
        ...,
        help="Video/image files, folders (searched recursively) or list files (.txt, .csv, .parquet with a 'path' column).",
        show_default=False,
    ),
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", "-w", parser=parse_workdir, metavar="PATH", help=WORKDIR_HELP),
    embedder: str = typer.Option(_D.embedder, help=f"Frame embedder: {embedder_help()}."),
    embed_model: Optional[str] = typer.Option(None, help="Model id or folder for embedders that take one (clip)."),
    num_keyframes: str = typer.Option(str(_D.num_keyframes), help="Keyframes per video, or 'auto' (from the gap in DPC scores)."),
    min_keyframes: int = typer.Option(_D.min_keyframes, help="Lower bound for --num-keyframes auto."),
    max_keyframes: int = typer.Option(_D.max_keyframes, help="Upper bound for --num-keyframes auto."),
    knn: int = typer.Option(_D.knn, help="Neighbours used for the DPC-KNN density."),
    selection: str = typer.Option(
        _D.selection,
        help="How centres are chosen from DPC scores: cover (DPC peaks refined by k-medoids swaps to cover the video, never worse than evenly spaced frames) or gamma (the K highest rho*delta).",
    ),
    fps: float = typer.Option(_D.fps, help="Frames sampled per second of video."),
    max_frames: int = typer.Option(_D.max_frames, help="At most this many sampled frames, spread evenly over longer videos."),
    grid: str = typer.Option(_D.grid, help="Grid layout ROWSxCOLS, filled row-major in temporal order."),
    tile_size: str = typer.Option(_D.tile_size, help="Size WxH of one grid tile in pixels (frames are letterboxed)."),
    thumb_size: int = typer.Option(_D.thumb_size, help="Longer side in pixels of the kept frames and keyframe JPEGs."),
    jpeg_quality: int = typer.Option(_D.jpeg_quality, help="JPEG quality of keyframes and grids."),
    decoder: str = typer.Option(_D.decoder, help=f"Decoding backend: {', '.join(DECODERS)}."),
    device: str = typer.Option(_D.device, help="Device of the embedder: auto (every GPU when CUDA works, else the CPU), cpu or cuda; one embedder process per device."),
    batch_size: int = typer.Option(_D.batch_size, help="Frames per embedder batch, mixing videos (at least 256 on CUDA)."),
    workers: int = typer.Option(_D.workers, help="Worker processes, or Ray actors with --engine ray (0 = one per CPU core; with Ray, as many as the cluster fits)."),
    timeout: float = typer.Option(_D.timeout_s, help="Seconds allowed per video before it is stopped and marked failed."),
    engine: str = typer.Option(_D.engine, help=f"Where videos are processed: {engine_help()}."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join with --engine ray: 'auto' (the cluster of `ray start` on this node) or an address; default: start a local Ray."),
    num_cpus: float = typer.Option(_D.num_cpus, help="CPUs reserved per Ray actor (--engine ray); also its torch threads."),
    num_gpus: float = typer.Option(_D.num_gpus, help="GPUs reserved per Ray actor for the embedder (--engine ray); fractions share a GPU."),
    retry_failed: bool = typer.Option(True, "--retry-failed/--skip-failed", help="Process again inputs that failed in an earlier run (the default), or keep them failed and count them as failures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete this stage's earlier output and start over."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    quiet: bool = typer.Option(False, "--quiet", "-q", hidden=True, help="Same as --no-progress."),
) -> None:
    """Pick keyframes of every video by DPC-KNN and tile them into grid images.

    Writes WORKDIR/keyframes.parquet (one row per input), WORKDIR/frames/ (one JPEG
    per keyframe) and WORKDIR/grids/ (one grid per video). Rerunning resumes: done
    inputs are skipped, changed inputs or options are redone, failed inputs are tried
    again (--skip-failed keeps them failed).

    Example: mama-augment keyframes videos/ --workdir mama-work --embedder cnn

    On a Ray cluster: mama-augment keyframes videos/ --engine ray --ray-address auto
    """
    from mama_augment.keyframes.stage import run_keyframes

    # Every option named like a KeyframesConfig field is that field; the stage checks
    # them all (KeyframesConfig.validate) before any work.
    config = KeyframesConfig.from_dict({
        **ctx.params,
        "num_keyframes": _parse_num_keyframes(num_keyframes),
        "timeout_s": timeout,
    })
    report = call_library(run_keyframes, inputs, workdir, config, progress=progress and not quiet)
    finish(report)
