"""Does training need float32 keyframe embeddings? R@1 with the feature cache in float16
(the default) and in float32, on the generated work folder of the train tests.

    nice -n 10 python benchmarks/feature_precision.py --videos 400 --seeds 0 1 2
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
