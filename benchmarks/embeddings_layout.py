"""What the keyframe embeddings cost the manifest: bytes per video and write time.

Two measurements:

* ``write``: ``--videos`` synthetic rows (``--frames`` x ``--dim`` unit-norm embeddings a
  video, every other column as the keyframes stage fills it) written as the stage writes
  them, a ``PartWriter`` fed ``--rows-per-write`` rows a call (1: rows arriving slower
  than the stage's write interval; more: faster), then ``compact`` as the stage ends, in either
  layout: ``rows`` (embeddings inside the row, as before) or ``arrays`` (appended to
  ``embeddings/`` first, the row keeps a reference). Prints CPU and wall seconds of the
  writing, and bytes per video of ``keyframes.parquet`` and of ``embeddings/``.
* ``run``: the real keyframes stage on ``--videos`` small generated videos (pixels
  embedder), with the time the stage spends writing its manifest (array appends, part
  writes, compaction, removing unreferenced files) summed, as a share of the run: wall
  seconds, and CPU seconds (the writing thread's, against the driver's and its
  workers').

Usage::

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/embeddings_layout.py write --layout arrays --videos 10000
    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/embeddings_layout.py run --videos 40
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _template(frames: int, dim: int, rng) -> list[dict]:
    """Rows like the stage's (16 distinct embeddings, reused: generation is not measured)."""
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.manifest import utc_now

    config_hash = KeyframesConfig().config_hash()
    rows = []
    for k in range(16):
        vectors = rng.standard_normal((frames, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        indices = sorted(int(i) for i in rng.choice(600, frames, replace=False))
        rows.append({
            "status": "ok", "media_type": "video", "decode_backend": "pyav", "codec": "h264",
            "duration_s": 20.0 + k, "fps": 29.97, "width": 1280, "height": 720, "num_sampled": 40,
            "keyframe_indices": indices, "keyframe_times_s": [i / 29.97 for i in indices],
            "grid_rows": 3, "grid_cols": 4, "embedder": "cnn", "embedding_dim": dim,
            "keyframe_embeddings": vectors.tolist(), "input_size_bytes": 4_000_000 + k,
            "input_mtime": 1_700_000_000.0 + k, "config_hash": config_hash, "seconds": 0.8 + k / 100,
            "created_at": utc_now(),
        })
    return rows


def write(args) -> None:
    from mama_augment.frame_embeddings import EMBEDDINGS_DIR, EmbeddingAppender
    from mama_augment.manifest import KEYFRAMES, PartWriter, compact, rows_to_table

    rng = np.random.default_rng(0)
    tables = [rows_to_table([row], KEYFRAMES.schema) for row in _template(args.frames, args.dim, rng)]
    root = Path(tempfile.mkdtemp(prefix="emb-layout-", dir=args.tmp))
    workdir = root / "work"
    try:
        import pyarrow as pa

        wall, cpu = time.perf_counter(), time.process_time()
        arrays = EmbeddingAppender(workdir) if args.layout == "arrays" else None
        pending = []
        with PartWriter(workdir, KEYFRAMES) as writer:
            for i in range(args.videos):
                video_id = f"videos/clip{i:07d}"
                table = tables[i % len(tables)]
                table = table.set_column(0, "video_id", pa.array([video_id], pa.string()))
                table = table.set_column(table.column_names.index("path"), "path",
                                         pa.array([f"/data/videos/{video_id}.mp4"]))
                table = table.set_column(table.column_names.index("grid_path"), "grid_path",
                                         pa.array([f"grids/videos+clip{i:07d}.jpg"]))
                names = [f"frames/videos+clip{i:07d}/{r:02d}_f{f:06d}.jpg"
                         for r, f in enumerate(table.column("keyframe_indices")[0].as_py())]
                table = table.set_column(table.column_names.index("keyframe_paths"), "keyframe_paths",
                                         pa.array([names], pa.list_(pa.string())))
                pending.append(table)
                if len(pending) == args.rows_per_write or i == args.videos - 1:
                    table = pa.concat_tables(pending)
                    pending = []
                    writer.write_table(arrays.externalize(table) if arrays is not None else table)
        if arrays is not None:
            arrays.close()
        compact(workdir, KEYFRAMES)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        manifest = (workdir / KEYFRAMES.filename).stat().st_size
        cache = ""
        if args.train:  # what train's features backbone reads before its first step, cache cold
            from mama_augment.train.video_cache import load_usable_videos

            started_wall, started_cpu = time.perf_counter(), time.process_time()
            loaded = load_usable_videos(workdir, "keyframe_embeddings")
            cache = (f" train_cache_build wall_s={time.perf_counter() - started_wall:.2f} "
                     f"cpu_s={time.process_time() - started_cpu:.2f} videos={len(loaded.video_ids)}")
        embeddings = _folder_bytes(workdir / EMBEDDINGS_DIR)
        print(f"layout={args.layout} videos={args.videos} rows_per_write={args.rows_per_write} "
              f"frames={args.frames} dim={args.dim} "
              f"write+compact wall_s={wall:.2f} cpu_s={cpu:.2f} ms_per_video_cpu={1000 * cpu / args.videos:.2f} "
              f"keyframes_parquet_bytes_per_video={manifest / args.videos:.0f} "
              f"embeddings_bytes_per_video={embeddings / args.videos:.0f}{cache}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args) -> None:
    import mama_augment.keyframes.stage as stage
    from mama_augment.keyframes.config import KeyframesConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from media import make_video

    import resource

    spent = {"s": 0.0, "cpu_s": 0.0}
    parts: dict[str, float] = {}

    def timed(function, name):
        def wrapper(*a, **k):
            started, started_cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*a, **k)
            finally:
                took = time.perf_counter() - started
                spent["s"] += took
                spent["cpu_s"] += time.thread_time() - started_cpu
                parts[name] = parts.get(name, 0.0) + took
        return wrapper

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    stage.PartWriter.write_table = timed(stage.PartWriter.write_table, "parts")
    stage.PartWriter.close = timed(stage.PartWriter.close, "parts")
    stage.EmbeddingAppender.externalize = timed(stage.EmbeddingAppender.externalize, "arrays")
    stage.EmbeddingAppender.close = timed(stage.EmbeddingAppender.close, "arrays")
    stage.compact = timed(stage.compact, "compact")
    stage._remove_unreferenced_embeddings = timed(stage._remove_unreferenced_embeddings, "unreferenced")
    if args.write_interval is not None:  # 0: a part a video, as before rows were written together
        stage.WRITE_INTERVAL_S = args.write_interval
    root = Path(tempfile.mkdtemp(prefix="emb-run-", dir=args.tmp))
    try:
        for i in range(args.videos):
            make_video(root / "in" / f"v{i:04d}.mp4", num_frames=48, fps=24, seed=i)
        started, started_cpu, started_children = time.perf_counter(), time.process_time(), children_cpu()
        report = stage.run_keyframes([root / "in"], root / "work",
                                     KeyframesConfig(embedder="pixels", workers=args.workers), progress=False)
        total = time.perf_counter() - started
        # CPU seconds as well: on a shared machine the wall seconds of both the writing
        # and the run stretch with other people's load, not in proportion.
        total_cpu = time.process_time() - started_cpu + children_cpu() - started_children
        print(f"videos={args.videos} done={report.done} run_s={total:.2f} manifest_writing_s={spent['s']:.3f} "
              f"share={100 * spent['s'] / total:.2f}% run_cpu_s={total_cpu:.2f} "
              f"manifest_writing_cpu_s={spent['cpu_s']:.3f} cpu_share={100 * spent['cpu_s'] / total_cpu:.2f}% "
              f"per_video_s={total / args.videos:.3f} "
              f"keyframes_parquet_bytes_per_video={(root / 'work' / 'keyframes.parquet').stat().st_size / args.videos:.0f} "
              + " ".join(f"{name}_s={value:.3f}" for name, value in parts.items()), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["write", "run"])
    parser.add_argument("--layout", choices=["rows", "arrays"], default="arrays")
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--rows-per-write", type=int, default=1,
                        help="rows a part (1: rows arriving slower than the stage's write interval)")
    parser.add_argument("--train", action="store_true", help="write: then build train's feature cache")
    parser.add_argument("--write-interval", type=float, default=None, help="run: the stage's WRITE_INTERVAL_S")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tmp", default=None, help="folder for the temporary work folders")
    args = parser.parse_args()
    (write if args.what == "write" else run)(args)


if __name__ == "__main__":
    main()
