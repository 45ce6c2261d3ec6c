"""Grid images: geometry, row-major order, letterbox bars, blank cells, atomic JPEG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mama_augment.errors import UsageError
from mama_augment.keyframes.grid import make_grid, parse_grid, parse_size, save_jpeg


def solid(color, width=64, height=48) -> np.ndarray:
    return np.full((height, width, 3), color, dtype=np.uint8)


COLORS = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 0), (128, 0, 128), (0, 128, 128),
]  # fmt: skip


def cell_center(grid: Image.Image, row: int, col: int, tile=(40, 30)) -> tuple[int, int, int]:
    return grid.getpixel((col * tile[0] + tile[0] // 2, row * tile[1] + tile[1] // 2))


@pytest.mark.parametrize(
    "text, expected",
    [("3x4", (3, 4)), (" 2 X 6 ", (2, 6)), ("1x1", (1, 1)), ("10*2", (10, 2))],
)
def test_parse_grid(text, expected):
    assert parse_grid(text) == expected


@pytest.mark.parametrize("text", ["3x", "x4", "0x4", "3x0", "abc", "3x4x5", "-3x4", "3.5x4", ""])
def test_parse_grid_rejects_bad_text(text):
    with pytest.raises(UsageError, match="grid"):
        parse_grid(text)


def test_parse_size():
    assert parse_size("320x240") == (320, 240)
    with pytest.raises(UsageError, match="320x240"):
        parse_size("320")


def test_geometry_and_row_major_order():
    grid = make_grid([solid(c) for c in COLORS], rows=3, cols=4, tile_size=(40, 30))
    assert grid.size == (4 * 40, 3 * 30)
    assert grid.mode == "RGB"
    for position, color in enumerate(COLORS):
        row, col = divmod(position, 4)
        assert cell_center(grid, row, col) == color


def test_letterbox_bars_for_a_wide_frame():
    wide = solid((255, 0, 0), width=200, height=50)  # 4:1 into a 4:3 cell
    grid = make_grid([wide], rows=1, cols=1, tile_size=(80, 60), background=(0, 0, 255))
    pixels = np.asarray(grid)
    # Scaled to 80 x 20 and centred: 20 rows of bar above and below.
    assert (pixels[:19] == (0, 0, 255)).all()
    assert (pixels[41:] == (0, 0, 255)).all()
    assert (pixels[21:39] == (255, 0, 0)).all()


def test_letterbox_bars_for_a_tall_frame():
    tall = solid((0, 255, 0), width=30, height=120)  # 1:4 into a 4:3 cell
    grid = make_grid([tall], rows=1, cols=1, tile_size=(80, 60))
    pixels = np.asarray(grid)
    # Scaled to 15 x 60 and centred horizontally.
    assert (pixels[:, :31] == 0).all()
    assert (pixels[:, 48:] == 0).all()
    assert (pixels[:, 34:45] == (0, 255, 0)).all()


def test_fewer_images_leave_blank_cells():
    grid = make_grid([solid(c) for c in COLORS[:5]], 3, 4, tile_size=(40, 30), background=(9, 9, 9))
    for position in range(12):
        row, col = divmod(position, 4)
        expected = COLORS[position] if position < 5 else (9, 9, 9)
        assert cell_center(grid, row, col) == expected


def test_empty_grid_is_background():
    grid = make_grid([], 2, 2, tile_size=(10, 10), background=(1, 2, 3))
    assert (np.asarray(grid) == (1, 2, 3)).all()


def test_more_images_than_cells_is_an_error():
    with pytest.raises(ValueError, match="do not fit"):
        make_grid([solid(c) for c in COLORS], 2, 2, tile_size=(10, 10))


def test_accepts_pil_and_grayscale_and_rgba():
    images = [
        Image.new("RGB", (32, 24), (10, 20, 30)),
        np.full((24, 32), 77, dtype=np.uint8),
        np.dstack([solid((40, 50, 60), 32, 24), np.full((24, 32), 255, np.uint8)]),
        Image.new("L", (32, 24), 200),
    ]
    grid = make_grid(images, 1, 4, tile_size=(40, 30))
    assert cell_center(grid, 0, 0) == (10, 20, 30)
    assert cell_center(grid, 0, 1) == (77, 77, 77)
    assert cell_center(grid, 0, 2) == (40, 50, 60)
    assert cell_center(grid, 0, 3) == (200, 200, 200)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        make_grid([solid((0, 0, 0))], 0, 4)
    with pytest.raises(ValueError):
        make_grid([solid((0, 0, 0))], 1, 1, tile_size=(0, 10))
    with pytest.raises(ValueError):
        make_grid([np.zeros((4, 4, 3), dtype=np.float32)], 1, 1)


def test_save_jpeg_is_atomic_and_makes_folders(tmp_path):
    grid = make_grid([solid(c) for c in COLORS], 3, 4, tile_size=(40, 30))
    target = tmp_path / "grids" / "deep" / "video.jpg"
    assert save_jpeg(grid, target, quality=95) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["video.jpg"]  # no temp file left
    with Image.open(target) as reread:
        assert reread.format == "JPEG"
        assert reread.size == grid.size
        center = reread.convert("RGB").getpixel((20, 15))
    assert np.abs(np.subtract(center, COLORS[0])).max() <= 8

    # Overwriting replaces the file in one step.
    save_jpeg(make_grid([], 1, 1, tile_size=(8, 8)), target)
    with Image.open(target) as reread:
        assert reread.size == (8, 8)
    assert sorted(p.name for p in target.parent.iterdir()) == ["video.jpg"]


def test_save_jpeg_failure_leaves_no_temp_file(tmp_path):
    class Broken:
        def convert(self, mode):
            raise OSError("disk on fire")

    with pytest.raises(OSError):
        save_jpeg(Broken(), tmp_path / "x.jpg")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
