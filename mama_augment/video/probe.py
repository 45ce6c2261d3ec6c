"""What every backend shares: checks before opening a file, and which frames to keep.

* ``check_file`` turns file-level problems (missing, unreadable, empty) into
  ``ItemError`` before any decoder sees the file, and returns its first bytes.
* ``sniff`` names the container from those bytes, so that a file that *looks like*
  a video but cannot be opened is reported as ``truncated`` (an interrupted download:
  an MP4 whose index never got written) rather than ``not_a_video``.
* ``FrameSampler`` decides, frame by frame in presentation order, which frames to
  keep; backends only decode and convert the frames it asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mama_augment.errors import ItemError
from mama_augment.video.base import SamplingOptions

HEAD_BYTES = 512

# Error kinds a reader may raise, with what they mean (the `error_kind` column).
ERROR_KINDS: dict[str, str] = {
    "not_found": "the file does not exist",
    "unreadable": "the file exists but cannot be read (permissions, or a folder in place of a file)",
    "zero_byte": "the file is empty",
    "not_a_video": "the file is not a video or image format the decoder recognises",
    "no_video_stream": "a media file without a video stream (e.g. audio only)",
    "truncated": "the file looks like a video but ends before any frame can be decoded",
    "undecodable": "a video stream was found but none of its frames could be decoded",
    "corrupt_image": "an image file that cannot be decoded",
}


def check_file(path: Path) -> bytes:
    """Raise ``ItemError`` for a missing, unreadable or empty file; else return its first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except FileNotFoundError:
        raise ItemError("not_found", f"file not found: {path}") from None
    except IsADirectoryError:
        raise ItemError("unreadable", f"{path} is a folder, not a file") from None
    except PermissionError:
        raise ItemError("unreadable", f"permission denied when reading {path}") from None
    except OSError as error:
        raise ItemError("unreadable", f"cannot read {path}: {error.strerror or error}") from None
    if not head:
        raise ItemError("zero_byte", f"{path} is empty (0 bytes)")
    return head


@dataclass(frozen=True)
class Sniffed:
    media_type: str  # "video", "audio" or "image"
    format_name: str


def sniff(head: bytes) -> Sniffed | None:
    """Recognise a container or image format from a file's first bytes (None if unknown)."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return Sniffed("video", "MP4/QuickTime")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("video", "Matroska/WebM")
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return Sniffed("video", "AVI")
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return Sniffed("audio", "WAV")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return Sniffed("image", "WebP")
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return Sniffed("video", "MPEG")
    if head[:1] == b"\x47" and (len(head) < 189 or head[188:189] == b"\x47"):
        return Sniffed("video", "MPEG transport stream")
    if head[4:5] == b"\x47" and (len(head) < 197 or head[196:197] == b"\x47"):
        return Sniffed("video", "MPEG-2 transport stream (M2TS)")
    if head.startswith(b"FLV"):
        return Sniffed("video", "FLV")
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return Sniffed("video", "ASF/WMV")
    if head.startswith(b"OggS"):
        return Sniffed("video", "Ogg")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Sniffed("video", "GIF")
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "JPEG")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "PNG")
    if head.startswith(b"BM"):
        return Sniffed("image", "BMP")
    return None


def looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def open_failure(path: Path, head: bytes, detail: str, decoder: str) -> ItemError:
    """The ``ItemError`` for a file the decoder could not open at all."""
    sniffed = sniff(head)
    if sniffed is not None and sniffed.media_type == "video":
        return ItemError(
            "truncated",
            f"{path.name} starts like a {sniffed.format_name} file but {decoder} cannot open it ({detail}); "
            "it is probably incomplete (an interrupted download or copy) or its header is damaged",
        )
    if sniffed is not None and sniffed.media_type == "audio":
        return ItemError("no_video_stream", f"{path.name} is a {sniffed.format_name} audio file, not a video")
    what = "a text file" if looks_like_text(head) else "not a video or image format that " + decoder + " recognises"
    return ItemError("not_a_video", f"{path.name} is {what} ({detail})")


def no_frames_failure(path: Path, *, packets_read: int, packet_end_s: float | None, duration_s: float | None, read_error: str | None, decode_error: str | None, codec: str | None) -> ItemError:
    """The ``ItemError`` for a video stream that gave no frame at all.

    ``truncated`` when the data stops early (nothing, or less than half the header's
    duration, was read, or reading failed); ``undecodable`` when the stream's data
    was there but the decoder rejected all of it.
    """
    stopped_early = (
        packets_read == 0
        or read_error is not None
        or (duration_s and packet_end_s is not None and packet_end_s < 0.5 * duration_s)
    )
    if stopped_early:
        why = f"reading failed: {read_error}" if read_error else "no frame data before the end of the file"
        return ItemError("truncated", f"{path.name} ends before its first video frame ({why}); it is probably incomplete")
    reason = f": {decode_error}" if decode_error else ""
    return ItemError("undecodable", f"{path.name} has a {codec or 'video'} stream ({packets_read} packets) but none of its frames could be decoded{reason}")


def thumbnail_size(width: int, height: int, thumb_size: int, pixel_aspect: float = 1.0) -> tuple[int, int]:
    """(width, height) of a thumbnail whose longer side is at most ``thumb_size``.

    ``pixel_aspect`` (the sample aspect ratio) stretches the width so anamorphic video
    keeps its display shape. Never upscales.
    """
    display_width = width * (pixel_aspect if pixel_aspect and pixel_aspect > 0 else 1.0)
    scale = min(1.0, thumb_size / max(display_width, height, 1))
    return max(1, round(display_width * scale)), max(1, round(height * scale))


@dataclass
class _Kept:
    index: int
    time_s: float
    image: np.ndarray


@dataclass
class FrameSampler:
    """Chooses frames to keep from a stream of (index, time) in presentation order.

    With a known duration the targets are fixed in advance: ``k / fps`` for every
    target that falls within the video, or, when that gives more than
    ``max_frames``, ``max_frames`` targets spread evenly from the first to the last
    frame. Each target takes the first frame whose time reaches it (a frame that
    reaches several targets is kept once). If the stream ends before the last
    targets, the last frame is kept so the end of the video is still covered.

    With an unknown duration it samples at ``fps``; whenever more than
    ``2 * max_frames`` are kept it drops every other one and halves the rate, so
    memory stays bounded; ``finish`` then picks ``max_frames`` evenly.

    ``convert(frame)`` turns a backend frame into an RGB thumbnail; it is called only
    for kept frames. A backend that cannot go back to a frame once it has moved on
    offers ``frame=None`` (converting at once in ``convert``); such a frame cannot be
    taken as the last frame at the end.
    """

    options: SamplingOptions
    duration_s: float | None
    frame_interval_s: float | None
    convert: Callable[[Any], np.ndarray]
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._kept: list[_Kept] = []
        self._tolerance = 0.25 * self.frame_interval_s if self.frame_interval_s else 1e-3
        self._last: tuple[int, float, Any] | None = None  # last offered frame, if not kept
        self.last_time_s: float | None = None
        if self.duration_s and self.duration_s > 0:
            last_frame_s = max(0.0, self.duration_s - (self.frame_interval_s or 0.0))
            at_fps = math.floor(last_frame_s * self.options.fps + 1e-6) + 1
            if at_fps <= self.options.max_frames:
                self._targets = np.arange(at_fps) / self.options.fps
            else:
                self._targets = np.linspace(0.0, last_frame_s, self.options.max_frames)
            self._interval = None
        else:
            self._targets = None
            self._interval = 1.0 / self.options.fps
            self._next_target = 0.0
        self._next = 0  # position in self._targets

    @property
    def done(self) -> bool:
        """True when no later frame can be kept (the caller may stop decoding)."""
        return self._targets is not None and self._next >= len(self._targets)

    def wants(self, time_s: float) -> bool:
        """Whether a frame shown at ``time_s`` would be kept."""
        if self._targets is None:
            return time_s >= self._next_target - self._tolerance
        return self._next < len(self._targets) and time_s >= self._targets[self._next] - self._tolerance

    def offer(self, index: int, time_s: float, frame: Any) -> bool:
        """Consider one frame; returns True when it was kept."""
        self.last_time_s = time_s
        if not self.wants(time_s):
            self._last = (index, time_s, frame) if frame is not None else None
            return False
        self._keep(index, time_s, frame)
        self._last = None
        if self._targets is None:
            self._next_target += self._interval
            while self._next_target <= time_s - self._tolerance:
                self._next_target += self._interval
            if len(self._kept) > 2 * self.options.max_frames:
                self._kept = self._kept[::2]
                self._interval *= 2
                self._next_target = self._kept[-1].time_s + self._interval
        else:
            while self._next < len(self._targets) and time_s >= self._targets[self._next] - self._tolerance:
                self._next += 1
        return True

    def _keep(self, index: int, time_s: float, frame: Any) -> None:
        self._kept.append(_Kept(index, time_s, self.convert(frame)))

    def finish(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(images, times_s, indices) of the kept frames; adds coverage warnings."""
        ended_early = self._targets is not None and self._next < len(self._targets)
        if ended_early and self._last is not None:
            index, time_s, frame = self._last
            self._keep(index, time_s, frame)
        kept = self._kept
        if len(kept) > self.options.max_frames:
            picks = np.round(np.linspace(0, len(kept) - 1, self.options.max_frames)).astype(int)
            kept = [kept[i] for i in picks]
        if ended_early:
            self._warn_if_short()
        images = [item.image for item in kept]
        times = np.array([item.time_s for item in kept], dtype=np.float64)
        indices = np.array([item.index for item in kept], dtype=np.int64)
        return images, times, indices

    def _warn_if_short(self) -> None:
        if not self.duration_s or self.last_time_s is None:
            return
        covered = self.last_time_s + (self.frame_interval_s or 0.0)
        if covered < 0.9 * self.duration_s - 0.1:
            self.warnings.append(
                f"frames stop at {covered:.2f} s but the header says the video lasts {self.duration_s:.2f} s; "
                f"the file is probably truncated, so samples cover only the first {covered:.2f} s"
            )

