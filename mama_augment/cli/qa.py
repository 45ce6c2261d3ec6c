"""``mama-augment qa``: video question answering on a retrieval run's frozen model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer

from mama_augment.cli._app import app, call_library, parse_workdir
from mama_augment.train.qa import QASettings

# The defaults live in QASettings; the options show them.
_DEFAULT = {f.name: f.default for f in dataclasses.fields(QASettings)}


@app.command("qa")
def qa_command(
    run: Path = typer.Option(..., "--run", help="The retrieval run whose model answers (WORKDIR/runs/NAME)."),
    questions: List[Path] = typer.Option(..., "--questions", metavar="FILE", help="Question files of one release, repeatable (MSRVTT-QA, MSVD-QA, TGIF-QA, NExT-QA, ActivityNet-QA, JSON Lines; see `mama-augment datasets`), with their mapping files."),
    questions_format: Optional[str] = typer.Option(None, "--questions-format", metavar="NAME", help="Format of the question files (default: recognised from content): one name, or one per file comma-separated."),
    name: Optional[str] = typer.Option(None, "--name", help="QA run folder name under WORKDIR/runs (default: qa-<run name>)."),
    answers: Optional[int] = typer.Option(_DEFAULT["answers"], "--answers", help="Open-ended: answer over the K most frequent training answers; other answers count as wrong. Default: the release's own, from the detected format (MSRVTT-QA / MSVD-QA 1000 as Xu et al. 2017, TGIF-QA 1540 as Jang et al. 2017, others 1000)."),
    epochs: int = typer.Option(_DEFAULT["epochs"], "--epochs", help="Training epochs of the QA heads."),
    batch_size: int = typer.Option(_DEFAULT["batch_size"], "--batch-size", help="Questions per step."),
    learning_rate: float = typer.Option(_DEFAULT["learning_rate"], "--learning-rate", help="AdamW learning rate of the heads."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="No QA training: score answers by their retrieval similarity to the video."),
    checkpoint: str = typer.Option(_DEFAULT["checkpoint"], help="Weights of the retrieval run: best or last."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", "-w", parser=parse_workdir, metavar="PATH", help="Work folder of the videos (default: the run's own, two levels up)."),
    device: str = typer.Option("auto", help="Device: auto, cpu or cuda."),
    seed: int = typer.Option(_DEFAULT["seed"], "--seed", help="Seed of the heads' initialisation and batch order."),
) -> None:
    """Video question answering: accuracy overall and per question type.

    Embeds videos, questions and answers with the retrieval run's model (frozen),
    trains an open-ended head (over the --answers most frequent training answers) and
    a multiple-choice head (per question and candidate, the retrieval similarity
    plus a learned correction that starts at zero) on the train
    questions, and evaluates them and the zero-shot baseline on the val and test
    questions. Writes config.json, qa_heads.safetensors and eval.json into
    WORKDIR/runs/NAME. Exit code 1 when some questions were left out (their video is
    not in the work folder, or the files had bad rows).

    Example: mama-augment qa --run mama-work/runs/msrvtt --questions train_qa.json --questions val_qa.json --questions test_qa.json

    Example: mama-augment qa --run mama-work/runs/msrvtt --questions val.csv --questions test.csv --questions map_vid_vidorID.json --zero-shot
    """
    from mama_augment.train.qa import format_qa, run_qa

    settings = QASettings(
        base_run=str(run), questions=[str(p) for p in questions], questions_format=questions_format,
        checkpoint=checkpoint, answers=answers, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        seed=seed, zero_shot=zero_shot,
    )
    result = call_library(run_qa, settings, workdir=workdir, name=name, device=device)
    typer.echo(format_qa(result))
    if result.problems:
        typer.echo("problems:")
        for line in result.problems:
            typer.echo(f"  {line}")
    typer.echo(f"\nwritten: {result.run_dir / 'eval.json'}")
    if result.questions_left_out or any(not line.startswith("duplicate_question_id") for line in result.problems):
        raise typer.Exit(1)
