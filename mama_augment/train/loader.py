"""Training batches assembled off the training thread, ahead of time.

Each step's batch, and the meta batch of the steps that take a meta step, is a pure
function of (seed, step) (``train/data.py``), so a batch can be built anywhere, in any
order, by any process: a ``torch.utils.data`` map-style dataset indexed by the step,
read by worker processes (``--num-workers``) that decode or read frames and tokenise
captions, with results pinned in page-locked memory when training on CUDA and
prefetched two batches per worker. The loader hands batches back in step order, so
the batches, and hence the run, are the same whatever the number of workers, and a
resumed run starts the sampler at its checkpoint's step. One loader serves the whole
run: its workers live from the first step to the last, across epochs.

Backbones whose inputs are a lookup in tables already on the device (``features``)
build them in the training process; there is nothing to decode, so no workers start.

:class:`StepMeter` times the two halves of every step, waiting for the batch and the
step itself, for ``metrics.jsonl`` and the once-per-run data-bound warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mama_augment.errors import UsageError
from mama_augment.train.data import TrainData, epoch_batches, meta_batch
from mama_augment.train.distributed import local_slice

log = logging.getLogger(__name__)

# Batches each worker prepares ahead of the step that needs them.
PREFETCH_PER_WORKER = 2
# A run that spends more than this share of its time waiting for batches is data-bound.
DATA_BOUND_SHARE = 0.10
# The keys of a metrics row that measure time or memory, not the training itself.
TIMING_KEYS = ("samples_per_s", "data_wait_ms", "step_ms", "data_wait_share", "gpu_mem_peak_mib")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """Loader workers when ``--num-workers`` is not given: half the CPUs this process may
    use (the rest run the training process and its threads), at most 8, and none on a
    single CPU."""
    cpus = available_cpus()
    return 0 if cpus < 2 else min(8, cpus // 2)


@dataclass(frozen=True)
class BatchPlan:
    """Which pairs every step trains on, and its meta batch: pure functions of the step."""

    data: TrainData
    seed: int
    batch_size: int
    steps_per_epoch: int
    meta_every: int = 0  # 0: no meta-weighting
    meta_batch_size: int = 0
    rank: int = 0
    world_size: int = 1
    # The meta set fits in one meta batch: the same every step, so built once, at the
    # first meta step from ``first_step`` (where this process starts).
    meta_whole: bool = False
    first_step: int = 0
    epoch_captions: str = "one"  # what an epoch holds: see data.epoch_batches
    _epochs: dict = field(default_factory=dict, compare=False, repr=False)

    def batch(self, step: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(epoch, video indices, caption ids) of the global batch of ``step``."""
        epoch, b = divmod(step, self.steps_per_epoch)
        if epoch not in self._epochs:
            self._epochs.clear()  # one epoch at a time per process
            self._epochs[epoch] = epoch_batches(self.data, epoch, self.seed, self.batch_size, self.epoch_captions)
        videos, captions = self._epochs[epoch][b]
        return epoch, videos, captions

    def meta(self, step: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The meta batch of ``step`` (this rank's slice), or None: no meta step, or the
        whole meta set, already built at the first step."""
        if not self.meta_every or step % self.meta_every:
            return None
        first_meta_step = -(-self.first_step // self.meta_every) * self.meta_every
        if self.meta_whole and step != first_meta_step:
            return None
        mv, mc = meta_batch(self.data, step, self.seed, self.meta_batch_size)
        mine = local_slice(len(mv), self.rank, self.world_size)
        return mv[mine], mc[mine]

    def mine(self, count: int) -> slice:
        return local_slice(count, self.rank, self.world_size)


@dataclass
class Batch:
    """One step's batch: the global pairs and this rank's inputs (CPU, or None when the
    training process builds them from the pairs)."""

    step: int
    epoch: int
    videos: np.ndarray
    captions: np.ndarray
    video_inputs: Any = None
    text_inputs: Any = None
    meta_pairs: tuple[np.ndarray, np.ndarray] | None = None
    meta_inputs: Any = None  # (video, text) inputs of the meta batch

    def pin_memory(self) -> "Batch":
        """Page-locked copies of the inputs (DataLoader's pin thread calls this)."""
        from torch.utils.data._utils.pin_memory import pin_memory

        self.video_inputs = pin_memory(self.video_inputs)
        self.text_inputs = pin_memory(self.text_inputs)
        self.meta_inputs = pin_memory(self.meta_inputs)
        return self


class StepBatches:
    """The map-style dataset: item ``step`` is that step's :class:`Batch`, its inputs
    built by ``builder`` (``video(indices)``, ``text(indices)``) when there is one."""

    def __init__(self, plan: BatchPlan, builder: Any = None, total_steps: int = 0):
        self.plan = plan
        self.builder = builder
        self.total_steps = total_steps

    def __len__(self) -> int:
        return self.total_steps

    def __getitem__(self, step: int) -> Batch:
        epoch, videos, captions = self.plan.batch(step)
        batch = Batch(step, epoch, videos, captions, meta_pairs=self.plan.meta(step))
        if self.builder is not None:
            mine = self.plan.mine(len(videos))
            batch.video_inputs = self.builder.video(videos[mine])
            batch.text_inputs = self.builder.text(captions[mine])
            if batch.meta_pairs is not None:
                mv, mc = batch.meta_pairs
                batch.meta_inputs = (self.builder.video(mv), self.builder.text(mc))
        return batch


def _as_is(batch: Batch) -> Batch:
    """The loader's collate function: a step's batch is already a batch."""
    return batch


class BatchStream:
    """The batches of steps ``start`` .. ``total - 1`` in order, each timed: how long
    the training process waited for it (:attr:`last_wait`)."""

    def __init__(self, dataset: StepBatches, start: int, total: int, num_workers: int = 0, pin_memory: bool = False):
        self.dataset = dataset
        self.start, self.total = start, total
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.last_wait = 0.0
        self._iterator: Iterator[Batch] | None = None
        self._loader = None

    def _open(self) -> Iterator[Batch]:
        if self.num_workers <= 0 or self.dataset.builder is None:
            source = (self.dataset[s] for s in range(self.start, self.total))
            return (b.pin_memory() for b in source) if self.pin_memory else source
        import torch

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisers in forked workers
        # Its own generator: workers' seeds must not be drawn from the global RNG, which
        # the checkpoint restores (a resumed run would otherwise draw once more).
        generator = torch.Generator()
        generator.manual_seed(self.dataset.plan.seed)
        self._loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=None,
            sampler=range(self.start, self.total),
            num_workers=self.num_workers,
            collate_fn=_as_is,
            pin_memory=self.pin_memory,  # on the loader's own thread (Batch.pin_memory)
            prefetch_factor=PREFETCH_PER_WORKER,
            persistent_workers=True,
            generator=generator,
        )
        return iter(self._loader)

    def next(self, expected_step: int) -> Batch:
        started = time.perf_counter()
        if self._iterator is None:
            self._iterator = self._open()
        batch = next(self._iterator)
        self.last_wait = time.perf_counter() - started
        if batch.step != expected_step:  # the loader keeps order; this would be a bug
            raise RuntimeError(f"batch of step {batch.step} arrived for step {expected_step}")
        return batch

    def close(self) -> None:
        """Stop the workers now (also after an exception in the training loop)."""
        iterator, self._iterator = self._iterator, None
        if hasattr(iterator, "_shutdown_workers"):  # DataLoader's multi-process iterator
            iterator._shutdown_workers()
        elif hasattr(iterator, "close"):  # the in-process generator
            iterator.close()
        self._loader = None


class StepMeter:
    """Data wait and step time per logging interval, samples per second and the
    device's memory peak; says once per run when training waits on its data."""

    def __init__(self, device, skip_first_interval: bool = True, warn_when_data_bound: bool = True):
        self.device = device
        # Off where batches are a lookup on the device (features): nothing to tune there.
        self.warned = not warn_when_data_bound
        self.intervals = 0
        self.skip_first = skip_first_interval
        self._reset()

    def _reset(self) -> None:
        self.wait = self.busy = 0.0
        self.steps = self.samples = 0
        self._mark = time.perf_counter()

    def waited(self, seconds: float) -> None:
        self.wait += seconds
        self._mark = time.perf_counter()

    def stepped(self, samples: int) -> None:
        now = time.perf_counter()
        self.busy += now - self._mark
        self._mark = now
        self.steps += 1
        self.samples += samples

    def interval(self) -> dict:
        """The interval's figures (keys of :data:`TIMING_KEYS`), then a fresh interval."""
        import torch

        total = self.wait + self.busy
        row = {
            "samples_per_s": self.samples / total if total > 0 else float("nan"),
            "data_wait_ms": 1e3 * self.wait / max(1, self.steps),
            "step_ms": 1e3 * self.busy / max(1, self.steps),
            "data_wait_share": self.wait / total if total > 0 else float("nan"),
            "gpu_mem_peak_mib": None,
        }
        if self.device.type == "cuda":
            row["gpu_mem_peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        self.intervals += 1
        # The first interval includes starting the workers: not a steady state.
        steady = self.intervals > 1 or not self.skip_first
        if steady and not self.warned and total > 0 and row["data_wait_share"] > DATA_BOUND_SHARE:
            self.warned = True
            log.warning(
                "training is data-bound: %.0f %% of the time went to waiting for batches (%.1f ms per step against "
                "%.1f ms in the step); more --num-workers or --frame-source cache would keep the device busier",
                100 * row["data_wait_share"], row["data_wait_ms"], row["step_ms"],
            )
        self._reset()
        return row


def prepare_frame_source(model, choice: str, workdir: str | Path, device, num_workers: int) -> str | None:
    """Give a model that reads keyframe images (``clip``) its frame source and return
    the source's name; None for models without frames. ``auto`` is the frame cache
    when its disk space is free, else Pillow decoding (measured: benchmarks/RESULTS.md)."""
    if not hasattr(model, "set_frame_source"):
        return None
    from mama_augment.train.frame_cache import cache_bytes_needed, cache_folder, open_frame_cache
    from mama_augment.train.frames import DecodedFrames, EncodedFrames, PooledDecodedFrames, gpu_jpeg_decoder

    workdir = Path(workdir)
    paths, size = model.frame_paths, model.image_size
    if choice == "auto":
        choice = "cache"
        folder = cache_folder(workdir, size)
        existing = folder / "frames.u8"
        needed = cache_bytes_needed(paths, size) - (existing.stat().st_size if existing.exists() else 0)
        probe = folder if folder.exists() else workdir
        free = shutil.disk_usage(probe).free
        if needed > 0 and free < needed + 2**30:
            log.warning("frame cache needs %.1f GiB and %s has %.1f GiB free: decoding keyframes each time instead",
                        needed / 2**30, probe, free / 2**30)
            choice = "pil"
    absolute = [str(workdir / p) for p in paths]
    if choice == "cache":
        source, report = open_frame_cache(workdir, paths, size, workers=num_workers)
        log.info("frame cache %s: %d frames, %d reused, %d decoded (%d stale), %d not decodable, %.1f s",
                 cache_folder(workdir, size), report.frames, report.reused, report.decoded, report.stale,
                 report.not_decodable, report.seconds)
        if report.not_decodable:
            log.warning("%d keyframe JPEGs could not be decoded: their videos train on their other keyframes",
                        report.not_decodable)
    elif choice == "pil":
        source = PooledDecodedFrames(absolute, size, num_workers) if num_workers > 0 else DecodedFrames(absolute, size)
    elif choice == "gpu":
        if device.type != "cuda":
            raise UsageError("--frame-source gpu decodes on a GPU: it needs --device cuda")
        if gpu_jpeg_decoder() is None:
            raise UsageError("--frame-source gpu needs TorchCodec or torchvision able to decode JPEGs on CUDA")
        source = EncodedFrames(absolute, size)
    else:
        raise UsageError(f"unknown frame source {choice!r}")
    model.set_frame_source(source)
    return choice


def close_frame_source(model) -> None:
    """Stop any process pool the model's frame source started."""
    source = getattr(model, "frame_source", None)
    if source is not None and hasattr(source, "close"):
        source.close()
