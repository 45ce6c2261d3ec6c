"""The one interface every caption backend implements, and its two small types.

A backend takes requests (one grid + rendered prompt + seed each) and yields
``(request, Generation)`` pairs *as they finish*, in any order, so the stage can write
them to disk at once. A request that fails yields a ``Generation`` with an
``error_kind``; only a failure of the whole run (engine will not start, missing
dependency) raises.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence


@dataclass(frozen=True)
class CaptionRequest:
    video_id: str
    caption_index: int
    grid_path: Path  # absolute path of the grid image
    prompt: str  # rendered prompt text
    seed: int
    attempt: int = 0  # 0 first sample, 1.. regenerations of a too-long caption


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.2
    top_p: float = 1.0
    max_tokens: int = 96
    ignore_eos: bool = False


@dataclass
class Generation:
    text: str | None = None
    error_kind: str | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None


class CaptionBackend:
    """Subclasses implement ``generate``; ``close`` is optional."""

    name = "base"

    def generate(self, requests: Sequence[CaptionRequest]) -> Iterator[tuple[CaptionRequest, Generation]]:
        raise NotImplementedError

    def close(self) -> None:
        """Free the engine / connections (safe to call twice)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# The CLIP mean colour, as LLaVA's own expand2square pads with.
PAD_COLOUR = (122, 116, 104)


def pad_to_square(image):
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), PAD_COLOUR)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def load_grid(path: Path, square: bool = False, min_side: int | None = None):
    """The grid as an RGB Pillow image (raises ``OSError`` when unreadable).

    ``min_side``: the model will shrink the image to this side anyway (after padding
    to a square when ``square``, else by its short edge), so a JPEG is decoded at the
    smallest 1/2, 1/4 or 1/8 scale that still covers it.
    """
    from PIL import Image

    with Image.open(path) as image:
        if min_side and image.format == "JPEG":
            width, height = image.size
            edge = max(width, height) if square else min(width, height)
            image.draft("RGB", (max(1, min_side * width // edge), max(1, min_side * height // edge)))
        image.load()  # pixels now in memory; the file can close
    if image.mode != "RGB":
        image = image.convert("RGB")
    return pad_to_square(image) if square else image


def grid_data_url(path: Path, jpeg_quality: int = 90, square: bool = False, min_side: int | None = None) -> str:
    """``data:image/jpeg;base64,...``; a JPEG file is sent as is, without re-encoding."""
    if square:
        buffer = io.BytesIO()
        load_grid(path, square=True, min_side=min_side).save(buffer, format="JPEG", quality=jpeg_quality)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    data = Path(path).read_bytes()
    if not data.startswith(b"\xff\xd8"):
        buffer = io.BytesIO()
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB").save(buffer, format="JPEG", quality=jpeg_quality)
        data = buffer.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
