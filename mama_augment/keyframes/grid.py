"""Tile keyframes into one grid image (Pillow and numpy only, no I/O but ``save_jpeg``).

MAMA captions a 3 x 4 grid of 12 keyframes, in temporal order, row-major (left to
right, top to bottom). Every cell has the same size; a frame is letterboxed into its
cell (aspect kept, centred, bars in the background colour). Cells beyond the frames
given stay blank.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from mama_augment.fileio import atomic_path
from mama_augment.errors import UsageError

_PAIR = re.compile(r"^\s*(\d+)\s*[xX×*]\s*(\d+)\s*$")
# The largest grid written: what Pillow (and so the tool's own image reader and the
# caption stage) opens without taking it for a decompression bomb, and what a JPEG
# can hold on a side.
MAX_GRID_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
MAX_GRID_SIDE = 65_500


def _parse_pair(text: str, what: str, example: str) -> tuple[int, int]:
    match = _PAIR.match(str(text))
    if not match:
        raise UsageError(f"{what} must look like {example!r}, got {text!r}")
    first, second = int(match.group(1)), int(match.group(2))
    if first <= 0 or second <= 0:
        raise UsageError(f"{what} must be positive on both sides, got {text!r}")
    return first, second


def parse_grid(text: str) -> tuple[int, int]:
    """``"3x4"`` -> ``(rows, cols)`` = ``(3, 4)``."""
    return _parse_pair(text, "a grid", "3x4 (rows x columns)")


def parse_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(width, height)`` = ``(320, 240)``."""
    return _parse_pair(text, "a tile size", "320x240 (width x height)")


def check_grid_size(rows: int, cols: int, tile_w: int, tile_h: int) -> None:
    """UsageError when a grid of ``rows`` x ``cols`` tiles of ``tile_w`` x ``tile_h``
    would be larger than the tool writes (``MAX_GRID_PIXELS``, ``MAX_GRID_SIDE``)."""
    width, height = cols * tile_w, rows * tile_h
    if width > MAX_GRID_SIDE or height > MAX_GRID_SIDE or width * height > MAX_GRID_PIXELS:
        raise UsageError(
            f"--grid {rows}x{cols} of --tile-size {tile_w}x{tile_h} makes a {width}x{height} grid image; "
            f"the largest written is {MAX_GRID_PIXELS / 1e6:.0f} megapixels and {MAX_GRID_SIDE} pixels a side"
        )


def _as_pil(image: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"grid images must be uint8 arrays, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), mode="RGB")
    raise ValueError(f"grid images must have shape (H, W, 3), got {array.shape}")


def fit_size(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The largest (w, h) with the image's aspect that fits in the box (at least 1 px)."""
    scale = min(box_w / width, box_h / height)
    return max(1, min(box_w, round(width * scale))), max(1, min(box_h, round(height * scale)))


def make_grid(
    images: Sequence[np.ndarray | Image.Image],
    rows: int,
    cols: int,
    tile_size: tuple[int, int] = (320, 240),
    background: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """Tile ``images`` row-major into a ``rows`` x ``cols`` grid of ``tile_size`` cells.

    The result is ``cols * w`` wide and ``rows * h`` high. More images than cells is a
    ValueError: which frames to keep is the caller's choice.
    """
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must have positive rows and columns, got {rows}x{cols}")
    tile_w, tile_h = (int(v) for v in tile_size)
    if tile_w <= 0 or tile_h <= 0:
        raise ValueError(f"tile size must be positive, got {tile_size}")
    if len(images) > rows * cols:
        raise ValueError(f"{len(images)} images do not fit a {rows}x{cols} grid")
    grid = Image.new("RGB", (cols * tile_w, rows * tile_h), tuple(background))
    for position, image in enumerate(images):
        tile = _as_pil(image)
        new_w, new_h = fit_size(tile.width, tile.height, tile_w, tile_h)
        if (new_w, new_h) != tile.size:
            tile = tile.resize((new_w, new_h), resample=Image.Resampling.BICUBIC, reducing_gap=3.0)
        row, col = divmod(position, cols)
        left = col * tile_w + (tile_w - new_w) // 2
        top = row * tile_h + (tile_h - new_h) // 2
        grid.paste(tile, (left, top))
    return grid


def save_jpeg(image: Image.Image, path: str | Path, quality: int = 90) -> Path:
    """Write ``image`` as JPEG atomically (temporary file, then rename); returns the path.

    Parent folders are created. A reader never sees a half-written file, and a crash
    leaves at most a stray ``.tmp`` file beside the target.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        image.convert("RGB").save(tmp, format="JPEG", quality=int(quality))
    return path
