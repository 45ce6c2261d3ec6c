"""``mama-augment train`` and ``mama-augment evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mama_augment.cli._app import DEFAULT_WORKDIR, WORKDIR_HELP, app, call_library, fail, finish
from mama_augment.train.config import AUGMENT_MODES, DEVICES, EPOCH_CAPTIONS, LOSSES, META_PARAMS, META_SELECT, TrainConfig

_D = TrainConfig()
# Registry keys for --help without importing torch at startup.
_BACKBONES = "features, clip"


_LAUNCH_PARAMS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")


def _forwarded_arguments(ctx: typer.Context) -> list[str]:
    """This command's options again, minus the launch options, for the processes
    torchrun starts: every value not left at its default (command line, environment,
    --config file) is passed on explicitly."""
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name in _LAUNCH_PARAMS or name not in ctx.params:
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name == "DEFAULT":
            continue
        value = ctx.params[name]
        long_opts = [o for o in param.opts if o.startswith("--")] or list(param.opts)
        if getattr(param, "is_flag", False):
            if value is True:
                args.append(long_opts[0])
            elif value is False and param.secondary_opts:
                args.append(param.secondary_opts[0])
        elif value is not None:
            args += [long_opts[0], str(value)]
    return args


def _train_distributed(config: TrainConfig, workdir: Path):
    """Inside a torchrun process: join the group, train this rank's share, leave."""
    import logging

    from mama_augment.train.distributed import init_distributed, shutdown_distributed
    from mama_augment.train.loop import run_train

    env = call_library(init_distributed, config.device)
    if env.rank != 0:  # rank 0 speaks for the run
        logging.getLogger("mama_augment").setLevel(logging.ERROR)
    try:
        report = call_library(run_train, config, workdir, env.rank, env.world_size)
    finally:
        shutdown_distributed()
    return env, report


def _choice(name: str, value: str, choices) -> str:
    if value not in choices:
        raise fail(f"--{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


@app.command("train")
def train_command(
    ctx: typer.Context,
    captions: Optional[Path] = typer.Option(None, "--captions", help="Original captions: .csv, .jsonl or .parquet with video_id, caption [, split, concept]."),
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", "-w", help=WORKDIR_HELP),
    augment: str = typer.Option(_D.augment, help="add: also train on WORKDIR/captions.parquet (generated); none: originals only."),
    backbone: str = typer.Option(_D.backbone, help=f"Model: {_BACKBONES}. features = frozen keyframe + sentence embeddings, trained heads (CPU-friendly); clip = Hugging Face CLIP fine-tuned on keyframe JPEGs."),
    backbone_model: Optional[str] = typer.Option(None, help="clip: Hugging Face CLIP id or folder (loaded offline)."),
    text_model: str = typer.Option(_D.text_model, help="features: sentence encoder (all-MiniLM-L6-v2, hashing, or a sentence-transformers folder)."),
    loss: str = typer.Option(_D.loss, help=f"Objective: {', '.join(LOSSES)}."),
    margin: float = typer.Option(_D.margin, help="Subtractive angular margin in radians on positive pairs (mama). Off by default: on two real image-caption sets (frozen features, trained heads) 0.05 and 0.1 lowered R@1 under caption noise and weakened the weighting, and did not help on clean captions (benchmarks/RESULTS.md); benchmarks/train_quality.py --backbone clip measures it for a pretrained CLIP."),
    meta_weighting: Optional[bool] = typer.Option(None, "--meta-weighting/--no-meta-weighting", help="Meta-learned per-sample weights (default: on with mama, off with infonce).", show_default=False),
    meta_every: int = typer.Option(_D.meta_every, help="A meta step every K training steps."),
    meta_lr: float = typer.Option(_D.meta_lr, help="Learning rate of the weighting net (Adam)."),
    meta_hidden: int = typer.Option(_D.meta_hidden, help="Hidden width of the weighting MLP."),
    meta_set: Optional[Path] = typer.Option(None, help="File of clean meta pairs (same format as --captions); default: drawn from the training pairs."),
    meta_fraction: float = typer.Option(_D.meta_fraction, help="Fraction of the training pairs drawn as the meta set (without --meta-set), evenly across concepts."),
    meta_select: str = typer.Option(_D.meta_select, help=f"How the meta set is drawn without --meta-set: {', '.join(META_SELECT)}. agreement: the pairs whose video and caption agree most under a cross-fitted warm-up model (nearly clean even when the captions are not); random: a random draw."),
    meta_holdout: bool = typer.Option(_D.meta_holdout, "--meta-holdout/--no-meta-holdout", help="Keep the meta set's videos out of the training stream."),
    virtual_lr: float = typer.Option(_D.virtual_lr, help="Step size of the virtual (look-ahead) step."),
    meta_params: str = typer.Option(_D.meta_params, help="Parameters that take the virtual step: last (last projections + logit scale, cheapest), heads, all."),
    epochs: int = typer.Option(_D.epochs, help="Passes over the training pairs."),
    epoch_captions: str = typer.Option(_D.epoch_captions, help=f"What one epoch holds: {', '.join(EPOCH_CAPTIONS)}. all: every (video, caption) pair once, batched so that no video appears twice in a batch; one: every training video once, with one of its captions drawn at random."),
    batch_size: int = typer.Option(_D.batch_size, help="Pairs per step (also the meta batch size, capped by the meta set)."),
    lr: float = typer.Option(_D.lr, help="Peak learning rate (AdamW)."),
    weight_decay: float = typer.Option(_D.weight_decay, help="AdamW weight decay (not on biases, norms, logit scale)."),
    warmup: float = typer.Option(_D.warmup, help="Warmup: a fraction of all steps if < 1, else a number of steps; then cosine decay."),
    test_fraction: float = typer.Option(_D.test_fraction, help="Videos held out for test when the captions have no split column."),
    val_fraction: float = typer.Option(_D.val_fraction, help="Videos held out for validation R@1 when there is no split column."),
    seed: int = typer.Option(_D.seed, help="Seed of initialisation, batches and meta set."),
    device: str = typer.Option(_D.device, help=f"Device: {', '.join(DEVICES)} (CUDA runs in bf16 autocast)."),
    name: Optional[str] = typer.Option(None, help="Run name (folder WORKDIR/runs/NAME); default LOSS-BACKBONE-seedSEED."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run NAME from its last checkpoint."),
    checkpoint_every: int = typer.Option(_D.checkpoint_every, help="Steps between checkpoints (also at each epoch end)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Training processes on this node (one per GPU): above 1, starts them with torchrun; --batch-size is the global batch, split across all processes."),
    nnodes: int = typer.Option(1, "--nnodes", help="Nodes of a multi-node run (each runs this command with its --node-rank)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This node's rank, 0 to NNODES-1."),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Host of node rank 0 (rendezvous); default: a local one-node rendezvous."),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="Port of the rendezvous on --master-addr (default 29500)."),
) -> None:
    """Train a video-text retrieval model with the MAMA objective.

    Pairs every keyframed video in WORKDIR with its original captions (--captions) and,
    with --augment add, its generated captions (WORKDIR/captions.parquet). Writes
    WORKDIR/runs/NAME/: config.json, model.safetensors (last epoch),
    best_model.safetensors (best validation R@1), weighting_net.safetensors,
    checkpoint.safetensors, metrics.jsonl, pair_weights.parquet, training.png and
    loss_weight.png.

    With --nproc-per-node N (and --nnodes for several nodes) the command starts N
    processes with torchrun (NCCL on GPUs, gloo on CPU); under torchrun itself
    (torchrun -m mama_augment train ...) each process joins the group. Negatives are
    gathered from every process; rank 0 alone writes the run folder.

    Example: mama-augment train --captions captions.csv --workdir mama-work --epochs 20

    Example: mama-augment train --nproc-per-node 4 --captions captions.csv --batch-size 512
    """
    from mama_augment.train.distributed import env_from_environ, launch, launched_by_torchrun
    from mama_augment.train.loop import run_train

    _choice("augment", augment, AUGMENT_MODES)
    _choice("loss", loss, LOSSES)
    _choice("device", device, DEVICES)
    _choice("meta-params", meta_params, META_PARAMS)
    _choice("meta-select", meta_select, META_SELECT)
    _choice("epoch-captions", epoch_captions, EPOCH_CAPTIONS)
    _choice("backbone", backbone, tuple(b.strip() for b in _BACKBONES.split(",")))
    config = TrainConfig(
        captions=str(captions) if captions else None,
        augment=augment,
        backbone=backbone,
        backbone_model=backbone_model,
        text_model=text_model,
        loss=loss,
        margin=margin,
        meta_weighting=meta_weighting,
        meta_every=meta_every,
        meta_lr=meta_lr,
        meta_hidden=meta_hidden,
        meta_set=str(meta_set) if meta_set else None,
        meta_fraction=meta_fraction,
        meta_select=meta_select,
        meta_holdout=meta_holdout,
        virtual_lr=virtual_lr,
        meta_params=meta_params,
        epochs=epochs,
        epoch_captions=epoch_captions,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        name=name,
        resume=resume,
        checkpoint_every=checkpoint_every,
        progress=not quiet,
    )
    if not resume and captions is None:
        raise fail("--captions is required (the original captions of the videos)")
    if launched_by_torchrun():
        if nproc_per_node > 1 or nnodes > 1:
            typer.secho("already under torchrun: --nproc-per-node/--nnodes are ignored", err=True)
        env, report = _train_distributed(config, workdir) if env_from_environ().is_distributed else (None, None)
        if env is not None:
            if env.rank == 0:
                finish(report)
            elif report.exit_code:
                raise typer.Exit(report.exit_code)
            return
    elif nproc_per_node > 1 or nnodes > 1:
        world = nproc_per_node * nnodes
        if batch_size % world:
            raise fail(f"--batch-size {batch_size} does not split evenly over {world} processes: use a multiple of {world}")
        call_library(launch, _forwarded_arguments(ctx), nproc_per_node, nnodes, node_rank, master_addr, master_port)
        return
    report = call_library(run_train, config, workdir)
    finish(report)


@app.command("evaluate")
def evaluate_command(
    run: Path = typer.Option(..., "--run", help="A run folder (WORKDIR/runs/NAME)."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Captions to evaluate on (default: the run's own)."),
    split: str = typer.Option("test", help="Split to evaluate: train, val or test."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", "-w", help="Work folder of the videos (default: the run's own, two levels up)."),
    device: str = typer.Option("auto", help=f"Device: {', '.join(DEVICES)}."),
    checkpoint: str = typer.Option("best", help="Weights to evaluate: best (the epoch with the best validation R@1; the last weights when the run has no validation split) or last (the final weights)."),
) -> None:
    """Text->video and video->text retrieval: R@1, R@5, R@10, median and mean rank.

    Prints a table (per concept too, when the captions have a concept column) and
    writes eval.json into the run folder, saying which checkpoint was evaluated.

    Example: mama-augment evaluate --run mama-work/runs/mama-features-seed0 --split test
    """
    from mama_augment.train.evaluate import evaluate_run, format_table

    _choice("split", split, ("train", "val", "test"))
    _choice("device", device, DEVICES)
    _choice("checkpoint", checkpoint, ("best", "last"))
    result = call_library(
        evaluate_run, run, captions=str(captions) if captions else None, split=split, device=device, workdir=workdir,
        checkpoint=checkpoint,
    )
    typer.echo(format_table(result))
    typer.echo(f"\nwritten: {Path(run) / 'eval.json'}")
