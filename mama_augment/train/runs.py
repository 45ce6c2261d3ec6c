"""A run folder, ``<workdir>/runs/<name>/``: every file name in it, and loading a run.

Every module that reads or writes a run folder (the training recipe, evaluation, the
audit, the plots, ``status`` and the report) takes its file names from
:class:`RunPaths`, so the layout is written down once::

    config.json              every option (TrainConfig) of the run
    checkpoint.safetensors   model + weighting net + both optimisers + RNG states + step
    model.safetensors        final model weights (the last epoch)
    best_model.safetensors   the weights of the epoch with the best validation R@1
    weighting_net.safetensors
    metrics.jsonl            one JSON row per logged step / validation / weight curve
    pair_weights.parquet     loss and learned weight of every training pair at the end
    summary.json             data counts, input problems, final numbers
    eval.json                ``mama-augment evaluate`` results, one entry per split
    training.png, loss_weight.png

This module imports torch only inside the functions that need it, so ``status`` and
``report`` read run folders without it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from mama_augment.errors import MamaError, UsageError

RUNS_DIR = "runs"
CHECKPOINT_CHOICES = ("best", "last")
QA_TASK = "qa"  # config.json "task" of a question-answering run (train/qa.py)
# Said wherever a run's numbers come from generated captions (train summary, eval.json,
# the report): they are a model's own kind of text, so a high R@1 is not a human judgement.
GENERATED_CAPTIONS_NOTE = (
    "the evaluation captions are generated ones (a model's own kind of text): the numbers measure agreement "
    "with the captioner, not with people; `mama-augment evaluate --captions FILE` judges on human captions"
)


def _file(name: str) -> property:
    return property(lambda self: self.root / name, doc=f"``{name}`` in the run folder")


@dataclass(frozen=True)
class RunPaths:
    """The files of one run folder."""

    root: Path

    CONFIG = "config.json"
    CHECKPOINT = "checkpoint.safetensors"
    MODEL = "model.safetensors"
    BEST_MODEL = "best_model.safetensors"
    WEIGHTING_NET = "weighting_net.safetensors"
    METRICS = "metrics.jsonl"
    PAIR_WEIGHTS = "pair_weights.parquet"
    SUMMARY = "summary.json"
    EVAL = "eval.json"
    TRAINING_PLOT = "training.png"
    LOSS_WEIGHT_PLOT = "loss_weight.png"
    PICTURES = (TRAINING_PLOT, LOSS_WEIGHT_PLOT)

    @classmethod
    def of(cls, workdir: str | Path, name: str) -> "RunPaths":
        return cls(Path(workdir) / RUNS_DIR / name)

    config = _file(CONFIG)
    checkpoint = _file(CHECKPOINT)
    model = _file(MODEL)
    best_model = _file(BEST_MODEL)
    weighting_net = _file(WEIGHTING_NET)
    metrics = _file(METRICS)
    pair_weights = _file(PAIR_WEIGHTS)
    summary = _file(SUMMARY)
    eval = _file(EVAL)
    training_plot = _file(TRAINING_PLOT)
    loss_weight_plot = _file(LOSS_WEIGHT_PLOT)


def select_device(name: str):
    """The torch device of ``--device`` (auto, cpu or cuda)."""
    import torch

    from mama_augment.train.config import DEVICES

    if name not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but CUDA is not available")
        return torch.device("cuda")
    return torch.device("cpu")


def load_run_config(paths: RunPaths):
    """The TrainConfig a run folder's ``config.json`` holds; MamaError when the file is
    damaged (not JSON, not an object, or a value no run could have had)."""
    from mama_augment.train.config import TrainConfig

    try:
        data = json.loads(paths.config.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        # A run from before --agreement-prior trained without it, and one from before
        # --agreement-sample scored with probes trained on every pair: each resumes so.
        config = TrainConfig.from_dict({"agreement_prior": False, "agreement_sample": 0, **data})
        # Every stored value must pass the checks (the device is this machine's business).
        dataclasses.replace(config, device="cpu").validate()
    except (OSError, ValueError, TypeError, UsageError) as exc:
        raise MamaError(
            f"the run's {RunPaths.CONFIG} ({paths.config}) is damaged: {exc}; restore it from a backup"
        ) from None
    return config


def run_weights(run_dir: str | Path, checkpoint: str = "best") -> dict:
    """Which weights of a run folder ``checkpoint`` means, as a dict: ``checkpoint``
    (``best`` or ``last``, the one actually used), ``file`` and, for ``best``, the
    epoch (counted from 1), step and validation R@1 it was kept for. ``best`` falls
    back to ``last`` when the run has no best weights (no validation split); ``last``
    is the final model, or the latest checkpoint of an unfinished run."""
    from mama_augment.train import checkpoint as ckpt

    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise UsageError(f"{paths.root} is not a run folder (no {RunPaths.CONFIG})")
    if _task(paths) == QA_TASK:
        raise UsageError(f"{paths.root} is a question-answering run (`mama-augment qa`), not a retrieval run: "
                         f"its accuracies are in its {RunPaths.EVAL}; give the retrieval run it was made from")
    if checkpoint not in CHECKPOINT_CHOICES:
        raise UsageError(f"--checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)}, not {checkpoint!r}")
    if checkpoint == "best" and paths.best_model.exists():
        try:
            _, state = ckpt.load_metadata(paths.best_model)
        except Exception as exc:  # a damaged header: say so, do not guess
            raise MamaError(f"cannot read the weights {paths.best_model}: {exc}") from None
        return {"checkpoint": "best", "file": paths.best_model, "epoch": state.get("epoch", -1) + 1,
                "step": state.get("step"), "val_R@1": state.get("val_R@1")}
    for weights in (paths.model, paths.checkpoint):
        if weights.exists():
            return {"checkpoint": "last", "file": weights}
    raise UsageError(f"{paths.root} has no weights yet ({RunPaths.MODEL} or {RunPaths.CHECKPOINT})")


def _task(paths: RunPaths) -> str | None:
    """The ``task`` a run's config.json names (retrieval runs name none)."""
    try:
        data = json.loads(paths.config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # load_run_config says what is wrong with it
    return data.get("task") if isinstance(data, dict) else None


def load_run(run_dir: str | Path, captions: str | None = None, device: str = "auto",
             workdir: str | Path | None = None, checkpoint: str = "best"):
    """(config, model, data) of a run folder; the model holds the weights
    :func:`run_weights` picks for ``checkpoint`` (by default the best epoch's)."""
    from mama_augment.train import checkpoint as ckpt
    from mama_augment.train.backbones import BACKBONES, build_model
    from mama_augment.train.data import build_data
    from mama_augment.workpaths import check_recorded_files

    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise UsageError(f"{paths.root} is not a run folder (no {RunPaths.CONFIG})")
    config = load_run_config(paths)
    weights = run_weights(paths.root, checkpoint)["file"]
    workdir = Path(workdir) if workdir else paths.root.parent.parent
    if captions is None:  # the run's own files, named by a config.json that may have travelled
        check_recorded_files(config.captions, workdir)
    dev = select_device(device)
    data = build_data(_eval_config(config, captions), workdir, need=BACKBONES[config.backbone].needs,
                      captions_override=captions)
    model = build_model(config, data.videos, workdir, dev)
    try:
        tensors, _ = ckpt.load(weights)
        if weights == paths.checkpoint:
            tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(tensors)
    except Exception as exc:  # safetensors and torch raise many kinds for a damaged file
        raise MamaError(f"cannot load the weights {weights}: {exc}") from None
    model.set_videos(data.videos)
    model.set_texts(data.texts)
    model.eval()
    return config, model, data


def _eval_config(config, captions=None):
    """Evaluation needs the same splits but no meta set. A run trained on generated
    captions alone is judged on them (the same hash split and flag filters) unless
    ``captions`` (original ones) are given."""
    clone = type(config).from_dict(config.to_dict())
    clone.meta_weighting = False
    if config.captions or captions:
        clone.augment = "none"
    return clone
