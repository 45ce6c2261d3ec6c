"""A small captioned work folder built directly (no decoding, no model), for export and filter tests.

``make_captioned_workdir`` writes ``keyframes.parquet`` (grids and keyframe JPEGs on
disk), ``captions.parquet`` (generated captions with provenance), an original captions
CSV and, on request, a training run folder with ``pair_weights.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mama_augment.caption.prompts import load_prompt
from mama_augment.manifest import CAPTIONS, KEYFRAMES, PartWriter, compact, utc_now

SUBJECTS = ["a man", "a woman", "a child", "two dogs", "a chef", "a cyclist", "a band", "a cat", "an old farmer", "a diver"]
ACTIONS = ["slices onions", "rides along a river", "plays drums", "chases a red ball", "paints a fence",
           "repairs a bicycle", "swims past coral", "kneads bread dough", "climbs a rock wall", "feeds chickens"]
PLACES = ["in a small kitchen", "at sunset", "on a crowded stage", "in a snowy park", "beside a barn",
          "under a bridge", "in a garage", "near the harbour", "on a beach", "in a classroom"]


def caption_for(i: int, variant: int = 0) -> str:
    subject = SUBJECTS[i % len(SUBJECTS)]
    action = ACTIONS[(i // len(SUBJECTS) + variant) % len(ACTIONS)]
    place = PLACES[(i * 7 + variant * 3) % len(PLACES)]
    return f"{subject.capitalize()} {action} {place}."


def _jpeg(path: Path, seed: int, size=(48, 36)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=80)


def make_captioned_workdir(
    root: Path,
    num_videos: int = 6,
    captions_per_video: int = 2,
    keyframes_per_video: int = 3,
    failed_videos: tuple[int, ...] = (),
    texts: dict | None = None,
) -> dict:
    """Build the work folder; returns ``{"workdir", "originals", "ids", "generated"}``.

    ``texts`` maps (video number, caption_index) to a generated caption text to plant.
    Video ids have a subfolder and a dot (``clips/v003.part``) to exercise key handling.
    """
    workdir = root / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    prompt = load_prompt("default")
    ids = [f"clips/v{i:03d}.part" for i in range(num_videos)]
    kf_rows, cap_rows, originals, generated = [], [], [], {}
    for i, video_id in enumerate(ids):
        if i in failed_videos:
            kf_rows.append({"video_id": video_id, "status": "failed", "error_kind": "undecodable", "error": "bad"})
            continue
        frame_paths = []
        for k in range(keyframes_per_video):
            rel = f"frames/{video_id}/{k:02d}_f{k * 10:06d}.jpg"
            _jpeg(workdir / rel, seed=i * 100 + k)
            frame_paths.append(rel)
        grid = f"grids/{video_id}.jpg"
        _jpeg(workdir / grid, seed=i * 100 + 99, size=(96, 54))
        kf_rows.append({
            "video_id": video_id, "status": "ok", "media_type": "video", "duration_s": 2.0 + i,
            "keyframe_paths": frame_paths, "keyframe_times_s": [0.5 * k for k in range(keyframes_per_video)],
            "keyframe_indices": list(range(keyframes_per_video)), "grid_path": grid, "grid_rows": 3, "grid_cols": 4,
            "embedder": "pixels", "created_at": utc_now(),
        })
        originals.append({"video_id": video_id, "caption": caption_for(i), "split": "train" if i % 3 else "test"})
        for c in range(captions_per_video):
            text = (texts or {}).get((i, c), caption_for(i, variant=c + 1))
            generated[(video_id, c)] = text
            cap_rows.append({
                "video_id": video_id, "caption_index": c, "caption": text, "raw_output": text, "status": "ok",
                "grid_path": grid, "model": "tiny-llava", "preset": None, "backend": "offline",
                "prompt_name": prompt.name, "prompt_sha256": prompt.sha256,
                "sampling": json.dumps({"temperature": 0.2, "max_tokens": 96, "base_seed": 0}),
                "seed": 1000 + i * 10 + c, "completion_tokens": 12, "config_hash": "test", "created_at": utc_now(),
            })
    with PartWriter(workdir, KEYFRAMES) as writer:
        writer.write(kf_rows)
    compact(workdir, KEYFRAMES)
    if cap_rows:
        with PartWriter(workdir, CAPTIONS) as writer:
            writer.write(cap_rows)
        compact(workdir, CAPTIONS)
    originals_path = root / "originals.csv"
    import csv

    with open(originals_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video_id", "caption", "split"])
        writer.writeheader()
        writer.writerows(originals)
    return {"workdir": workdir, "originals": originals_path, "ids": ids, "generated": generated,
            "original_rows": originals}


def make_run(root: Path, info: dict, weighted: bool = True, seed: int = 0) -> Path:
    """A run folder whose pair_weights.parquet scores every original and generated caption."""
    from mama_augment.train.audit import PAIR_WEIGHTS_SCHEMA

    run = root / "runs" / "demo"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"captions": str(info["originals"]), "loss": "mama"}))
    rng = np.random.default_rng(seed)
    rows = []
    for o in info["original_rows"]:
        rows.append({"video_id": o["video_id"], "caption": o["caption"], "caption_source": "original", "caption_index": None})
    for (video_id, index), text in sorted(info["generated"].items()):
        rows.append({"video_id": video_id, "caption": text, "caption_source": "generated", "caption_index": index})
    raw = rng.uniform(0.05, 0.95, len(rows))
    for pair_id, row in enumerate(rows):
        row.update(pair_id=pair_id, concept=None, grid_path=None, loss=float(rng.uniform(0, 5)),
                   weight=float(raw[pair_id] / raw.mean()) if weighted else None,
                   weight_raw=float(raw[pair_id]) if weighted else None, mean_weight_last_epoch=None, last_epoch_steps=0,
                   weight_used=float(raw[pair_id] / raw.mean()) if weighted else None)
    table = pa.Table.from_pylist(rows, schema=PAIR_WEIGHTS_SCHEMA)
    table = table.replace_schema_metadata({b"mama_augment.weighted": b"true" if weighted else b"false"})
    pq.write_table(table, run / "pair_weights.parquet")
    return run


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write(path: Path, text: str | bytes) -> Path:
    """``text`` (or bytes, as they are) written to ``path``, its folders made: an annotation file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def lock_held_elsewhere(workdir: Path, name: str):
    """Another process holds the work folder's lock ``name`` (as a running ``train`` or
    ``qa`` holds its run's) until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom mama_augment.manifest import workdir_lock\n"
         f"with workdir_lock({str(workdir)!r}, {name!r}):\n    print('locked', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()
