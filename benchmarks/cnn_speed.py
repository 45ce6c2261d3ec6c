"""The ``cnn`` embedder's CPU cost per frame and what each speed-up does to keyframes.

Frames: the clips of ../shared/media sampled at 2 fps as 320 px thumbnails (as in
``benchmarks/coverage.py``). For each variant:

* CPU ms/frame (``time.process_time``) and wall ms/frame, with 1 and 2 torch threads,
  embedding ``--timing-frames`` frames in batches of 32 (best of ``--repeat``),
* cosine of each frame's embedding with the float32 224 px reference (min, mean),
* keyframe coverage (``benchmarks/coverage.py``'s ratio to uniform frames, ``cover``
  selection, 12 keyframes, mean over clips with more than 12 frames; lower is better),
  once in the variant's own embedding space and once with the keyframes the variant
  picks scored in the reference space ("in-ref": the honest one across input sizes).

Variants: ``fp32`` (the network as loaded, the reference), the folded network (BN
folded into the convolutions) run by PyTorch and by OpenVINO (the default when
``openvino`` is installed; a runtime per thread count), with ``--onnxruntime`` the
folded network exported to ONNX and run by ONNX Runtime (needs ``onnx`` and
``onnxruntime``; skipped with a note when absent), the folded network at 160 and
128 px, and with ``--int8`` static int8 (FX graph mode, oneDNN engine, ReLU6 as a
saturating conv+ReLU output range) calibrated on the bundled example clips.

Other jobs on the machine inflate wall times and, with 2 threads, CPU time too
(threads spin while waiting for a core): ``uptime`` is printed before and after.

    .venv/bin/python benchmarks/cnn_speed.py [--media DIR] [--int8] [--onnxruntime] [--repeat 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.coverage import CLIPS, coverage, sample_frames, uniform_indices  # noqa: E402
from mama_augment.embed import EmbedderOptions, get_embedder  # noqa: E402
from mama_augment.embed import cnn as cnn_module  # noqa: E402
from mama_augment.keyframes.dpc import select_keyframes  # noqa: E402


def uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def letterboxed(frames, size: int):
    import torch

    canvas = np.full((len(frames), size, size, 3), cnn_module.PAD_VALUE, dtype=np.uint8)
    for slot, frame in zip(canvas, frames):
        cnn_module._letterbox_into(np.ascontiguousarray(frame), slot)
    x = torch.from_numpy(canvas).permute(0, 3, 1, 2).float()
    return x.div_(255.0).sub_(cnn_module.MEAN).div_(cnn_module.STD)


def network_embedder(forward, size: int, batch_size: int = 32):
    """An ``embed(frames)`` running ``forward`` on ``size`` px letterboxed frames."""
    import torch

    def embed(frames):
        rows = []
        with torch.inference_mode():
            for start in range(0, len(frames), batch_size):
                features = forward(letterboxed(frames[start : start + batch_size], size))
                if features.is_quantized:
                    features = features.dequantize()
                rows.append(features.float().mean(dim=(2, 3)).numpy())
        vectors = np.concatenate(rows)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return embed


def int8_network(folded_relu, calibration, size: int = 224):
    """Static int8 of the folded network (FX graph mode, oneDNN engine)."""
    import torch
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    class Relu6Range(MinMaxObserver):
        """Output range of conv+ReLU clipped at 6: uint8 saturation is the ReLU6."""

        def forward(self, x):
            super().forward(x.detach().clamp(max=6.0))
            return x

    torch.backends.quantized.engine = "onednn"
    weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    mapping = (
        QConfigMapping()
        .set_global(QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8), weight=weight))
        .set_module_name_regex(
            r"(stem|head|blocks\.\d+\.(expand|depthwise))",
            QConfig(activation=Relu6Range.with_args(dtype=torch.quint8), weight=weight),
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(folded_relu), mapping, (letterboxed(calibration[:1], size),))
        with torch.inference_mode():
            for start in range(0, len(calibration), 8):
                prepared(letterboxed(calibration[start : start + 8], size))
        return convert_fx(prepared)


def relu_variant(folded):
    """The folded network with ReLU instead of ReLU6 (for int8: the 6 is the range)."""
    import torch

    model = copy.deepcopy(folded)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU6):
                setattr(module, child_name, torch.nn.ReLU())
    return model


def coverage_ratios(embeddings: dict, reference: dict, keyframes: int = 12) -> tuple[float, float]:
    own, in_ref = [], []
    for name, emb in embeddings.items():
        if len(emb) <= keyframes:
            continue
        picked = select_keyframes(emb, keyframes, knn=5, selection="cover")
        uniform = uniform_indices(len(emb), keyframes)
        own.append(coverage(emb, picked) / coverage(emb, uniform))
        ref = reference[name]
        in_ref.append(coverage(ref, picked) / coverage(ref, uniform))
    return float(np.mean(own)), float(np.mean(in_ref))


def onnxruntime_embedders(folded, threads_list, path: Path) -> dict:
    """threads -> ``embed(frames)`` running ``folded`` exported to ONNX in ONNX Runtime."""
    import onnxruntime
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, x):
            return self.network(x).mean(dim=(2, 3))

    example = letterboxed([np.zeros((240, 320, 3), np.uint8)] * 2, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(folded).eval(), (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17)
    embedders = {}
    for threads in threads_list:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def embed(frames, session=session):
            rows = [session.run(None, {"x": letterboxed(frames[i : i + 32], 224).numpy()})[0]
                    for i in range(0, len(frames), 32)]
            vectors = np.concatenate(rows)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

        embedders[threads] = embed
    return embedders


def time_per_frame(embed, frames, threads: int, repeat: int) -> tuple[float, float]:
    import torch

    if isinstance(embed, dict):  # a runtime whose threads are fixed when it is built
        embed = embed[threads]
    torch.set_num_threads(threads)
    embed(frames[:4])  # warm-up
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        embed(frames)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        best = min(best, (cpu / len(frames) * 1e3, wall / len(frames) * 1e3))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--timing-frames", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--int8", action="store_true", help="also the int8 variant (slow to build)")
    parser.add_argument("--onnxruntime", action="store_true", help="also ONNX Runtime (needs onnx, onnxruntime)")
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, cpu count {os.cpu_count()}, load {uptime()}")
    clips = {}
    for name in CLIPS:
        if (args.media / name).exists():
            frames = sample_frames(args.media / name)
            if frames:
                clips[name] = frames
    if not clips:
        sys.exit(f"no clips in {args.media}")
    every = [frame for frames in clips.values() for frame in frames]
    step = max(1, len(every) // args.timing_frames)
    timing = every[::step][: args.timing_frames]
    print(f"{len(clips)} clips, {len(every)} frames; timing on {len(timing)} of them")

    torch.set_num_threads(2)
    started = time.perf_counter()
    fp32 = get_embedder("cnn", EmbedderOptions(device="cpu", precision="fp32"))
    load_fp32 = time.perf_counter() - started
    started = time.perf_counter()
    auto = get_embedder("cnn", EmbedderOptions(device="cpu"))
    load_auto = time.perf_counter() - started
    print(f"load: fp32 {load_fp32:.2f} s, auto ({auto.precision}, {auto.runtime}) {load_auto:.2f} s")
    folded = get_embedder("cnn", EmbedderOptions(device="cpu", runtime="torch"))

    variants: dict = {"fp32 224 (reference)": fp32.embed, "folded 224, torch": folded.embed}
    if auto.runtime == "openvino":
        variants["folded 224, openvino (default)"] = {
            t: get_embedder("cnn", EmbedderOptions(device="cpu", threads=t)).embed for t in args.threads}
    else:
        print("openvino is not installed: the default is the folded network in PyTorch")
    if args.onnxruntime:
        try:
            import tempfile

            path = Path(tempfile.mkdtemp()) / "lite0-folded.onnx"
            variants["folded 224, onnxruntime"] = onnxruntime_embedders(folded.model, args.threads, path)
        except ImportError as exc:
            print(f"onnxruntime variant skipped: {exc}")
    for size in (160, 128):
        variants[f"folded {size}"] = network_embedder(folded.model, size)
    if args.int8:
        examples = REPO / "examples" / "videos"
        calibration = [f for p in sorted(examples.glob("*.mp4")) for f in sample_frames(p)]
        started = time.perf_counter()
        int8 = int8_network(relu_variant(folded.model).to(memory_format=torch.contiguous_format), calibration)
        print(f"int8 build (calibration on {len(calibration)} example frames): {time.perf_counter() - started:.1f} s")
        variants["int8 224 (onednn)"] = network_embedder(int8, 224)

    reference = {name: fp32.embed(frames) for name, frames in clips.items()}
    header = f"{'variant':30s} {'cos min':>7s} {'mean':>6s} {'cover':>6s} {'in-ref':>6s}"
    header += "".join(f"  {t}thr cpu/wall ms" for t in args.threads)
    print("\n" + header)
    for name, embed in variants.items():
        torch.set_num_threads(2)
        first = embed[max(embed)] if isinstance(embed, dict) else embed
        embeddings = {clip: first(frames) for clip, frames in clips.items()}
        cosine = np.concatenate([(embeddings[c] * reference[c]).sum(axis=1) for c in clips])
        own, in_ref = coverage_ratios(embeddings, reference)
        cells = ""
        for threads in args.threads:
            cpu, wall = time_per_frame(embed, timing, threads, args.repeat)
            cells += f"  {cpu:7.1f} / {wall:6.1f}   "
        print(f"{name:30s} {cosine.min():7.4f} {cosine.mean():6.4f} {own:6.4f} {in_ref:6.4f}{cells}", flush=True)
    print(f"\nload after: {uptime()}")


if __name__ == "__main__":
    main()
