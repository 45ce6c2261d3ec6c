"""The meta step as one CUDA graph.

On a GPU a small model's step is bound by launching kernels, not by running them:
the meta step of the ``features`` backbone is a few hundred tiny kernels, each
launched by Python, autograd and the dispatcher at tens of microseconds apiece. With
``meta_params`` ``last`` or ``heads`` the meta step needs only the inputs of its
level (the heads' bodies or the features, fixed shapes every step) and the meta
batch's, so it can be written as a self-contained function
(:meth:`MetaWeighting.step_on_level`), captured once as a CUDA graph and replayed
each step after copying the new inputs into the graph's buffers: one launch instead
of hundreds. The weighting net's Adam is ``capturable``, so its update runs in the
graph too.

Capturing needs a few warm-up runs, which would move the weighting net: its
parameters and optimiser state are copied before and restored after, in place (the
graph holds their addresses). The first replay is checked against the same step
computed eagerly from the same state; any error or mismatch turns the graph off for
the run, with a warning, and the eager step is used. ``--no-cuda-graphs`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from mama_augment.train.meta import MetaStepResult, MetaWeighting

log = logging.getLogger(__name__)

WARMUP_RUNS = 2


def unsupported_reason(meta: MetaWeighting | None, device: torch.device, world_size: int) -> str | None:
    """Why the meta step cannot run as a CUDA graph here, or None when it can."""
    if meta is None:
        return "no meta step"
    if device.type != "cuda":
        return "not on CUDA"
    if world_size > 1:
        return "several processes (the graph would hold collectives)"
    if meta.meta_params == "all":
        return "meta_params all (the virtual step reaches the inputs, whose shapes vary)"
    if meta.agreement_input:
        return "--meta-inputs loss,agreement (the captured step reads the losses alone)"
    return None


class GraphedMetaStep:
    """``step(model, criterion, train_level_inputs, meta_inputs, autocast)``: the meta
    step of ``meta``, replayed from a CUDA graph once one is captured."""

    def __init__(self, meta: MetaWeighting, autocast_dtype: torch.dtype | None):
        self.meta = meta
        self.autocast_dtype = autocast_dtype
        self.graph: torch.cuda.CUDAGraph | None = None
        self.disabled: str | None = None
        self._static_train: tuple | None = None
        self._static_meta: tuple | None = None
        self._outputs: MetaStepResult | None = None
        self._steps = 0

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # the autocast cache would hold casts made outside the graph
        return torch.autocast(device_type="cuda", dtype=self.autocast_dtype, cache_enabled=False)

    def _state(self) -> list[torch.Tensor]:
        tensors = [p.data for p in self.meta.net.parameters()]
        for state in self.meta.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return tensors

    def _snapshot(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(t, t.detach().clone()) for t in self._state()]

    @staticmethod
    def _restore(snapshot) -> None:
        with torch.no_grad():
            for tensor, saved in snapshot:
                tensor.copy_(saved)

    def _fits(self, train_inputs: tuple, meta_inputs: tuple) -> bool:
        shapes = lambda ts: [(t.shape, t.dtype) for t in ts]  # noqa: E731
        return shapes(train_inputs) == shapes(self._static_train) and shapes(meta_inputs) == shapes(self._static_meta)

    def _run_static(self, level, criterion) -> MetaStepResult:
        return self.meta.step_on_level(level, criterion, self._static_train, self._static_meta, self._autocast)

    def step(self, model, criterion, train_level_inputs: tuple, meta_inputs, autocast) -> MetaStepResult:
        level = self.meta.level(model)
        meta_level_inputs = self.meta.meta_level_inputs(model, meta_inputs, autocast)
        self._steps += 1
        # The first step runs eagerly: it creates the optimiser's state the graph will hold.
        if self.disabled or self._steps == 1:
            return self.meta.step_on_level(level, criterion, train_level_inputs, meta_level_inputs, self._autocast)
        if self.graph is None:
            return self._capture(level, criterion, train_level_inputs, meta_level_inputs)
        if not self._fits(train_level_inputs, meta_level_inputs):  # never expected: batches have fixed sizes
            return self.meta.step_on_level(level, criterion, train_level_inputs, meta_level_inputs, self._autocast)
        return self._replay(train_level_inputs, meta_level_inputs)

    def _replay(self, train_level_inputs, meta_level_inputs) -> MetaStepResult:
        for static, new in zip(self._static_train + self._static_meta, train_level_inputs + meta_level_inputs):
            static.copy_(new, non_blocking=True)
        self.graph.replay()
        out = self._outputs
        # the graph's outputs are overwritten by the next replay
        return MetaStepResult(out.weights.clone(), out.raw_weights.clone(), out.meta_loss.clone(),
                              out.meta_grad_norm.clone())

    def _capture(self, level, criterion, train_level_inputs, meta_level_inputs) -> MetaStepResult:
        snapshot = self._snapshot()
        try:
            self._static_train = tuple(t.detach().clone() for t in train_level_inputs)
            self._static_meta = tuple(t.detach().clone() for t in meta_level_inputs)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self._run_static(level, criterion)
            torch.cuda.current_stream().wait_stream(side)
            self._restore(snapshot)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the loader's pin-memory thread may allocate page-locked
            # memory meanwhile; only this thread's calls must be capture-safe.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._outputs = self._run_static(level, criterion)
            self.graph = graph
            # Check the first replay against the eager step from the same state.
            replayed = self._replay(train_level_inputs, meta_level_inputs)
            after_replay = [t.detach().clone() for t in self._state()]
            self._restore(snapshot)
            eager = self.meta.step_on_level(level, criterion, train_level_inputs, meta_level_inputs, self._autocast)
            mismatch = self._mismatch(replayed, eager, after_replay)
            if mismatch:
                raise RuntimeError(f"the replayed meta step differs from the eager one ({mismatch})")
            log.info("meta step captured as a CUDA graph")
            return eager
        except Exception as exc:  # noqa: BLE001 - any failure: run eagerly, say why once
            self.graph, self._outputs = None, None
            self.disabled = f"{type(exc).__name__}: {exc}"
            log.warning("the meta step runs without a CUDA graph: %s", self.disabled)
            self._restore(snapshot)
            return self.meta.step_on_level(level, criterion, train_level_inputs, meta_level_inputs, self._autocast)

    def _mismatch(self, replayed: MetaStepResult, eager: MetaStepResult, after_replay: list[torch.Tensor]) -> str:
        def far(a, b):
            return not torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-5)

        for name in ("weights", "raw_weights", "meta_loss", "meta_grad_norm"):
            if far(getattr(replayed, name), getattr(eager, name)):
                return name
        for k, (a, b) in enumerate(zip(after_replay, self._state())):
            if far(a, b):
                return f"weighting net state tensor {k}"
        return ""
