"""Keyframe coverage: DPC-KNN keyframes against uniformly spaced frames, on real clips.

For each clip in ../shared/media (missing ones are skipped): decode once with PyAV,
keep frames at 2 fps as thumbnails (longer side <= 320 px), embed them with the
``cnn`` embedder, and measure

    coverage = mean over all sampled frames of the distance to the nearest keyframe

in the embedding space (lower is better) for 12 keyframes picked by

* uniform - the centre frames of 12 equal segments (the baseline),
* gamma   - plain DPC-KNN: the 12 highest rho * delta (``selection="gamma"``),
* greedy  - ``cover``'s DPC-KNN start alone: the top-gamma frame, then greedily the
  candidate among the 2K top-gamma frames that most lowers coverage (the default
  before the swap refinement),
* cover   - the default (``selection="cover"``): that start refined by k-medoids swaps,
  and never worse than uniform frames,
* best    - the best 12 frames a k-medoids search finds (greedy + swap refinement from
  the greedy start and 30 random starts): about the lowest coverage any 12 frames
  reach, to show how much room there is.

Ratios to uniform are printed per clip; clips with no more sampled frames than
keyframes (every frame kept, coverage 0) are listed but left out of the mean.
Targets: no clip above 1.0x uniform and the mean of ``cover`` within 0.02 of ``best``
(docs/method.md, "Keyframes and grids").

Short clips are where a selection rule is most easily worse than uniform frames, and
the real clips hold few of them, so ``--windows 15 24 36`` (the default) also scores
every non-overlapping window of that many sampled frames cut from the longer clips,
as if each were a short clip of its own: the mean and the worst ratio per length.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/coverage.py [--media DIR] [--knn 5] [--windows 15 24 36]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mama_augment.keyframes.dpc import select_keyframes  # noqa: E402

CLIPS = [
    "cockatoo.mp4",
    "realshort.mp4",
    "Megamind.avi",
    "Megamind_bugy.avi",
    "vtest.avi",
    "box.mp4",
    "cityCC0.mpg",
    "pens.mp4",
]


def sample_frames(path: Path, fps: float = 2.0, thumb: int = 320) -> list[np.ndarray]:
    """Frames at ``fps`` (by presentation time) as RGB thumbnails; decode errors end
    the clip early (the damaged file keeps the frames decoded before the damage)."""
    import av
    import cv2

    frames: list[np.ndarray] = []
    next_time = 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if frame.time is None or frame.time + 1e-6 < next_time:
                    continue
                if not frames:
                    next_time = frame.time
                while next_time <= frame.time + 1e-6:  # skip the slots a gap jumped over
                    next_time += 1.0 / fps
                rgb = frame.to_ndarray(format="rgb24")
                scale = thumb / max(rgb.shape[:2])
                if scale < 1:
                    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
                    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                frames.append(rgb)
        except av.error.FFmpegError as exc:
            print(f"  {path.name}: decoding stopped after {len(frames)} frames ({exc})")
    return frames


def uniform_indices(n: int, count: int) -> np.ndarray:
    """The centre frame of each of ``count`` equal segments (the usual uniform pick)."""
    count = min(count, n)
    return np.floor((np.arange(count) + 0.5) * n / count).astype(np.int64)


def distances(embeddings: np.ndarray) -> np.ndarray:
    x = embeddings.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.sqrt(np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None))


def coverage(embeddings: np.ndarray, keyframes: np.ndarray) -> float:
    """Mean over all frames of the Euclidean distance to the nearest keyframe."""
    return float(distances(embeddings)[:, np.asarray(keyframes)].min(axis=1).mean())


def _swap_refine(dist: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """PAM-style local search: make the best single swap (a keyframe for another
    frame) while it lowers the total distance to the nearest keyframe."""
    chosen = [int(c) for c in chosen]
    total = dist[:, chosen].min(axis=1).sum()
    while True:
        best = (total, None, None)
        for slot in range(len(chosen)):
            others = chosen[:slot] + chosen[slot + 1 :]
            base = dist[:, others].min(axis=1) if others else np.full(len(dist), np.inf)
            totals = np.minimum(base[:, None], dist).sum(axis=0)
            totals[chosen] = np.inf
            candidate = int(np.argmin(totals))
            if totals[candidate] < best[0] - 1e-12:
                best = (totals[candidate], slot, candidate)
        if best[1] is None:
            return np.sort(chosen)
        total = best[0]
        chosen[best[1]] = best[2]


def best_keyframes(embeddings: np.ndarray, count: int, restarts: int = 20) -> np.ndarray:
    """About the best ``count`` frames for coverage: a k-medoids (PAM swap) search from
    the greedy start and from random starts."""
    dist = distances(embeddings)
    n = len(dist)
    count = min(count, n)
    greedy: list[int] = []
    nearest = np.full(n, np.inf)
    for _ in range(count):
        totals = np.minimum(nearest[:, None], dist).sum(axis=0)
        totals[greedy] = np.inf
        greedy.append(int(np.argmin(totals)))
        nearest = np.minimum(nearest, dist[:, greedy[-1]])
    starts = [np.array(greedy)]
    rng = np.random.default_rng(0)
    starts += [rng.choice(n, count, replace=False) for _ in range(restarts)]
    results = [_swap_refine(dist, start) for start in starts]
    return min(results, key=lambda chosen: dist[:, chosen].min(axis=1).mean())


def greedy_cover(embeddings: np.ndarray, count: int, knn: int) -> np.ndarray:
    """``cover``'s DPC-KNN start without its swap refinement."""
    from mama_augment.keyframes import dpc

    scores = dpc._scores(embeddings, knn)
    order = dpc._score_order(scores.gamma, scores.rank)
    positive = order[scores.gamma[order] > 0]
    if len(positive) <= count:
        return dpc.pick_centers(scores.gamma, scores.rank, count)
    candidates = positive[: max(count, round(dpc.COVER_CANDIDATES_PER_CENTER * count))]
    dist = np.sqrt(dpc._sq_dist_from_dot(scores.x @ scores.x[candidates].T)).astype(np.float64)
    return np.sort(candidates[dpc._greedy_cover(dist, 0, count)])


def embed_clips(media: Path, fps: float, thumb: int) -> dict[str, np.ndarray]:
    from mama_augment.embed import EmbedderOptions, get_embedder

    embedder = get_embedder("cnn", EmbedderOptions(device="cpu", batch_size=16))
    out = {}
    for name in CLIPS:
        path = media / name
        if not path.exists():
            print(f"  {name}: missing, skipped")
            continue
        started = time.perf_counter()
        frames = sample_frames(path, fps, thumb)
        if not frames:
            print(f"  {name}: no frames decoded, skipped")
            continue
        out[name] = embedder.embed(frames)
        print(f"  {name}: {len(frames)} frames embedded in {time.perf_counter() - started:.1f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    parser.add_argument("--keyframes", type=int, default=12)
    parser.add_argument("--knn", type=int, default=5)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--thumb", type=int, default=320)
    parser.add_argument("--windows", type=int, nargs="*", default=[15, 24, 36],
                        help="also score windows of this many frames cut from longer clips")
    args = parser.parse_args()

    print(f"sampling at {args.fps} fps, cnn embeddings, {args.keyframes} keyframes, knn={args.knn}")
    clips = embed_clips(args.media, args.fps, args.thumb)
    methods = {
        "uniform": lambda emb: uniform_indices(len(emb), args.keyframes),
        "gamma": lambda emb: select_keyframes(emb, args.keyframes, knn=args.knn, selection="gamma"),
        "greedy": lambda emb: greedy_cover(emb, args.keyframes, args.knn),
        "cover": lambda emb: select_keyframes(emb, args.keyframes, knn=args.knn, selection="cover"),
        "best": lambda emb: best_keyframes(emb, args.keyframes),
    }
    ratios: dict[str, list[float]] = {name: [] for name in methods}
    print("\ncoverage (mean distance to the nearest keyframe) and its ratio to uniform's")
    print(f"{'clip':18s} {'frames':>6s} " + " ".join(f"{name:>14s}" for name in methods))
    for name, emb in clips.items():
        if len(emb) <= args.keyframes:
            print(f"{name:18s} {len(emb):6d}   all frames kept; not counted")
            continue
        values = {method: coverage(emb, pick(emb)) for method, pick in methods.items()}
        cells = []
        for method, value in values.items():
            ratio = value / values["uniform"]
            ratios[method].append(ratio)
            cells.append(f"{value:6.4f} ({ratio:5.3f})")
        print(f"{name:18s} {len(emb):6d} " + " ".join(cells))
    if ratios["uniform"]:
        print(f"\nmean ratio to uniform over {len(ratios['uniform'])} clips (target for DPC: <= 0.85):")
        for method, values in ratios.items():
            print(f"  {method:8s} {np.mean(values):.3f}  (worst clip {np.max(values):.3f})")
    score_windows(clips, methods, args.windows, args.keyframes)



def score_windows(clips: dict[str, np.ndarray], methods: dict, lengths: list[int], keyframes: int) -> None:
    """Score non-overlapping windows of ``lengths`` frames of the longer clips."""
    if not lengths:
        return
    print("\nwindows of the longer clips as short clips: ratio to uniform, mean / worst (count)")
    print(f"{'frames':>6s} {'count':>5s} " + " ".join(f"{name:>15s}" for name in methods if name != "uniform"))
    for length in lengths:
        if length <= keyframes:
            continue
        ratios: dict[str, list[float]] = {name: [] for name in methods if name != "uniform"}
        for emb in clips.values():
            for start in range(0, len(emb) - length + 1, length):
                window = emb[start : start + length]
                base = coverage(window, methods["uniform"](window))
                if base <= 0:
                    continue
                for name in ratios:
                    ratios[name].append(coverage(window, methods[name](window)) / base)
        count = len(next(iter(ratios.values()))) if ratios else 0
        if not count:
            continue
        cells = " ".join(f"{np.mean(v):6.3f} / {np.max(v):5.3f}" for v in ratios.values())
        print(f"{length:6d} {count:5d} {cells}")


if __name__ == "__main__":
    main()
