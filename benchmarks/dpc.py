"""DPC-KNN speed and memory: 10 000 x 512 float32 embeddings on one core.

Target: ``select_keyframes`` in <= 2 s with < 200 MB extra memory. Prints, for a few
kinds of input, the best wall time of ``--repeat`` runs and the peak of numpy's
allocations during one run (tracemalloc: numpy reports its buffers to it), then how far
the process's peak RSS rose over all runs (an upper bound that includes allocator
slack). Wall and CPU seconds are both the best of the runs; on a shared machine the
CPU time is the fairer number (wall time grows with other people's load).

    .venv/bin/python benchmarks/dpc.py [--frames 10000] [--dim 512] [--repeat 3]

BLAS and OpenMP are pinned to one thread before numpy is imported.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mama_augment.keyframes.dpc import dpc_knn, select_keyframes  # noqa: E402


def make_inputs(frames: int, dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    # A "video": 40 scenes visited in order, frames drifting around each scene.
    scenes = rng.standard_normal((40, dim)).astype(np.float32)
    scene_of_frame = np.sort(rng.integers(0, 40, frames))
    video = scenes[scene_of_frame] * 2.0 + rng.standard_normal((frames, dim)).astype(np.float32)
    return {
        "gaussian noise": rng.standard_normal((frames, dim)).astype(np.float32),
        "40 scenes": video,
        "all identical": np.ones((frames, dim), dtype=np.float32),
    }


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure(fn, repeat: int) -> tuple[float, float, float]:
    """(best wall seconds, best CPU seconds, tracemalloc peak MB) of ``fn()``."""
    tracemalloc.start()
    fn()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    wall, cpu = [], []
    for _ in range(repeat):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return min(wall), min(cpu), traced_peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--keyframes", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    inputs = make_inputs(args.frames, args.dim)
    # Warm up BLAS and numpy on a small input so the first timing is not a start-up.
    select_keyframes(inputs["gaussian noise"][:600], args.keyframes)
    print(
        f"{args.frames} x {args.dim} float32, K={args.keyframes}, knn=5, 1 thread; "
        f"input itself {inputs['gaussian noise'].nbytes / 2**20:.0f} MB"
    )
    rss_before = peak_rss_bytes()
    print(f"load average before: {os.getloadavg()[0]:.1f} (this machine may be shared)")
    print(f"{'input':16s} {'call':28s} {'wall s':>7s} {'CPU s':>7s} {'peak MB':>8s}")
    calls = {
        "select_keyframes (cover)": lambda x: select_keyframes(x, args.keyframes),
        "dpc_knn (gamma)": lambda x: dpc_knn(x, args.keyframes),
        "select_keyframes auto": lambda x: select_keyframes(x, "auto"),
    }
    for input_name, x in inputs.items():
        for call_name, call in calls.items():
            wall, cpu, traced = measure(lambda: call(x), args.repeat)
            print(f"{input_name:16s} {call_name:28s} {wall:7.2f} {cpu:7.2f} {traced:8.1f}")
    rise = (peak_rss_bytes() - rss_before) / 2**20
    print(f"peak RSS rose by {rise:.0f} MB over all runs (after the inputs were made)")


if __name__ == "__main__":
    main()
