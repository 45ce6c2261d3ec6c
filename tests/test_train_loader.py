"""The training loader: batches built in worker processes are the batches built in the
training process, a killed run resumes exactly with workers, the training process
decodes no JPEG when there are workers, and timing reaches metrics.jsonl."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mama_augment.errors import UsageError
from mama_augment.train.backbones import get_backbone
from mama_augment.train.config import TrainConfig
from mama_augment.train.data import build_data, steps_per_epoch
from mama_augment.train.loader import (
    TIMING_KEYS,
    BatchPlan,
    BatchStream,
    StepBatches,
    StepMeter,
    default_num_workers,
    prepare_frame_source,
)
from mama_augment.train.loop import run_train
from mama_augment.train.models import build_clip_model

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from test_train_clip import _tiny_clip, _workdir_with_frames  # noqa: E402  (after the skips)


@pytest.fixture(scope="module")
def clip_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    model_dir = _tiny_clip(root / "tiny-clip")
    workdir, captions = _workdir_with_frames(root, n=30)
    return model_dir, workdir, captions


def _config(setup, **overrides):
    model_dir, _, captions = setup
    base = dict(captions=str(captions), backbone="clip", backbone_model=str(model_dir), epochs=2, batch_size=4,
                lr=1e-3, meta_fraction=0.2, meta_batch_size=2, progress=False, checkpoint_every=3, log_every=1)
    base.update(overrides)
    return TrainConfig(**base)


def _plan_and_builder(setup, config, source="pil", workers=0):
    _, workdir, _ = setup
    data = build_data(config, workdir, need=get_backbone("clip").needs)
    model = build_clip_model(config, data.videos, workdir, torch.device("cpu"))
    model.set_videos(data.videos)
    model.set_texts(data.texts)
    prepare_frame_source(model, source, workdir, torch.device("cpu"), workers)
    per_epoch = steps_per_epoch(data, config.batch_size)
    plan = BatchPlan(data, config.seed, config.batch_size, per_epoch, meta_every=1, meta_batch_size=2)
    return plan, model, per_epoch


def _collect(plan, builder, total, workers, start=0):
    stream = BatchStream(StepBatches(plan, builder, total), start, total, num_workers=workers)
    try:
        return [stream.next(step) for step in range(start, total)]
    finally:
        stream.close()


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("source", ["pil", "cache"])
def test_same_batches_with_0_and_2_workers(clip_setup, source):
    config = _config(clip_setup)
    plan, model, per_epoch = _plan_and_builder(clip_setup, config, source)
    total = 2 * per_epoch + 1  # across an epoch boundary
    in_process = _collect(plan, model.input_builder(), total, workers=0)
    workers = _collect(plan, model.input_builder(), total, workers=2)
    assert [b.step for b in workers] == list(range(total))
    for a, b in zip(in_process, workers):
        assert a.epoch == b.epoch
        for name in ("videos", "captions", "video_inputs", "text_inputs", "meta_pairs", "meta_inputs"):
            assert _same(getattr(a, name), getattr(b, name)), (a.step, name)
    frames, counts = in_process[0].video_inputs
    assert frames.dtype == torch.uint8 and frames.shape[0] == int(counts.sum())
    assert in_process[0].meta_inputs is not None
    # a resumed stream starts at its step with the batches the full stream had there
    resumed = _collect(plan, model.input_builder(), total, workers=2, start=per_epoch + 1)
    assert all(_same(a.video_inputs, b.video_inputs) for a, b in zip(in_process[per_epoch + 1:], resumed))


class _Killed(Exception):
    pass


def test_kill_and_resume_with_workers_gives_the_weights_of_an_uninterrupted_run(clip_setup):
    _, workdir, _ = clip_setup
    full = run_train(_config(clip_setup, name="full", num_workers=0), workdir)
    assert full.total >= 8

    def kill_at_7(step):
        if step == 7:
            raise _Killed()

    with pytest.raises(_Killed):
        run_train(_config(clip_setup, name="killed", num_workers=2), workdir, step_callback=kill_at_7)
    resumed = run_train(TrainConfig(name="killed", resume=True, progress=False, num_workers=2), workdir)
    assert resumed.done == full.total
    a = load_file(Path(full.extra["run"]) / "model.safetensors")
    b = load_file(Path(resumed.extra["run"]) / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    wa = load_file(Path(full.extra["run"]) / "weighting_net.safetensors")
    wb = load_file(Path(resumed.extra["run"]) / "weighting_net.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)
    rows = [json.loads(x) for x in (Path(resumed.extra["run"]) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, full.total + 1))
    for row in steps:
        assert set(TIMING_KEYS) <= set(row)
        assert row["data_wait_ms"] >= 0 and row["step_ms"] > 0 and 0 <= row["data_wait_share"] <= 1
        assert row["gpu_mem_peak_mib"] is None  # on a CPU


@pytest.mark.parametrize("source", ["cache", "pil"])
def test_the_training_process_decodes_no_jpeg_when_there_are_workers(clip_setup, source, tmp_path, monkeypatch):
    import mama_augment.train.frames as frames

    model_dir = clip_setup[0]
    workdir, captions = _workdir_with_frames(tmp_path, n=30)  # no frame cache yet: the workers build it
    log_dir = tmp_path / "decoders"
    log_dir.mkdir()
    original = frames.frame_pixels

    def recording(path, size):  # forked workers inherit the patch; each notes its pid
        (log_dir / str(os.getpid())).touch()
        return original(path, size)

    monkeypatch.setattr(frames, "frame_pixels", recording)
    config = _config((model_dir, workdir, captions), num_workers=2, frame_source=source, epochs=1)
    report = run_train(config, workdir)
    assert report.exit_code == 0
    decoders = {int(p.name) for p in log_dir.iterdir()}
    assert decoders, "nothing was decoded at all"
    assert os.getpid() not in decoders


def test_the_data_bound_warning_is_said_once(caplog):
    meter = StepMeter(torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="mama_augment.train.loader"):
        for _ in range(4):
            meter.waited(0.5)  # half a second waiting, a step of almost nothing
            meter.stepped(8)
            row = meter.interval()
            assert row["data_wait_share"] > 0.9 and row["samples_per_s"] > 0
    warnings = [r for r in caplog.records if "data-bound" in r.getMessage()]
    assert len(warnings) == 1


def test_a_step_bound_interval_does_not_warn(caplog):
    meter = StepMeter(torch.device("cpu"), skip_first_interval=False)
    with caplog.at_level(logging.WARNING, logger="mama_augment.train.loader"):
        meter.waited(0.0)
        meter.stepped(8)
        meter.interval()
    assert not [r for r in caplog.records if "data-bound" in r.getMessage()]


def test_default_workers_and_bad_options():
    assert 0 <= default_num_workers() <= 8
    with pytest.raises(UsageError, match="--num-workers"):
        TrainConfig(captions="c.csv", num_workers=-1).validate()
    with pytest.raises(UsageError, match="--frame-source"):
        TrainConfig(captions="c.csv", frame_source="jpeg").validate()


def test_gpu_frame_source_needs_cuda(clip_setup):
    config = _config(clip_setup)
    with pytest.raises(UsageError, match="gpu"):
        _plan_and_builder(clip_setup, config, source="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (pinned memory, GPU JPEG decoding)")
def test_gpu_decoding_is_close_to_pillow(clip_setup):
    from mama_augment.train.frames import gpu_jpeg_decoder

    if gpu_jpeg_decoder() is None:
        pytest.skip("neither TorchCodec nor torchvision can decode JPEGs on CUDA here")
    config = _config(clip_setup, device="cuda")
    plan, model, _ = _plan_and_builder(clip_setup, config, source="pil")
    reference = model.video_inputs(np.arange(4))[0].float()
    _, workdir, _ = clip_setup
    model = model.to("cuda")
    prepare_frame_source(model, "gpu", workdir, torch.device("cuda"), 0)
    decoded = model.video_inputs(np.arange(4))[0].float().cpu()
    assert decoded.shape == reference.shape
    assert (decoded - reference).abs().mean() < 8  # another decoder and resize: close, not equal


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (pinned memory, non-blocking copies)")
def test_pinned_batches_on_cuda_match_the_cpu_batches(clip_setup):
    config = _config(clip_setup)
    plan, model, _ = _plan_and_builder(clip_setup, config, source="cache")
    stream = BatchStream(StepBatches(plan, model.input_builder(), 2), 0, 2, num_workers=2, pin_memory=True)
    try:
        batch = stream.next(0)
    finally:
        stream.close()
    frames, _ = batch.video_inputs
    assert frames.is_pinned()
    on_device = frames.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(on_device.cpu(), frames)
