"""``mama-augment train`` and ``mama-augment evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

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
from mama_augment.export.config import ALL_FLAGS
from mama_augment.quality import FLAG_NAMES
from mama_augment.train.backbones import backbone_help
from mama_augment.train.config import (
    DEVICES,
    EPOCH_CAPTIONS,
    FRAME_SOURCES,
    LOSSES,
    META_INITS,
    META_INPUTS,
    META_PARAMS,
    META_SELECT,
    TEMPORAL_ENCODERS,
    TrainConfig,
    check_launch,
)
from mama_augment.train.runs import RunPaths

_D = TrainConfig()
_MODEL = "Model"
_OBJECTIVE = "Objective and meta-weighting"
_OPTIM = "Optimisation"


_LAUNCH_PARAMS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")
# What --resume may be given: which run, and how it is watched and run. Every other
# option is the run's own (its config.json), and the run continues exactly as it began.
_RESUME_OPTIONS = ("name", "workdir", "resume", "progress", "quiet", "device", "num_workers", *_LAUNCH_PARAMS)


def _options_resume_keeps(ctx: typer.Context, allowed: tuple[str, ...] = _RESUME_OPTIONS) -> list[str]:
    """Options given on the command line (or in the environment) that --resume would
    ignore, as their flags (``allowed``: the parameters it takes). Values of a --config
    file are left out: the same file serves the run's first start and its resume."""
    given = []
    for param in ctx.command.params:
        if param.name in allowed or param.name not in ctx.params:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given.append(next((o for o in param.opts if o.startswith("--")), param.opts[0]))
    return given


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
        elif isinstance(value, (list, tuple)):  # a repeatable option: once per value
            for item in value:
                args += [long_opts[0], str(item)]
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
    finished = False
    try:
        report = call_library(run_train, config, workdir, env.rank, env.world_size)
        finished = True
    finally:
        # A finished rank waits for the others before leaving; a failed one does not
        # (its peers may be stuck in a collective it will never join).
        shutdown_distributed(wait=finished)
    return env, report


CAPTIONS_HELP = (
    "Original captions, repeatable: .csv/.jsonl/.parquet with video_id, caption [, split, concept], or a benchmark's "
    "own files (MSR-VTT, MSVD, DiDeMo, ActivityNet, LSMDC, VATEX, WebVid, CLIP-ViP) with their split lists; "
    "see `mama-augment datasets`. Without: the generated captions alone (WORKDIR/captions.parquet), videos split "
    "by a hash of their id (--val-fraction, --test-fraction) and judged on generated captions too."
)
_FLAGS_PANEL = "Generated captions"


@app.command("train")
def train_command(
    ctx: typer.Context,
    captions: Optional[List[Path]] = typer.Option(None, "--captions", metavar="FILE", help=CAPTIONS_HELP),
    captions_format: Optional[str] = typer.Option(None, "--captions-format", metavar="NAME", help=CAPTIONS_FORMAT_HELP),
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", "-w", parser=parse_workdir, metavar="PATH", help=WORKDIR_HELP),
    augment: str = typer.Option(_D.augment, help="add: also train on WORKDIR/captions.parquet (generated); none: originals only."),
    drop_flags: Optional[str] = typer.Option(_D.drop_flags, help=f"Drop generated captions with these quality flags (from `mama-augment filter`), comma-separated, or '{ALL_FLAGS}': {', '.join(FLAG_NAMES)}. As export --drop-flags.", show_default=False, rich_help_panel=_FLAGS_PANEL),
    dedupe: bool = typer.Option(_D.dedupe, "--dedupe", help="Keep one generated caption of every near-duplicate group (from `mama-augment filter`). As export --dedupe.", rich_help_panel=_FLAGS_PANEL),
    generated_weight: str = typer.Option(str(_D.generated_weight), "--generated-weight", metavar="auto|FLOAT", help="How much the generated captions count. auto: before training, short trainings on held-out training videos measure what each source (model + prompt of captions.parquet) adds to the original captions, and the source is left out (0), halved (0.5) or kept (1) by that evidence (skipped when there are no original captions); a number in [0, 1]: every source at that weight (1 = all used fully, as the paper).", show_default=True),
    backbone: str = typer.Option(_D.backbone, help=f"Model: {backbone_help()}.", rich_help_panel=_MODEL),
    backbone_model: Optional[str] = typer.Option(_D.backbone_model, help="clip: Hugging Face CLIP id or folder (loaded offline).", rich_help_panel=_MODEL),
    text_model: str = typer.Option(_D.text_model, help="features: sentence encoder (all-MiniLM-L6-v2, hashing, or a sentence-transformers folder).", rich_help_panel=_MODEL),
    embed_dim: int = typer.Option(_D.embed_dim, help="features: size of the joint embedding space.", rich_help_panel=_MODEL),
    head_hidden: int = typer.Option(_D.head_hidden, help="features: hidden width of the projection MLPs (0 = linear).", rich_help_panel=_MODEL),
    temporal: str = typer.Option(_D.temporal, help=f"features: how keyframe embeddings are pooled: {', '.join(TEMPORAL_ENCODERS)}.", rich_help_panel=_MODEL),
    max_frames: int = typer.Option(_D.max_frames, help="clip: frames per video fed to the image tower.", rich_help_panel=_MODEL),
    frame_source: str = typer.Option(_D.frame_source, help="clip: where keyframe pixels come from: " + "; ".join(f"{k} = {v}" for k, v in FRAME_SOURCES.items()) + ".", rich_help_panel=_MODEL),
    logit_scale_init: Optional[float] = typer.Option(_D.logit_scale_init, help="Initial log logit scale (default: ln(1/0.07) for features, the CLIP's own for clip).", show_default=False, rich_help_panel=_MODEL),
    loss: str = typer.Option(_D.loss, help="Objective: " + "; ".join(f"{k} = {v.description}" for k, v in LOSSES.items()) + ". The defaults go beyond the paper (weighting only when the pairs look noisy, a meta set chosen by agreement and trained on, an agreement prior on each pair's weight, generated captions by evidence); --paper gives the paper's method.", rich_help_panel=_OBJECTIVE),
    paper: bool = typer.Option(_D.paper, "--paper", help="The paper's MAMA weighting as published: meta-weighting in every run, a meta set drawn at random and held out of training, every generated caption at weight 1. Sets --meta-weighting, --meta-select random, --meta-holdout, --generated-weight 1 and --no-agreement-prior; needs --loss mama.", rich_help_panel=_OBJECTIVE),
    margin: float = typer.Option(_D.margin, help="Subtractive angular margin in radians on positive pairs (mama). Off by default: on two real image-caption sets (frozen features, trained heads) 0.05 and 0.1 lowered R@1 under caption noise and weakened the weighting, and did not help on clean captions (benchmarks/RESULTS.md); benchmarks/train_quality.py --backbone clip measures it for a pretrained CLIP.", rich_help_panel=_OBJECTIVE),
    eps: float = typer.Option(_D.eps, help="Clamp of cosines before the margin's angle is taken.", rich_help_panel=_OBJECTIVE),
    meta_weighting: Optional[bool] = typer.Option(None, "--meta-weighting/--no-meta-weighting", help="Meta-learned per-sample weights (default with mama: on when the training pairs look noisy, see --meta-noise-threshold; off with infonce).", show_default=False, rich_help_panel=_OBJECTIVE),
    meta_noise_threshold: float = typer.Option(_D.meta_noise_threshold, help="With mama and no --meta-weighting/--no-meta-weighting: weight only when the estimated share of wrong training pairs (cross-fitted agreement against deliberately wrong pairs) is at least this; 0 = always. On clean captions the weighting cost 1-2 R@1.", rich_help_panel=_OBJECTIVE),
    agreement_filter: bool = typer.Option(_D.agreement_filter, "--agreement-filter/--no-agreement-filter", help="Where the estimated share of wrong training pairs reaches --meta-noise-threshold (any --loss): leave that share of the pairs out, those whose video and caption agree least under a cross-fitted model, then train.", rich_help_panel=_OBJECTIVE),
    agreement_prior: Optional[bool] = typer.Option(None, "--agreement-prior/--no-agreement-prior", help="Where the estimated share of wrong training pairs reaches --meta-noise-threshold: scale each pair's weight by the probability, from its agreement score, that it is right (on top of the meta weights). Default: on with mama (not with --paper), off with infonce.", show_default=False, rich_help_panel=_OBJECTIVE),
    agreement_prior_power: float = typer.Option(_D.agreement_prior_power, help="The agreement prior as this power of each pair's probability of being right (above 1 pushes doubtful pairs further down).", rich_help_panel=_OBJECTIVE),
    meta_inputs: str = typer.Option(_D.meta_inputs, help=f"What the weighting net reads of a pair: {', '.join(META_INPUTS)}. loss,agreement adds the pair's probability of being right from its agreement score (1 where the pairs read clean).", rich_help_panel=_OBJECTIVE),
    meta_init: str = typer.Option(_D.meta_init, help=f"How the weighting net starts: {', '.join(META_INITS)}. neutral: 0.5 for every pair; agreement: about the pair's probability of being right (needs --meta-inputs loss,agreement), which the meta step may then unlearn.", rich_help_panel=_OBJECTIVE),
    meta_every: int = typer.Option(_D.meta_every, help="A meta step every K training steps.", rich_help_panel=_OBJECTIVE),
    meta_lr: float = typer.Option(_D.meta_lr, help="Learning rate of the weighting net (Adam).", rich_help_panel=_OBJECTIVE),
    meta_hidden: int = typer.Option(_D.meta_hidden, help="Hidden width of the weighting MLP.", rich_help_panel=_OBJECTIVE),
    meta_set: Optional[Path] = typer.Option(None, help="File of clean meta pairs (any --captions format, recognised from its content); default: drawn from the training pairs.", rich_help_panel=_OBJECTIVE),
    meta_fraction: float = typer.Option(_D.meta_fraction, help="Fraction of the training pairs drawn as the meta set (without --meta-set), evenly across concepts.", rich_help_panel=_OBJECTIVE),
    meta_select: str = typer.Option(_D.meta_select, help=f"How the meta set is drawn without --meta-set: {', '.join(META_SELECT)}. agreement: the pairs whose video and caption agree most under a cross-fitted warm-up model (nearly clean even when the captions are not); random: a random draw.", rich_help_panel=_OBJECTIVE),
    agreement_sample: int = typer.Option(_D.agreement_sample, help="The agreement model (--meta-select agreement, the wrong-pair estimate, --agreement-filter, --agreement-prior) trains on a seeded sample of at most this many pairs and scores every pair; 0: trains on all. The evidence step for generated captions judges a seeded sample of the training videos holding at most this many pairs. Below it nothing changes.", rich_help_panel=_OBJECTIVE),
    meta_holdout: bool = typer.Option(_D.meta_holdout, "--meta-holdout/--no-meta-holdout", help="Keep the meta set's videos out of the training stream.", rich_help_panel=_OBJECTIVE),
    virtual_lr: float = typer.Option(_D.virtual_lr, help="Step size of the virtual (look-ahead) step.", rich_help_panel=_OBJECTIVE),
    meta_params: str = typer.Option(_D.meta_params, help=f"Parameters that take the virtual step: {', '.join(META_PARAMS)} (last: last projections + logit scale, cheapest).", rich_help_panel=_OBJECTIVE),
    cuda_graphs: bool = typer.Option(_D.cuda_graphs, "--cuda-graphs/--no-cuda-graphs", help="CUDA: run the meta step (--meta-params last or heads, one process) as one captured CUDA graph, checked against the eager step at its first replay.", rich_help_panel=_OBJECTIVE),
    meta_batch_size: Optional[int] = typer.Option(_D.meta_batch_size, help="Pairs per meta step (default: --batch-size, capped by the meta set).", show_default=False, rich_help_panel=_OBJECTIVE),
    epochs: int = typer.Option(_D.epochs, help="Passes over the training pairs.", rich_help_panel=_OPTIM),
    epoch_captions: str = typer.Option(_D.epoch_captions, help=f"What one epoch holds: {', '.join(EPOCH_CAPTIONS)}. all: every (video, caption) pair once, batched so that no video appears twice in a batch; one: every training video once, with one of its captions drawn at random.", rich_help_panel=_OPTIM),
    batch_size: int = typer.Option(_D.batch_size, help="Pairs per step (also the meta batch size, capped by the meta set).", rich_help_panel=_OPTIM),
    lr: float = typer.Option(_D.lr, help="Peak learning rate (AdamW).", rich_help_panel=_OPTIM),
    weight_decay: float = typer.Option(_D.weight_decay, help="AdamW weight decay (not on biases, norms, logit scale).", rich_help_panel=_OPTIM),
    warmup: float = typer.Option(_D.warmup, help="Warmup: a fraction of all steps if < 1, else a number of steps; then cosine decay.", rich_help_panel=_OPTIM),
    grad_clip: float = typer.Option(_D.grad_clip, help="Largest global gradient norm (0 = no clipping).", rich_help_panel=_OPTIM),
    test_fraction: float = typer.Option(_D.test_fraction, help="Videos held out for test when the captions have no split column."),
    val_fraction: float = typer.Option(_D.val_fraction, help="Videos held out for validation R@1 when there is no split column."),
    seed: int = typer.Option(_D.seed, help="Seed of initialisation, batches and meta set."),
    device: str = typer.Option(_D.device, help=f"Device: {', '.join(DEVICES)} (CUDA runs in bf16 autocast)."),
    num_workers: Optional[int] = typer.Option(_D.num_workers, "--num-workers", help="clip: processes that build batches ahead of the training step (default: half the CPUs, at most 8; 0 = in the training process). Does not change the results.", show_default=False),
    name: Optional[str] = typer.Option(None, help="Run name (folder WORKDIR/runs/NAME); default LOSS-BACKBONE-seedSEED."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run NAME from its last checkpoint."),
    checkpoint_every: int = typer.Option(_D.checkpoint_every, help="Steps between checkpoints (also at each epoch end)."),
    log_every: int = typer.Option(_D.log_every, help="Steps between rows of metrics.jsonl."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    quiet: bool = typer.Option(False, "--quiet", "-q", hidden=True, help="Same as --no-progress."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Training processes on this node (one per GPU): above 1, starts them with torchrun; --batch-size is the global batch, split across all processes."),
    nnodes: int = typer.Option(1, "--nnodes", help="Nodes of a multi-node run (each runs this command with its --node-rank)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This node's rank, 0 to NNODES-1."),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Host of node rank 0 (rendezvous); default: a local one-node rendezvous."),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="Port of the rendezvous on --master-addr (default 29500)."),
) -> None:
    """Train a video-text retrieval model with the MAMA objective.

    Pairs every keyframed video in WORKDIR with its original captions (--captions) and,
    with --augment add, its generated captions (WORKDIR/captions.parquet). Without
    --captions (a folder of videos nobody captioned) it trains on the generated
    captions alone and validates on them: the numbers then measure agreement with the
    captioner, not with people (summary.json and eval.json say eval_captions:
    generated). Writes
    WORKDIR/runs/NAME/: config.json, model.safetensors (last epoch),
    best_model.safetensors (best validation R@1), weighting_net.safetensors,
    checkpoint.safetensors, metrics.jsonl, pair_weights.parquet, training.png and
    loss_weight.png.

    With --nproc-per-node N (and --nnodes for several nodes) the command starts N
    processes with torchrun (NCCL on GPUs, gloo on CPU); under torchrun itself
    (torchrun -m mama_augment train ...) each process joins the group. Negatives are
    gathered from every process; rank 0 alone writes the run folder.

    Example: mama-augment train --captions captions.csv --workdir mama-work --epochs 20

    Example: mama-augment train --workdir mama-work --drop-flags all --dedupe

    Example: mama-augment train --nproc-per-node 4 --captions captions.csv --batch-size 512

    Example: mama-augment train --captions MSRVTT_data.json --captions MSRVTT_train.9k.csv --captions MSRVTT_JSFUSION_test.csv
    """
    from mama_augment.train.distributed import env_from_environ, launch, launched_by_torchrun
    from mama_augment.train.loop import run_train

    ignored = _options_resume_keeps(ctx) if resume and not launched_by_torchrun() else []
    if ignored:
        raise fail(
            f"--resume continues the run with the options it was started with (its config.json), so it does not "
            f"take {', '.join(ignored)}; only --name, --workdir, --device, --num-workers, the progress option and "
            "the launch options may be given. To train with other options, start a new run with another --name."
        )

    # Every option named like a TrainConfig field is that field; checks are validate()'s.
    config = TrainConfig.from_dict({
        **ctx.params,
        "captions": caption_paths(captions),
        "meta_set": str(meta_set) if meta_set else None,
        "progress": progress and not quiet,
    })
    call_library(config.validate)
    call_library(check_launch, nproc_per_node, nnodes, node_rank, master_port)
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
    captions: Optional[List[Path]] = typer.Option(None, "--captions", metavar="FILE", help="Captions to evaluate on, repeatable, any --captions format of train (default: the run's own)."),
    captions_format: Optional[str] = typer.Option(None, "--captions-format", metavar="NAME", help=CAPTIONS_FORMAT_HELP),
    split: str = typer.Option("test", help="Split to evaluate: train, val or test."),
    protocol: str = typer.Option("auto", help="auto, one-caption (first caption of each video), multi-sentence (every caption a query), paragraph (DiDeMo/ActivityNet). auto: paragraph for paragraph files, else one-caption when every video has one caption, else multi-sentence."),
    dsl: bool = typer.Option(True, "--dsl/--no-dsl", help="Also report dual-softmax (DSL) numbers, labelled, next to the plain ones."),
    multiple_choice: Optional[Path] = typer.Option(None, "--multiple-choice", help="Also score a multiple-choice file: JSON(L) items of video_id, candidates (or options), answer (index)."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", "-w", parser=parse_workdir, metavar="PATH", help="Work folder of the videos (default: the run's own, two levels up)."),
    device: str = typer.Option("auto", help=f"Device: {', '.join(DEVICES)}."),
    checkpoint: str = typer.Option("best", help="Weights to evaluate: best (the epoch with the best validation R@1; the last weights when the run has no validation split) or last (the final weights)."),
) -> None:
    """Text->video and video->text retrieval: R@1, R@5, R@10, median and mean rank.

    Prints a table labelled with its protocol (plain and DSL rows; per concept and per
    rare / medium / frequent third of concepts when the captions have concepts; the
    multiple-choice accuracy with --multiple-choice) and writes eval.json into the run
    folder, saying which checkpoint was evaluated. Exit code 1 when items of the
    --multiple-choice file were rejected (counted by kind in the table).

    Example: mama-augment evaluate --run mama-work/runs/mama-features-seed0 --split test

    Example: mama-augment evaluate --run mama-work/runs/msrvtt --captions test_videodatainfo.json --protocol multi-sentence
    """
    from mama_augment.train.evaluate import evaluate_run, format_table

    result = call_library(
        evaluate_run, run, captions=caption_paths(captions), split=split, device=device, workdir=workdir,
        protocol=protocol, dsl=dsl, multiple_choice=str(multiple_choice) if multiple_choice else None,
        captions_format=captions_format, checkpoint=checkpoint,
    )
    typer.echo(format_table(result))
    typer.echo(f"\nwritten: {RunPaths(Path(run)).eval}")
    if (result.get("multiple_choice") or {}).get("rejected_items"):
        raise typer.Exit(1)  # some items failed: the accuracy does not cover the whole file
