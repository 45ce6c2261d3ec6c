"""Does training need float32 keyframe embeddings? R@1 with the feature cache in float16
(the default) and in float32, on the generated work folder of the train tests.

    nice -n 10 python benchmarks/feature_precision.py --videos 400 --seeds 0 1 2

``--selection-videos N`` instead asks the same of keyframe selection: DPC-KNN on N
synthetic videos (frames drifting through a few scenes, 1 280-dimensional, unit norm)
with the float32 embeddings and with the same rounded to float16 (what
``embeddings/*.f16`` keeps), and counts the videos whose keyframes differ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--selection-videos", type=int, default=0)
    args = parser.parse_args()
    if args.selection_videos:
        selection(args.selection_videos)
        return

    from train_helpers import make_workdir

    from mama_augment.train import video_cache
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.evaluate import evaluate_run
    from mama_augment.train.loop import run_train

    print("| seed | dtype | t2v R@1 | v2t R@1 |")
    print("|---|---|---:|---:|")
    for seed in args.seeds:
        for dtype in (np.float16, np.float32):
            video_cache.FEATURE_DTYPE = dtype
            with tempfile.TemporaryDirectory() as tmp:
                workdir, captions = make_workdir(Path(tmp), n_videos=args.videos, seed=seed, dim=64, noise=0.6)
                config = TrainConfig(captions=str(captions), text_model="hashing", epochs=8, batch_size=32, lr=3e-3,
                                     progress=False, embed_dim=64, head_hidden=128, seed=seed, loss="infonce")
                report = run_train(config, workdir)
                result = evaluate_run(Path(report.extra["run"]), split="test")
                print(f"| {seed} | {np.dtype(dtype).name} | {result['text_to_video']['R@1']:.2f} | "
                      f"{result['video_to_text']['R@1']:.2f} |", flush=True)


def selection(videos: int, dim: int = 1280) -> None:
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.keyframes.dpc import select_keyframes

    cfg = KeyframesConfig()
    rng = np.random.default_rng(0)
    differ = {"12": 0, "auto": 0}
    for _ in range(videos):
        frames = int(rng.integers(20, 120))
        scenes = rng.standard_normal((int(rng.integers(2, 8)), dim))
        cuts = np.sort(rng.choice(np.arange(1, frames), len(scenes) - 1, replace=False))
        scene_of = np.searchsorted(cuts, np.arange(frames), side="right")
        drift = np.cumsum(rng.standard_normal((frames, dim)) * 0.05, axis=0)
        emb = (scenes[scene_of] + drift + 0.3 * rng.standard_normal((frames, dim))).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        rounded = emb.astype(np.float16).astype(np.float32)
        for count in ("12", "auto"):
            num = 12 if count == "12" else "auto"
            a = select_keyframes(emb, num, knn=cfg.knn, selection=cfg.selection)
            b = select_keyframes(rounded, num, knn=cfg.knn, selection=cfg.selection)
            differ[count] += not np.array_equal(a, b)
    print(f"videos={videos} keyframes differ between float32 and float16: 12 keyframes {differ['12']}, "
          f"auto {differ['auto']}")


if __name__ == "__main__":
    main()
