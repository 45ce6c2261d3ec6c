"""Cost of one MAMA training step (meta step every iteration) against InfoNCE.

Same model (``features`` backbone: attention pooling over frozen keyframe embeddings,
MLP heads), same batch, same optimiser, one process; variants are timed in
interleaved rounds so a noisy shared CPU affects them alike, and the ratio to InfoNCE
is computed from medians. Every variant runs the library's own ``training_step``.

Variants:
  infonce          plain symmetric InfoNCE
  margin           MAMA loss, no meta-weighting
  mama             margin + meta step every step, virtual step over the last projection
                   layers and the logit scale (the default, meta_params=last)
  mama-cached      as mama, with a meta set that fits in one meta batch (the loop then
                   builds the meta batch's inputs once instead of every step)
  mama-heads       as mama, virtual step over the whole projection heads
  mama-all         margin + meta step every step, virtual step over every trainable
                   parameter (exact Meta-Weight-Net on this model)
  mama-naive       as mama-all, but the real step recomputes the training forward
                   (how Meta-Weight-Net code is usually written)
  mama-graphed     as mama, the meta step replayed from one CUDA graph (CUDA only; what
                   training on CUDA does by default)

On CUDA (``--device cuda``) steps run under bf16 autocast with a fused AdamW, as
training does there, and every timed step ends with a device synchronisation.

    python benchmarks/train_step.py --batch-size 128 --frames 12 --rounds 100
    python3 benchmarks/train_step.py --device cuda --batch-size 256 --variants infonce,mama,mama-graphed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mama_augment.train.config import TrainConfig
from mama_augment.train.loop import _param_groups, training_step
from mama_augment.train.losses import build_loss
from mama_augment.train.meta import MetaWeighting
from mama_augment.train.data import VideoTable
from mama_augment.train.models import FeaturesModel
from mama_augment.train.text import TextEncoder


class RandomText(TextEncoder):
    def __init__(self, dim: int):
        self.name, self.dim = f"random-{dim}", dim

    def encode(self, texts):
        rng = np.random.default_rng(len(texts))
        x = rng.normal(size=(len(texts), self.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(args, variant: str):
    torch.manual_seed(0)
    device = torch.device(getattr(args, "device", "cpu"))
    config = TrainConfig(embed_dim=args.embed_dim, head_hidden=args.head_hidden, temporal="attention",
                         meta_params={"mama-heads": "heads", "mama-all": "all", "mama-naive": "all"}.get(variant, "last"))
    model = FeaturesModel(args.video_dim, RandomText(args.text_dim), config, cache_dir=None).to(device)
    n = args.batch_size * 4
    rng = np.random.default_rng(0)
    videos = VideoTable([f"v{i}" for i in range(n)],
                        [rng.normal(size=(args.frames, args.video_dim)).astype(np.float32) for _ in range(n)],
                        [[] for _ in range(n)], [None] * n)
    model.set_videos(videos)
    model.set_texts([f"caption {i}" for i in range(n)])
    criterion = build_loss("infonce" if variant == "infonce" else "mama", getattr(args, "margin", 0.1))
    optimizer = torch.optim.AdamW(_param_groups(model, 0.01), lr=1e-4, fused=device.type == "cuda")
    meta = MetaWeighting(100, 1e-3, 0.1, config.meta_params, device) if variant.startswith("mama") else None
    params = [p for p in model.parameters() if p.requires_grad]
    graphed = None
    if variant == "mama-graphed":
        from mama_augment.train.cuda_graphs import GraphedMetaStep, unsupported_reason

        reason = unsupported_reason(meta, device, 1)
        if reason:
            raise SystemExit(f"mama-graphed: {reason}")
        graphed = GraphedMetaStep(meta, torch.bfloat16)
    return model, criterion, optimizer, meta, params, graphed


def autocast_of(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def run_steps(args, variant, state, steps: int) -> float:
    model, criterion, optimizer, meta, params, graphed = state
    b, mb = args.batch_size, args.meta_batch_size or args.batch_size
    autocast = autocast_of(model.device)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for k in range(steps):
        idx = np.arange(b) + (k % 3) * b
        midx = np.arange(mb) % (b * 4)
        if meta is None:
            meta_inputs = None
        elif variant == "mama-cached":
            # A meta set that fits in one meta batch: the loop builds its inputs once.
            if not hasattr(model, "_bench_meta_inputs"):
                model._bench_meta_inputs = (model.video_inputs(midx), model.text_inputs(midx))
            meta_inputs = model._bench_meta_inputs
        else:
            meta_inputs = (model.video_inputs(midx), model.text_inputs(midx))
        if variant == "mama-naive":
            # The usual Meta-Weight-Net code: meta step on its own forward, then a
            # fresh forward for the real step.
            with autocast():
                video, text, scale = model(model.video_inputs(idx), model.text_inputs(idx))
                per_sample = criterion(video, text, scale).per_sample
            meta.step(model, criterion, per_sample, meta_inputs, autocast)
            training_step(model, criterion, optimizer, params, model.video_inputs(idx), model.text_inputs(idx),
                          meta, None, autocast, 1.0)
        else:
            training_step(model, criterion, optimizer, params, model.video_inputs(idx), model.text_inputs(idx),
                          meta, meta_inputs, autocast, 1.0, 1, graphed)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--meta-batch-size", type=int, default=0, help="0: the batch size")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--video-dim", type=int, default=1280)
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--head-hidden", type=int, default=TrainConfig().head_hidden)
    parser.add_argument("--rounds", type=int, default=100, help="timed steps of each variant")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--margin", type=float, default=0.1, help="margin of the mama variants (the library's default is 0)")
    parser.add_argument("--variants", default="infonce,margin,mama,mama-cached,mama-heads,mama-all,mama-naive")
    parser.add_argument("--out", default="benchmarks/out/train_step.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    states = {v: build(args, v) for v in variants}
    for v in variants:  # warm-up
        run_steps(args, v, states[v], 3)
    # One step of each variant per round, in a rotating order: contention from other
    # processes on a shared CPU falls on all variants alike, medians ignore bursts.
    times = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            times[v].append(run_steps(args, v, states[v], 1))
    base = statistics.median(times["infonce"]) if "infonce" in times else None
    graphed = states.get("mama-graphed")
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}"
                   + (f", {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""),
        "graph": (graphed[5].disabled or "captured") if graphed else None,
        "torch": torch.__version__,
        "args": vars(args),
        "variants": {},
    }
    print(f"{'variant':<12}{'median ms':>10}{'IQR ms':>16}{'min ms':>8}{'x infonce':>11}")
    for v in variants:
        med = statistics.median(times[v])
        q1, q3 = np.percentile(times[v], [25, 75])
        row = {"ms_per_step": med * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3, "min_ms": min(times[v]) * 1e3,
               "ratio_to_infonce": med / base if base else None}
        result["variants"][v] = row
        ratio = f"{row['ratio_to_infonce']:.2f}" if base else "-"
        print(f"{v:<12}{row['ms_per_step']:10.1f}{row['q1_ms']:8.1f}-{row['q3_ms']:<7.1f}{row['min_ms']:8.1f}{ratio:>11}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
