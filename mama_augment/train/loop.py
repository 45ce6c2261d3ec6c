"""The training recipe: ``setup() -> train() -> save()``, flat, top to bottom.

A run lives in ``<workdir>/runs/<name>/``::

    config.json              every option (TrainConfig) of the run
    checkpoint.safetensors   model + weighting net + both optimisers + RNG states +
                             step, as tensors; scalars as JSON in the header
    model.safetensors        final model weights (the last epoch)
    best_model.safetensors   the weights of the epoch with the best validation R@1
    weighting_net.safetensors
    metrics.jsonl            one JSON row per logged step / validation / weight curve
    pair_weights.parquet     loss and learned weight of every training pair at the end
    summary.json             data counts, input problems, final numbers
    training.png, loss_weight.png

``resume=True`` reloads the checkpoint and continues: batches, meta batches and the
learning rate are pure functions of (seed, epoch, step), RNG and optimiser states are
restored, so the resumed run computes what the uninterrupted one would have.
Rank and world size are passed in (rank 0 writes); the loop does not start processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mama_augment.errors import MamaError, UsageError
from mama_augment.manifest import ensure_workdir
from mama_augment.stage import StageReport
from mama_augment.train import checkpoint as ckpt
from mama_augment.train.config import LOGIT_SCALE_MAX, LOGIT_SCALE_MIN, TrainConfig
from mama_augment.train.data import (
    TrainData,
    build_data,
    describe_issues,
    epoch_batches,
    meta_batch,
    steps_per_epoch,
)
from mama_augment.train.audit import WeightRecorder, write_pair_weights
from mama_augment.train.distributed import barrier, broadcast_module, local_slice
from mama_augment.train.evaluate import evaluate_split
from mama_augment.train.losses import build_loss
from mama_augment.train.meta import MetaStepResult, MetaWeighting
from mama_augment.train.models import NEEDS, build_model, cached_text_embeddings, get_text_encoder

log = logging.getLogger(__name__)

StepCallback = Callable[[int], None]

LAST_MODEL_FILE = "model.safetensors"
BEST_MODEL_FILE = "best_model.safetensors"
CHECKPOINT_CHOICES = ("best", "last")


def validation_score(metrics: dict) -> float:
    """What picks the best epoch: the mean of text->video and video->text R@1 on the
    validation split (both directions, so twice the queries decide)."""
    return (metrics["text_to_video"]["R@1"] + metrics["video_to_text"]["R@1"]) / 2


def select_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but CUDA is not available")
        return torch.device("cuda")
    return torch.device("cpu")


def lr_at(step: int, total_steps: int, base_lr: float, warmup: float) -> float:
    """Linear warmup, then cosine decay to zero."""
    warmup_steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    warmup_steps = min(warmup_steps, max(0, total_steps - 1))
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases and the logit scale (as open_clip)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_scale" in name or "norm" in name.lower():
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class StepResult:
    loss: torch.Tensor  # the weighted loss that was backpropagated (detached)
    per_sample: torch.Tensor  # (detached)
    weights: torch.Tensor  # normalised weights used (ones without meta-weighting)
    raw_weights: torch.Tensor | None
    meta: MetaStepResult | None
    grad_norm: float | None
    terms: dict


def training_step(model, criterion, optimizer, params, video_inputs, text_inputs, meta: MetaWeighting | None = None,
                  meta_inputs=None, autocast=contextlib.nullcontext, grad_clip: float = 0.0,
                  world_size: int = 1) -> StepResult:
    """One optimisation step: forward, (meta step), weighted backward, clip, AdamW.

    The training forward is done once; the meta step reuses its graph and the real
    step backpropagates through it with the updated weights.

    On ``world_size`` processes the inputs are this rank's slice of the global batch
    (criterion and meta built with the same rank and world size): the gradients are
    averaged across ranks before clipping, and the result describes the *global*
    batch (losses and weights gathered in rank order, terms averaged), as one process
    would report it.
    """
    with autocast():
        video, text, scale = model(video_inputs, text_inputs)
        out = criterion(video, text, scale)
    per_sample = out.per_sample
    meta_result, raw = None, None
    if meta is not None and meta_inputs is not None:
        meta_result = meta.step(model, criterion, per_sample, meta_inputs, autocast)
        weights, raw = meta_result.weights, meta_result.raw_weights
    elif meta is not None:
        weights, raw = meta.weights(per_sample)
    else:
        weights = torch.ones_like(per_sample)
    loss = (weights.detach() * per_sample).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    terms = out.terms
    if world_size > 1:
        from mama_augment.train.distributed import average_gradients, gather_rows, mean_across_ranks_

        average_gradients(params, world_size)
        loss = loss.detach().float().clone()
        terms = {k: v.detach().float().clone() for k, v in terms.items()}
        mean_across_ranks_([loss, *terms.values()], world_size)
        rows = [per_sample.detach().float(), weights.float()] + ([raw.float()] if raw is not None else [])
        gathered = gather_rows(torch.stack(rows, dim=1), world_size)
        per_sample, weights = gathered[:, 0], gathered[:, 1]
        raw = gathered[:, 2] if raw is not None else None
    grad_norm = None
    if grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    return StepResult(loss.detach(), per_sample.detach(), weights, raw, meta_result, grad_norm, terms)


class TrainRecipe:
    """One training run. ``step_callback(step)`` is called after every step (tests use
    it to simulate a kill; a scheduler could use it to stop early)."""

    def __init__(self, config: TrainConfig, workdir: str | Path, rank: int = 0, world_size: int = 1,
                 step_callback: StepCallback | None = None):
        self.config = config
        self.workdir = Path(workdir)
        self.rank = rank
        self.world_size = world_size
        self.is_writer = rank == 0
        self.step_callback = step_callback
        self.step = 0
        self.started = time.time()
        self.best: dict | None = None  # epoch, step and validation R@1 of best_model.safetensors

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        config = self.config
        ensure_workdir(self.workdir)
        self.run_dir = self.workdir / "runs" / config.run_name
        saved = self.run_dir / "config.json"
        checkpoint_path = self.run_dir / "checkpoint.safetensors"
        if config.resume:
            if not checkpoint_path.exists():
                raise UsageError(f"nothing to resume: {checkpoint_path} does not exist")
            stored = TrainConfig.from_dict(json.loads(saved.read_text()))
            # The saved options define the run; only how it is watched may change.
            stored.resume, stored.progress, stored.device = True, config.progress, config.device
            self.config = config = stored
        elif saved.exists():
            raise UsageError(
                f"run {self.run_dir} already exists: pass --resume to continue it or --name for a new run"
            )
        config.validate()
        # Every rank has looked for config.json before rank 0 writes it. (Each rank then
        # builds its own data: a rank-0-first barrier could outlast NCCL's timeout while
        # rank 0 alone encodes millions of captions; the caches are written atomically.)
        barrier(self.world_size)
        self.device = select_device(config.device)
        if self.device.type == "cuda" and self.world_size > 1:  # init_distributed pinned this rank's GPU
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.autocast_enabled = self.device.type == "cuda"
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % (2**32))

        need = NEEDS[config.backbone]
        embedder = None
        if config.backbone == "features" and config.use_meta_weighting and not config.meta_set:
            encoder = get_text_encoder(config.text_model, "cuda" if self.device.type == "cuda" else "cpu")
            cache = self.workdir / "cache" / "text"
            embedder = lambda texts: cached_text_embeddings(encoder, list(texts), cache)  # noqa: E731
        self.data: TrainData = build_data(config, self.workdir, need=need, caption_embedder=embedder)
        for line in describe_issues(self.data):
            log.warning("input problem: %s", line)

        self.model = build_model(config, self.data.videos, self.workdir, self.device)
        self.model.set_videos(self.data.videos)
        self.model.set_texts(self.data.texts)
        self.model.train()
        self.criterion = build_loss(config.loss, config.effective_margin, config.eps, self.rank, self.world_size)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, config.weight_decay), lr=config.lr)
        self.meta = None
        if config.use_meta_weighting:
            if len(self.data.meta_videos) < 2:
                raise UsageError("the meta set has fewer than 2 pairs; raise --meta-fraction or pass --meta-set")
            self.meta = MetaWeighting(config.meta_hidden, config.meta_lr, config.virtual_lr, config.meta_params,
                                      self.device, self.rank, self.world_size)
        # Weights each pair gets in the last epoch's real steps (pair_weights.parquet).
        self.weight_record = WeightRecorder(len(self.data.texts))
        self.steps_per_epoch = steps_per_epoch(self.data, config.batch_size, config.epoch_captions)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.meta_batch_size = min(config.meta_batch_size or config.batch_size, max(2, len(self.data.meta_videos)))
        if self.world_size > 1:
            self._check_distributed()

        if config.resume:
            self._load_checkpoint(checkpoint_path)
        elif self.is_writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(config.to_dict(), indent=2))
            (self.run_dir / "metrics.jsonl").write_text("")

    def _check_distributed(self) -> None:
        """Every rank takes an equal, contiguous slice of each global batch (the
        gathered rows line up with the one-process batch); the meta batch is rounded
        down to a multiple of the number of processes."""
        world = self.world_size
        batch = min(self.config.batch_size, len(self.data.train_videos))
        if batch % world:
            raise UsageError(
                f"the global batch of {batch} pairs does not split evenly over {world} processes: "
                f"choose --batch-size as a multiple of {world}"
            )
        if self.meta is not None:
            rounded = self.meta_batch_size - self.meta_batch_size % world
            if rounded < world:
                raise UsageError(f"the meta set has fewer pairs than the {world} processes need (one each)")
            if rounded != self.meta_batch_size:
                log.info("meta batch of %d rounded down to %d for %d processes", self.meta_batch_size, rounded, world)
            self.meta_batch_size = rounded
        # Seeded alike everywhere; rank 0's copy wins should an init be non-deterministic.
        broadcast_module(self.model, world)
        if self.meta is not None:
            broadcast_module(self.meta.net, world)

    def autocast(self):
        if self.autocast_enabled:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        from tqdm.auto import tqdm

        config, model, data = self.config, self.model, self.data
        params = [p for p in model.parameters() if p.requires_grad]
        scale_param = model.head.logit_scale
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (config.progress and self.is_writer),
                   desc=config.run_name, unit="step", dynamic_ncols=True, leave=False)
        window_start, window_samples = time.time(), 0
        self.samples_per_s = float("nan")
        start_epoch = self.step // self.steps_per_epoch
        for epoch in range(start_epoch, config.epochs):
            batches = epoch_batches(data, epoch, config.seed, config.batch_size, config.epoch_captions)
            first = self.step - epoch * self.steps_per_epoch if epoch == start_epoch else 0
            for b in range(first, len(batches)):
                step = epoch * self.steps_per_epoch + b
                lr = lr_at(step, self.total_steps, config.lr, config.warmup)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                videos, captions = batches[b]  # the global batch; this rank trains on its slice
                mine = local_slice(len(videos), self.rank, self.world_size)
                meta_inputs = None
                if self.meta is not None and step % config.meta_every == 0:
                    meta_inputs = self._meta_inputs(step)
                result = training_step(
                    model, self.criterion, self.optimizer, params,
                    model.video_inputs(videos[mine]), model.text_inputs(captions[mine]),
                    self.meta, meta_inputs, self.autocast, config.grad_clip, self.world_size,
                )
                with torch.no_grad():
                    scale_param.clamp_(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)
                loss, per_sample, weights, raw = result.loss, result.per_sample, result.weights, result.raw_weights
                meta_result, grad_norm, out = result.meta, result.grad_norm, result
                self.step = step + 1
                window_samples += len(videos)
                if self.meta is not None and epoch == config.epochs - 1:
                    # weights describe the global batch (gathered in training_step on every rank)
                    self.weight_record.record(captions, weights)

                if self.step % config.log_every == 0 or self.step == self.total_steps:
                    now = time.time()
                    self.samples_per_s = window_samples / max(now - window_start, 1e-9)
                    window_start, window_samples = now, 0
                    row = {
                        "kind": "step", "step": self.step, "epoch": epoch, "lr": lr,
                        "loss": float(loss.detach()), "loss_unweighted": float(per_sample.detach().mean()),
                        "logit_scale": float(scale_param.detach().exp()), "grad_norm": grad_norm,
                        "meta_loss": meta_result.meta_loss if meta_result else None,
                        "meta_grad_norm": meta_result.meta_grad_norm if meta_result else None,
                        "samples_per_s": self.samples_per_s,
                        **{k: float(v) for k, v in out.terms.items()},
                    }
                    if raw is not None:
                        row.update(
                            weight_mean=float(raw.mean()), weight_min=float(raw.min()), weight_max=float(raw.max()),
                            weight_norm_std=float(weights.std()) if len(weights) > 1 else 0.0,
                        )
                    self._log(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{self.samples_per_s:.0f}")
                bar.update(1)
                if self.step % config.checkpoint_every == 0 and self.step % self.steps_per_epoch != 0:
                    self._save_checkpoint()
                if self.step_callback is not None:
                    self.step_callback(self.step)
            self._end_of_epoch(epoch, per_sample)
        bar.close()

    def _meta_inputs(self, step: int):
        """The meta batch's inputs. When the whole meta set fits in one meta batch the
        batch is the same every step, so its inputs are built once and kept."""
        whole = self.meta_batch_size >= len(self.data.meta_videos)
        if whole and getattr(self, "_cached_meta_inputs", None) is not None:
            return self._cached_meta_inputs
        mv, mc = meta_batch(self.data, step, self.config.seed, self.meta_batch_size)
        mine = local_slice(len(mv), self.rank, self.world_size)
        inputs = (self.model.video_inputs(mv[mine]), self.model.text_inputs(mc[mine]))
        if whole:
            self._cached_meta_inputs = inputs
        return inputs

    def _end_of_epoch(self, epoch: int, last_losses: torch.Tensor) -> None:
        # Every rank evaluates (the same numbers, rank 0 logs them): ranks that waited for
        # rank 0 in the next collective could outlast NCCL's timeout on a large val split.
        if self.data.split("val").videos.size:
            metrics = evaluate_split(self.model, self.data, "val")
            self.last_val = metrics
            score = validation_score(metrics)
            improved = self.best is None or score > self.best["val_R@1"]
            if improved:
                self.best = {"epoch": epoch, "step": self.step, "val_R@1": score,
                             "val_t2v_R@1": metrics["text_to_video"]["R@1"],
                             "val_v2t_R@1": metrics["video_to_text"]["R@1"]}
                if self.is_writer:
                    ckpt.atomic_save(dict(self.model.state_dict()), self.run_dir / BEST_MODEL_FILE,
                                     {"backbone": self.config.backbone, **self.best})
            self._log({
                "kind": "eval", "step": self.step, "epoch": epoch, "split": "val", "best": improved,
                **{f"t2v_{k}": v for k, v in metrics["text_to_video"].items()},
                **{f"v2t_{k}": v for k, v in metrics["video_to_text"].items()},
            })
        if self.meta is not None:
            self._log_curve(epoch, last_losses)
        self._save_checkpoint()

    def _log_curve(self, epoch: int, losses: torch.Tensor) -> None:
        top = 4 * math.log(max(2, self.config.batch_size))
        grid = torch.linspace(0, top, 65, device=self.device)
        values = self.meta.curve(grid)
        recent = losses.detach().float().cpu().numpy()
        self._log({
            "kind": "curve", "step": self.step, "epoch": epoch,
            "loss_grid": [round(float(x), 4) for x in grid], "weight": [float(x) for x in values],
            "loss_p5": float(np.percentile(recent, 5)), "loss_p95": float(np.percentile(recent, 95)),
        })

    def _log(self, row: dict) -> None:
        if not self.is_writer:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(clean) + "\n")

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_tensors, opt_desc = ckpt.flatten_optimizer(self.optimizer.state_dict(), "optim")
        tensors.update(opt_tensors)
        state = {"step": self.step, "optimizer": opt_desc, "total_steps": self.total_steps, "best": self.best}
        if self.meta is not None:
            tensors.update({f"wnet.{k}": v for k, v in self.meta.net.state_dict().items()})
            meta_tensors, meta_desc = ckpt.flatten_optimizer(self.meta.optimizer.state_dict(), "meta_optim")
            tensors.update(meta_tensors)
            state["meta_optimizer"] = meta_desc
        tensors.update(ckpt.rng_state())
        tensors.update(self.weight_record.state_tensors())
        return tensors, state

    def _save_checkpoint(self) -> None:
        if not self.is_writer:
            return
        tensors, state = self._state_tensors()
        ckpt.atomic_save(tensors, self.run_dir / "checkpoint.safetensors", state)

    def _load_checkpoint(self, path: Path) -> None:
        try:
            tensors, state = ckpt.load(path)
        except Exception as exc:  # damaged file: say so, do not guess
            raise MamaError(f"cannot read the checkpoint {path}: {exc}") from exc
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, state["optimizer"], "optim"))
        if self.meta is not None:
            self.meta.net.load_state_dict({k[len("wnet."):]: v for k, v in tensors.items() if k.startswith("wnet.")})
            self.meta.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, state["meta_optimizer"], "meta_optim"))
        ckpt.set_rng_state(tensors)
        self.weight_record.load_state_tensors(tensors)
        self.step = int(state["step"])
        self.best = state.get("best")
        # Rows logged after the checkpoint are redone by the resumed run.
        metrics = self.run_dir / "metrics.jsonl"
        if self.is_writer:
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
            kept = [r for r in rows if r.get("step", 0) <= self.step]
            metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
        log.info("resumed %s at step %d of %d", self.run_dir, self.step, self.total_steps)

    # ------------------------------------------------------------------ save
    def save(self) -> StageReport:
        from mama_augment.train.plots import draw

        report = StageReport(stage="train")  # the run folder is in extra["run"]
        if self.is_writer:
            ckpt.atomic_save(dict(self.model.state_dict()), self.run_dir / LAST_MODEL_FILE,
                             {"backbone": self.config.backbone, "step": self.step})
            if self.meta is not None:
                ckpt.atomic_save(dict(self.meta.net.state_dict()), self.run_dir / "weighting_net.safetensors",
                                 {"hidden": self.config.meta_hidden})
            self._write_pair_weights()
            with contextlib.suppress(Exception):  # a picture must never fail a finished run
                draw(self.run_dir)
        last = getattr(self, "last_val", None)
        report.total = self.total_steps
        report.done = self.step
        report.seconds = time.time() - self.started
        report.extra = {
            "run": str(self.run_dir),
            "train_pairs": self.data.num_train_pairs,
            "meta_pairs": int(len(self.data.meta_videos)),
            "samples_per_s": round(self.samples_per_s, 1) if math.isfinite(getattr(self, "samples_per_s", float("nan"))) else None,
            "val_t2v_R@1": round(last["text_to_video"]["R@1"], 2) if last else None,
            "val_v2t_R@1": round(last["video_to_text"]["R@1"], 2) if last else None,
            "best_epoch": self.best["epoch"] + 1 if self.best else None,  # counted from 1, as printed
            "best_val_t2v_R@1": round(self.best["val_t2v_R@1"], 2) if self.best else None,
            "best_val_v2t_R@1": round(self.best["val_v2t_R@1"], 2) if self.best else None,
            "input_problems": int(sum(self.data.issues.values())),
        }
        report.extra = {k: v for k, v in report.extra.items() if v is not None}
        if self.is_writer:
            summary = {**report.as_dict(), "data": self.data.summary(), "issues": describe_issues(self.data),
                       "best": self.best}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return report

    def _write_pair_weights(self) -> None:
        """Loss and weight of every training pair under the final model and weighting
        net, plus the weights recorded in the last epoch (see train/audit.py)."""
        config = self.config
        write_pair_weights(
            self.run_dir, self.workdir, self.data, self.model,
            lambda: build_loss(config.loss, config.effective_margin, config.eps),  # one process: no gather
            self.meta, config.batch_size, config.seed, self.weight_record, self.autocast,
        )


def run_train(config: TrainConfig, workdir: str | Path, rank: int = 0, world_size: int = 1,
              step_callback: StepCallback | None = None) -> StageReport:
    """Train (or resume) one run and return its report.

    On several processes (torchrun; the process group already initialised, see
    ``train/distributed.py``) every rank calls this with its rank; rank 0 alone writes.
    The other ranks return without waiting for rank 0's last files (a barrier there
    could outlast NCCL's timeout while rank 0 scores every pair).
    """
    recipe = TrainRecipe(config, workdir, rank, world_size, step_callback)
    recipe.setup()
    recipe.train()
    return recipe.save()


def run_weights(run_dir: str | Path, checkpoint: str = "best") -> dict:
    """Which weights of a run folder ``checkpoint`` means, as a dict: ``checkpoint``
    (``best`` or ``last``, the one actually used), ``file`` and, for ``best``, the
    epoch (counted from 1), step and validation R@1 it was kept for. ``best`` falls
    back to ``last`` when the run has no best weights (no validation split); ``last``
    is the final model, or the latest checkpoint of an unfinished run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise UsageError(f"{run_dir} is not a run folder (no config.json)")
    if checkpoint not in CHECKPOINT_CHOICES:
        raise UsageError(f"--checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)}, not {checkpoint!r}")
    best = run_dir / BEST_MODEL_FILE
    if checkpoint == "best" and best.exists():
        _, state = ckpt.load_metadata(best)
        return {"checkpoint": "best", "file": BEST_MODEL_FILE, "epoch": state.get("epoch", -1) + 1,
                "step": state.get("step"), "val_R@1": state.get("val_R@1")}
    for name in (LAST_MODEL_FILE, "checkpoint.safetensors"):
        if (run_dir / name).exists():
            return {"checkpoint": "last", "file": name}
    raise UsageError(f"{run_dir} has no weights yet ({LAST_MODEL_FILE} or checkpoint.safetensors)")


def load_run(run_dir: str | Path, captions: str | None = None, device: str = "auto",
             workdir: str | Path | None = None, checkpoint: str = "best"):
    """(config, model, data) of a run folder; the model holds the weights
    :func:`run_weights` picks for ``checkpoint`` (by default the best epoch's)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise UsageError(f"{run_dir} is not a run folder (no config.json)")
    config = TrainConfig.from_dict(json.loads(config_path.read_text()))
    workdir = Path(workdir) if workdir else run_dir.parent.parent
    chosen = run_weights(run_dir, checkpoint)
    dev = select_device(device)
    data = build_data(_eval_config(config), workdir, need=NEEDS[config.backbone], captions_override=captions)
    model = build_model(config, data.videos, workdir, dev)
    tensors, _ = ckpt.load(run_dir / chosen["file"])
    if chosen["file"] == "checkpoint.safetensors":
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(tensors)
    model.set_videos(data.videos)
    model.set_texts(data.texts)
    model.eval()
    return config, model, data


def _eval_config(config: TrainConfig) -> TrainConfig:
    """Evaluation needs the same splits but no meta set."""
    clone = TrainConfig.from_dict(config.to_dict())
    clone.meta_weighting = False
    clone.augment = "none"
    return clone
