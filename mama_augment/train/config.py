"""Every option of ``train`` and ``evaluate`` with its default, in one place.

The CLI (every field is an option of ``train``, so also a key of the TOML config file)
maps onto :class:`TrainConfig`; nothing else holds a default. ``validate`` turns bad
combinations into :class:`UsageError` before any work.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from mama_augment.checks import check_device, check_name, check_number, check_numbers
from mama_augment.errors import UsageError



@dataclass(frozen=True)
class LossEntry:
    """One objective of ``--loss``: what it is, and which options it takes.

    The rest of the code asks the entry, never the loss's name, so a new objective is
    one line here (``losses.build_loss`` builds it from the same entry).
    """

    description: str
    # Without --meta-weighting/--no-meta-weighting the run weights its pairs ("auto":
    # when they look noisy enough, see meta_noise_threshold); --paper needs this.
    takes_meta_weighting: bool = False
    # --margin sits on its positives; a loss without it trains with margin 0.
    takes_margin: bool = False


# The objectives (``--loss``), name -> entry.
LOSSES: dict[str, LossEntry] = {
    "mama": LossEntry("subtractive angular margin on positives (docs/method.md)",
                      takes_meta_weighting=True, takes_margin=True),
    "infonce": LossEntry("symmetric InfoNCE"),
}


def loss_takes_meta_weighting(name: str | None) -> bool:
    """Whether ``--loss name`` weights by default; an unknown name does not (validate
    refuses it with the list of the known ones)."""
    entry = LOSSES.get(name) if name is not None else None
    return entry is not None and entry.takes_meta_weighting
AUGMENT_MODES = ("add", "none")
DEVICES = ("auto", "cpu", "cuda")
META_PARAMS = ("last", "heads", "all")
META_SELECT = ("agreement", "random")  # how a meta set is drawn from the training pairs
# What the weighting net reads of a pair (``--meta-inputs``): its loss, or its loss and its
# agreement (the probability from its agreement score that it is right).
META_INPUTS = ("loss", "loss,agreement")
# How the weighting net starts (``--meta-init``): flat, or at the agreement (needs it as an input).
META_INITS = ("neutral", "agreement")
EPOCH_CAPTIONS = ("one", "all")  # per epoch: each training video with one caption, or every pair
TEMPORAL_ENCODERS = ("mean", "attention")
# Where the clip backbone's keyframe pixels come from (``--frame-source``; train/frames.py).
FRAME_SOURCES = {
    "auto": "the frame cache where its disk space is free, else pil",
    "cache": "keyframes stored once at the model's input size in one file (fastest)",
    "pil": "decode, crop and resize each keyframe JPEG with Pillow every time",
    "gpu": "decode the JPEGs on the GPU (TorchCodec or torchvision); CUDA only",
}

# The paper release clamps exp(log scale) to at most 200 ...
LOGIT_SCALE_MAX = math.log(200.0)
# ... and at least 1.
LOGIT_SCALE_MIN = 0.0
# Processes one node starts (--nproc-per-node): far more than any node has GPUs.
MAX_PROCESSES_PER_NODE = 1024


@dataclass
class TrainConfig:
    """Options of one training run (``mama-augment train``)."""

    # data
    # original captions: .csv / .jsonl / .parquet, or a benchmark's files (one path or several);
    # None: the generated captions alone, split by a hash of the video id, and judged on too
    captions: str | list[str] | None = None
    captions_format: str | None = None  # None: recognise each file; a name, or one per file comma-separated
    augment: str = "add"  # add the generated captions of <workdir>/captions.parquet, or none
    # How much each source (model + prompt) of generated captions counts: "auto" measures
    # what it adds on held-out training videos first (train/evidence.py) and leaves it
    # out (0) or keeps it (1); a number in [0, 1] sets every source.
    # On the emoji benchmark keyword captions cost InfoNCE 1.4-2.5 test R@1 even when
    # all were right, and MAMA with them stayed 1.5-4.6 below originals only.
    generated_weight: str | float = "auto"
    test_fraction: float = 0.1  # used only without a split column
    val_fraction: float = 0.1  # used only without a split column; 0 turns off val R@1
    # Generated captions dropped by their quality flags (`mama-augment filter`), as export's
    # options of the same names: comma-separated flag names or "all"; None keeps them all
    drop_flags: str | None = None
    dedupe: bool = False  # keep one generated caption of every near-duplicate group
    # model
    backbone: str = "features"  # registry key, see backbones.BACKBONES
    backbone_model: str | None = None  # clip: HF id or folder; features: unused
    text_model: str = "all-MiniLM-L6-v2"  # features: text encoder registry key or a folder
    embed_dim: int = 256
    # features: hidden width of the projection MLPs; 0 = linear. Linear heads matched or
    # beat a 512-wide MLP on the emoji benchmark and memorise noisy pairs more slowly.
    head_hidden: int = 0
    temporal: str = "attention"  # features: how keyframe embeddings are pooled
    max_frames: int = 12  # clip: frames per video fed to the image tower
    frame_source: str = "auto"  # clip: where keyframe pixels come from, see FRAME_SOURCES
    logit_scale_init: float | None = None  # None: ln(1/0.07) (features) or the CLIP's own
    # objective
    loss: str = "mama"
    # The paper's method as published: mama with the meta-weighting in every run (no
    # noise estimate), a meta set drawn at random and held out of training, and every
    # generated caption at weight 1 (no evidence step), no agreement prior. Sets those five options.
    paper: bool = False
    # radians, on positive pairs only (mama). Chosen by benchmarks/train_quality.py: no
    # margin in {0.05, 0.1, 0.2, 0.3} beat InfoNCE (R@1 fell as mu grew), and with the
    # meta-weighting mu = 0.05 did worse than mu = 0 under caption noise. So the margin
    # is off by default and --margin turns it on (it is tested and correct either way).
    margin: float = 0.0
    eps: float = 1e-6  # clamp of cosines before the angle is taken
    meta_weighting: bool | None = None  # None: on with a loss that takes it (mama), off with infonce
    meta_every: int = 1  # a meta step every K training steps
    meta_lr: float = 1e-3  # Adam on the weighting net (Meta-Weight-Net's value)
    meta_hidden: int = 100  # width of the weighting MLP (Meta-Weight-Net's value)
    meta_set: str | None = None  # a file of clean pairs; else drawn from the training pairs
    meta_fraction: float = 0.05
    # meta_weighting None with loss mama ("auto"): weight only when the estimated share of
    # wrong training pairs (data.wrong_share) is at least this; 0 = always. On clean
    # captions the weighting cost 1-2 R@1 (it also weights down right pairs the model
    # cannot fit). On the emoji validation folds the estimate read 1-5 % for clean
    # captions, 31-38 % with 30 % shuffled, 13-18 % with 30 % of the generated ones wrong.
    meta_noise_threshold: float = 0.1
    # Where the estimated share of wrong pairs reaches meta_noise_threshold (with any loss):
    # leave that share of the training pairs out, those whose video and caption agree
    # least under the cross-fitted agreement model (agreement.most_disagreeing) ...
    agreement_filter: bool = False
    # ... or scale each pair's weight in the loss by the probability, from its agreement
    # score, that it is right (agreement.right_probability), on top of the meta weights.
    # None: on with mama, off with infonce (validate() decides). On the emoji validation
    # folds with 30 % shuffled captions (Twemoji / OpenMoji, 8 seeds) it moved MAMA's
    # t2v R@1 over InfoNCE from +1.27 / +1.78 to +2.58 / +1.42 (v2t +1.07 / +0.94 to
    # +2.06 / +1.10) and the wrong/right weight from 0.49 / 0.42 to 0.25 / 0.23; the
    # agreement filter gave less (benchmarks/RESULTS.md).
    agreement_prior: bool | None = None
    # The prior as a power of that probability: above 1 pushes doubtful pairs further down.
    agreement_prior_power: float = 1.0
    # What the weighting net reads of a pair, and how it starts (META_INPUTS, META_INITS).
    # loss,agreement adds the probability above as a second input (1 where the pairs were
    # not scored or the estimate reads clean); --meta-init agreement starts the net at
    # about that probability instead of 0.5 everywhere, so the meta step can unlearn it
    # where the meta set disagrees (a fixed prior cannot).
    meta_inputs: str = "loss"
    meta_init: str = "neutral"
    # Without --meta-set: agreement | random (agreement.agreement_losses). Drawn from captions
    # with 30 % shuffled, a random meta set was 22-31 % wrong and the weighting gave
    # shuffled pairs 0.69-0.76 of the correct ones' weight; by agreement it was 1-7 %
    # wrong and the ratio 0.39-0.50 (benchmarks/RESULTS.md, both emoji sets).
    meta_select: str = "agreement"
    # The agreement probes (meta set by agreement, wrong-pair estimate, filter, prior)
    # train on a seeded sample of at most this many pairs and score every pair; 0: all.
    # At 200 k videos they trained on 180 k pooled frame rows for most of `train`'s
    # start-up CPU and memory; the emoji benchmarks' sets are far below the cap.
    agreement_sample: int = 50_000
    # Keep the meta set's videos out of the training stream? Holding out 5 % drawn
    # evenly across concepts takes a large share of the rare concepts' pairs: training
    # on them too gave +0.7 and +1.0 validation R@1 under caption noise.
    meta_holdout: bool = False
    # Per epoch, every (video, caption) pair (all) or one caption per video (one). With
    # generated captions added, all gave +1.4 to +1.6 validation R@1 for InfoNCE and
    # +0.7 to +1.5 for MAMA; without them both hold each video once.
    epoch_captions: str = "all"
    meta_batch_size: int | None = None  # None: the training batch size (capped by the set)
    meta_params: str = "last"  # which parameters take the virtual step: last | heads | all
    # CUDA, meta_params last/heads, one process: the meta step runs as one captured CUDA
    # graph (train/cuda_graphs.py); checked against the eager step at its first replay.
    cuda_graphs: bool = True
    # alpha of the virtual step. 1.0 separated shuffled from correct pairs (weights
    # 0.45 vs 1.24) where 0.1 barely did (0.92 vs 1.04) on the emoji benchmark.
    virtual_lr: float = 1.0
    # optimisation. 20 epochs: at 10 (110 steps on 1 500 pairs) the heads were still
    # learning (InfoNCE +0.7 to +1.7, MAMA +1.0 to +1.3 validation R@1 at 20; 30 gave no
    # more), and the best epoch is kept anyway.
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.2  # as the paper release (CLIP-ViP fine-tuning)
    warmup: float = 0.05  # < 1: fraction of all steps; >= 1: a number of steps
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    seed: int = 0
    device: str = "auto"
    # loader worker processes that build the clip backbone's batches; None: half the
    # CPUs, at most 8 (loader.default_num_workers). Does not change the results.
    num_workers: int | None = None
    # run
    name: str | None = None  # None: <loss>-<backbone>-seed<seed>
    resume: bool = False
    checkpoint_every: int = 200  # steps; a checkpoint is also written at each epoch end
    log_every: int = 10  # steps between metrics.jsonl rows
    progress: bool = True
    extra: dict = field(default_factory=dict)  # free-form notes kept in config.json

    @property
    def use_meta_weighting(self) -> bool:
        if self.meta_weighting is None:
            return loss_takes_meta_weighting(self.loss)
        return self.meta_weighting

    @property
    def meta_weighting_decided_by_data(self) -> bool:
        """A loss that takes the meta-weighting, without --meta-weighting/--no-meta-weighting:
        the run weights only when the estimated share of wrong pairs reaches
        ``meta_noise_threshold``."""
        return self.meta_weighting is None and loss_takes_meta_weighting(self.loss) and self.meta_noise_threshold > 0

    @property
    def generated_weight_value(self) -> float | None:
        """The weight of every generated source, or None for "auto" (by evidence)."""
        if isinstance(self.generated_weight, str) and self.generated_weight.strip().lower() == "auto":
            return None
        return float(self.generated_weight)

    @property
    def effective_margin(self) -> float:
        entry = LOSSES.get(self.loss)
        return self.margin if entry is not None and entry.takes_margin else 0.0

    @property
    def run_name(self) -> str:
        return self.name or f"{self.loss}-{self.backbone}-seed{self.seed}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> "TrainConfig":
        """Every check of the options, before any work (UsageError names the option)."""
        from mama_augment.train.backbones import BACKBONES

        def bad(message: str) -> UsageError:
            return UsageError(message)

        check_numbers(self)
        self._check_generated_weight()
        if self.loss not in LOSSES:
            raise bad(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.paper:
            if not loss_takes_meta_weighting(self.loss):
                takers = ", ".join(name for name, entry in LOSSES.items() if entry.takes_meta_weighting)
                raise bad(f"--paper is the paper's MAMA: it weights every run, and --loss {self.loss} "
                          f"takes no meta-weighting (use --loss {takers})")
            if self.meta_weighting is False:
                raise bad("--paper weights every run: it cannot be combined with --no-meta-weighting")
            self.meta_weighting, self.meta_select, self.meta_holdout = True, "random", True
            self.agreement_prior = False
            self.generated_weight = 1.0
        if self.name is not None:
            check_name(self.name, "--name")  # the run folder: it must stay inside WORKDIR/runs
        if self.agreement_prior is None:  # decided here, so config.json records it
            self.agreement_prior = loss_takes_meta_weighting(self.loss)
        if self.augment not in AUGMENT_MODES:
            raise bad(f"--augment must be one of {', '.join(AUGMENT_MODES)}, not {self.augment!r}")
        check_device(self.device, "--device", DEVICES)
        if self.backbone not in BACKBONES:
            raise bad(f"--backbone must be one of {', '.join(BACKBONES)}, not {self.backbone!r}")
        if self.epoch_captions not in EPOCH_CAPTIONS:
            raise bad(f"--epoch-captions must be one of {', '.join(EPOCH_CAPTIONS)}, not {self.epoch_captions!r}")
        if self.meta_select not in META_SELECT:
            raise bad(f"--meta-select must be one of {', '.join(META_SELECT)}, not {self.meta_select!r}")
        if self.meta_params not in META_PARAMS:
            raise bad(f"meta_params must be one of {', '.join(META_PARAMS)}")
        if self.meta_inputs not in META_INPUTS:
            raise bad(f"--meta-inputs must be one of {', '.join(META_INPUTS)}, not {self.meta_inputs!r}")
        if self.meta_init not in META_INITS:
            raise bad(f"--meta-init must be one of {', '.join(META_INITS)}, not {self.meta_init!r}")
        if self.meta_init == "agreement" and "agreement" not in self.meta_inputs.split(","):
            raise bad("--meta-init agreement starts the weighting net at each pair's agreement: "
                      "it needs --meta-inputs loss,agreement")
        check_number(self.agreement_prior_power, "--agreement-prior-power", above=0)
        check_number(self.agreement_sample, "--agreement-sample", minimum=0)
        if self.temporal not in TEMPORAL_ENCODERS:
            raise bad(f"temporal must be one of {', '.join(TEMPORAL_ENCODERS)}")
        if self.frame_source not in FRAME_SOURCES:
            raise bad(f"--frame-source must be one of {', '.join(FRAME_SOURCES)}, not {self.frame_source!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise bad(f"--num-workers must be 0 or more, not {self.num_workers}")
        if not 0 <= self.margin < math.pi / 2:
            raise bad(f"--margin must be in [0, pi/2) radians, not {self.margin}")
        for name in ("test_fraction", "val_fraction", "meta_fraction", "meta_noise_threshold"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise bad(f"--{name.replace('_', '-')} must be in [0, 1), not {value}")
        if self.test_fraction + self.val_fraction >= 0.9:
            raise bad("--test-fraction plus the val fraction leave too little to train on")
        for name in ("epochs", "batch_size", "meta_every", "meta_hidden", "checkpoint_every", "log_every", "embed_dim"):
            if getattr(self, name) < 1:
                raise bad(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch_size < 2:
            raise bad("--batch-size must be at least 2 for a contrastive loss")
        for name in ("lr", "meta_lr", "virtual_lr"):
            if getattr(self, name) <= 0:
                raise bad(f"--{name.replace('_', '-')} must be positive")
        for name in ("weight_decay", "warmup", "grad_clip"):
            check_number(getattr(self, name), f"--{name.replace('_', '-')}", minimum=0)
        check_number(self.eps, "--eps", above=0, maximum=0.5)
        check_number(self.head_hidden, "--head-hidden", minimum=0)
        check_number(self.max_frames, "--max-frames", minimum=1)
        check_number(self.meta_batch_size, "--meta-batch-size", minimum=2)
        check_number(self.logit_scale_init, "--logit-scale-init", minimum=LOGIT_SCALE_MIN, maximum=LOGIT_SCALE_MAX)
        if not self.resume and not self.captions and self.augment != "add":
            raise bad("--augment none trains on original captions only: give them with --captions FILE "
                      "(or leave --augment add to train on the generated captions alone)")
        if self.drop_flags or self.dedupe:
            from mama_augment.export.config import check_drop_flags
            from mama_augment.export.select import FlagFilter

            if self.augment != "add":
                raise bad("--drop-flags and --dedupe filter the generated captions: they need --augment add")
            check_drop_flags(FlagFilter.from_option(self.drop_flags, self.dedupe).drop_flags)
        needs_model = BACKBONES[self.backbone].needs_model
        if needs_model and not self.backbone_model:
            raise bad(f"--backbone {self.backbone} needs --backbone-model ({needs_model})")
        if self.captions_format:
            from mama_augment.datasets import parse_formats

            parse_formats(self.captions_format, len(self.captions) if isinstance(self.captions, list) else 1)
        if self.use_meta_weighting and self.meta_set is None and self.meta_fraction <= 0:
            raise bad("meta-weighting needs a meta set: --meta-set FILE or --meta-fraction > 0")
        return self

    def _check_generated_weight(self) -> None:
        value = self.generated_weight
        if isinstance(value, str) and value.strip().lower() == "auto":
            self.generated_weight = "auto"
            return
        if isinstance(value, bool) or _parse_weight(value) is None:
            raise UsageError(f"--generated-weight must be auto or a number in [0, 1], not {value!r}")
        self.generated_weight = _parse_weight(value)


def _parse_weight(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= 1 else None


def check_launch(nproc_per_node: int, nnodes: int, node_rank: int, master_port: int | None) -> None:
    """The options that start torchrun (not part of a run's config)."""
    check_number(nproc_per_node, "--nproc-per-node", minimum=1, maximum=MAX_PROCESSES_PER_NODE)
    check_number(nnodes, "--nnodes", minimum=1)
    check_number(node_rank, "--node-rank", minimum=0, maximum=nnodes - 1)
    check_number(master_port, "--master-port", minimum=1, maximum=65535)
