"""The training recipe: ``setup() -> train() -> save()``, flat, top to bottom.

One file on purpose (over 450 lines): a recipe reads best in one place, from the
options to the saved run; its building blocks live in the other ``train`` modules.

A run lives in ``<workdir>/runs/<name>/`` (its files: ``train/runs.py``). The
checkpoint holds model + weighting net + both optimisers + RNG states + step as
tensors, scalars as JSON in the safetensors header. The effective options are also
recorded as ``<workdir>/configs/train.json``, as every stage records its own.

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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mama_augment.configfile import record_run_config
from mama_augment.errors import MamaError, UsageError
from mama_augment.manifest import ensure_workdir, make_folder, workdir_lock
from mama_augment.stage import StageReport
from mama_augment.train import checkpoint as ckpt
from mama_augment.train.backbones import get_backbone, build_model
from mama_augment.train.config import LOGIT_SCALE_MAX, LOGIT_SCALE_MIN, TrainConfig, loss_takes_meta_weighting
from mama_augment.train.data import (
    SOURCE_GENERATED,
    TrainData,
    build_data,
    describe_issues,
    steps_per_epoch,
)
from mama_augment.train.audit import WeightRecorder, write_pair_weights
from mama_augment.train.distributed import barrier, broadcast_module, local_slice
from mama_augment.train.evaluate import evaluate_split
from mama_augment.train.loader import (
    BatchPlan,
    BatchStream,
    StepBatches,
    StepMeter,
    close_frame_source,
    default_num_workers,
    prepare_frame_source,
)
from mama_augment.train.losses import build_loss
from mama_augment.train.meta import MetaStepResult, MetaWeighting, forward_with_level_inputs
from mama_augment.train.runs import GENERATED_CAPTIONS_NOTE, RunPaths, load_run_config, select_device
from mama_augment.workpaths import check_recorded_files

log = logging.getLogger(__name__)

StepCallback = Callable[[int], None]


def validation_score(metrics: dict) -> float:
    """What picks the best epoch: the mean of text->video and video->text R@1 on the
    validation split (both directions, so twice the queries decide)."""
    return (metrics["text_to_video"]["R@1"] + metrics["video_to_text"]["R@1"]) / 2


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
    grad_norm: torch.Tensor | None  # a tensor: reading it would wait for the device
    terms: dict


def training_step(model, criterion, optimizer, params, video_inputs, text_inputs, meta: MetaWeighting | None = None,
                  meta_inputs=None, autocast=contextlib.nullcontext, grad_clip: float = 0.0,
                  world_size: int = 1, graphed_meta=None, source_weights: torch.Tensor | None = None,
                  agreement: torch.Tensor | None = None) -> StepResult:
    """One optimisation step: forward, (meta step), weighted backward, clip, AdamW.

    The training forward is done once; the meta step reuses its graph and the real
    step backpropagates through it with the updated weights.

    On ``world_size`` processes the inputs are this rank's slice of the global batch
    (criterion and meta built with the same rank and world size): the gradients are
    averaged across ranks before clipping, and the result describes the *global*
    batch (losses and weights gathered in rank order, terms averaged), as one process
    would report it.

    ``graphed_meta`` (train/cuda_graphs.py) runs the meta step from the inputs of its
    level, as one CUDA graph. ``source_weights`` (this rank's pairs) scale each pair's
    weight by how much its caption's source counts (train/evidence.py); ``agreement``
    (this rank's pairs) is the weighting net's second input where it reads one.
    """
    level_inputs = None
    with autocast():
        if graphed_meta is not None and meta is not None and meta_inputs is not None:
            video, text, scale, level_inputs = forward_with_level_inputs(model, meta.meta_params, video_inputs,
                                                                         text_inputs)
        else:
            video, text, scale = model(video_inputs, text_inputs)
        out = criterion(video, text, scale)
    per_sample = out.per_sample
    meta_result, raw = None, None
    if level_inputs is not None:
        meta_result = graphed_meta.step(model, criterion, level_inputs, meta_inputs, autocast)
        weights, raw = meta_result.weights, meta_result.raw_weights
    elif meta is not None and meta_inputs is not None:
        meta_result = meta.step(model, criterion, per_sample, meta_inputs, autocast, agreement)
        weights, raw = meta_result.weights, meta_result.raw_weights
    elif meta is not None:
        weights, raw = meta.weights(per_sample, agreement)
    else:
        weights = torch.ones_like(per_sample)
    if source_weights is not None:
        weights = weights * source_weights.to(weights.dtype)
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
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
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
        self._cached_meta_inputs = None
        self.started = time.time()
        self.best: dict | None = None  # epoch, step and validation R@1 of best_model.safetensors

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        config = self.config
        self.paths = RunPaths.of(self.workdir, config.run_name)
        self.run_dir = self.paths.root
        saved = self.paths.config
        checkpoint_path = self.paths.checkpoint
        if config.resume and not checkpoint_path.exists():
            raise UsageError(f"nothing to resume: {checkpoint_path} does not exist")
        if not self.workdir.is_dir():  # nothing to train on, and nothing is created
            raise UsageError(f"the work folder {self.workdir} does not exist: run `mama-augment keyframes` first")
        ensure_workdir(self.workdir)
        if config.resume:
            stored = load_run_config(self.paths)
            # The saved options define the run; only how it is watched may change.
            stored.resume, stored.progress, stored.device = True, config.progress, config.device
            stored.num_workers = config.num_workers
            if stored.meta_weighting is None:  # a run from before the "auto" decision was recorded
                stored.meta_weighting = loss_takes_meta_weighting(stored.loss)
            self.config = config = stored
            check_recorded_files([*_as_list(config.captions), *_as_list(config.meta_set)], self.workdir)
        elif saved.exists():
            raise UsageError(
                f"run {self.run_dir} already exists: pass --resume to continue it or --name for a new run"
            )
        config.validate()
        # Every rank has looked for config.json before rank 0 writes it. (Each rank then
        # builds its own data: a rank-0-first barrier could outlast NCCL's timeout while
        # rank 0 alone encodes millions of captions; the caches are written atomically.
        # The video feature cache is the exception: the ranks build it together.)
        barrier(self.world_size)
        self.device = select_device(config.device)
        if self.device.type == "cuda" and self.world_size > 1:  # init_distributed pinned this rank's GPU
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.autocast_enabled = self.device.type == "cuda"
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % (2**32))

        backbone = get_backbone(config.backbone)
        embedder = None
        if backbone.caption_embedder is not None and (config.agreement_filter or config.agreement_prior or (
                config.use_meta_weighting and (not config.meta_set or config.meta_weighting_decided_by_data))):
            # groups and scores the meta set, and scores the pairs for the "auto" decision,
            # the agreement filter and the prior
            embedder = backbone.caption_embedder(config, self.workdir, self.device)
        self.evidence, keep_caption = None, None
        if config.augment == "add":
            keep_caption = self._weigh_generated_sources(backbone)
        data_started = time.time()
        self.data: TrainData = build_data(config, self.workdir, need=backbone.needs, caption_embedder=embedder,
                                          keep_caption=keep_caption, rank=self.rank, world_size=self.world_size)
        self.data_seconds = time.time() - data_started
        self.source_weights = self._source_weight_table()
        if config.meta_weighting is None:
            # The "auto" decision is part of the run: config.json (and a resume) record it.
            config.meta_weighting = self.data.meta_weighting
            if self.data.wrong_share is not None:
                config.extra = {**config.extra, "estimated_wrong_share": round(self.data.wrong_share, 4)}
            if self.data.meta_weighting_off_why:
                config.extra = {**config.extra, "meta_weighting_off_why": self.data.meta_weighting_off_why}
        if not config.resume:
            config.extra = {**config.extra, "eval_captions": self.data.eval_source}
            if self.data.agreement_filtered:
                config.extra = {**config.extra, "agreement_filtered": self.data.agreement_filtered}
        if self.data.eval_source == SOURCE_GENERATED:
            log.warning("%s", GENERATED_CAPTIONS_NOTE)
        for line in describe_issues(self.data):
            log.warning("input problem: %s", line)

        self.model = build_model(config, self.data.videos, self.workdir, self.device)
        self.model.set_videos(self.data.videos)
        self.model.set_texts(self.data.texts)
        self.model.train()
        builds_inputs = self.model.input_builder() is not None
        self.num_workers = (config.num_workers if config.num_workers is not None else default_num_workers()) if builds_inputs else 0
        self.frame_source = prepare_frame_source(self.model, config.frame_source, self.workdir, self.device,
                                                 self.num_workers)
        self.criterion = build_loss(config.loss, config.effective_margin, config.eps, self.rank, self.world_size)
        # fused: one kernel for every parameter on CUDA (a small model's step is launch-bound)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, config.weight_decay), lr=config.lr,
                                           fused=self.device.type == "cuda")
        self.meta = None
        if config.use_meta_weighting:
            if len(self.data.meta_videos) < 2:
                raise UsageError("the meta set has fewer than 2 pairs; raise --meta-fraction or pass --meta-set")
            self.meta = MetaWeighting(config.meta_hidden, config.meta_lr, config.virtual_lr, config.meta_params,
                                      self.device, self.rank, self.world_size,
                                      agreement_input="agreement" in config.meta_inputs.split(","),
                                      init=config.meta_init)
        # Per caption id, the weighting net's second input (1 where the pairs were not scored).
        self.pair_agreement = None
        if self.meta is not None and self.meta.agreement_input:
            table = self.data.pair_agreement if self.data.pair_agreement is not None else np.ones(len(self.data.texts))
            self.pair_agreement = torch.as_tensor(np.asarray(table, dtype=np.float32), device=self.device)
        self.graphed_meta = None
        if self.meta is not None and config.cuda_graphs:
            from mama_augment.train.cuda_graphs import GraphedMetaStep, unsupported_reason

            reason = unsupported_reason(self.meta, self.device, self.world_size)
            if reason is None:
                self.graphed_meta = GraphedMetaStep(self.meta, torch.bfloat16 if self.autocast_enabled else None)
            elif self.device.type == "cuda":
                log.info("the meta step runs without a CUDA graph: %s", reason)
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
            make_folder(self.run_dir)
            saved.write_text(json.dumps(config.to_dict(), indent=2))
            self.paths.metrics.write_text("")
        if self.is_writer:
            record_run_config(self.workdir, "train", config.to_dict())

    def _weigh_generated_sources(self, backbone):
        """Each source of generated captions gets its weight (train/evidence.py): by
        evidence with --generated-weight auto, else the number given; a resumed run
        keeps the weights it began with. Returns which captions stay training pairs."""
        import dataclasses

        from mama_augment.train import evidence as ev

        config = self.config
        started = time.time()
        # The pairs as the run sees them, without the meta set (chosen later, on the kept pairs).
        probe = build_data(dataclasses.replace(config, meta_weighting=False, agreement_filter=False,
                                               agreement_prior=False), self.workdir, need=backbone.needs,
                           rank=self.rank, world_size=self.world_size)
        self.caption_source_names = sources = ev.caption_sources(self.workdir, probe)
        recorded = config.extra.get("generated_weights")
        if config.resume and recorded is not None:
            evidence = ev.Evidence(weights={k: float(v) for k, v in recorded.items()}, mode="recorded")
        elif config.generated_weight_value is not None:
            evidence = ev.fixed_weights(sources, config.generated_weight_value, f"{config.generated_weight_value:g}")
        else:
            embedder = (backbone.caption_embedder(config, self.workdir, self.device)
                        if backbone.caption_embedder is not None else None)
            evidence = ev.gather_evidence(probe, sources, config.seed, embedder, sample=config.agreement_sample)
        evidence.seconds = time.time() - started
        self.evidence = evidence
        for line in evidence.lines():
            log.info("generated captions%s %s", "" if line.startswith("of ") else ":", line)
        if not config.resume:  # the decision is part of the run: config.json and a resume keep it
            config.extra = {**config.extra, "generated_weights": dict(evidence.weights),
                            "generated_evidence": evidence.as_dict()}
        weights = evidence.weights
        if all(w > 0 for w in weights.values()):
            return None
        return lambda c: c >= len(sources) or sources[c] is None or weights.get(sources[c], 1.0) > 0

    def _source_weight_table(self) -> torch.Tensor | None:
        """Per caption id, the factor of its weight in the loss: its source's weight
        (train/evidence.py) times its agreement prior (``--agreement-prior``). None when
        every kept pair counts fully (the run is then what it was without either)."""
        evidence, prior = self.evidence, self.data.pair_prior
        sourced = evidence is not None and not all(w in (0.0, 1.0) for w in evidence.weights.values())
        if not sourced and prior is None:
            return None
        table = np.ones(len(self.data.texts), dtype=np.float32) if prior is None else prior.astype(np.float32)
        if sourced:
            for c, source in enumerate(self.caption_source_names):
                if source is not None:
                    table[c] *= evidence.weights.get(source, 1.0)
        return torch.as_tensor(table, device=self.device)

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

        config, model = self.config, self.model
        params = [p for p in model.parameters() if p.requires_grad]
        scale_param = model.head.logit_scale
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (config.progress and self.is_writer),
                   desc=config.run_name, unit="step", dynamic_ncols=True, leave=False)
        self.samples_per_s = float("nan")
        start_epoch = self.step // self.steps_per_epoch
        meter = StepMeter(self.device, warn_when_data_bound=self.model.input_builder() is not None)
        stream = self._batch_stream()
        try:
            for epoch in range(start_epoch, config.epochs):
                first = self.step - epoch * self.steps_per_epoch if epoch == start_epoch else 0
                for b in range(first, self.steps_per_epoch):
                    step = epoch * self.steps_per_epoch + b
                    batch = stream.next(step)
                    meter.waited(stream.last_wait)
                    lr = lr_at(step, self.total_steps, config.lr, config.warmup)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    videos, captions = batch.videos, batch.captions  # the global batch; this rank trains on its slice
                    video_inputs, text_inputs = self._step_inputs(batch)
                    meta_inputs = self._meta_inputs(step, batch)
                    source_weights, agreement = None, None
                    mine = local_slice(len(captions), self.rank, self.world_size)
                    if self.source_weights is not None:
                        source_weights = self.source_weights[torch.as_tensor(captions[mine], device=self.device)]
                    if self.pair_agreement is not None:
                        agreement = self.pair_agreement[torch.as_tensor(captions[mine], device=self.device)]
                    result = training_step(
                        model, self.criterion, self.optimizer, params, video_inputs, text_inputs,
                        self.meta, meta_inputs, self.autocast, config.grad_clip, self.world_size, self.graphed_meta,
                        source_weights=source_weights, agreement=agreement,
                    )
                    with torch.no_grad():
                        scale_param.clamp_(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)
                    loss, per_sample, weights, raw = result.loss, result.per_sample, result.weights, result.raw_weights
                    meta_result, grad_norm, out = result.meta, result.grad_norm, result
                    self.step = step + 1
                    if self.meta is not None and epoch == config.epochs - 1:
                        # weights describe the global batch (gathered in training_step on every rank)
                        self.weight_record.record(captions, weights)
                    meter.stepped(len(videos))

                    if self.step % config.log_every == 0 or self.step == self.total_steps:
                        timing = meter.interval()
                        self.samples_per_s = timing["samples_per_s"]
                        row = {
                            "kind": "step", "step": self.step, "epoch": epoch, "lr": lr,
                            "loss": float(loss.detach()), "loss_unweighted": float(per_sample.detach().mean()),
                            "logit_scale": float(scale_param.detach().exp()),
                            "grad_norm": float(grad_norm) if grad_norm is not None else None,
                            "meta_loss": float(meta_result.meta_loss) if meta_result else None,
                            "meta_grad_norm": float(meta_result.meta_grad_norm) if meta_result else None,
                            **timing,
                            **{k: float(v) for k, v in out.terms.items()},
                        }
                        if raw is not None:
                            row.update(
                                weight_mean=float(raw.mean()), weight_min=float(raw.min()), weight_max=float(raw.max()),
                                weight_norm_std=float(weights.std()) if len(weights) > 1 else 0.0,
                            )
                        self._log(row)
                        bar.set_postfix({"loss": f"{row['loss']:.3f}", "samples/s": f"{self.samples_per_s:.0f}",
                                         "data wait": f"{100 * timing['data_wait_share']:.0f}%"})
                    bar.update(1)
                    if self.step % config.checkpoint_every == 0 and self.step % self.steps_per_epoch != 0:
                        self._save_checkpoint()
                    if self.step_callback is not None:
                        self.step_callback(self.step)
                    meter.waited(0.0)  # checkpoints and callbacks are neither data nor step
                self._end_of_epoch(epoch, per_sample)
                meter.waited(0.0)  # nor is validation
        finally:
            stream.close()
        bar.close()

    def _batch_stream(self) -> BatchStream:
        """Batches of the remaining steps, built by the loader's workers when the model
        has inputs to build (``clip``), in this process otherwise (``features``)."""
        config = self.config
        plan = BatchPlan(
            self.data, config.seed, config.batch_size, self.steps_per_epoch,
            meta_every=config.meta_every if self.meta is not None else 0,
            meta_batch_size=self.meta_batch_size, rank=self.rank, world_size=self.world_size,
            meta_whole=self.meta_batch_size >= len(self.data.meta_videos), first_step=self.step,
            epoch_captions=config.epoch_captions,
        )
        dataset = StepBatches(plan, self.model.input_builder(), self.total_steps)
        return BatchStream(dataset, self.step, self.total_steps, self.num_workers, pin_memory=self.device.type == "cuda")

    def _step_inputs(self, batch):
        """The model's inputs of this rank's slice of ``batch``, on the device."""
        if batch.video_inputs is None:  # built here: a lookup on the device
            mine = local_slice(len(batch.videos), self.rank, self.world_size)
            return self.model.video_inputs(batch.videos[mine]), self.model.text_inputs(batch.captions[mine])
        return self.model.inputs_to_device(batch.video_inputs, batch.text_inputs, non_blocking=True)

    def _meta_inputs(self, step: int, batch):
        """The meta batch's inputs, on the device. When the whole meta set fits in one
        meta batch the batch is the same every step, so its inputs are built once and kept."""
        if self.meta is None or step % self.config.meta_every:
            return None
        if batch.meta_pairs is None:  # the whole meta set: built at the first step of this process
            return self._cached_meta_inputs
        if batch.meta_inputs is not None:
            inputs = self.model.inputs_to_device(*batch.meta_inputs, non_blocking=True)
        else:
            mv, mc = batch.meta_pairs
            inputs = (self.model.video_inputs(mv), self.model.text_inputs(mc))
        if self.meta_batch_size >= len(self.data.meta_videos):
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
                    ckpt.atomic_save(dict(self.model.state_dict()), self.paths.best_model,
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
        with open(self.paths.metrics, "a") as handle:
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
        ckpt.atomic_save(tensors, self.paths.checkpoint, state)

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
        metrics = self.paths.metrics
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
            ckpt.atomic_save(dict(self.model.state_dict()), self.paths.model,
                             {"backbone": self.config.backbone, "step": self.step})
            if self.meta is not None:
                ckpt.atomic_save(dict(self.meta.net.state_dict()), self.paths.weighting_net,
                                 {"hidden": self.config.meta_hidden, "inputs": self.config.meta_inputs})
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
            "meta_weighting": "on" if self.meta is not None else "off",
            "meta_weighting_off_why": self.data.meta_weighting_off_why,
            "estimated_wrong_share": round(self.data.wrong_share, 3) if self.data.wrong_share is not None else None,
            "meta_pairs": int(len(self.data.meta_videos)),
            "agreement_filtered": self.data.agreement_filtered or None,
            "samples_per_s": round(self.samples_per_s, 1) if math.isfinite(getattr(self, "samples_per_s", float("nan"))) else None,
            "val_t2v_R@1": round(last["text_to_video"]["R@1"], 2) if last else None,
            "val_v2t_R@1": round(last["video_to_text"]["R@1"], 2) if last else None,
            "best_epoch": self.best["epoch"] + 1 if self.best else None,  # counted from 1, as printed
            "best_val_t2v_R@1": round(self.best["val_t2v_R@1"], 2) if self.best else None,
            "best_val_v2t_R@1": round(self.best["val_v2t_R@1"], 2) if self.best else None,
            "input_problems": int(sum(self.data.issues.values())),
            "eval_captions": self.data.eval_source,
            "eval_captions_note": GENERATED_CAPTIONS_NOTE if self.data.eval_source == SOURCE_GENERATED else None,
        }
        if self.evidence is not None:
            report.extra["generated_captions"] = "; ".join(self.evidence.lines())
            report.extra["evidence_s"] = round(self.evidence.seconds, 2)
            report.extra["evidence_share"] = round(self.evidence.seconds / max(report.seconds, 1e-9), 3)
        report.extra = {k: v for k, v in report.extra.items() if v is not None}
        if self.is_writer:
            summary = {**report.as_dict(), "data": self.data.summary(), "issues": describe_issues(self.data),
                       "best": self.best, "data_seconds": round(self.data_seconds, 3),
                       "generated_evidence": self.evidence.as_dict() if self.evidence is not None else None}
            self.paths.summary.write_text(json.dumps(summary, indent=2, default=str))
        return report

    def cleanup(self) -> None:
        """Stop what the run started besides the loader (a frame-decoding pool)."""
        if getattr(self, "model", None) is not None:
            close_frame_source(self.model)

    def _write_pair_weights(self) -> None:
        """Loss and weight of every training pair under the final model and weighting
        net, plus the weights recorded in the last epoch (see train/audit.py)."""
        config = self.config
        write_pair_weights(
            self.run_dir, self.workdir, self.data, self.model,
            lambda: build_loss(config.loss, config.effective_margin, config.eps),  # one process: no gather
            self.meta, config.batch_size, config.seed, self.weight_record, self.autocast,
            pair_factor=None if self.source_weights is None else self.source_weights.float().cpu().numpy(),
            pair_agreement=None if self.pair_agreement is None else self.pair_agreement.float().cpu().numpy(),
        )


def run_train(config: TrainConfig, workdir: str | Path, rank: int = 0, world_size: int = 1,
              step_callback: StepCallback | None = None) -> StageReport:
    """Train (or resume) one run and return its report.

    On several processes (torchrun; the process group already initialised, see
    ``train/distributed.py``) every rank calls this with its rank; rank 0 alone writes.
    The other ranks return without waiting for rank 0's last files (a barrier there
    could outlast NCCL's timeout while rank 0 scores every pair).
    """
    config.validate()  # the run's name must be safe before it names a lock
    recipe = TrainRecipe(config, workdir, rank, world_size, step_callback)
    # Two processes training one run would both append to its files: rank 0 (the
    # writer) holds the run's lock from the first look at the folder to the last file.
    lock = workdir_lock(workdir, f"train-{config.run_name}") if rank == 0 and Path(workdir).is_dir() \
        else contextlib.nullcontext()
    with lock:
        recipe.setup()
        try:
            recipe.train()
            return recipe.save()
        finally:
            recipe.cleanup()


def _as_list(value) -> list:
    return [] if not value else [value] if isinstance(value, (str, os.PathLike)) else list(value)
