"""Shared fixtures. Test-data generators live in ``tests/media.py``: ``from media import make_video``
(pytest puts this folder on ``sys.path`` because it holds this conftest and no ``__init__.py``)."""

from __future__ import annotations

import importlib.util

import pytest

from media import make_image, make_video


@pytest.fixture
def tiny_videos(tmp_path):
    """A folder with three generated videos (one in a subfolder) and one image.

    ``scenes.mp4`` (48 frames, 24 fps, 4 scenes), ``clips/noise.mkv`` (24 frames),
    ``solid.avi`` (mpeg4, 24 frames) and ``photo.png`` (64x48).
    """
    folder = tmp_path / "videos"
    make_video(folder / "scenes.mp4", num_frames=48)
    make_video(folder / "clips" / "noise.mkv", num_frames=24, pattern="noise")
    make_video(folder / "solid.avi", num_frames=24, codec="mpeg4", pattern="solid")
    make_image(folder / "photo.png")
    return folder


HAVE_RAY = importlib.util.find_spec("ray") is not None


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs for one test module (Ray takes seconds to start)."""
    if not HAVE_RAY:
        pytest.skip("Ray is not installed (pip install 'mama-augment[ray]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
