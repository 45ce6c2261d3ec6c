"""The transformers backend on the tiny random LLaVA (no vLLM needed)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="the transformers backend needs transformers")

from mama_augment.caption.config import CaptionConfig  # noqa: E402
from mama_augment.caption.stage import run_caption  # noqa: E402
from mama_augment.manifest import CAPTIONS, read_manifest  # noqa: E402
from tiny_llava import make_keyframes_workdir, tiny_llava_dir  # noqa: E402


def test_transformers_backend_captions_the_tiny_llava(tmp_path):
    model = tiny_llava_dir()
    workdir = make_keyframes_workdir(tmp_path / "work", num_videos=3, failed=1)
    settings = dict(model=str(model), backend="transformers", max_tokens=8, ignore_eos=True, num_captions=2)
    report = run_caption(CaptionConfig(**settings), workdir, progress=False)
    rows = read_manifest(workdir, CAPTIONS).to_pylist()
    assert report.total == 6 and len(rows) == 6 and report.done + report.failed == 6
    for row in rows:
        # Random weights give random text: a row is a caption or an honest empty_output.
        assert row["status"] == "ok" or row["error_kind"] == "empty_output", row
        assert row["raw_output"] is not None and row["completion_tokens"] == 8
        assert row["prompt_tokens"] > 16  # 16 image tokens + the prompt
        assert row["backend"] == "transformers" and row["model"] == str(model)
        assert json.loads(row["sampling"])["ignore_eos"] is True
    assert report.done >= 1
    # Same seeds, same answers: a rerun with --overwrite reproduces the rows.
    first = {(r["video_id"], r["caption_index"]): r["raw_output"] for r in rows}
    run_caption(CaptionConfig(**settings, overwrite=True), workdir, progress=False)
    again = {(r["video_id"], r["caption_index"]): r["raw_output"] for r in read_manifest(workdir, CAPTIONS).to_pylist()}
    assert again == first
