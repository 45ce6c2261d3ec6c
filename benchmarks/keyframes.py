"""Keyframes stage wall time against the decode floor, and PySceneDetect beside it.

The decode floor is PyAV decoding every frame of the same clips and nothing else
(multi-threaded decoding, no conversion): no keyframe tool can beat it while it
reads every frame. The stage is run through its library API on the same clips with
the `pixels` and `cnn` embedders, each in a fresh work folder, and compared with the
floor at the same parallelism (one worker vs one process, two vs two). PySceneDetect's
ContentDetector is what a user would run instead to cut a video into shots.

    .venv/bin/python benchmarks/keyframes.py [--media DIR] [--repeat 2]

Many-clips mode (dataset scale): ``--many N`` hard-links (or copies) the real clips
under N new names (N >= 64 is the usual size; any N works) and runs, at ``--workers W``
(default: one per core), the decode floor (W processes; PyAV, or OpenCV with
``--decoder opencv`` or when PyAV is absent), ``pixels``, ``cnn`` on the CPU and, when
CUDA works, ``cnn`` on CUDA. It prints clips/s and the ratio to the floor of each,
the number of embedder processes each run started, and the results as JSON (last
line of stdout, and ``--out``). A run that fails is recorded with its error; runs not
started within ``--budget-s`` seconds are recorded as skipped. Needs only the project,
numpy and OpenCV (PyAV optional)::

    python benchmarks/keyframes.py --many 48 --decoder opencv --budget-s 480
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # the OpenCV floor: no decoder warnings
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


def decode_all_opencv(path: str) -> int:
    import cv2

    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    frames = 0
    try:
        while capture.grab():  # decodes the frame, no conversion
            frames += 1
    finally:
        capture.release()
    return frames


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children: on a shared machine the
    wall time grows with other people's load, this much less."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode_floor(clips: list[str], processes: int, decoder: str = "pyav") -> float:
    decode = decode_all_opencv if decoder == "opencv" else decode_all
    started = time.perf_counter()
    if processes == 1:
        for clip in clips:
            decode(clip)
    else:
        with concurrent.futures.ProcessPoolExecutor(processes) as pool:
            list(pool.map(decode, clips))
    return time.perf_counter() - started


def stage_time(clips: list[str], embedder: str, workers: int, device: str = "auto",
               decoder: str = "auto") -> tuple[float, dict]:
    from mama_augment.engines import device as device_module
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.keyframes.stage import run_keyframes

    started_devices: list[str] = []
    ready_after: list[float] = []
    original, original_stop = device_module.ModelServers.start, device_module.ModelServers.stop

    def counting_start(self, where):  # counts the embedder processes the run starts
        original(self, where)
        started_devices.append(where)

    def noting_stop(self):  # how long the embedders took to load: a fixed cost of each run
        ready_after.extend(self.info.get("ready_after_s", []))
        original_stop(self)

    device_module.ModelServers.start = counting_start
    device_module.ModelServers.stop = noting_stop
    try:
        with tempfile.TemporaryDirectory() as workdir:
            config = KeyframesConfig(embedder=embedder, workers=workers, device=device, decoder=decoder)
            cpu = cpu_seconds()
            started = time.perf_counter()
            report = run_keyframes(clips, workdir, config, progress=False)
            seconds = time.perf_counter() - started
            cpu = cpu_seconds() - cpu
    finally:
        device_module.ModelServers.start = original
        device_module.ModelServers.stop = original_stop
    return seconds, {"done": report.done, "failed": report.failed, "embedder_processes": len(started_devices),
                     "embedder_ready_s": ready_after, "failures": dict(report.failures_by_kind), "cpu_s": cpu}


def scenedetect_time(clips: list[str]) -> float:
    from scenedetect import ContentDetector, detect

    started = time.perf_counter()
    for clip in clips:
        try:
            detect(clip, ContentDetector())
        except Exception as exc:  # the damaged clip may stop it; keep timing the rest
            print(f"  scenedetect failed on {Path(clip).name}: {exc}", file=sys.stderr)
    return time.perf_counter() - started


def _cuda_available() -> bool:
    """Asked in a child process: importing torch here would make the stage spawn its
    workers instead of forking them, which the command line never does."""
    import subprocess

    code = "import torch; print(torch.cuda.is_available())"
    try:
        answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return answer.stdout.strip() == "True"


def _have_scenedetect() -> bool:
    import importlib.util

    return importlib.util.find_spec("scenedetect") is not None


def _have_av() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


def many_clips(args, clips: list[str]) -> dict:
    """The many-clips mode: see the module docstring."""
    started = time.monotonic()
    workers = args.workers[0] if args.workers else (os.cpu_count() or 1)
    decoder = args.decoder
    floor_decoder = "pyav" if decoder in ("auto", "pyav") and _have_av() else "opencv"
    stage_decoder = decoder if decoder != "auto" else ("pyav" if _have_av() else "opencv")
    results: dict = {"mode": "many", "clips": args.many, "distinct_clips": len(clips), "workers": workers,
                     "cpu_count": os.cpu_count(), "decoder": stage_decoder, "floor_decoder": floor_decoder,
                     "load_average": list(os.getloadavg()), "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        many = []
        for i in range(args.many):
            source = Path(clips[i % len(clips)])
            target = Path(folder) / f"clip{i:04d}_{source.stem}{source.suffix}"
            # A hard link (a new path: the stage counts each path once, symlinks by their
            # target), or a copy across filesystems.
            try:
                os.link(source, target)
            except OSError:
                import shutil

                shutil.copyfile(source, target)
            many.append(str(target))
        print(f"{len(many)} clips (copies of {len(clips)} real clips), {workers} workers, decoder {stage_decoder}, "
              f"load average {os.getloadavg()[0]:.2f}")

        def measure(name: str, work) -> None:
            if time.monotonic() - started > args.budget_s:
                results["runs"][name] = {"skipped": f"time budget of {args.budget_s:g} s spent"}
                print(f"  {name:10s} skipped: time budget spent")
                return
            try:
                results["runs"][name] = work()
            except Exception as exc:  # noqa: BLE001 - record it and go on
                results["runs"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  {name:10s} failed: {type(exc).__name__}: {exc}")
                return
            run = results["runs"][name]
            print(f"  {name:10s} {run['seconds']:7.2f} s  {run['clips_per_s']:7.2f} clips/s"
                  + (f"  {run['ratio_to_floor']:.2f}x floor" if "ratio_to_floor" in run else "")
                  + (f"  ({run['done']} ok, {run['failed']} failed, {run['embedder_processes']} embedder processes"
                     + (f", ready after {max(run['embedder_ready_s']):.1f} s" if run.get("embedder_ready_s") else "")
                     + ")" if "done" in run else ""))

        def floor() -> dict:
            seconds = min(decode_floor(many, workers, floor_decoder) for _ in range(args.repeat))
            return {"seconds": seconds, "clips_per_s": len(many) / seconds}

        measure("floor", floor)
        floor_s = results["runs"].get("floor", {}).get("seconds")

        def stage(embedder: str, device: str):
            def work() -> dict:
                times, counts = [], {}
                for _ in range(args.repeat):
                    seconds, counts = stage_time(many, embedder, workers, device=device, decoder=stage_decoder)
                    times.append(seconds)
                best = min(times)
                run = {"seconds": best, "clips_per_s": len(many) / best, "all_runs": times, **counts}
                if floor_s:
                    run["ratio_to_floor"] = best / floor_s
                return run
            return work

        measure("pixels", stage("pixels", "cpu"))
        measure("cnn-cpu", stage("cnn", "cpu"))
        if _cuda_available():
            measure("cnn-cuda", stage("cnn", "cuda"))
        else:
            results["runs"]["cnn-cuda"] = {"skipped": "CUDA is not available"}
    runs = results["runs"]
    if "seconds" in runs.get("cnn-cuda", {}) and "seconds" in runs.get("pixels", {}):
        results["cnn_cuda_over_pixels"] = runs["cnn-cuda"]["seconds"] / runs["pixels"]["seconds"]
    if "seconds" in runs.get("cnn-cuda", {}) and "seconds" in runs.get("cnn-cpu", {}):
        results["cnn_cuda_over_cnn_cpu"] = runs["cnn-cuda"]["seconds"] / runs["cnn-cpu"]["seconds"]
    results["load_average_after"] = list(os.getloadavg())
    results["seconds_total"] = time.monotonic() - started
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs of each measurement; the best is kept (default 2; 1 with --many)")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="parallelism (default 1 2; with --many one per core)")
    parser.add_argument("--embedders", nargs="+", default=["pixels", "cnn"])
    parser.add_argument("--many", type=int, default=0, help="many-clips mode: this many clips")
    parser.add_argument("--decoder", default="auto", choices=["auto", "pyav", "opencv"])
    parser.add_argument("--budget-s", type=float, default=900.0, help="many-clips mode: start no run after this")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    clips = sorted(str(p) for p in args.media.iterdir() if p.suffix.lower() in VIDEO_EXT) if args.media.is_dir() else []
    if not clips:
        sys.exit(f"no clips in {args.media}")
    if args.many:
        args.repeat = args.repeat or 1
        results = many_clips(args, clips)
        out = args.out or ROOT / "benchmarks" / "out" / "keyframes_many.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
        print(json.dumps(results))
        return
    args.repeat = args.repeat or 2
    args.workers = args.workers or [1, 2]
    args.out = args.out or ROOT / "benchmarks" / "out" / "keyframes.json"
    print(f"{len(clips)} clips from {args.media}, cpu count {os.cpu_count()}")
    results: dict = {"clips": [Path(c).name for c in clips], "runs": []}

    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    results["load_average"] = list(os.getloadavg())
    for workers in args.workers:
        floors = []
        for _ in range(args.repeat):
            cpu = cpu_seconds()
            floors.append((decode_floor(clips, workers), cpu_seconds() - cpu))
        floor, floor_cpu = min(floors)
        results.setdefault("floors", []).append({"workers": workers, "seconds": floor, "cpu_s": floor_cpu})
        print(f"\nparallelism {workers}: decode floor {floor:.2f} s (CPU {floor_cpu:.2f} s)")
        for embedder in args.embedders:
            times, cpus = [], []
            for _ in range(args.repeat):
                seconds, counts = stage_time(clips, embedder, workers)
                times.append(seconds)
                cpus.append(counts["cpu_s"])
            best = min(times)
            counts["cpu_s"] = min(cpus)
            print(
                f"  keyframes --embedder {embedder:6s} --workers {workers}: {best:6.2f} s"
                f"  = {best / floor:.2f}x floor  (CPU {counts['cpu_s']:.2f} s = {counts['cpu_s'] / floor_cpu:.2f}x;"
                f" {counts['done']} ok, {counts['failed']} failed; runs {', '.join(f'{t:.2f}' for t in times)})"
            )
            results["runs"].append(
                {"workers": workers, "embedder": embedder, "seconds": best, "floor_s": floor,
                 "ratio": best / floor, "all_runs": times, **counts}
            )
        if workers == 1 and "scenedetect" not in results and not _have_scenedetect():
            results["scenedetect"] = {"skipped": "scenedetect is not installed (pip install 'mama-augment[bench]')"}
            print("  scenedetect: not installed, skipped")
        if workers == 1 and "scenedetect" not in results:
            sd = min(scenedetect_time(clips) for _ in range(args.repeat))
            results["scenedetect"] = {"seconds": sd, "ratio": sd / floor}
            print(f"  scenedetect ContentDetector (1 process): {sd:6.2f} s  = {sd / floor:.2f}x floor")

    results["load_average_after"] = list(os.getloadavg())
    print(f"load average after {os.getloadavg()[0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
