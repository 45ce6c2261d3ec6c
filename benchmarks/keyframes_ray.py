"""Keyframes throughput with ``--engine ray`` against ``--engine local``: the engine's overhead.

Both engines run the same stage (library API, fresh work folder each run) on the
clips of ``../shared/media`` at the same parallelism (N worker processes locally,
N Ray actors with 1 CPU each), for the ``pixels`` and ``cnn`` embedders. Ray is
timed twice:

* cold: the stage starts a local Ray itself and shuts it down (what one CLI call
  with ``--engine ray`` costs on a laptop);
* warm: Ray is already running (``ray start --head`` / a cluster), so only the
  Dataset, the actors and their embedder loading are paid.

Printed as videos/s and as ray/local wall-time ratios (> 1 means Ray is slower).

    .venv/bin/python benchmarks/keyframes_ray.py [--media DIR] [--workers 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MEDIA = Path(os.environ.get("MAMA_MEDIA_DIR", ROOT.parent / "shared" / "media"))
VIDEO_EXT = {".mp4", ".avi", ".mpg", ".mkv", ".mov", ".webm"}


def stage_time(clips: list[str], embedder: str, engine: str, workers: int) -> tuple[float, dict]:
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.keyframes.stage import run_keyframes

    with tempfile.TemporaryDirectory() as workdir:
        config = KeyframesConfig(embedder=embedder, workers=workers, engine=engine, num_cpus=1)
        started = time.perf_counter()
        report = run_keyframes(clips, workdir, config, progress=False)
        seconds = time.perf_counter() - started
    return seconds, {"done": report.done, "failed": report.failed}


def best_of(repeat: int, *args) -> tuple[float, list[float], dict]:
    times, counts = [], {}
    for _ in range(repeat):
        seconds, counts = stage_time(*args)
        times.append(seconds)
    return min(times), times, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    parser.add_argument("--workers", type=int, default=2, help="local worker processes = Ray actors")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the best is kept")
    parser.add_argument("--embedders", nargs="+", default=["pixels", "cnn"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "keyframes_ray.json")
    args = parser.parse_args()

    try:
        import ray
    except ImportError:
        sys.exit("Ray is not installed: pip install 'mama-augment[ray]'")
    clips = sorted(str(p) for p in args.media.iterdir() if p.suffix.lower() in VIDEO_EXT)
    if not clips:
        sys.exit(f"no clips in {args.media}")
    load = os.getloadavg()
    print(f"{len(clips)} clips from {args.media}; cpu count {os.cpu_count()}; ray {ray.__version__}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.workers} workers / actors")
    results: dict = {"clips": [Path(c).name for c in clips], "workers": args.workers, "ray": ray.__version__,
                     "load_before": load, "runs": []}

    # Untimed: puts the clips in the page cache and the imports in memory, so the first
    # timed run (local) does not pay for them.
    stage_time(clips, "pixels", "local", args.workers)
    for embedder in args.embedders:
        local, local_all, counts = best_of(args.repeat, clips, embedder, "local", args.workers)
        cold, cold_all, cold_counts = best_of(args.repeat, clips, embedder, "ray", args.workers)
        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
        try:
            warm, warm_all, warm_counts = best_of(args.repeat, clips, embedder, "ray", args.workers)
        finally:
            ray.shutdown()
        if not counts == cold_counts == warm_counts:
            print(f"  warning: engines disagree on counts: {counts} {cold_counts} {warm_counts}", file=sys.stderr)
        n = len(clips)
        print(f"  --embedder {embedder:6s} local {local:6.2f} s ({n / local:5.2f} videos/s) | "
              f"ray cold {cold:6.2f} s ({n / cold:5.2f} videos/s) = {cold / local:4.2f}x | "
              f"ray warm {warm:6.2f} s ({n / warm:5.2f} videos/s) = {warm / local:4.2f}x   "
              f"({counts['done']} ok, {counts['failed']} failed)")
        results["runs"].append({
            "embedder": embedder, "local_s": local, "ray_cold_s": cold, "ray_warm_s": warm,
            "ratio_cold": cold / local, "ratio_warm": warm / local,
            "all_runs": {"local": local_all, "ray_cold": cold_all, "ray_warm": warm_all}, **counts,
        })
    results["load_after"] = os.getloadavg()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in results['load_after'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
