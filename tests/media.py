"""Test media: tiny generated videos and images, bad inputs, and the real clips.

Everything here is deterministic (fixed seeds) and small enough to generate in a few
milliseconds. Other test modules import these helpers directly::

    from tests.media import make_video, make_image, real_clip

Generated videos
    ``make_video(path, num_frames=48, fps=24, size=(160, 120), codec=None,
    pattern="scenes", seed=0)`` writes frame ``i`` with ``pts = i`` in a ``1/fps``
    time base, so frame ``i`` is shown at ``i / fps`` seconds. The container follows
    the file's suffix (.mp4, .mkv, .avi, ...). Patterns:

    * ``"scenes"``: ``SCENE_COUNT`` visually distinct scenes of equal length (each its
      own background colour and a moving shape), so keyframe clustering has structure;
      ``scene_of_frame(i, num_frames)`` says which scene frame ``i`` belongs to.
    * ``"noise"``: independent random frames.
    * ``"solid"``: one flat grey colour.

Bad inputs
    ``make_zero_byte``, ``make_text_as_video``, ``make_random_bytes``,
    ``make_truncated``, ``make_audio_only``, ``make_undecodable``, ``make_unreadable``,
    ``make_corrupt_image``.

Real clips
    ``MEDIA_DIR`` is ``$MAMA_MEDIA_DIR`` or ``<repo>/../shared/media``;
    ``real_clip(name)`` returns its path or skips the test, saying why.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

MEDIA_DIR = Path(os.environ.get("MAMA_MEDIA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "media")

SCENE_COUNT = 4
# Background colours of the scenes: far apart so every embedder separates them.
SCENE_COLORS = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (235, 225, 60)]


def real_clip(name: str) -> Path:
    """Path of a real clip in ``MEDIA_DIR``; skips the calling test when it is absent."""
    path = MEDIA_DIR / name
    if not path.is_file():
        pytest.skip(f"real clip {name} not found in {MEDIA_DIR} (set MAMA_MEDIA_DIR to the folder of real clips)")
    return path


def default_codec() -> str:
    """``libx264`` when this PyAV build can encode it, else ``mpeg4``."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def scene_of_frame(index: int, num_frames: int) -> int:
    """The scene (0-based) that frame ``index`` shows in a ``"scenes"`` video."""
    return min(SCENE_COUNT - 1, index * SCENE_COUNT // max(1, num_frames))


def render_frame(index: int, num_frames: int, size: tuple[int, int], pattern: str, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 frame (H, W, 3) of a generated video."""
    width, height = size
    if pattern == "solid":
        return np.full((height, width, 3), 128, np.uint8)
    if pattern == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if pattern != "scenes":
        raise ValueError(f"unknown pattern {pattern!r}; use 'scenes', 'noise' or 'solid'")
    scene = scene_of_frame(index, num_frames)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = SCENE_COLORS[scene]
    # A shape that moves across the frame; each scene has its own shape.
    side = max(4, min(width, height) // 3)
    progress = (index % max(1, num_frames // SCENE_COUNT)) / max(1, num_frames // SCENE_COUNT)
    x0 = int(progress * (width - side))
    y0 = (height - side) // 2
    ys, xs = np.mgrid[0:side, 0:side]
    if scene == 0:  # square
        mask = np.ones((side, side), bool)
    elif scene == 1:  # disc
        mask = (xs - side / 2) ** 2 + (ys - side / 2) ** 2 <= (side / 2) ** 2
    elif scene == 2:  # triangle
        mask = xs <= ys
    else:  # horizontal stripes
        mask = (ys // max(1, side // 6)) % 2 == 0
    patch = image[y0 : y0 + side, x0 : x0 + side]
    patch[mask] = (255 - np.array(SCENE_COLORS[scene])).astype(np.uint8)
    return image


def make_video(
    path: str | os.PathLike,
    num_frames: int = 48,
    fps: int = 24,
    size: tuple[int, int] = (160, 120),
    codec: str | None = None,
    pattern: str = "scenes",
    seed: int = 0,
    rotation: int = 0,
) -> Path:
    """Write a small video with PyAV and return its path (see the module docstring).

    ``rotation`` (degrees, counter-clockwise) is stored as display-matrix metadata, as
    phones do; the stored pixels are not turned.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or default_codec()
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        if rotation:
            stream.set_display_rotation(rotation)
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "threads": "1"}
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(render_frame(index, num_frames, size, pattern, rng), format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_image(path: str | os.PathLike, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30), exif_orientation: int | None = None) -> Path:
    """Write a flat image (format from the suffix); ``exif_orientation`` adds that EXIF tag (JPEG)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    return path


def make_zero_byte(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text_as_video(path: str | os.PathLike) -> Path:
    """A plain-text file with a video suffix."""
    path = Path(path)
    path.write_text("This is not a video, just some text that was renamed.\n" * 20)
    return path


def make_random_bytes(path: str | os.PathLike, size: int = 20_000, seed: int = 0) -> Path:
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def make_truncated(src: str | os.PathLike, dst: str | os.PathLike, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (an interrupted download)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def make_audio_only(path: str | os.PathLike, seconds: float = 0.5, rate: int = 8000) -> Path:
    """A file with one audio stream and no video (PCM in Matroska for ``.mkv``, WAV for ``.wav``)."""
    import av

    path = Path(path)
    samples = int(seconds * rate)
    tone = (np.sin(np.arange(samples) * 2 * np.pi * 440 / rate) * 8000).astype(np.int16)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_undecodable(path: str | os.PathLike, num_packets: int = 24, seed: int = 0) -> Path:
    """A valid container (Matroska for ``.mkv``) whose mpeg4 video packets are random bytes."""
    import av

    path = Path(path)
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height = 160, 120
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 24)
        for index in range(num_packets):
            packet = av.Packet(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
            packet.pts = packet.dts = index
            packet.time_base = Fraction(1, 24)
            packet.stream = stream
            container.mux(packet)
    return path


def make_unreadable(path: str | os.PathLike) -> Path:
    """A file nobody may read (mode 000); skips the test when running as root, where it would still be readable."""
    path = Path(path)
    path.write_bytes(b"\x00" * 16)
    path.chmod(0)
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return path
    path.chmod(0o644)
    pytest.skip("file permissions do not stop this user (running as root); cannot make an unreadable file")


def make_corrupt_image(path: str | os.PathLike) -> Path:
    """A JPEG cut after its header: the suffix and magic bytes say image, the pixels are missing."""
    path = Path(path)
    make_image(path.with_suffix(".full.jpg"), size=(64, 48))
    data = path.with_suffix(".full.jpg").read_bytes()
    path.with_suffix(".full.jpg").unlink()
    path.write_bytes(data[: len(data) // 3])
    return path
