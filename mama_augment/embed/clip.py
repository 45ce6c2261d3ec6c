"""``clip``: the image tower of a Hugging Face CLIP (``--embed-model ID_OR_FOLDER``).

Only the vision tower and its projection are loaded (``CLIPVisionModelWithProjection``
from a full CLIP checkpoint; the text weights are skipped). A folder is read with
``local_files_only=True``, so nothing is downloaded; a hub id follows the usual Hugging
Face cache and ``HF_HUB_OFFLINE`` rules.

Preprocessing follows the folder's ``preprocessor_config.json`` (the CLIPImageProcessor
settings: shortest-edge resize with PIL bicubic, centre crop, rescale, mean/std) and is
done here with Pillow and numpy, so neither torchvision nor transformers' image
processor is needed; without that file, CLIP's defaults at the model's image size.

Preparation and model apart: the resize and crop (``ClipPreprocess.geometry``, uint8,
no torch) can run in the decoding processes (:func:`clip_preparer`, which reads the
folder's JSON files only), and ``ClipEmbedder.embed_prepared`` rescales, normalises
and runs the tower once per device on batches mixing many videos: the same steps in
the same order as ``embed``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mama_augment.embed.base import (
    EmbedderOptions,
    as_rgb_uint8,
    batches,
    empty_embeddings,
    l2_normalize_rows,
    resolve_device,
)
from mama_augment.errors import MissingDependency, UsageError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipPreprocess:
    """CLIPImageProcessor's transform, from its config dict, on RGB uint8 arrays."""

    def __init__(self, config: dict[str, Any], image_size: int):
        size = config.get("size", {"shortest_edge": image_size})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        crop = config.get("crop_size", {"height": image_size, "width": image_size})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        self.do_resize = bool(config.get("do_resize", True))
        self.size = dict(size)
        self.resample = int(config.get("resample", Image.Resampling.BICUBIC))
        self.do_center_crop = bool(config.get("do_center_crop", True))
        self.crop = (int(crop["height"]), int(crop["width"]))
        self.rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
        normalize = config.get("do_normalize", True)
        mean = config.get("image_mean", OPENAI_CLIP_MEAN) if normalize else (0.0, 0.0, 0.0)
        std = config.get("image_std", OPENAI_CLIP_STD) if normalize else (1.0, 1.0, 1.0)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """One frame -> float32 (3, H, W) ready for the model."""
        return self.normalize(self.geometry(image)[None])[0]

    def geometry(self, image: np.ndarray) -> np.ndarray:
        """The resize and centre crop: uint8 (H, W, 3)."""
        rgb = as_rgb_uint8(image)
        if self.do_resize:
            height, width = rgb.shape[:2]
            if "shortest_edge" in self.size:
                short_target = int(self.size["shortest_edge"])
                short, long = (width, height) if width <= height else (height, width)
                new_short, new_long = short_target, int(short_target * long / short)
                new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
            else:
                new_h, new_w = int(self.size["height"]), int(self.size["width"])
            if (new_w, new_h) != (width, height):
                pil = Image.fromarray(rgb).resize((new_w, new_h), resample=self.resample)
                rgb = np.asarray(pil)
        if self.do_center_crop:
            rgb = _center_crop(rgb, *self.crop)
        return np.ascontiguousarray(rgb)

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) from ``geometry`` -> float32 (N, 3, H, W) for the model."""
        x = frames.astype(np.float32) * np.float32(self.rescale)
        x = (x - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _center_crop(rgb: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    if crop_h > height or crop_w > width:  # pad with zeros first, as transformers does
        pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
        rgb = np.pad(rgb, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        height, width = rgb.shape[:2]
    top, left = int((height - crop_h) / 2.0), int((width - crop_w) / 2.0)
    return rgb[top : top + crop_h, left : left + crop_w]


@contextlib.contextmanager
def _quiet_transformers():
    """Hide the load report (expected: unused text-tower weights) and progress bars."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _read_processor_config(model_ref: str, local: bool) -> dict[str, Any] | None:
    if local:
        path = Path(model_ref) / "preprocessor_config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        from transformers.utils import cached_file

        path = cached_file(model_ref, "preprocessor_config.json")
    except Exception:  # any failure means "no processor config": use CLIP defaults
        return None
    return json.loads(Path(path).read_text()) if path else None


class ClipEmbedder:
    name = "clip"

    def __init__(self, options: EmbedderOptions | None = None):
        self.options = options or EmbedderOptions()
        model_ref = self.options.model
        if not model_ref:
            raise UsageError(
                "the clip embedder needs a model: pass --embed-model with a Hugging Face "
                "CLIP id or a folder saved with save_pretrained"
            )
        try:
            import torch
            from transformers import CLIPVisionModelWithProjection
        except ImportError as exc:
            raise MissingDependency(exc.name or "transformers", purpose="the clip embedder") from None
        if self.options.threads > 0:
            torch.set_num_threads(self.options.threads)
        self.device = resolve_device(self.options.device)
        self._cuda = self.device.startswith("cuda")
        if model_ref.startswith("~"):
            model_ref = str(Path(model_ref).expanduser())
        local = Path(model_ref).is_dir()
        if not local and (model_ref.startswith((".", "/")) or Path(model_ref).exists()):
            raise UsageError(f"--embed-model {model_ref!r} is not a model folder")

        try:
            with _quiet_transformers():
                config = _vision_config(model_ref, local)
                model = CLIPVisionModelWithProjection.from_pretrained(
                    model_ref, config=config, local_files_only=local
                )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise UsageError(f"cannot load a CLIP image model from {model_ref!r}: {exc}") from exc
        self.model = model.to(self.device).eval()
        self.dim = int(config.projection_dim)
        processor_config = _read_processor_config(model_ref, local) or {}
        self.preprocess = ClipPreprocess(processor_config, int(config.image_size))
        self._torch = torch

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return empty_embeddings(self.dim)
        rows = [self._embed_batch(batch) for batch in batches(images, self.options.batch_size)]
        return l2_normalize_rows(np.concatenate(rows))

    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray:
        """Unit rows of frames already resized and cropped by :func:`clip_preparer`."""
        if len(inputs) == 0:
            return empty_embeddings(self.dim)
        rows = [self._run(self.preprocess.normalize(batch)) for batch in batches(inputs, self.options.batch_size)]
        return l2_normalize_rows(np.concatenate(rows))

    def _embed_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._run(np.stack([self.preprocess(image) for image in images]))

    def _run(self, pixel_values: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(pixel_values).to(self.device)
            autocast = (
                torch.autocast("cuda", dtype=torch.float16) if self._cuda else contextlib.nullcontext()
            )
            with autocast:
                out = self.model(pixel_values=x)
            embeds = out.image_embeds.float()
        return embeds.cpu().numpy().astype(np.float32, copy=False)


def clip_preparer(model_ref: str):
    """The resize and crop of ``model_ref``'s preprocessing (frames -> uint8 (N, H, W,
    3)), from its JSON files, without loading the model (or torch, for a folder)."""
    if model_ref.startswith("~"):
        model_ref = str(Path(model_ref).expanduser())
    local = Path(model_ref).is_dir()
    if local:
        path = Path(model_ref) / "config.json"
        config = json.loads(path.read_text()) if path.is_file() else {}
        vision = config.get("vision_config", config)
        image_size = int(vision.get("image_size", 224))
    else:
        image_size = int(_vision_config(model_ref, local).image_size)
    preprocess = ClipPreprocess(_read_processor_config(model_ref, local) or {}, image_size)

    def prepare(images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([preprocess.geometry(image) for image in images])

    return prepare


def _vision_config(model_ref: str, local: bool):
    """The vision config, with the projection size of the whole CLIP when there is one.

    A full CLIP checkpoint keeps ``projection_dim`` at the top level; its vision
    sub-config may carry a stale default (512), which would break the projection.
    """
    from transformers import AutoConfig, CLIPConfig, CLIPVisionConfig

    config = AutoConfig.from_pretrained(model_ref, local_files_only=local)
    if isinstance(config, CLIPConfig):
        vision = config.vision_config
        vision.projection_dim = config.projection_dim
        return vision
    if isinstance(config, CLIPVisionConfig):
        return config
    raise ValueError(f"it is a {type(config).__name__}, not a CLIP model")
