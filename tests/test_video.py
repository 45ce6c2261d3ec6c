from __future__ import annotations

import logging

import numpy as np
import pytest

import mama_augment.video as video
from mama_augment.errors import ItemError, MissingDependency, UsageError
from mama_augment.video import ERROR_KINDS, READERS, SamplingOptions, sample_frames
from mama_augment.video.probe import FrameSampler
from media import (
    SCENE_COLORS,
    default_codec,
    make_audio_only,
    make_corrupt_image,
    make_image,
    make_random_bytes,
    make_text_as_video,
    make_truncated,
    make_undecodable,
    make_unreadable,
    make_video,
    make_zero_byte,
    real_clip,
    render_frame,
    scene_of_frame,
)

BACKENDS = list(READERS)


def background_color(image: np.ndarray) -> np.ndarray:
    """Mean colour of the top and bottom rows (the moving shape stays in the middle band)."""
    return np.concatenate([image[0], image[-1]]).reshape(-1, 3).mean(axis=0)


# --- sampling -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_at_fps_with_times_from_pts(tmp_path, backend):
    path = make_video(tmp_path / "v.mp4", num_frames=48, fps=24)
    frames = sample_frames(path, SamplingOptions(fps=2, max_frames=100), backend)
    np.testing.assert_allclose(frames.times_s, [0.0, 0.5, 1.0, 1.5], atol=1e-3)
    assert frames.indices.tolist() == [0, 12, 24, 36]
    assert frames.backend == backend and frames.warnings == []
    assert frames.info.media_type == "video"
    assert (frames.info.width, frames.info.height) == (160, 120)
    assert frames.info.fps == pytest.approx(24)
    assert frames.info.duration_s == pytest.approx(2.0, abs=0.05)
    # The kept thumbnails are those frames: each shows its scene's background colour.
    for image, index in zip(frames.images, frames.indices):
        expected = SCENE_COLORS[scene_of_frame(int(index), 48)]
        np.testing.assert_allclose(background_color(image), expected, atol=25)  # scenes differ by > 100


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_video_is_spread_evenly_over_max_frames(tmp_path, backend):
    path = make_video(tmp_path / "long.mkv", num_frames=240, fps=24, size=(64, 48), pattern="solid")
    frames = sample_frames(path, SamplingOptions(fps=2, max_frames=5), backend)
    assert len(frames.images) == 5
    assert frames.times_s[0] == pytest.approx(0.0, abs=1e-3)
    assert frames.times_s[-1] == pytest.approx(239 / 24, abs=0.05)  # the last frame
    np.testing.assert_allclose(np.diff(frames.times_s), (239 / 24) / 4, atol=1 / 24)
    assert frames.indices[-1] == 239


def test_raw_stream_without_timestamps_or_duration(tmp_path):
    # A raw h264 elementary stream has no container: no duration and no pts.
    if default_codec() != "libx264":
        pytest.skip("this PyAV build cannot encode h264")
    path = make_video(tmp_path / "raw.h264", num_frames=240, fps=24, size=(64, 48), codec="libx264")
    frames = sample_frames(path, SamplingOptions(fps=2, max_frames=6), "pyav")
    assert frames.info.duration_s is None
    assert len(frames.images) == 6
    assert frames.times_s[0] == 0.0 and frames.times_s[-1] >= 8.5
    assert np.all(np.diff(frames.times_s) > 0)
    np.testing.assert_allclose(frames.times_s, frames.indices / frames.info.fps, atol=1e-6)  # estimated from the rate
    assert any("no timestamp" in warning for warning in frames.warnings)


def test_thumbnails_are_bounded_and_never_upscaled(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=12, size=(160, 120))
    small = sample_frames(path, SamplingOptions(thumb_size=50))
    assert all(image.shape == (38, 50, 3) and image.dtype == np.uint8 for image in small.images)
    large = sample_frames(path, SamplingOptions(thumb_size=1000))
    assert large.images[0].shape == (120, 160, 3)


@pytest.mark.parametrize("suffix,codec", [(".mp4", None), (".avi", "mpeg4"), (".mkv", None), (".mpg", "mpeg2video")])
def test_backends_agree(tmp_path, suffix, codec):
    path = make_video(tmp_path / f"v{suffix}", num_frames=72, fps=24, codec=codec)
    options = SamplingOptions(fps=3, max_frames=6, thumb_size=64)
    pyav, opencv = (sample_frames(path, options, backend) for backend in ("pyav", "opencv"))
    assert len(pyav.images) == len(opencv.images) == 6
    np.testing.assert_allclose(pyav.times_s, opencv.times_s, atol=1 / 24 + 1e-3)
    assert [image.shape for image in pyav.images] == [image.shape for image in opencv.images]
    for a, b in zip(pyav.images, opencv.images):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 12


@pytest.mark.parametrize("backend", BACKENDS)
def test_times_are_relative_to_stream_start(tmp_path, backend):
    # MPEG program streams start their clock at a non-zero time.
    path = make_video(tmp_path / "v.mpg", num_frames=48, fps=24, codec="mpeg2video")
    frames = sample_frames(path, SamplingOptions(fps=2), backend)
    np.testing.assert_allclose(frames.times_s, [0.0, 0.5, 1.0, 1.5], atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_display_rotation_is_applied(tmp_path, backend):
    path = make_video(tmp_path / "phone.mp4", num_frames=6, size=(160, 120), rotation=90)
    frames = sample_frames(path, SamplingOptions(thumb_size=160), backend)
    assert (frames.info.width, frames.info.height) == (120, 160)
    expected = np.rot90(render_frame(0, 6, (160, 120), "scenes", np.random.default_rng(0)))
    assert frames.images[0].shape == expected.shape
    assert np.abs(frames.images[0].astype(int) - expected).mean() < 10


# --- the sampling schedule on its own -----------------------------------------


def test_sampler_keeps_a_frame_reaching_several_targets_once_and_covers_the_end():
    sampler = FrameSampler(SamplingOptions(fps=2, max_frames=100), duration_s=3.0, frame_interval_s=0.1, convert=lambda f: f)
    for index, time_s in enumerate([0.0, 0.1, 1.6, 1.7, 1.8]):  # a gap, then the file ends early
        sampler.offer(index, time_s, np.full((2, 2, 3), index, np.uint8))
    images, times, indices = sampler.finish()
    assert times.tolist() == [0.0, 1.6, 1.8] and indices.tolist() == [0, 2, 4]
    assert [int(image[0, 0, 0]) for image in images] == [0, 2, 4]
    assert len(sampler.warnings) == 1 and "truncated" in sampler.warnings[0]


def test_sampler_with_unknown_duration_stays_bounded_and_spreads():
    max_frames = 8
    sampler = FrameSampler(SamplingOptions(fps=5, max_frames=max_frames), duration_s=None, frame_interval_s=1 / 25, convert=lambda f: f)
    most_kept = 0
    for index in range(25 * 120):  # two minutes at 25 fps
        sampler.offer(index, index / 25, np.zeros((1, 1, 3), np.uint8))
        most_kept = max(most_kept, len(sampler._kept))
    images, times, indices = sampler.finish()
    assert most_kept <= 2 * max_frames + 1
    assert len(images) == max_frames and times[0] == 0.0
    assert times[-1] > 100  # reaches the end, not just the beginning
    gaps = np.diff(times)
    assert gaps.max() <= 2 * gaps.min() + 1e-9  # one or two steps of the thinned grid
    assert sampler.warnings == []


def test_sampler_converts_only_kept_frames():
    converted = []
    sampler = FrameSampler(SamplingOptions(fps=1, max_frames=100), duration_s=10.0, frame_interval_s=0.04, convert=lambda f: converted.append(f) or np.zeros((1, 1, 3), np.uint8))
    for index in range(250):
        sampler.offer(index, index * 0.04, index)
        if sampler.done:
            break
    sampler.finish()
    assert converted == [0, 25, 50, 75, 100, 125, 150, 175, 200, 225]


# --- images -------------------------------------------------------------------


def test_image_is_a_one_frame_video(tmp_path):
    path = make_image(tmp_path / "p.png", size=(640, 480), color=(10, 200, 30))
    frames = sample_frames(path, SamplingOptions(thumb_size=64))
    assert frames.info.media_type == "image" and frames.info.duration_s == 0.0
    assert (frames.info.width, frames.info.height) == (640, 480)
    assert frames.times_s.tolist() == [0.0] and frames.indices.tolist() == [0]
    assert frames.images[0].shape == (48, 64, 3)
    np.testing.assert_allclose(frames.images[0].reshape(-1, 3).mean(axis=0), (10, 200, 30), atol=2)


def test_image_exif_orientation_is_applied(tmp_path):
    path = make_image(tmp_path / "portrait.jpg", size=(64, 48), exif_orientation=6)
    frames = sample_frames(path, SamplingOptions(thumb_size=320))
    assert (frames.info.width, frames.info.height) == (48, 64)
    assert frames.images[0].shape == (64, 48, 3)


def test_image_under_a_video_suffix_is_read_as_image(tmp_path):
    path = make_image(tmp_path / "x.png")
    renamed = path.rename(tmp_path / "x.mp4")
    assert sample_frames(renamed).info.media_type == "image"


# --- bad inputs ---------------------------------------------------------------


def bad_input(kind: str, tmp_path):
    """A file that must fail with ``kind``."""
    if kind == "not_found":
        return tmp_path / "missing.mp4"
    if kind == "unreadable":
        folder = tmp_path / "folder.mp4"
        folder.mkdir()
        return folder
    if kind == "zero_byte":
        return make_zero_byte(tmp_path / "empty.mp4")
    if kind == "not_a_video":
        return make_text_as_video(tmp_path / "notes.mp4")
    if kind == "no_video_stream":
        return make_audio_only(tmp_path / "sound.mkv")
    if kind == "truncated":
        return make_truncated(make_video(tmp_path / "full.mp4"), tmp_path / "cut.mp4", 0.6)
    if kind == "undecodable":
        return make_undecodable(tmp_path / "garbage.mkv")
    if kind == "corrupt_image":
        return make_corrupt_image(tmp_path / "broken.jpg")
    raise AssertionError(kind)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(ERROR_KINDS))
def test_every_bad_input_kind(tmp_path, kind, backend):
    path = bad_input(kind, tmp_path)
    with pytest.raises(ItemError) as raised:
        sample_frames(path, SamplingOptions(), backend)
    assert raised.value.kind == kind
    assert path.name in raised.value.message


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_bytes_are_not_a_video(tmp_path, backend):
    with pytest.raises(ItemError) as raised:
        sample_frames(make_random_bytes(tmp_path / "r.avi"), SamplingOptions(), backend)
    assert raised.value.kind == "not_a_video"


def test_wav_is_no_video_stream(tmp_path):
    with pytest.raises(ItemError) as raised:
        sample_frames(make_audio_only(tmp_path / "a.wav"))
    assert raised.value.kind == "no_video_stream"


def test_permission_denied_is_unreadable(tmp_path):
    path = make_unreadable(tmp_path / "locked.mp4")
    with pytest.raises(ItemError) as raised:
        sample_frames(path)
    assert raised.value.kind == "unreadable"


def test_cut_before_first_frame_is_truncated(tmp_path):
    path = make_truncated(make_video(tmp_path / "full.mkv"), tmp_path / "cut.mkv", 0.1)
    with pytest.raises(ItemError) as raised:
        sample_frames(path)
    assert raised.value.kind == "truncated"


@pytest.mark.parametrize("backend", BACKENDS)
def test_partly_truncated_video_keeps_its_frames_with_a_warning(tmp_path, backend):
    path = make_truncated(make_video(tmp_path / "full.mkv", num_frames=48), tmp_path / "cut.mkv", 0.6)
    frames = sample_frames(path, SamplingOptions(fps=4), backend)
    assert 2 <= len(frames.images) < 8  # 8 samples for the whole 2 s
    assert frames.times_s[-1] < 1.5
    assert any("truncated" in warning for warning in frames.warnings)


def test_decoder_noise_stays_off_the_terminal(tmp_path, capfd):
    damaged = make_truncated(make_video(tmp_path / "full.avi", num_frames=48), tmp_path / "cut.avi", 0.6)
    for backend in BACKENDS:
        sample_frames(damaged, SamplingOptions(), backend)
        with pytest.raises(ItemError):
            sample_frames(make_undecodable(tmp_path / "garbage.mkv"), SamplingOptions(), backend)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


# --- backends and options -----------------------------------------------------


def test_bad_options_and_backend_are_usage_errors(tmp_path):
    path = make_video(tmp_path / "v.mp4", num_frames=6)
    with pytest.raises(UsageError, match="backend"):
        sample_frames(path, SamplingOptions(), backend="nope")
    with pytest.raises(UsageError, match="fps"):
        sample_frames(path, SamplingOptions(fps=0))
    with pytest.raises(UsageError, match="max_frames"):
        sample_frames(path, SamplingOptions(max_frames=0))


def test_auto_falls_back_to_opencv_when_pyav_is_missing(monkeypatch, caplog):
    monkeypatch.setattr(video, "available_backends", lambda: ["opencv"])
    monkeypatch.setattr(video, "_fallback_logged", False)
    with caplog.at_level(logging.WARNING, logger="mama_augment.video"):
        assert video.resolve_backend("auto") == "opencv"
    assert "PyAV is not installed" in caplog.text
    with pytest.raises(MissingDependency, match="pip install av"):
        video.resolve_backend("pyav")


# --- real clips ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_damaged_clip_does_not_crash(backend):
    # Megamind_bugy.avi: a re-muxed excerpt whose mpeg4 stream carries bad "packed"
    # bitstream data; FFmpeg decodes all 270 frames (with warnings it keeps to itself).
    # Documented behaviour: sampled normally over its 9 s.
    frames = sample_frames(real_clip("Megamind_bugy.avi"), SamplingOptions(fps=1, max_frames=32), backend)
    assert frames.info.duration_s == pytest.approx(9.0, abs=0.1)
    assert len(frames.images) == 9
    assert frames.times_s[0] < 0.1 and frames.times_s[-1] == pytest.approx(8.0, abs=0.1)
    assert np.all(np.diff(frames.times_s) > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_clip_without_frame_count_is_spread_over_its_duration(backend):
    path = real_clip("cityCC0.mpg")
    frames = sample_frames(path, SamplingOptions(fps=2, max_frames=8), backend)
    if backend == "pyav":
        assert frames.info.num_frames is None  # the header has no frame count
    assert frames.info.duration_s == pytest.approx(7.6, abs=0.1)
    assert len(frames.images) == 8
    assert frames.times_s[0] == pytest.approx(0.0, abs=0.02)
    assert frames.times_s[-1] == pytest.approx(7.56, abs=0.05)
    np.testing.assert_allclose(np.diff(frames.times_s), 7.56 / 7, atol=0.05)
    assert frames.images[0].shape == (180, 320, 3)


def test_real_h264_clip_samples_quietly(capfd):
    frames = sample_frames(real_clip("cockatoo.mp4"), SamplingOptions(fps=1, max_frames=8, thumb_size=128))
    assert len(frames.images) == 8 and frames.warnings == []
    assert frames.images[0].shape == (72, 128, 3)
    assert frames.times_s[-1] == pytest.approx(13.95, abs=0.06)
    assert capfd.readouterr().err == ""


def test_real_clip_truncated_mp4_is_truncated(tmp_path):
    # An interrupted download of an MP4 whose index is written last.
    cut = make_truncated(real_clip("cockatoo.mp4"), tmp_path / "cockatoo.mp4", 0.6)
    with pytest.raises(ItemError) as raised:
        sample_frames(cut)
    assert raised.value.kind == "truncated"
