"""The tiny random LLaVA of the caption tests, one per test process.

The builder lives in ``examples/tiny_vlm.py`` (the README's quick start builds the same
model); this module keeps a shared copy for the tests and a keyframes fixture:

    python tests/tiny_llava.py /tmp/tiny-llava      # build once, print the folder
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from tiny_vlm import (  # noqa: E402  (re-exported: tests and benchmarks import them from here)
    CHAT_TEMPLATE,
    IMAGE_SEQ_LENGTH,
    IMAGE_SIZE,
    PATCH_SIZE,
    SPECIAL_TOKENS,
    build_tiny_llava,
)

__all__ = ["CHAT_TEMPLATE", "IMAGE_SEQ_LENGTH", "IMAGE_SIZE", "PATCH_SIZE", "SPECIAL_TOKENS", "build_tiny_llava",
           "make_keyframes_workdir", "tiny_llava_dir"]


_CACHED: Path | None = None


def tiny_llava_dir() -> Path:
    """One tiny LLaVA per process (tests share it), removed at exit."""
    global _CACHED
    if _CACHED is None or not (_CACHED / "config.json").exists():
        root = Path(tempfile.mkdtemp(prefix="tiny-llava-"))
        atexit.register(shutil.rmtree, root, True)
        _CACHED = build_tiny_llava(root / "model")
    return _CACHED


if __name__ == "__main__":
    print(build_tiny_llava(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tiny-llava-")))


def make_keyframes_workdir(workdir: str | Path, num_videos: int = 4, rows: int = 2, cols: int = 2,
                           failed: int = 1, size: tuple[int, int] = (96, 72)) -> Path:
    """A work folder with a tiny ``keyframes.parquet``: ``num_videos`` ok rows with JPEG
    grids (generated, fixed colours) and ``failed`` failed rows without a grid."""
    from PIL import Image, ImageDraw

    from mama_augment.manifest import KEYFRAMES, PartWriter, compact

    workdir = Path(workdir)
    (workdir / "grids").mkdir(parents=True, exist_ok=True)
    records = []
    for number in range(num_videos):
        video_id = f"vid{number:04d}"
        image = Image.new("RGB", size, ((number * 53) % 256, (number * 97) % 256, 128))
        draw = ImageDraw.Draw(image)
        cell_w, cell_h = size[0] // cols, size[1] // rows
        for cell in range(rows * cols):
            x, y = (cell % cols) * cell_w, (cell // cols) * cell_h
            draw.rectangle([x + 2, y + 2, x + 2 + (cell * 5) % cell_w, y + cell_h - 3], fill=(255, 255 - cell * 20, 0))
        grid_path = f"grids/{video_id}.jpg"
        image.save(workdir / grid_path, quality=90)
        records.append({
            "video_id": video_id, "path": f"/videos/{video_id}.mp4", "status": "ok", "media_type": "video",
            "keyframe_paths": [f"frames/{video_id}/{i:02d}.jpg" for i in range(rows * cols)],
            "grid_path": grid_path, "grid_rows": rows, "grid_cols": cols,
        })
    for number in range(failed):
        records.append({"video_id": f"bad{number:04d}", "path": f"/videos/bad{number}.mp4", "status": "failed",
                        "error_kind": "decode_error", "error": "cannot decode"})
    PartWriter(workdir, KEYFRAMES).write(records)
    compact(workdir, KEYFRAMES)
    return workdir
