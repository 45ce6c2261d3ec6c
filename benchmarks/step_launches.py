"""Kernel launches of one training step (``features`` backbone), counted on the CPU.

A small model's step on a GPU is bound by launching kernels: each costs the host tens
of microseconds (Python, autograd, the dispatcher), the kernels themselves a few. So
the number of operators one step dispatches (views and other metadata-only operators
left out, optimisers in their multi-tensor form as on CUDA) predicts the ratio of two
steps' times on a GPU, and can be counted on any machine. Counted:

  infonce       plain symmetric InfoNCE
  mama          meta step every step (``--meta-params last``), eager
  mama-graphed  the same with the meta step replayed from one CUDA graph: what the host
                still launches (the level's meta inputs, copies into the graph's
                buffers, the copies of its outputs) plus the one replay

    .venv/bin/python benchmarks/step_launches.py --batch-size 256
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

METADATA_ONLY = (".view", ".t.", ".detach", "_unsafe_view", ".expand", ".unsqueeze", ".squeeze", ".permute",
                 ".transpose", "lift_fresh", "alias", ".slice", ".select", "_local_scalar", "profiler", ".as_strided")


class CountKernels(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not any(part in name for part in METADATA_ONLY):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


class HostSideOfGraph:
    """What :class:`GraphedMetaStep` launches from the host once its graph exists."""

    def __init__(self, meta):
        self.meta = meta
        self.static = None

    def step(self, model, criterion, level_inputs, meta_inputs, autocast):
        from mama_augment.train.meta import MetaStepResult

        level_meta = self.meta.meta_level_inputs(model, meta_inputs, autocast)
        if self.static is None:
            self.static = [t.clone() for t in (*level_inputs, *level_meta)]
            self.out = self.meta.step_on_level(self.meta.level(model), criterion, level_inputs, level_meta, autocast)
        for static, new in zip(self.static, (*level_inputs, *level_meta)):
            static.copy_(new)
        out = self.out
        return MetaStepResult(out.weights.clone(), out.raw_weights.clone(), out.meta_loss.clone(),
                              out.meta_grad_norm.clone())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--video-dim", type=int, default=1280)
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--head-hidden", type=int, default=0)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--out", default="benchmarks/out/step_launches.json")
    args = parser.parse_args()
    args.meta_batch_size = 0
    # CUDA's default optimiser implementation is the multi-tensor one.
    torch.optim.AdamW = functools.partial(torch.optim.AdamW, foreach=True)
    torch.optim.Adam = functools.partial(torch.optim.Adam, foreach=True)
    import train_step

    from mama_augment.train.loop import training_step

    counts = {}
    for variant in ("infonce", "mama", "mama-graphed"):
        model, criterion, optimizer, meta, params, _ = train_step.build(args, "infonce" if variant == "infonce" else "mama")
        graphed = HostSideOfGraph(meta) if variant == "mama-graphed" else None
        idx = np.arange(args.batch_size)
        meta_inputs = (model.video_inputs(idx), model.text_inputs(idx)) if meta is not None else None

        def step():
            training_step(model, criterion, optimizer, params, model.video_inputs(idx), model.text_inputs(idx),
                          meta, meta_inputs, contextlib.nullcontext, 1.0, 1, graphed)

        step(), step()
        with CountKernels() as counter:
            step()
        counts[variant] = sum(counter.counts.values()) + (1 if variant == "mama-graphed" else 0)
    result = {"launches": counts, "ratio_to_infonce": {k: v / counts["infonce"] for k, v in counts.items()},
              "args": vars(args)}
    for name, count in counts.items():
        print(f"{name:<14}{count:>6} launches  {count / counts['infonce']:.2f}x infonce")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
