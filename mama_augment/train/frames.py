"""Keyframe pixels for the ``clip`` backbone, from one of several sources.

Every source returns the same thing: ``uint8`` frames of ``(frames, size, size, 3)``
(height, width, RGB: the layout images have, so no copy is made to reorder them),
each keyframe JPEG centre-cropped to a square and resized with Pillow's bicubic
filter, as CLIP's image processor does. Reordering to channels first and normalising
(mean/std) happen on the model's device, so what travels between processes, and to
the GPU, is 4x smaller than float pixels.

Sources (``--frame-source``, named in ``config.FRAME_SOURCES``; which one is cheapest
was measured, see benchmarks/RESULTS.md):

* ``cache``: the frames stored once at the model's input size in one file
  (``train/frame_cache.py``); a read is a copy, each frame's checksum checked.
* ``pil``: decode, crop and resize every JPEG with Pillow each time it is used.
* ``gpu``: the JPEG bytes are read on the CPU and decoded on the GPU (TorchCodec's
  ``decode_jpeg``, else torchvision's; nvJPEG underneath), then cropped and resized
  there. The resize runs on the GPU, so pixels differ slightly from Pillow's.

Sources are small picklable objects: the loader's worker processes each get a copy.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mama_augment.errors import MamaError

log = logging.getLogger(__name__)

# Written into the frame cache's index: a cache made by another rule is stale.
RESIZE_RULE = "centre square crop, Pillow bicubic resize, RGB uint8 HWC"


def frame_pixels(path: str | os.PathLike, size: int) -> np.ndarray:
    """One keyframe as ``(size, size, 3)`` uint8: centre square crop, bicubic resize."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        return np.asarray(image, dtype=np.uint8)


def decode_frame(path: str | os.PathLike, size: int) -> np.ndarray:
    """:func:`frame_pixels` with a failure turned into a :class:`MamaError` naming the file."""
    try:
        return frame_pixels(path, size)
    except Exception as exc:  # Pillow raises many kinds for damaged files
        raise MamaError(f"cannot read the keyframe {path}: {exc}") from exc


def as_tensor(frames: np.ndarray):
    """``(k, size, size, 3)`` uint8 frames as a tensor, without a copy."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames))


class FrameSource:
    """``frames(frame_ids) -> uint8 tensor (k, size, size, 3)`` in the order asked."""

    size: int
    name = ""
    on_device = False  # True: the result must still be decoded on the device (gpu)

    def frames(self, frame_ids: Sequence[int]):  # pragma: no cover - interface
        raise NotImplementedError


class DecodedFrames(FrameSource):
    """Pillow decoding of every keyframe, each time (``pil``)."""

    name = "pil"

    def __init__(self, paths: Sequence[str], size: int):
        self.paths = list(paths)  # absolute, one per frame id
        self.size = int(size)

    def frames(self, frame_ids):
        out = np.empty((len(frame_ids), self.size, self.size, 3), dtype=np.uint8)
        for k, frame_id in enumerate(frame_ids):
            out[k] = decode_frame(self.paths[frame_id], self.size)
        return as_tensor(out)


def _decode_task(args: tuple[str, int]) -> np.ndarray:
    return decode_frame(*args)


class PooledDecodedFrames(DecodedFrames):
    """:class:`DecodedFrames` whose decoding runs in a pool of worker processes, for the
    training process's own reads (validation, the final scoring of every pair) when
    the run has loader workers: the training process itself then never decodes."""

    def __init__(self, paths: Sequence[str], size: int, workers: int):
        super().__init__(paths, size)
        self.workers = int(workers)
        self._pool = None
        self._owner = os.getpid()

    def frames(self, frame_ids):
        if os.getpid() != self._owner:  # a copy inherited by a loader worker decodes itself
            return super().frames(frame_ids)
        if self._pool is None:
            import concurrent.futures
            import multiprocessing

            self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
        tasks = [(self.paths[i], self.size) for i in frame_ids]
        chunk = max(1, len(tasks) // (4 * self.workers))
        out = np.stack(list(self._pool.map(_decode_task, tasks, chunksize=chunk))) if tasks else np.empty(
            (0, self.size, self.size, 3), np.uint8)
        return as_tensor(out)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __getstate__(self):  # a copy sent to another process decodes by itself
        state = dict(self.__dict__)
        state["_pool"], state["_owner"] = None, -1
        return state


class EncodedFrames(FrameSource):
    """The keyframe JPEGs' bytes, read on the CPU and decoded on the GPU (``gpu``)."""

    name = "gpu"
    on_device = True

    def __init__(self, paths: Sequence[str], size: int):
        self.paths = list(paths)
        self.size = int(size)

    def frames(self, frame_ids):
        import torch

        out = []
        for frame_id in frame_ids:
            data = Path(self.paths[frame_id]).read_bytes()
            out.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return out


@functools.lru_cache(maxsize=1)
def gpu_jpeg_decoder():
    """``decode(list of 1-D uint8 CPU tensors, device) -> list of (3, H, W) uint8 on the
    device``, or None when neither TorchCodec nor torchvision decodes JPEGs on CUDA
    here. Each candidate is tried on a small JPEG first (an importable package may
    still lack its CUDA kernels). torchvision's ``decode_jpeg`` on CUDA is deprecated
    in favour of TorchCodec's, so TorchCodec is tried first."""
    import io

    import torch
    from PIL import Image

    if not torch.cuda.is_available():
        return None
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 30)).save(buffer, format="JPEG")
    probe = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)

    def torchcodec_decode(blobs, device):
        from torchcodec.decoders import decode_jpeg  # TorchCodec >= 0.16

        return [decode_jpeg(b, device=str(device)) for b in blobs]

    def torchvision_decode(blobs, device):
        import torchvision.io as tvio

        return tvio.decode_jpeg(list(blobs), mode=tvio.ImageReadMode.RGB, device=device)

    for decode in (torchcodec_decode, torchvision_decode):
        try:
            image = decode([probe], torch.device("cuda"))[0]
            if tuple(image.shape[-2:]) == (8, 16) and image.is_cuda:
                return decode
        except Exception:  # absent, or a build without CUDA kernels for this torch
            continue
    return None


def decode_on_device(blobs, size: int, device):
    """JPEG bytes -> ``(k, size, size, 3)`` uint8 on ``device``: decoded there, centre
    square crop, bicubic resize with antialiasing (close to, not equal to, Pillow's)."""
    import torch
    import torch.nn.functional as F

    decode = gpu_jpeg_decoder()
    if decode is None:
        raise MamaError("--frame-source gpu needs TorchCodec or torchvision with CUDA JPEG decoding")
    images = decode(list(blobs), device)
    out = torch.empty((len(images), size, size, 3), dtype=torch.uint8, device=device)
    for k, image in enumerate(images):
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        height, width = image.shape[-2:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = image[:, top : top + side, left : left + side].unsqueeze(0).float()
        resized = F.interpolate(square, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out[k] = resized.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    return out
