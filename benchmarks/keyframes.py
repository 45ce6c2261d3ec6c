"""Keyframes stage wall time against the decode floor, and PySceneDetect beside it.

The decode floor is PyAV decoding every frame of the same clips and nothing else
(multi-threaded decoding, no conversion): no keyframe tool can beat it while it
reads every frame. The stage is run through its library API on the same clips with
the `pixels` and `cnn` embedders, each in a fresh work folder, and compared with the
floor at the same parallelism (one worker vs one process, two vs two). PySceneDetect's
ContentDetector is what a user would run instead to cut a video into shots.

    .venv/bin/python benchmarks/keyframes.py [--media DIR] [--repeat 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MEDIA = Path(os.environ.get("MAMA_MEDIA_DIR", ROOT.parent / "shared" / "media"))
VIDEO_EXT = {".mp4", ".avi", ".mpg", ".mkv", ".mov", ".webm"}


def decode_all(path: str) -> int:
    import av

    frames = 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _ in container.decode(stream):
                frames += 1
    except av.FFmpegError:
        pass  # the damaged clip ends early; the frames before count
    return frames


def decode_floor(clips: list[str], processes: int) -> float:
    started = time.perf_counter()
    if processes == 1:
        for clip in clips:
            decode_all(clip)
    else:
        with concurrent.futures.ProcessPoolExecutor(processes) as pool:
            list(pool.map(decode_all, clips))
    return time.perf_counter() - started


def stage_time(clips: list[str], embedder: str, workers: int) -> tuple[float, dict]:
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.keyframes.stage import run_keyframes

    with tempfile.TemporaryDirectory() as workdir:
        config = KeyframesConfig(embedder=embedder, workers=workers)
        started = time.perf_counter()
        report = run_keyframes(clips, workdir, config, progress=False)
        seconds = time.perf_counter() - started
    return seconds, {"done": report.done, "failed": report.failed}


def scenedetect_time(clips: list[str]) -> float:
    from scenedetect import ContentDetector, detect

    started = time.perf_counter()
    for clip in clips:
        try:
            detect(clip, ContentDetector())
        except Exception as exc:  # the damaged clip may stop it; keep timing the rest
            print(f"  scenedetect failed on {Path(clip).name}: {exc}", file=sys.stderr)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the best is kept")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--embedders", nargs="+", default=["pixels", "cnn"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "keyframes.json")
    args = parser.parse_args()

    clips = sorted(str(p) for p in args.media.iterdir() if p.suffix.lower() in VIDEO_EXT)
    if not clips:
        sys.exit(f"no clips in {args.media}")
    print(f"{len(clips)} clips from {args.media}, cpu count {os.cpu_count()}")
    results: dict = {"clips": [Path(c).name for c in clips], "runs": []}

    for workers in args.workers:
        floor = min(decode_floor(clips, workers) for _ in range(args.repeat))
        print(f"\nparallelism {workers}: decode floor {floor:.2f} s")
        for embedder in args.embedders:
            times = []
            for _ in range(args.repeat):
                seconds, counts = stage_time(clips, embedder, workers)
                times.append(seconds)
            best = min(times)
            print(
                f"  keyframes --embedder {embedder:6s} --workers {workers}: {best:6.2f} s"
                f"  = {best / floor:.2f}x floor  ({counts['done']} ok, {counts['failed']} failed;"
                f" runs {', '.join(f'{t:.2f}' for t in times)})"
            )
            results["runs"].append(
                {"workers": workers, "embedder": embedder, "seconds": best, "floor_s": floor,
                 "ratio": best / floor, "all_runs": times, **counts}
            )
        if workers == 1 and "scenedetect" not in results:
            sd = min(scenedetect_time(clips) for _ in range(args.repeat))
            results["scenedetect"] = {"seconds": sd, "ratio": sd / floor}
            print(f"  scenedetect ContentDetector (1 process): {sd:6.2f} s  = {sd / floor:.2f}x floor")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
