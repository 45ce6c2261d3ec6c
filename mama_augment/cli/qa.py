"""``mama-augment qa``: video question answering on a retrieval run's frozen model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer

from mama_augment.cli._app import app, call_library, fail, parse_workdir
from mama_augment.train.qa import QASettings

# The defaults live in QASettings; the options show them.
_DEFAULT = {f.name: f.default for f in dataclasses.fields(QASettings)}
_LAUNCH_PARAMS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")
# What --resume may be given: which run, where it runs and how it is launched; every
# other option is the run's own (its config.json), as for `train --resume`.
_RESUME_OPTIONS = ("run", "name", "workdir", "resume", "device", *_LAUNCH_PARAMS)


@app.command("qa")
def qa_command(
    ctx: typer.Context,
    run: Optional[Path] = typer.Option(None, "--run", help="The retrieval run whose model answers (WORKDIR/runs/NAME); needed unless --resume names the QA run with --name and --workdir."),
    questions: Optional[List[Path]] = typer.Option(None, "--questions", metavar="FILE", help="Question files of one release, repeatable (MSRVTT-QA, MSVD-QA, TGIF-QA, NExT-QA, ActivityNet-QA, JSON Lines; Causal-VidQA: its QA folder and split lists; see `mama-augment datasets`), with their mapping files."),
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
    resume: bool = typer.Option(False, "--resume", help="Continue the QA run NAME after its last finished epoch (qa_checkpoint.safetensors), with the options it began with."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Processes on this node (one per GPU): above 1, starts them with torchrun; each trains on its share of every batch (--batch-size is the whole batch)."),
    nnodes: int = typer.Option(1, "--nnodes", help="Nodes of a multi-node run (each runs this command with its --node-rank)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This node's rank, 0 to NNODES-1."),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Host of node rank 0 (rendezvous); default: a local one-node rendezvous."),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="Port of the rendezvous on --master-addr (default 29500)."),
) -> None:
    """Video question answering: accuracy overall and per question type.

    Embeds videos, questions and answers with the retrieval run's model (frozen),
    trains an open-ended head (over the --answers most frequent training answers) and
    a multiple-choice head (per question and candidate, the retrieval similarity
    plus a learned correction that starts at zero) on the train
    questions, and evaluates them and the zero-shot baseline on the val and test
    questions. Writes config.json, qa_heads.safetensors and eval.json into
    WORKDIR/runs/NAME, and after every epoch qa_checkpoint.safetensors, from which
    --resume continues a stopped run. Exit code 1 when some questions were left out
    (their video is not in the work folder, or the files had bad rows).

    With --nproc-per-node N (and --nnodes) the command starts N processes with
    torchrun (NCCL on GPUs, gloo on CPU), as `train` does; under torchrun itself each
    process joins the group. Rank 0 alone writes the run folder; every process exits
    with the run's code. A second qa (or train) into a run folder being written stops
    at once (exit 1).

    Example: mama-augment qa --run mama-work/runs/msrvtt --questions train_qa.json --questions val_qa.json --questions test_qa.json

    Example: mama-augment qa --run mama-work/runs/msrvtt --questions val.csv --questions test.csv --questions map_vid_vidorID.json --zero-shot

    Example: mama-augment qa --run mama-work/runs/msrvtt --resume
    """
    from mama_augment.cli.train import _forwarded_arguments, _options_resume_keeps
    from mama_augment.train.config import check_launch
    from mama_augment.train.distributed import env_from_environ, launch, launched_by_torchrun
    from mama_augment.train.qa import format_qa, run_qa

    under_torchrun = launched_by_torchrun()
    ignored = _options_resume_keeps(ctx, _RESUME_OPTIONS) if resume and not under_torchrun else []
    if ignored:
        raise fail(f"--resume continues the QA run with the options it began with (its config.json), so it does not "
                   f"take {', '.join(ignored)}; only --run, --name, --workdir, --device and the launch options may "
                   "be given. To answer with other options, start a new run with another --name.")
    settings = None
    if resume:
        if run is not None:  # the QA run's default place and name come from its retrieval run
            workdir = workdir or run.parent.parent
            name = name or f"qa-{run.name}"
    elif run is None or not questions:
        raise fail("give the retrieval run (--run) and the question files (--questions)")
    else:
        settings = QASettings(
            base_run=str(run), questions=[str(p) for p in questions], questions_format=questions_format,
            checkpoint=checkpoint, answers=answers, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
            seed=seed, zero_shot=zero_shot,
        )
    call_library(check_launch, nproc_per_node, nnodes, node_rank, master_port)
    if not under_torchrun and (nproc_per_node > 1 or nnodes > 1):
        call_library(launch, _forwarded_arguments(ctx), nproc_per_node, nnodes, node_rank, master_addr, master_port,
                     command="qa")
        return
    rank = 0
    if under_torchrun and env_from_environ().is_distributed:
        rank, result = _qa_distributed(settings, workdir, name, device, resume, run)
    else:
        result = call_library(run_qa, settings, workdir=workdir, name=name, device=device, resume=resume,
                              base_run=run)
    if rank == 0:  # rank 0 speaks for the run
        typer.echo(format_qa(result))
        if result.problems:
            typer.echo("problems:")
            for line in result.problems:
                typer.echo(f"  {line}")
        typer.echo(f"\nwritten: {result.run_dir / 'eval.json'}")
    # Every rank exits with the run's code (each read the same questions), as under
    # `train`: a launcher that watches any one process sees the run's outcome.
    if result.questions_left_out or any(not line.startswith("duplicate_question_id") for line in result.problems):
        raise typer.Exit(1)


def _qa_distributed(settings, workdir, name, device, resume, run):
    """Inside a torchrun process: join the group, train this rank's share, leave."""
    import logging

    from mama_augment.train.distributed import init_distributed, shutdown_distributed
    from mama_augment.train.qa import run_qa

    env = call_library(init_distributed, device)
    if env.rank != 0:
        logging.getLogger("mama_augment").setLevel(logging.ERROR)
    finished = False
    try:
        result = call_library(run_qa, settings, workdir=workdir, name=name, device=device, resume=resume,
                              rank=env.rank, world_size=env.world_size, base_run=run)
        finished = True
    finally:
        # A finished rank waits for the others before leaving; a failed one does not
        # (its peers may be stuck in a collective it will never join).
        shutdown_distributed(wait=finished)
    return env.rank, result
