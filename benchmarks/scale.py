"""How the work folder's costs grow with the number of videos.

Builds synthetic work folders in the project's own schemas (``keyframes.parquet`` with
``--frames`` x ``--dim`` embeddings a video, written as a stream, sorted by id as
``compact`` leaves it; ``captions.parquet`` with two generated captions a video), then
times each command in a child process under ``/usr/bin/time -v`` (wall seconds, CPU
seconds of user and system time, and peak resident memory), for one or two code trees
side by side:

* ``write``: the keyframes stage's manifest writing, a ``PartWriter`` fed one row per
  call (as the stage's engine hands rows back), ``--videos`` rows, closed;
* ``compact``: one video added to the folder, then ``compact`` (as keyframes, filter
  and export run it at their start and end);
* ``fold``: the same, with ``compact(full=True)``: the whole table rewritten (what
  ``export`` asks for, and what happens once the parts hold a quarter of the rows);
* ``status``: ``mama-augment status --json`` (it reads no embeddings);
* ``resume``: what a rerun of ``keyframes`` does before any work: ``discover_inputs``
  over a folder of ``--videos`` empty ``.mp4`` files (made for this command, their
  fingerprints in the manifest) and ``plan_jobs`` against the manifest, which finds
  nothing new (``--failed-every K`` rows failed, kept failed);
* ``filter``: ``mama-augment filter --text-model hashing`` (no model to load; the text
  embedding cache is removed first, so every run embeds every caption);
* ``report``: ``mama-augment report`` (after ``filter``, the flags are on the page);
* ``train``: the features backbone up to its first step: ``load_videos`` (embeddings
  of every usable video), ``FeaturesModel.set_videos``, and one forward and backward
  pass of a batch of 256 videos through the frame pooling and video projection. With
  ``--originals`` the whole of ``build_data`` runs instead of ``load_videos`` (the
  caption join, splits, wrong-pair estimate and meta set, TF-IDF for the captions);
  the text encoder is left out either way; the feature cache is removed first, so
  every run builds it (``cache_features_mb``: the disk it takes);
* ``train-run``: the ``train`` command's own path up to its first step, with every
  default (``--loss mama``, the agreement prior, the meta set, ``--generated-weight
  auto``: the evidence step) and ``--text-model hashing`` (a model's encoding time left
  out, the text features kept); needs ``--originals``; the caches are removed first;
* ``train-data``: ``train``'s data alone (``build_data`` with ``--originals``), under
  ``tracemalloc``: what the data holds once built (``data_traced_mb``, Python objects
  and numpy arrays, not the mapped feature cache) and its peak while built.

The folders are in today's layout (``--layout arrays``: embeddings in
``embeddings/*.f16``, written by the keyframes stage's own writer) unless
``--layout rows`` asks for the older one (embeddings inside the rows).

Usage::

    nice -n 10 python benchmarks/scale.py --sizes 10000 50000 \\
        --code after=. --code before=../old-checkout --out benchmarks/out/scale

``--code NAME=ROOT`` puts ROOT first on ``PYTHONPATH`` in the children (run with ``-P``,
so the current folder does not come first), so the same
folder is measured with each tree's ``mama_augment``. ``--skip NAME:COMMAND:SIZE``
leaves out a measurement (one that would run out of memory or time). Growth exponents
are log(t2/t1)/log(n2/n1) of the CPU seconds between consecutive sizes (on a shared
machine they move much less with other people's load than wall time does). Results: a JSON line per
measurement in ``OUT/results.jsonl`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import sys, time, uuid
from pathlib import Path
import numpy as np
command, workdir, dim, frames, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
from mama_augment.manifest import KEYFRAMES, PartWriter, compact, utc_now
rng = np.random.default_rng(0)
pool = [rng.standard_normal((frames, dim), dtype=np.float32) for _ in range(16)]
def row(video_id, i):
    return {"video_id": video_id, "status": "ok", "media_type": "video", "embedder": "synthetic",
            "embedding_dim": dim, "keyframe_embeddings": pool[i % len(pool)].tolist(),
            "keyframe_paths": [f"frames/{video_id}/{k:02d}.jpg" for k in range(frames)],
            "created_at": utc_now()}
import pyarrow as pa
from mama_augment.manifest import rows_to_table
if command == "write":
    template = [rows_to_table([row(f"w{i:07d}", i)], KEYFRAMES.schema) for i in range(len(pool))]
    with PartWriter(workdir, KEYFRAMES) as writer:
        for i in range(count):
            table = template[i % len(pool)]
            writer.write_table(table.set_column(0, "video_id", pa.array([f"w{i:07d}"], pa.string())))
elif command in ("compact", "fold"):
    with PartWriter(workdir, KEYFRAMES) as writer:
        writer.write([row(f"zz-added-{uuid.uuid4().hex[:8]}", 0)])
    try:  # fold: the whole table rewritten, as export (or a quarter more rows) asks
        rows = compact(workdir, KEYFRAMES, full=True) if command == "fold" else compact(workdir, KEYFRAMES)
    except TypeError:  # a version whose compact always rewrites the table
        rows = compact(workdir, KEYFRAMES)
    print("rows", rows)
elif command == "resume":
    from mama_augment.inputs import discover_inputs
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.keyframes.stage import plan_jobs
    items = discover_inputs([workdir.parent / (workdir.name + "-inputs")], exclude=[workdir])
    plan = plan_jobs(items, workdir, KeyframesConfig(retry_failed=False))
    print("inputs", len(items), "pending", len(plan.pending), "kept failed", len(plan.skipped_failed))
    if plan.pending:
        raise SystemExit(f"{len(plan.pending)} pending: the manifest does not match the inputs")
elif command in ("train", "train-data"):
    import gc, json, os, resource, torch
    from types import SimpleNamespace
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.data import build_data, load_videos
    from mama_augment.train.models import FeaturesModel
    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    originals = workdir / "originals.parquet"
    phases = {}
    if command == "train-data":  # what the data holds, in Python objects and numpy arrays (not mapped pages)
        import tracemalloc
        tracemalloc.start()
    started, rss_before = time.process_time(), rss_mb()
    if originals.exists():  # the whole of build_data: caption join, splits, wrong-pair estimate, meta set
        data = build_data(TrainConfig(captions=str(originals)), workdir)
        videos = data.videos
        phases["pairs"] = data.num_train_pairs
    else:
        videos, issues, _ = load_videos(workdir, "keyframe_embeddings")
    gc.collect()
    phases.update(data_cpu_s=round(time.process_time() - started, 2), data_rss_mb=round(rss_mb() - rss_before))
    if command == "train-data":  # held: what freeing the data gives back (the modules it imported stay)
        current, peak = tracemalloc.get_traced_memory()
        del data, videos
        gc.collect()
        phases.update(data_traced_mb=round((current - tracemalloc.get_traced_memory()[0]) / 2**20, 1),
                      data_traced_peak_mb=round(peak / 2**20, 1))
        print("phases", json.dumps(phases))
        raise SystemExit(0)
    config = SimpleNamespace(temporal="attention", logit_scale_init=None, head_hidden=0, embed_dim=256)
    model = FeaturesModel(dim, SimpleNamespace(dim=384), config, None)
    model.set_videos(videos)
    batch = np.random.default_rng(1).choice(len(videos.video_ids), size=min(256, len(videos.video_ids)), replace=False)
    model.head.project_video(model.video_features(model.video_inputs(batch))).square().mean().backward()
    phases["first_step_cpu_s"] = round(time.process_time() - started, 2)
    print("videos", len(videos.video_ids))
    print("phases", json.dumps(phases))
elif command == "train-run":  # the train command's own path, default options, up to its first step
    import json, shutil, torch
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.loop import TrainRecipe
    class FirstStep(Exception):
        pass
    def stop(step):
        raise FirstStep
    shutil.rmtree(workdir / "runs", ignore_errors=True)
    config = TrainConfig(captions=str(workdir / "originals.parquet"), text_model="hashing", progress=False)
    recipe = TrainRecipe(config, workdir, step_callback=stop)
    started = time.process_time()
    recipe.setup()
    phases = {"setup_cpu_s": round(time.process_time() - started, 2), "data_s": round(recipe.data_seconds, 2),
              "evidence_s": round(recipe.evidence.seconds, 2) if recipe.evidence is not None else None,
              "pairs": recipe.data.num_train_pairs, "meta_weighting": recipe.config.meta_weighting,
              "agreement_prior": recipe.config.agreement_prior,
              "generated_weights": recipe.evidence.weights if recipe.evidence is not None else None}
    try:
        recipe.train()
    except FirstStep:
        pass
    phases["first_step_cpu_s"] = round(time.process_time() - started, 2)
    print("phases", json.dumps(phases))
"""


_SUBJECTS = ["a man", "a woman", "two children", "a dog", "a cyclist", "a chef", "a crowd", "an old car",
             "a bird", "a skateboarder", "a dancer", "a fisherman", "a horse", "a robot", "a nurse", "a drummer"]
_ACTIONS = ["walks along", "runs past", "stands near", "waves at", "sits beside", "jumps over", "looks at",
            "cleans", "paints", "repairs", "carries a box to", "films", "climbs", "circles", "points at", "leaves"]
_PLACES = ["a busy street", "a quiet beach", "a red door", "a wooden bridge", "a kitchen counter", "a park bench",
           "a snowy hill", "a market stall", "a train platform", "a garden", "a stage", "a river bank"]
_DETAILS = ["at dusk", "in the rain", "under bright lights", "while music plays", "as the camera pans left",
            "in slow motion", "on a windy day", "before noon", "with a smile", "among tall trees", "near traffic"]


def _captions(rng, count: int) -> list[str]:
    """Captions that vary like a model's (subject, action, place, two details, a number), so
    text embeddings and near-duplicate search do real work; a few repeat exactly."""
    picks = [rng.integers(0, len(words), count) for words in (_SUBJECTS, _ACTIONS, _PLACES, _DETAILS, _DETAILS)]
    numbers = rng.integers(0, 1000, count)
    return [f"{_SUBJECTS[a]} {_ACTIONS[b]} {_PLACES[c]} {_DETAILS[d]}, then {_DETAILS[e]}; shot {m}."
            for a, b, c, d, e, m in zip(*(p.tolist() for p in picks), numbers.tolist())]


INPUT_MTIME = 1_700_000_000.0  # the modification time of every synthetic input


def build(workdir: Path, videos: int, dim: int, frames: int, failed_every: int = 0, inputs: bool = False,
          layout: str = "arrays", originals: bool = False, max_file_bytes: int | None = None) -> None:
    """A work folder as ``keyframes`` and ``caption`` leave it, written a chunk at a time.

    Every ``failed_every``-th video (0: none) is a failed row; with ``inputs``, the
    folder ``<workdir>-inputs`` gets an empty ``.mp4`` a video, which the manifest's
    fingerprints and ``config_hash`` match (a rerun finds nothing to do).

    ``layout`` ``arrays``: the embeddings go to ``embeddings/*.f16`` and the rows hold the
    references, through the keyframes stage's own writer
    (:class:`mama_augment.frame_embeddings.EmbeddingAppender`), as the stage leaves a
    folder today; ``rows``: inside the rows (``keyframe_embeddings``, float32), as
    folders of older versions hold them. With ``originals``, ``originals.parquet`` gets
    one original caption a video with a ``split`` column (90 % train, 5 % val, 5 % test).
    ``max_file_bytes``: the array files' cap (the stage's 1 GiB by default; smaller spreads
    a small folder over several files, as a large one is).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mama_augment.frame_embeddings import EmbeddingAppender
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.manifest import CAPTIONS, KEYFRAMES, conform, ensure_workdir, utc_now

    if layout not in ("arrays", "rows"):
        raise ValueError(f"layout is arrays or rows, not {layout!r}")
    ensure_workdir(workdir)
    config_hash = KeyframesConfig().config_hash()
    if inputs:
        folder = workdir.parent / (workdir.name + "-inputs")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(videos):
            path = folder / f"v{i:07d}.mp4"
            path.touch()
            os.utime(path, (INPUT_MTIME, INPUT_MTIME))
    rng = np.random.default_rng(0)
    now = utc_now()
    chunk = 512
    original_schema = pa.schema([("video_id", pa.string()), ("caption", pa.string()), ("split", pa.string())])
    with pq.ParquetWriter(workdir / "keyframes.parquet", KEYFRAMES.schema, compression="zstd") as kf, \
            pq.ParquetWriter(workdir / "captions.parquet", CAPTIONS.schema, compression="zstd") as cap, \
            EmbeddingAppender(workdir, **({"max_file_bytes": max_file_bytes} if max_file_bytes else {})) as appender, \
            (pq.ParquetWriter(workdir / "originals.parquet", original_schema, compression="zstd") if originals
             else contextlib.nullcontext()) as orig:
        for start in range(0, videos, chunk):
            n = min(chunk, videos - start)
            ids = [f"v{i:07d}" for i in range(start, start + n)]
            values = pa.array(rng.standard_normal(n * frames * dim, dtype=np.float32))
            inner = pa.ListArray.from_arrays(pa.array(np.arange(0, n * frames * dim + 1, dim, dtype=np.int32)), values)
            outer = pa.ListArray.from_arrays(pa.array(np.arange(0, n * frames + 1, frames, dtype=np.int32)), inner)
            failed = [failed_every > 0 and (start + k) % failed_every == 0 for k in range(n)]
            table = pa.table({
                "video_id": ids, "status": ["failed" if f else "ok" for f in failed],
                "error_kind": [("decode_error" if (start + k) % 3 else "timeout") if f else None
                               for k, f in enumerate(failed)],
                "error": [f"synthetic failure of video {start + k}" if f else None for k, f in enumerate(failed)],
                "input_size_bytes": pa.array([0] * n, pa.int64()), "input_mtime": [INPUT_MTIME] * n,
                "config_hash": [config_hash] * n, "media_type": ["video"] * n, "embedder": ["synthetic"] * n,
                "embedding_dim": pa.array([dim] * n, pa.int32()), "keyframe_embeddings": outer,
                "keyframe_paths": [[f"frames/{v}/{k:02d}.jpg" for k in range(frames)] for v in ids],
                "grid_path": [f"grids/{v}.jpg" for v in ids], "created_at": pa.array([now] * n, KEYFRAMES.schema.field("created_at").type),
            })
            if layout == "arrays":
                table = appender.externalize(table)
            kf.write_table(conform(table, KEYFRAMES.schema), row_group_size=8192)
            if orig is not None:
                draw = rng.random(n)
                split = np.where(draw < 0.9, "train", np.where(draw < 0.95, "val", "test"))
                orig.write_table(pa.table({"video_id": ids, "caption": _captions(rng, n), "split": split.tolist()},
                                          schema=original_schema))
            captions = pa.table({
                "video_id": [v for v in ids for _ in range(2)], "caption_index": pa.array([0, 1] * n, pa.int32()),
                "caption": _captions(rng, 2 * n),
                "status": ["ok"] * (2 * n), "created_at": pa.array([now] * (2 * n), CAPTIONS.schema.field("created_at").type),
            })
            cap.write_table(conform(captions, CAPTIONS.schema), row_group_size=8192)


def measure(command: str, workdir: Path, root: Path, dim: int, frames: int, count: int, timeout: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root.resolve()))
    if command == "status":
        argv = [sys.executable, "-P", "-m", "mama_augment", "status", "--json", "-w", str(workdir)]
    elif command == "filter":
        argv = [sys.executable, "-P", "-m", "mama_augment", "filter", "--text-model", "hashing", "--no-progress",
                "-w", str(workdir)]
    elif command == "report":
        argv = [sys.executable, "-P", "-m", "mama_augment", "report", "-w", str(workdir)]
    else:
        argv = [sys.executable, "-P", "-c", CHILD, command, str(workdir), str(dim), str(frames), str(count)]
    started = time.perf_counter()
    try:
        done = subprocess.run(["/usr/bin/time", "-v", *argv], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"over {timeout} s"}
    wall = time.perf_counter() - started
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", done.stderr))
    result = {"ok": done.returncode == 0 or command == "status", "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
              "peak_rss_mb": round(int(match.group(1)) / 1024) if match else None, "returncode": done.returncode}
    for line in done.stdout.splitlines():  # the train child's own phase figures
        if line.startswith("phases "):
            result.update(json.loads(line[len("phases "):]))
    features = workdir / "cache" / "features"
    if command in ("train", "train-data", "train-run") and features.is_dir():  # what the feature cache adds to the folder
        result["cache_features_mb"] = round(sum(p.stat().st_size for p in features.rglob("*") if p.is_file()) / 2**20, 1)
    report = workdir / "report"
    if command == "report" and report.is_dir():
        files = [p for p in report.rglob("*") if p.is_file()]
        result["report_mb"] = round(sum(p.stat().st_size for p in files) / 2**20, 1)
        result["report_largest_mb"] = round(max((p.stat().st_size for p in files), default=0) / 2**20, 2)
    if not result["ok"]:
        result["error"] = done.stderr.strip().splitlines()[-3:] if done.stderr else ""
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--code", action="append", default=[], help="NAME=ROOT (repeatable); default after=.")
    parser.add_argument("--commands", nargs="+", default=["status", "train", "compact", "write"],
                        help="of write, compact, fold, status, resume, filter, report, train, train-data")
    parser.add_argument("--failed-every", type=int, default=0, help="every K-th video is a failed row (0: none)")
    parser.add_argument("--layout", choices=["arrays", "rows"], default="arrays",
                        help="keyframe embeddings in embeddings/*.f16 (today's layout) or inside the rows (older)")
    parser.add_argument("--max-file-bytes", type=int, default=None,
                        help="cap of each embeddings/*.f16 file (default the keyframes stage's, 1 GiB)")
    parser.add_argument("--originals", action="store_true",
                        help="an original caption a video (split 90/5/5): train and train-data run all of build_data")
    parser.add_argument("--skip", action="append", default=[], help="NAME:COMMAND:SIZE to leave out")
    parser.add_argument("--timeout", type=int, default=300, help="seconds a measurement may take")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/scale"))
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    parser.add_argument("--reuse", action="store_true",
                        help="measure on a kept folder built with the same options instead of building it again")
    args = parser.parse_args()
    codes = dict(spec.split("=", 1) for spec in (args.code or ["after=."]))
    for name, root in codes.items():  # -P: the current folder must not come before ROOT
        where = subprocess.run([sys.executable, "-P", "-c", "import mama_augment; print(mama_augment.__file__)"],
                               env=dict(os.environ, PYTHONPATH=str(Path(root).resolve())), capture_output=True,
                               text=True, check=True).stdout.strip()
        print(f"{name}: {where}", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "results.jsonl", "a")
    results: dict[tuple, dict] = {}
    for size in args.sizes:
        workdir = args.out / f"work-{size}"
        built = json.dumps({"dim": args.dim, "frames": args.frames, "failed_every": args.failed_every,
                            "inputs": "resume" in args.commands, "layout": args.layout, "originals": args.originals,
                            "max_file_bytes": args.max_file_bytes})
        marker = args.out / f"work-{size}.built"
        if not (args.reuse and marker.exists() and marker.read_text() == built and workdir.is_dir()):
            marker.unlink(missing_ok=True)
            shutil.rmtree(workdir, ignore_errors=True)
            started = time.perf_counter()
            build(workdir, size, args.dim, args.frames, args.failed_every, inputs="resume" in args.commands,
                  layout=args.layout, originals=args.originals, max_file_bytes=args.max_file_bytes)
            marker.write_text(built)
            print(f"built {size} videos in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        for command in args.commands:
            for name, root in codes.items():
                if f"{name}:{command}:{size}" in args.skip:
                    continue
                target = workdir
                if command == "write":
                    target = args.out / f"write-{size}"
                    shutil.rmtree(target, ignore_errors=True)
                if command in ("train", "train-data", "train-run", "filter"):
                    shutil.rmtree(workdir / "cache", ignore_errors=True)
                if command == "report":  # each tree writes its own report from scratch
                    shutil.rmtree(workdir / "report", ignore_errors=True)
                result = measure(command, target, Path(root), args.dim, args.frames, size, args.timeout)
                if command == "write":
                    shutil.rmtree(target, ignore_errors=True)
                record = {"code": name, "command": command, "videos": size, "dim": args.dim, "frames": args.frames,
                          **result}
                results[(name, command, size)] = record
                log.write(json.dumps(record) + "\n")
                log.flush()
                print(json.dumps(record), file=sys.stderr, flush=True)
        if not args.keep:
            marker.unlink(missing_ok=True)
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(workdir.parent / (workdir.name + "-inputs"), ignore_errors=True)
    print("| command | code | " + " | ".join(f"{s:,} videos: wall s / CPU s / peak MB" for s in args.sizes)
          + " | growth exponent (CPU) |")
    print("|---|---|" + "---:|" * len(args.sizes) + "---|")
    for command in args.commands:
        for name in codes:
            cells, exponents, previous = [], [], None
            for size in args.sizes:
                record = results.get((name, command, size))
                if record is None or not record.get("ok"):
                    cells.append("—" if record is None else str(record.get("error", "failed")))
                    previous = None
                    continue
                cells.append(f"{record['wall_s']} / {record['cpu_s']} / {record['peak_rss_mb']}")
                if previous is not None:
                    exponents.append(f"{math.log(record['cpu_s'] / previous[1]) / math.log(size / previous[0]):.2f}")
                previous = (size, record["cpu_s"])
            print(f"| {command} | {name} | " + " | ".join(cells) + f" | {', '.join(exponents) or '—'} |")


if __name__ == "__main__":
    main()
