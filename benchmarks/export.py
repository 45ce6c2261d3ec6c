"""Export speed and memory: ``--videos`` captioned videos, every format.

Builds (once) a work folder of ``--videos`` videos with small pictures: a 96x54 grid
and 12 keyframes of 48x36 each, drawn from a pool of ``--pool`` distinct JPEGs so the
folder stays small on disk (each video still reads its own 13 files); 2 generated
captions per video with provenance, an original captions CSV with one caption per
video, a training run's ``pair_weights.parquet`` for every pair and a
``caption_flags.parquet`` (2 % of the captions flagged). Then, for each format, a
fresh process exports it all with ``--run`` and ``--drop-flags all`` (so every join
and filter is on) and reports videos per second (wall clock, and per CPU second of the process, which
a loaded machine disturbs less) and its peak resident memory
(``VmHWM``), beside the same process's memory before the export started.

    python benchmarks/export.py --videos 100000 --formats webdataset,hf,llava,clip-vip,csv,jsonl
    python benchmarks/export.py --videos 20000      # the same at a fifth of the size: memory must not grow
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np


def _jpeg_bytes(seed: int, size: tuple[int, int]) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    colour = rng.uniform(0, 255, (1, 1, 3))
    image = (colour * (0.5 + 0.5 * x) * (0.6 + 0.4 * y)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def build(workdir: Path, videos: int, pool: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mama_augment.caption.prompts import load_prompt
    from mama_augment.manifest import CAPTION_FLAGS, CAPTIONS, KEYFRAMES, ROW_GROUP_ROWS, conform
    from mama_augment.quality import FLAG_NAMES
    from mama_augment.train.audit import PAIR_WEIGHTS_SCHEMA
    from mama_augment.export.sources import caption_sha256

    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    from video_captions import realistic_caption

    import random

    marker = workdir / "BUILT.json"
    if marker.exists() and json.loads(marker.read_text()) == {"videos": videos, "pool": pool, "seed": seed,
                                                              "row_group": ROW_GROUP_ROWS}:
        return
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "pool").mkdir(parents=True)
    for k in range(pool):
        (workdir / "pool" / f"grid{k:05d}.jpg").write_bytes(_jpeg_bytes(k, (96, 54)))
        (workdir / "pool" / f"frame{k:05d}.jpg").write_bytes(_jpeg_bytes(pool + k, (48, 36)))
    rng = random.Random(seed)
    ids = [f"clips/video{i:07d}" for i in range(videos)]
    keyframes = pa.table({
        "video_id": ids,
        "status": ["ok"] * videos,
        "media_type": ["video"] * videos,
        "duration_s": [10.0] * videos,
        "grid_path": [f"pool/grid{i % pool:05d}.jpg" for i in range(videos)],
        "grid_rows": pa.array([3] * videos, pa.int32()),
        "grid_cols": pa.array([4] * videos, pa.int32()),
        "keyframe_paths": [[f"pool/frame{(i * 12 + k) % pool:05d}.jpg" for k in range(12)] for i in range(videos)],
        "keyframe_times_s": [[0.8 * k for k in range(12)]] * videos,
    })
    # Written as `compact` writes manifests (sorted by key, row groups of ROW_GROUP_ROWS).
    write = partial(pq.write_table, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    write(conform(keyframes, KEYFRAMES.schema), workdir / "keyframes.parquet")
    prompt = load_prompt("default")
    texts = [[realistic_caption(rng) for _ in range(2)] for _ in range(videos)]
    sampling = json.dumps({"temperature": 0.2, "max_tokens": 96, "base_seed": 0})
    captions = pa.table({
        "video_id": [v for v in ids for _ in range(2)],
        "caption_index": pa.array([c for _ in ids for c in range(2)], pa.int32()),
        "caption": [t for pair in texts for t in pair],
        "status": ["ok"] * (2 * videos),
        "model": ["llava-hf/llava-1.5-7b-hf"] * (2 * videos),
        "prompt_name": [prompt.name] * (2 * videos),
        "prompt_sha256": [prompt.sha256] * (2 * videos),
        "sampling": [sampling] * (2 * videos),
        "seed": pa.array(list(range(2 * videos)), pa.int64()),
    })
    write(conform(captions, CAPTIONS.schema), workdir / "captions.parquet")
    flagged = [rng.random() < 0.02 for _ in range(2 * videos)]
    flags = pa.table({
        "video_id": captions.column("video_id"),
        "caption_index": captions.column("caption_index"),
        "caption_sha256": [caption_sha256(t) for pair in texts for t in pair],
        "status": ["ok"] * (2 * videos),
        "flags": [[rng.choice(FLAG_NAMES[:5])] if f else [] for f in flagged],
        "flagged": flagged,
        "duplicate_keep": [True] * (2 * videos),
    })
    write(conform(flags, CAPTION_FLAGS.schema), workdir / "caption_flags.parquet")
    originals = [realistic_caption(rng) for _ in ids]
    import csv

    with open(workdir / "originals.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "caption"])
        # Shuffled: the export has to sort it.
        order = list(range(videos))
        rng.shuffle(order)
        writer.writerows([ids[i], originals[i]] for i in order)
    run = workdir / "runs" / "bench"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"captions": str(workdir / "originals.csv")}))
    n_pairs = 3 * videos
    raw = np.random.default_rng(seed).uniform(0.05, 0.95, n_pairs)
    pairs = pa.table({
        "pair_id": pa.array(np.arange(n_pairs), pa.int64()),
        "video_id": ids + [v for v in ids for _ in range(2)],
        "caption": originals + [t for pair in texts for t in pair],
        "caption_source": ["original"] * videos + ["generated"] * (2 * videos),
        "caption_index": pa.array([None] * videos + [c for _ in ids for c in range(2)], pa.int32()),
        "loss": np.random.default_rng(seed + 1).uniform(0, 5, n_pairs),
        "weight": raw / raw.mean(),
        "weight_raw": raw,
        "last_epoch_steps": pa.array([0] * n_pairs, pa.int32()),
    })
    pairs = conform(pairs, PAIR_WEIGHTS_SCHEMA).replace_schema_metadata({b"mama_augment.weighted": b"true"})
    write(pairs, run / "pair_weights.parquet")
    marker.write_text(json.dumps({"videos": videos, "pool": pool, "seed": seed, "row_group": ROW_GROUP_ROWS}))


def _peak_rss_kb() -> int:
    """Peak resident memory of this process (VmHWM). Unlike ``ru_maxrss``, which Linux
    carries over from the parent across fork and exec, it starts afresh in a new program."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(args) -> None:
    """One export in this process; prints one JSON line."""
    from mama_augment.export.stage import run_export
    from mama_augment.export.config import ExportConfig

    workdir = Path(args.workdir)
    out = Path(args.child_out)
    before = _peak_rss_kb()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    report = run_export(ExportConfig(format=args.child, out=out, run=workdir / "runs" / "bench", drop_flags=("all",),
                                     shard_size=args.shard_size), workdir)
    seconds = time.perf_counter() - started
    peak = _peak_rss_kb()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu.ru_utime - cpu_before.ru_utime) + (cpu.ru_stime - cpu_before.ru_stime)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps({"format": args.child, "videos": report.extra.get("videos"), "samples": report.total,
                      "seconds": round(seconds, 2), "videos_per_s": round(report.extra.get("videos", 0) / seconds),
                      "cpu_s": round(cpu_s, 2), "videos_per_cpu_s": round(report.extra.get("videos", 0) / cpu_s),
                      "rss_before_mb": round(before / 1024), "peak_rss_mb": round(peak / 1024),
                      "out_mb": round(size / 2**20), "failed": report.failed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=2000)
    parser.add_argument("--formats", default="webdataset,hf,llava,clip-vip,csv,jsonl")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/out/export")
    parser.add_argument("--keep", action="store_true", help="Keep the exports (default: removed after measuring).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    root = Path(args.out)
    workdir = root / f"work-{args.videos}"
    started = time.perf_counter()
    build(workdir, args.videos, args.pool)
    print(f"work folder {workdir} ready in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for fmt in args.formats.split(","):
        out = root / f"out-{fmt}-{args.videos}"
        if out.exists():
            shutil.rmtree(out)
        command = [sys.executable, __file__, "--child", fmt, "--child-out", str(out), "--workdir", str(workdir),
                   "--shard-size", str(args.shard_size)]
        result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{fmt} failed")
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(row, flush=True)
        if not args.keep:
            shutil.rmtree(out)
    (root / f"export-{args.videos}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
