"""The OpenCV backend: same sampling as PyAV through ``cv2.VideoCapture``.

Frames are read with ``grab()`` (decode only) and ``retrieve()`` is called only for
the frames the ``FrameSampler`` keeps. Times come from ``CAP_PROP_POS_MSEC`` (the
grabbed frame's presentation time, from the start of the stream).

OpenCV reports no error details. When it cannot open a file and PyAV is installed,
PyAV is asked why (so the kind matches the pyav backend's); without PyAV the kind is
guessed from the file's first bytes. An opened file that yields no frame is
``undecodable``. A grabbed frame cannot be retrieved after the next ``grab()``, so
the last few frames before the header's end are retrieved in case the last target
is not reached; a file that ends well before its header says gets no sample of its
last frame (PyAV's backend does take it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mama_augment.errors import ItemError, MissingDependency
from mama_augment.video.base import SampledFrames, SamplingOptions, VideoInfo
from mama_augment.video.probe import FrameSampler, check_file, open_failure, thumbnail_size


def _import_cv2():
    try:
        import cv2
    except ImportError:
        raise MissingDependency("opencv-python-headless", purpose="decoding videos with the opencv backend") from None
    return cv2


# OpenCV reads this when it opens its first capture (so set it at import, before any
# other code opens one); -8 is FFmpeg's AV_LOG_QUIET. A value the user set is kept.
_FFMPEG_QUIET = "-8"
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", _FFMPEG_QUIET)


def quiet_opencv_logs(cv2) -> None:
    """Keep OpenCV's and its bundled FFmpeg's messages about damaged files off the terminal."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", _FFMPEG_QUIET)  # in case it was unset since import
    if cv2.utils.logging.getLogLevel() > cv2.utils.logging.LOG_LEVEL_ERROR:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _explain_failure(path: Path, fallback: ItemError) -> ItemError:
    """Why OpenCV could not use ``path``: PyAV's answer when it is installed, else ``fallback``."""
    try:
        from mama_augment.video.pyav_reader import PyAVReader

        PyAVReader().sample(path, SamplingOptions(fps=1.0, max_frames=1, thumb_size=8))
    except ItemError as error:
        return error
    except MissingDependency:
        return fallback
    return ItemError("undecodable", f"{path.name}: OpenCV cannot decode it although PyAV can; use the pyav backend")


def _fourcc(value: float) -> str | None:
    code = int(value)
    if code <= 0:
        return None
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ")
    return text.lower() or None


class OpenCVReader:
    """Decode with OpenCV's FFmpeg backend; see the module docstring."""

    name = "opencv"

    def sample(self, path: Path, options: SamplingOptions) -> SampledFrames:
        cv2 = _import_cv2()
        quiet_opencv_logs(cv2)
        path = Path(path)
        head = check_file(path)
        params = [cv2.CAP_PROP_N_THREADS, options.threads] if options.threads > 0 else []
        # CAP_FFMPEG, not CAP_ANY: with CAP_ANY a name containing "%d" is read as an image sequence.
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
        try:
            if not capture.isOpened():
                raise _explain_failure(path, open_failure(path, head, "OpenCV could not open it", "OpenCV"))
            return self._sample_open(cv2, capture, path, options)
        finally:
            capture.release()

    def _sample_open(self, cv2, capture, path: Path, options: SamplingOptions) -> SampledFrames:
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if 0 < fps < 1000 else None
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        count = count if count > 0 else None
        duration_s = count / fps if count and fps else None
        interval_s = 1.0 / fps if fps else None
        sar_num, sar_den = capture.get(cv2.CAP_PROP_SAR_NUM), capture.get(cv2.CAP_PROP_SAR_DEN)
        pixel_aspect = sar_num / sar_den if sar_num > 0 and sar_den > 0 else 1.0

        def convert(frame) -> np.ndarray:
            if frame is not None:  # retrieved in advance, near the end
                return frame
            ok, bgr = capture.retrieve()
            if not ok or bgr is None:
                raise ItemError("undecodable", f"{path.name}: OpenCV grabbed a frame but could not retrieve it")
            height, width = bgr.shape[:2]
            size = thumbnail_size(width, height, options.thumb_size, pixel_aspect)
            if size != (width, height):
                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

        sampler = FrameSampler(options, duration_s, interval_s, convert)
        near_end_s = duration_s - 3 * interval_s if duration_s and interval_s else None
        index = 0
        while not sampler.done and capture.grab():
            time_s = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            near_end = near_end_s is not None and time_s >= near_end_s and not sampler.wants(time_s)
            sampler.offer(index, time_s, convert(None) if near_end else None)
            index += 1
        if index == 0:
            raise _explain_failure(path, ItemError("undecodable", f"{path.name}: OpenCV opened the file but could not decode any frame (damaged, truncated or unsupported)"))
        images, times_s, indices = sampler.finish()
        info = VideoInfo(
            media_type="video",
            duration_s=duration_s,
            fps=fps,
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            codec=_fourcc(capture.get(cv2.CAP_PROP_FOURCC)),
            num_frames=count,
        )
        return SampledFrames(info=info, images=images, times_s=times_s, indices=indices, backend=self.name, warnings=list(sampler.warnings))
