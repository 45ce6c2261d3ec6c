"""A folder of videos nobody captioned: train on the generated captions alone.

The whole path (keyframes -> caption -> filter -> train -> evaluate -> export) runs on
generated clips with the tiny random LLaVA of the caption tests (transformers backend,
CPU); the other tests use the planted work folders of ``train_helpers``.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import mama_augment.cli  # noqa: F401  (registers every command)
from mama_augment.cli._app import app
from mama_augment.manifest import CAPTION_FLAGS, CAPTIONS, KEYFRAMES, PartWriter, compact, read_manifest
from train_helpers import make_workdir

runner = CliRunner()


def _train(workdir, *args):
    return runner.invoke(app, ["train", "-w", str(workdir), "--text-model", "hashing", "--epochs", "2",
                               "--batch-size", "8", "-q", *args])


def _write_generated(workdir, rows):
    PartWriter(workdir, CAPTIONS).write(rows)
    compact(workdir, CAPTIONS)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the tiny VLM needs transformers")
@pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="generating and decoding clips needs PyAV")
def test_raw_folder_path_from_clips_to_export(tmp_path):
    from media import make_video
    from mama_augment.train.runs import GENERATED_CAPTIONS_NOTE
    from tiny_llava import tiny_llava_dir

    videos, workdir = tmp_path / "videos", tmp_path / "work"
    for number in range(8):
        make_video(videos / f"clip{number}.mp4", num_frames=16, size=(64, 48), seed=number)
    result = runner.invoke(app, ["keyframes", str(videos), "-w", str(workdir), "--embedder", "pixels",
                                 "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["caption", "-w", str(workdir), "--model", str(tiny_llava_dir()), "--backend",
                                 "transformers", "--num-captions", "2", "--max-tokens", "6", "--no-progress"])
    # Random weights write random text: a caption may come back empty (a failed row, exit 1).
    assert result.exit_code in (0, 1), result.output
    captions = read_manifest(workdir, CAPTIONS).to_pandas()
    assert (captions.status == "ok").sum() >= 8
    result = runner.invoke(app, ["filter", "-w", str(workdir), "--text-model", "hashing", "--no-progress"])
    assert result.exit_code == 0, result.output

    result = _train(workdir, "--val-fraction", "0.25", "--test-fraction", "0.25", "--name", "raw")
    assert result.exit_code == 0, result.output
    assert "eval_captions: generated" in result.output and "not with people" in result.output
    run = workdir / "runs" / "raw"
    for name in ("config.json", "summary.json", "model.safetensors", "metrics.jsonl", "pair_weights.parquet"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["captions"] is None and config["val_fraction"] == 0.25 and config["test_fraction"] == 0.25
    assert config["extra"]["eval_captions"] == "generated"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_captions"] == "generated" and summary["data"]["original_captions"] == 0
    assert summary["data"]["generated_captions"] == (captions.status == "ok").sum()

    result = runner.invoke(app, ["evaluate", "--run", str(run), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "captions: generated" in result.output
    entry = json.loads((run / "eval.json").read_text())["val"]
    assert entry["eval_captions"] == "generated" and entry["eval_captions_note"] == GENERATED_CAPTIONS_NOTE
    # The same hash split as training: the videos validated on are the run's val videos.
    assert entry["videos"] == summary["data"]["val_videos"]

    out = tmp_path / "export"
    result = runner.invoke(app, ["export", "-w", str(workdir), "--format", "jsonl", "--out", str(out),
                                 "--run", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for path in sorted(out.rglob("*.jsonl")) for line in path.read_text().splitlines()]
    assert lines and {line["video_id"] for line in lines} <= {f"clip{n}" for n in range(8)}

    result = runner.invoke(app, ["report", "-w", str(workdir)])
    assert result.exit_code == 0, result.output
    page = (workdir / "report" / "index.html").read_text()
    assert 'data-eval-captions="generated"' in page and "not with people" in page


def test_generated_only_run_evaluates_on_human_captions_when_given(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=60)
    frame = pd.read_csv(captions)
    _write_generated(workdir, [{"video_id": r.video_id, "caption_index": k, "caption": f"{r.caption} seen {k}",
                                "status": "ok"} for r in frame.itertuples() for k in range(2)])
    # Asked for by name, the weighting runs on the generated captions alone: its meta set
    # is drawn from them, and audit ranks them.
    result = _train(workdir, "--name", "gen", "--meta-weighting")
    assert result.exit_code == 0, result.output
    run = workdir / "runs" / "gen"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["meta_weighting"] == "on" and summary["meta_pairs"] >= 2
    result = runner.invoke(app, ["audit", "--run", str(run), "--top", "3", "--source", "generated"])
    assert result.exit_code == 0, result.output
    assert "generated#" in result.output
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--split", "test", "--captions", str(captions)])
    assert result.exit_code == 0, result.output
    entry = json.loads((run / "eval.json").read_text())["test:captions.csv"]
    assert entry["eval_captions"] == "original" and "eval_captions_note" not in entry
    # The human captions have no split column: the run's hash split picks the same test videos.
    assert entry["videos"] == summary["data"]["test_videos"]


def test_drop_flags_filter_the_generated_captions_as_export_does(tmp_path):
    from mama_augment.export.sources import caption_sha256

    workdir, _ = make_workdir(tmp_path, n_videos=40)
    ids = read_manifest(workdir, KEYFRAMES).column("video_id").to_pylist()
    rows = [{"video_id": v, "caption_index": k, "caption": f"clip {v} part {k}", "status": "ok"}
            for v in ids for k in range(2)]
    _write_generated(workdir, rows)
    flags = []
    for row in rows:
        raised = ["too_short"] if row["caption_index"] == 1 else []
        flags.append({"video_id": row["video_id"], "caption_index": row["caption_index"], "status": "ok",
                      "caption_sha256": caption_sha256(row["caption"]), "flags": raised,
                      "too_short": bool(raised), "duplicate_keep": None})
    flags[0]["caption_sha256"] = "stale"  # captioned again after `filter`: kept and counted, as export keeps it
    PartWriter(workdir, CAPTION_FLAGS).write(flags)
    compact(workdir, CAPTION_FLAGS)

    # What is left is one generated caption per video: the defaults (the "auto" weighting) still train.
    result = _train(workdir, "--drop-flags", "too_short", "--name", "flags")
    assert result.exit_code == 0, result.output
    data = json.loads((workdir / "runs" / "flags" / "summary.json").read_text())["data"]
    assert data["generated_captions"] == len(ids) and data["issue_generated_caption_dropped_flag:too_short"] == len(ids)
    assert data["issue_generated_caption_without_current_flags"] == 1
    result = _train(workdir, "--drop-flags", "nonsense", "--name", "bad")
    assert result.exit_code == 2 and "unknown flag" in result.output
    result = _train(workdir, "--drop-flags", "too_short", "--augment", "none", "--name", "bad")
    assert result.exit_code == 2 and "--augment add" in result.output


@pytest.mark.parametrize("rows", [[], [{"video_id": "v0000", "caption_index": 0, "caption": None, "status": "failed"}]],
                         ids=["no-captions-parquet", "only-failed-rows"])
def test_no_ok_captions_says_what_to_run_first(tmp_path, rows):
    workdir, _ = make_workdir(tmp_path, n_videos=20)
    if rows:
        _write_generated(workdir, [{**r, "error_kind": "empty_output", "error": "no text"} for r in rows])
    result = _train(workdir)
    assert result.exit_code == 2, result.output
    assert "mama-augment caption" in result.output and "no generated captions" in result.output
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


def _nine_training_videos(tmp_path):
    """9 training videos with 20 captions each, most of them another video's (so the
    default "auto" decision turns the weighting on): 5 % of 180 pairs asks for a meta
    set of 9 videos, all there are."""
    workdir, captions = make_workdir(tmp_path, n_videos=12)
    frame = pd.read_csv(captions)
    texts = frame.caption.tolist()
    rng = np.random.default_rng(0)
    split = {v: "train" if i < 9 else "val" if i < 11 else "test" for i, v in enumerate(sorted(frame.video_id))}
    rows = [{"video_id": r.video_id, "caption": f"{texts[rng.integers(len(texts))]} take {k}",
             "split": split[r.video_id]} for r in frame.itertuples() for k in range(20)]
    path = tmp_path / "many.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return workdir, path


def test_too_few_training_videos_for_a_meta_set_train_without_the_weighting(tmp_path):
    workdir, captions = _nine_training_videos(tmp_path)
    result = _train(workdir, "--captions", str(captions), "--name", "small")
    assert result.exit_code == 0, result.output
    assert "too few training videos (9)" in result.output and "without the meta-weighting" in result.output
    run = workdir / "runs" / "small"
    config = json.loads((run / "config.json").read_text())
    assert config["meta_weighting"] is False and "too few training videos" in config["extra"]["meta_weighting_off_why"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["meta_weighting"] == "off" and "too few training videos" in summary["meta_weighting_off_why"]
    # Asked for by name, the weighting is not dropped silently: a usage error says what to change.
    result = _train(workdir, "--captions", str(captions), "--meta-weighting", "--name", "asked")
    assert result.exit_code == 2 and "--no-meta-weighting" in result.output
