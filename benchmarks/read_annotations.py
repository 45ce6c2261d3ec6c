"""Reading a full-size MSR-VTT-style annotation set: 10 000 videos x 20 captions.

Target: reading 200 000 captions takes seconds, not minutes. Generates (seeded) the
CLIP4Clip layout in a temporary folder - ``MSRVTT_data.json`` (10 000 videos, 200 000
sentences, the real field names and nesting), ``MSRVTT_train.9k.csv`` and
``MSRVTT_JSFUSION_test.csv`` - plus the same captions as this project's plain CSV, and a
``keyframes.parquet`` of 10 000 videos named ``all/video<N>`` (as ``keyframes`` names
``MSRVTT/videos/all/video<N>.mp4``), so every id goes through the file-name rule.

Measured, best of ``--repeat`` runs, side by side in one process:

* ``json.load`` of ``MSRVTT_data.json`` alone: the floor any reader pays;
* ``read_annotations`` of the three files (detection, parsing, split lists, query file);
* ``load_captions``: the same plus matching the ids to the 10 000 keyframes ids;
* ``read_pairs_file`` of the plain CSV: what ``train --captions captions.csv`` reads;
* ``build_data`` with the three files: everything ``train`` does with captions before
  the model is built (keyframes manifest read, ids matched, splits, pairs).

The cache of parsed files is cleared before every run.

    .venv/bin/python benchmarks/datasets.py [--videos 10000] [--captions-per-video 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mama_augment.datasets import read_annotations, load_captions  # noqa: E402
from mama_augment.datasets.reader import _read_cached  # noqa: E402
from mama_augment.manifest import KEYFRAMES, PartWriter, compact  # noqa: E402
from mama_augment.train.config import TrainConfig  # noqa: E402
from mama_augment.datasets import read_pairs_file  # noqa: E402
from mama_augment.train.data import build_data  # noqa: E402

WORDS = ("a man woman dog cat car person is are playing running talking cooking singing on in the with "
         "red blue small large video game song street kitchen stage field water ball guitar people group").split()


def generate(folder: Path, videos: int, per_video: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    splits = ["train"] * int(videos * 0.6513) + ["validate"] * int(videos * 0.0497)
    splits += ["test"] * (videos - len(splits))
    video_rows = [{"category": int(rng.integers(20)), "url": f"https://www.youtube.com/watch?v=yt{n:07d}",
                   "video_id": f"video{n}", "start time": 1.5, "end time": 11.5, "split": splits[n], "id": n}
                  for n in range(videos)]
    lengths = rng.integers(5, 15, size=videos * per_video)
    picks = rng.integers(0, len(WORDS), size=int(lengths.sum()))
    sentences, csv_lines, start = [], ["video_id,caption"], 0
    for k, length in enumerate(lengths):
        caption = " ".join(WORDS[i] for i in picks[start : start + length])
        start += length
        sentences.append({"caption": caption, "video_id": f"video{k // per_video}", "sen_id": k})
        csv_lines.append(f"video{k // per_video},{caption}")
    info = {"contributor": "Microsoft Research", "data_created": "2016-04-14 14:30:20", "version": "1.0",
            "description": "generated for a benchmark", "year": "2016"}
    paths = {
        "data": folder / "MSRVTT_data.json", "train": folder / "MSRVTT_train.9k.csv",
        "test": folder / "MSRVTT_JSFUSION_test.csv", "csv": folder / "captions.csv",
    }
    paths["data"].write_text(json.dumps({"info": info, "videos": video_rows, "sentences": sentences}))
    n_train = int(videos * 0.9)
    paths["train"].write_text("video_id\n" + "".join(f"video{n}\n" for n in range(n_train)))
    paths["test"].write_text("key,vid_key,video_id,sentence\n" + "".join(
        f"ret{k},msr{n},video{n},{sentences[n * per_video]['caption']}\n" for k, n in enumerate(range(n_train, videos))))
    paths["csv"].write_text("\n".join(csv_lines) + "\n")
    workdir = folder / "work"
    writer = PartWriter(workdir, KEYFRAMES)
    rows = [{"video_id": f"all/video{n}", "status": "ok", "media_type": "video", "keyframe_embeddings": [[1.0, 0.0]],
             "embedding_dim": 2, "keyframe_paths": [], "embedder": "synthetic"} for n in range(videos)]
    for block in range(0, videos, 2000):
        writer.write(rows[block : block + 2000])
    compact(workdir, KEYFRAMES)
    paths["workdir"] = workdir
    return paths


def best_of(fn, repeat: int) -> tuple[float, float, object]:
    wall, cpu, result = [], [], None
    for _ in range(repeat):
        _read_cached.cache_clear()
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--captions-per-video", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        paths = generate(Path(tmp), args.videos, args.captions_per_video)
        size_mb = paths["data"].stat().st_size / 2**20
        print(f"generated {args.videos} videos x {args.captions_per_video} captions in {time.perf_counter() - started:.1f} s; "
              f"MSRVTT_data.json {size_mb:.1f} MB")
        files = [str(paths[k]) for k in ("data", "train", "test")]
        video_ids = [f"all/video{n}" for n in range(args.videos)]
        config = TrainConfig(captions=files, augment="none", meta_weighting=False)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        runs = [
            ("json.load(MSRVTT_data.json) (floor)", lambda: json.loads(paths["data"].read_text())),
            ("read_annotations (3 files)", lambda: read_annotations(files)),
            ("load_captions (+ id matching)", lambda: load_captions(files, video_ids=video_ids)),
            ("read_pairs_file (plain csv)", lambda: read_pairs_file(paths["csv"])),
            ("build_data (3 files)", lambda: build_data(config, paths["workdir"])),
        ]
        floor = None
        print(f"\n{'step':<40}{'wall s':>8}{'CPU s':>8}{'x floor':>9}")
        for name, fn in runs:
            wall, cpu, result = best_of(fn, args.repeat)
            floor = floor or wall
            print(f"{name:<40}{wall:8.2f}{cpu:8.2f}{wall / floor:8.1f}x")
            if name.startswith("load_captions"):
                loaded = result
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\nrows: {len(loaded.frame)} ({loaded.frame.groupby('split').size().to_dict()}); "
              f"{'; '.join(loaded.match.summary())}; problems: {loaded.problems.lines() or 'none'}")
        print(f"peak RSS rose by {rss_after - rss_before:.0f} MB over all runs")


if __name__ == "__main__":
    main()
