"""The PyAV (FFmpeg) backend: one forward decoding pass, thumbnails of sampled frames only.

Decoding is multi-threaded (``thread_type = "AUTO"``) and only the chosen video
stream is demuxed. A frame is converted to RGB (and shrunk to a thumbnail, in one
swscale call) only when the ``FrameSampler`` keeps it. Times come from each frame's
presentation timestamp, relative to the stream's start time.

Damage is handled where FFmpeg reports it: a packet the decoder rejects is skipped
and counted; a read error ends the pass early. Either way the frames already sampled
are returned with a warning; only a file that gives no frame at all fails.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from mama_augment.errors import ItemError, MissingDependency
from mama_augment.video.base import SampledFrames, SamplingOptions, VideoInfo
from mama_augment.video.probe import FrameSampler, check_file, no_frames_failure, open_failure, thumbnail_size


def _import_av():
    try:
        import av
    except ImportError:
        raise MissingDependency("av", purpose="decoding videos with the pyav backend") from None
    return av


def quiet_ffmpeg_logs(av) -> None:
    """Keep FFmpeg's per-frame warnings (normal for many real h264 clips) off the terminal.

    PyAV forwards nothing by default (level None); if someone turned forwarding on
    at a chattier level, cap it at ERROR.
    """
    level = av.logging.get_level()
    if level is not None and level > av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)


def _describe(error: BaseException) -> str:
    """FFmpeg's message without PyAV's ``[Errno N]`` prefix and repeated path."""
    text = getattr(error, "strerror", None) or str(error)
    return str(text).strip() or type(error).__name__


def _rate(*candidates) -> float | None:
    for rate in candidates:
        if rate:
            value = float(rate)
            if math.isfinite(value) and 0 < value < 1000:
                return value
    return None


class PyAVReader:
    """Decode with PyAV; see the module docstring."""

    name = "pyav"

    def sample(self, path: Path, options: SamplingOptions) -> SampledFrames:
        av = _import_av()
        quiet_ffmpeg_logs(av)
        path = Path(path)
        head = check_file(path)
        errors = (av.error.FFmpegError, OSError, EOFError)
        try:
            container = av.open(str(path), metadata_errors="ignore")
        except errors as error:
            raise open_failure(path, head, _describe(error), "FFmpeg") from None
        # Kept frames are converted to thumbnails on a second thread while this one
        # decodes on: sws_scale and the decoder both release the GIL, and a plain decode
        # pass leaves about a core idle. Each frame is converted exactly once.
        converter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mama-thumbnail")
        try:
            with container:
                return self._sample_open(av, container, path, options, errors, converter)
        finally:
            converter.shutdown(wait=True, cancel_futures=True)

    def _sample_open(self, av, container, path: Path, options: SamplingOptions, errors, converter) -> SampledFrames:
        # Cover art in MP4/MKV/MP3 is a one-picture "video" stream: not a video.
        attached = getattr(getattr(av.stream, "Disposition", None), "attached_pic", 0)  # PyAV >= 13
        streams = [s for s in container.streams.video if not (attached and s.disposition & attached)]
        if not streams:
            kinds = sorted({s.type for s in container.streams}) or ["no"]
            cover = " (only a cover picture)" if container.streams.video else ""
            raise ItemError("no_video_stream", f"{path.name} has no video stream{cover}; it has {', '.join(kinds)} streams")
        stream = streams[0]
        context = stream.codec_context
        codec = context.name if context is not None else None
        if context is None:
            raise ItemError("undecodable", f"{path.name}: this FFmpeg build has no decoder for its video codec")
        stream.thread_type = "AUTO"
        if options.threads > 0:
            context.thread_count = options.threads
        discard_all = getattr(getattr(av.stream, "Discard", None), "all", None)  # PyAV >= 14
        for other in container.streams:
            if other is not stream and discard_all is not None:
                other.discard = discard_all  # the demuxer can skip their packets

        time_base = stream.time_base or Fraction(1, 1)
        start_s = float(stream.start_time * time_base) if stream.start_time is not None else None
        if stream.duration:
            duration_s = float(stream.duration * time_base)
        elif container.duration:
            duration_s = container.duration / av.time_base
        else:
            duration_s = None
        fps = _rate(stream.average_rate, stream.guessed_rate, stream.base_rate)
        interval_s = 1.0 / fps if fps else None
        pixel_aspect = float(context.sample_aspect_ratio) if context.sample_aspect_ratio else 1.0
        rotation = 0

        def convert(frame) -> np.ndarray:
            width, height = thumbnail_size(frame.width, frame.height, options.thumb_size, pixel_aspect)
            image = frame.reformat(width, height, "rgb24", interpolation="AREA").to_ndarray()
            quarter_turns = (rotation // 90) % 4
            return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image

        sampler = FrameSampler(options, duration_s, interval_s, lambda frame: converter.submit(convert, frame))
        index = 0
        no_pts = 0
        corrupt = 0
        packets_read = 0
        packet_end_s: float | None = None
        decode_errors = 0
        last_decode_error: str | None = None
        read_error: str | None = None
        previous_s: float | None = None

        def offer(frame) -> None:
            nonlocal index, no_pts, corrupt, start_s, previous_s, rotation
            time_s = frame.time
            if index == 0:
                rotation = int(getattr(frame, "rotation", 0) or 0)
            if time_s is None:
                no_pts += 1
                if previous_s is not None:
                    time_s = previous_s + (interval_s or 0.0)
                else:
                    time_s = index * (interval_s or 0.0)
            else:
                if start_s is None:
                    start_s = time_s
                time_s -= start_s
            if frame.is_corrupt:
                corrupt += 1
            previous_s = time_s
            sampler.offer(index, time_s, frame)
            index += 1

        packets = container.demux(stream)
        while not sampler.done:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except errors as error:
                read_error = _describe(error)
                break
            if packet.size:
                packets_read += 1
                if packet.pts is not None:
                    packet_s = float(packet.pts * time_base) - (start_s or 0.0)
                    packet_end_s = packet_s if packet_end_s is None else max(packet_end_s, packet_s)
            try:
                frames = packet.decode()
            except errors as error:
                decode_errors += 1
                last_decode_error = _describe(error)
                continue
            for frame in frames:
                offer(frame)
        if read_error is not None:
            # Frames still inside the (threaded) decoder are complete: collect them.
            try:
                for frame in context.decode(None):
                    offer(frame)
            except errors:
                pass

        if index == 0:
            raise no_frames_failure(
                path,
                packets_read=packets_read,
                packet_end_s=packet_end_s,
                duration_s=duration_s,
                read_error=read_error,
                decode_error=last_decode_error,
                codec=codec,
            )
        images, times_s, indices = sampler.finish()
        images = [pending.result() for pending in images]
        warnings = list(sampler.warnings)
        if read_error is not None:
            warnings.append(f"reading stopped with an error after {sampler.last_time_s:.2f} s ({read_error}); samples cover only what was read")
        if decode_errors:
            warnings.append(f"{decode_errors} damaged packets could not be decoded and were skipped (last error: {last_decode_error})")
        if corrupt:
            warnings.append(f"the decoder flagged {corrupt} of {index} frames as corrupt")
        if no_pts:
            warnings.append(f"{no_pts} frames had no timestamp; their times were estimated from the frame rate")

        width, height = stream.width or context.width, stream.height or context.height
        if rotation % 180 == 90:
            width, height = height, width
        info = VideoInfo(
            media_type="video",
            duration_s=duration_s,
            fps=fps,
            width=int(width),
            height=int(height),
            codec=codec,
            num_frames=stream.frames or None,
        )
        return SampledFrames(info=info, images=images, times_s=times_s, indices=indices, backend=self.name, warnings=warnings)
