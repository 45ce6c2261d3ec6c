"""Training throughput: the step alone against the whole pipeline, per backbone.

For each backbone (``clip``, ``features``) one training recipe is set up on a work
folder of real keyframes, then timed twice:

* synthetic: the library's ``training_step`` on inputs made once, already on the
  device (random frames and token ids of the real shapes): what the device can do;
* pipeline: the recipe's own training loop (loader workers, frame source, meta
  batches, logging), its steps timed by the loop itself (``metrics.jsonl``: data wait
  and step time per interval; the first interval, which starts the workers, is left
  out).

The ratio pipeline / synthetic throughput is what the loader costs (1.0: nothing).
The ``frames`` section times loading every keyframe of an epoch from each frame
source in one process: Pillow decoding, the frame cache, GPU decoding (CUDA).

The work folder: ``--workdir`` + ``--captions`` of an existing one, else one made
from real clips (the bundled ``examples/videos`` and ``$MAMA_MEDIA_DIR`` or
``../shared/media`` when present): the ``keyframes`` stage (pixels embedder) picks
their keyframes, then ``--videos`` training videos of 12 keyframes each are made by
copying those keyframe JPEGs, in turn, to files of their own (real JPEGs, real decode
cost, a frame cache of the real size).

    .venv/bin/python benchmarks/train_throughput.py --clip tiny --batch-size 64 --workers 2
    python3 benchmarks/train_throughput.py --clip vit-b32 --device cuda --batch-size 64   # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MEDIA = Path(os.environ.get("MAMA_MEDIA_DIR", ROOT.parent / "shared" / "media"))
VIDEO_EXT = {".mp4", ".avi", ".mpg", ".mkv", ".mov", ".webm"}
WORDS = ["red", "blue", "green", "small", "large", "dog", "car", "tree", "boat", "bird", "runs", "jumps"]


# ----------------------------------------------------------------------------- models
def build_clip(folder: Path, size: str) -> Path:
    """A randomly initialised CLIP saved with the tests' byte-level tokenizer:
    ``tiny`` (tests/tiny_models.py) or ``vit-b32`` (ViT-B/32 sizes: right for speed,
    meaningless for quality)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import _write_tiny_clip_tokenizer, make_tiny_clip

    if size == "tiny":
        return make_tiny_clip(folder, with_tokenizer=True)
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _write_tiny_clip_tokenizer(folder)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1, projection_dim=512),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, projection_dim=512),
        projection_dim=512,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(folder, model_max_length=77).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- data
def _clips(extra: list[Path]) -> list[Path]:
    found = []
    for folder in [ROOT / "examples" / "videos", *extra]:
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXT)
    return found


def _keyframes_with_stage(clips: list[Path], workdir: Path, decoder: str) -> str:
    from mama_augment.keyframes.config import KeyframesConfig
    from mama_augment.keyframes.stage import run_keyframes

    config = KeyframesConfig(embedder="pixels", decoder=decoder, workers=min(4, os.cpu_count() or 1))
    report = run_keyframes([str(c) for c in clips], workdir, config, progress=False)
    if report.done == 0:
        raise RuntimeError("the keyframes stage produced no keyframes")
    return f"keyframes stage, pixels embedder, decoder {decoder}: {report.done} clips"


def _keyframes_with_opencv(clips: list[Path], workdir: Path, per_clip: int = 12) -> str:
    """Where the stage cannot run (e.g. no `pebble`): 12 evenly spaced frames of each
    clip, thumbnails of 320 px as the stage writes, decoded with OpenCV."""
    import cv2
    from PIL import Image

    from mama_augment.manifest import KEYFRAMES, PartWriter, compact

    rows = []
    for clip in clips:
        capture = cv2.VideoCapture(str(clip))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
        if not frames:
            continue
        keep = np.linspace(0, len(frames) - 1, min(per_clip, len(frames))).round().astype(int)
        paths = []
        for rank, index in enumerate(keep):
            image = Image.fromarray(cv2.cvtColor(frames[index], cv2.COLOR_BGR2RGB))
            image.thumbnail((320, 320))
            rel = f"frames/{clip.stem}/{rank:02d}_f{index:06d}.jpg"
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            image.save(workdir / rel, quality=90)
            paths.append(rel)
        emb = np.random.default_rng(len(rows)).normal(size=(len(paths), 64)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        rows.append({"video_id": clip.stem, "status": "ok", "keyframe_paths": paths,
                     "keyframe_embeddings": emb.tolist(), "embedding_dim": 64})
    PartWriter(workdir, KEYFRAMES).write(rows)
    compact(workdir, KEYFRAMES)
    return f"OpenCV frames (no keyframes stage here): {len(rows)} clips"


def scaled_workdir(out: Path, videos: int, media: list[Path], decoder: str = "auto",
                   per_video: int = 12) -> tuple[Path, Path, str]:
    """A work folder of ``videos`` training videos of ``per_video`` keyframes each, real
    keyframe JPEGs of the clips (each copied to a file of its own); returns (workdir,
    captions file, how the real keyframes were made)."""
    from mama_augment.manifest import KEYFRAMES, PartWriter, compact, read_manifest

    clips = _clips(media)
    if not clips:
        raise RuntimeError("no video clips found (examples/videos is missing)")
    real = out / "real"
    try:
        how = _keyframes_with_stage(clips, real, decoder)
    except Exception as exc:  # noqa: BLE001 - a missing optional piece: fall back, say so
        shutil.rmtree(real, ignore_errors=True)
        how = _keyframes_with_opencv(clips, real) + f" [stage: {type(exc).__name__}: {exc}]"
    from mama_augment.frame_embeddings import iter_video_embeddings

    table = read_manifest(real, KEYFRAMES, columns=["status", "keyframe_paths"]).to_pydict()
    stored = {video_id: array for video_id, array in iter_video_embeddings(real)}  # either layout
    pool = [(path, emb) for i, video_id in enumerate(table["video_id"]) if table["status"][i] == "ok"
            for path, emb in zip(table["keyframe_paths"][i] or [],
                                 [] if stored.get(video_id) is None else stored[video_id].astype(np.float32).tolist())]
    if not pool:
        raise RuntimeError("no keyframes were made from the clips")
    workdir = out / "work"
    rows, captions = [], []
    rng = np.random.default_rng(0)
    for v in range(videos):
        # 12 real keyframes per video (the paper's count), drawn in turn from every clip's keyframes
        picks = [pool[(v * per_video + k) % len(pool)] for k in range(per_video)]
        paths = []
        for k, (rel, _) in enumerate(picks):
            target = f"frames/v{v:05d}/{k:02d}.jpg"
            (workdir / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(real / rel, workdir / target)
            paths.append(target)
        video_id = f"v{v:05d}"
        emb = [list(e) for _, e in picks]
        rows.append({"video_id": video_id, "status": "ok", "keyframe_paths": paths,
                     "keyframe_embeddings": emb, "embedding_dim": len(emb[0])})
        words = rng.choice(WORDS, size=6)
        captions.append({"video_id": video_id, "caption": "a " + " ".join(words)})
    PartWriter(workdir, KEYFRAMES).write(rows)
    compact(workdir, KEYFRAMES)
    import pandas as pd

    path = out / "captions.csv"
    pd.DataFrame(captions).to_csv(path, index=False)
    return workdir, path, how


# ----------------------------------------------------------------------------- timing
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frame_loading(workdir: Path, size: int, device_name: str, max_frames: int | None = None, workers: int = 0) -> dict:
    """Seconds to load every keyframe of the work folder once, in one process, per source."""
    import torch

    from mama_augment.manifest import KEYFRAMES, read_manifest
    from mama_augment.train.frame_cache import open_frame_cache
    from mama_augment.train.frames import DecodedFrames, EncodedFrames, decode_on_device, gpu_jpeg_decoder

    table = read_manifest(workdir, KEYFRAMES, columns=["keyframe_paths"]).to_pydict()
    paths = [p for ps in table["keyframe_paths"] for p in ps][: max_frames or None]
    ids = list(range(len(paths)))
    chunks = [ids[i : i + 768] for i in range(0, len(ids), 768)]  # a batch of 64 videos x 12 frames
    result = {"frames": len(paths), "image_size": size}
    started = time.perf_counter()
    cached, report = open_frame_cache(workdir, paths, size, workers=workers)
    result["cache_build_s"] = time.perf_counter() - started if report.decoded else None
    for name, source in (("pil", DecodedFrames([str(workdir / p) for p in paths], size)), ("cache", cached)):
        started = time.perf_counter()
        for chunk in chunks:
            source.frames(chunk)
        result[f"{name}_s"] = time.perf_counter() - started
    # The same frames through a memory map instead of positioned reads (no checksums):
    # what the cache's read path was chosen against.
    mapped = np.memmap(cached.data_path, dtype=np.uint8, mode="r")
    mapped = mapped[: len(mapped) // (size * size * 3) * size * size * 3].reshape(-1, size, size, 3)
    started = time.perf_counter()
    for chunk in chunks:
        np.array(mapped[cached.slots[chunk]])
    result["cache_mmap_s"] = time.perf_counter() - started
    del mapped
    device = torch.device(device_name)
    if device.type == "cuda" and gpu_jpeg_decoder() is not None:
        encoded = EncodedFrames([str(workdir / p) for p in paths], size)
        decode_on_device(encoded.frames(chunks[0][:8]), size, device)  # warm-up (nvJPEG handles)
        _sync(device)
        started = time.perf_counter()
        for chunk in chunks:
            decode_on_device(encoded.frames(chunk), size, device)
        _sync(device)
        result["gpu_s"] = time.perf_counter() - started
    elif device.type == "cuda":
        result["gpu_s"] = None
        result["gpu_note"] = "no CUDA JPEG decoder (TorchCodec or torchvision) here"
    result["cache_speedup_over_pil"] = result["pil_s"] / max(result["cache_s"], 1e-9)
    return result


def device_inputs(recipe) -> tuple:
    """(video, text) and meta inputs of the run's first batch, built once and left on
    the device: the step then never waits for data."""
    from mama_augment.train.data import epoch_batches, meta_batch

    model = recipe.model
    videos, captions = epoch_batches(recipe.data, 0, recipe.config.seed, recipe.config.batch_size)[0]
    inputs = (model.video_inputs(videos), model.text_inputs(captions))
    meta_inputs = None
    if recipe.meta is not None:
        mv, mc = meta_batch(recipe.data, 0, recipe.config.seed, recipe.meta_batch_size)
        meta_inputs = (model.video_inputs(mv), model.text_inputs(mc))
    return inputs, meta_inputs


def time_steps(recipe, steps: int, inputs: tuple, warmup: int = 2) -> list[float]:
    """Seconds of each of ``steps`` calls of ``training_step`` on inputs on the device."""
    from mama_augment.train.loop import training_step

    params = [p for p in recipe.model.parameters() if p.requires_grad]
    (video, text), meta_inputs = inputs
    times = []
    for k in range(warmup + steps):
        _sync(recipe.device)
        started = time.perf_counter()
        training_step(recipe.model, recipe.criterion, recipe.optimizer, params, video, text, recipe.meta,
                      meta_inputs, recipe.autocast, recipe.config.grad_clip, recipe.world_size, recipe.graphed_meta)
        _sync(recipe.device)
        if k >= warmup:
            times.append(time.perf_counter() - started)
    return times


class _Enough(Exception):
    """Raised by the step callback once the pipeline has run the steps asked for."""


def pipeline_rows(recipe, steps: int) -> list[dict]:
    """``steps`` more steps of the recipe's own training loop; the metrics rows they
    logged, less the first (which includes starting the loader's workers)."""
    recipe.stop_at = recipe.step + steps
    rows_before = len(recipe.paths.metrics.read_text().splitlines())
    with contextlib.suppress(_Enough):
        recipe.train()
    rows = [json.loads(x) for x in recipe.paths.metrics.read_text().splitlines()[rows_before:] if x.strip()]
    return [r for r in rows if r.get("kind") == "step"][1:]


def interleaved(recipe, rounds: int, steps: int, synthetic_steps: int) -> tuple[dict, dict]:
    """Synthetic steps and pipeline steps in alternating rounds (a shared machine's
    load then falls on both alike); medians of the synthetic steps, means of the
    pipeline's logged intervals."""
    inputs = device_inputs(recipe)
    synthetic, rows = [], []
    for _ in range(rounds):
        synthetic += time_steps(recipe, synthetic_steps, inputs)
        rows += pipeline_rows(recipe, steps)
    if not rows:
        raise RuntimeError("too few steps to measure: raise --steps")
    batch = recipe.config.batch_size
    step_s = statistics.median(synthetic)
    wait = statistics.mean(r["data_wait_ms"] for r in rows)
    step = statistics.mean(r["step_ms"] for r in rows)
    peaks = [r["gpu_mem_peak_mib"] for r in rows if r.get("gpu_mem_peak_mib") is not None]
    full = {"ms_per_step": wait + step, "data_wait_ms": wait, "step_ms": step,
            "data_wait_share": wait / (wait + step), "samples_per_s": batch * 1e3 / (wait + step),
            "gpu_mem_peak_mib": max(peaks) if peaks else None, "intervals": len(rows)}
    return {"ms_per_step": 1e3 * step_s, "steps": len(synthetic), "samples_per_s": batch / step_s}, full


def make_recipe(workdir: Path, captions: Path, name: str, **options):
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.loop import TrainRecipe

    def stop(step: int) -> None:
        if step >= recipe.stop_at:
            raise _Enough()

    name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    config = TrainConfig(captions=str(captions), name=name, progress=False, augment="none", **options)
    recipe = TrainRecipe(config, workdir, step_callback=stop)
    recipe.stop_at = 10**9
    started = time.perf_counter()
    recipe.setup()
    recipe.setup_s = time.perf_counter() - started
    return recipe


CLIP_VARIANTS = {  # name -> (loss, meta-weighting, meta_params)
    "infonce": ("infonce", False, "last"),
    "margin": ("mama", False, "last"),
    "mama-last": ("mama", True, "last"),
    "mama-heads": ("mama", True, "heads"),
    "mama-all": ("mama", True, "all"),
}


def clip_step_variants(clip_dir: Path, variants: list[str], batch: int, frames: int, device_name: str,
                       rounds: int, steps: int, margin: float = 0.1, deadline: float | None = None) -> dict:
    """Median ms of the ``clip`` backbone's ``training_step`` per variant, inputs made
    once on the device (``batch`` videos x ``frames`` frames, 16 tokens per caption, a
    meta batch as large), variants interleaved round by round. CUDA: bf16 autocast,
    fused AdamW and, for mama-last/heads, the meta step as a CUDA graph, as training does."""
    import torch

    from mama_augment.train.config import TrainConfig
    from mama_augment.train.cuda_graphs import GraphedMetaStep, unsupported_reason
    from mama_augment.train.loop import _param_groups, training_step
    from mama_augment.train.losses import build_loss
    from mama_augment.train.meta import MetaWeighting
    from mama_augment.train.models import ClipModel

    device = torch.device(device_name)
    autocast = (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext
    g = torch.Generator().manual_seed(0)
    states = {}
    models = {}
    for name in variants:
        loss, weighted, meta_params = CLIP_VARIANTS[name]
        eager = meta_params == "all" and weighted  # fused attention kernels have no double backward
        if eager not in models:
            config = TrainConfig(backbone="clip", meta_params="all" if eager else "last")
            torch.manual_seed(0)
            models[eager] = ClipModel(str(clip_dir), config, clip_dir).to(device)
        model = models[eager]
        size = model.image_size
        pixels = torch.randint(0, 256, (batch * frames, size, size, 3), generator=g, dtype=torch.uint8).to(device)
        counts = torch.full((batch,), frames, dtype=torch.long, device=device)
        ids = torch.randint(0, model.tokenizer.vocab_size - 2, (batch, 16), generator=g).to(device)
        inputs = ((pixels, counts), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        criterion = build_loss(loss, margin)
        optimizer = torch.optim.AdamW(_param_groups(model, 0.2), lr=1e-6, fused=device.type == "cuda")
        meta = MetaWeighting(100, 1e-3, 1.0, meta_params, device) if weighted else None
        graphed = None
        if meta is not None and unsupported_reason(meta, device, 1) is None:
            graphed = GraphedMetaStep(meta, torch.bfloat16)
        params = [p for p in model.parameters() if p.requires_grad]
        states[name] = (model, criterion, optimizer, meta, graphed, params, inputs)

    def run(name: str) -> float:
        model, criterion, optimizer, meta, graphed, params, inputs = states[name]
        _sync(device)
        started = time.perf_counter()
        training_step(model, criterion, optimizer, params, *inputs, meta, inputs if meta else None, autocast, 1.0, 1,
                      graphed)
        _sync(device)
        return time.perf_counter() - started

    for name in variants:  # warm-up (and the CUDA graph's capture)
        for _ in range(3):
            run(name)
    times = {name: [] for name in variants}
    for r in range(rounds):
        if deadline and time.time() > deadline:
            break
        for name in variants[r % len(variants):] + variants[: r % len(variants)]:
            for _ in range(steps):
                times[name].append(run(name))
    base = statistics.median(times["infonce"]) if times.get("infonce") else None
    out = {}
    for name in variants:
        if not times[name]:
            continue
        ms = 1e3 * statistics.median(times[name])
        graphed = states[name][4]
        out[name] = {"ms_per_step": ms, "ratio_to_infonce": ms / (1e3 * base) if base else None, "steps": len(times[name]),
                     "cuda_graph": None if graphed is None else (graphed.disabled or "captured")}
    return out


def backbone_options(args, backbone: str, clip_dir: Path | None) -> dict:
    # No val/test split (no evaluation between epochs), no checkpoints but at epoch ends.
    common = dict(batch_size=args.batch_size, device=args.device, seed=0, log_every=args.log_every,
                  checkpoint_every=10**6, meta_fraction=args.meta_fraction, val_fraction=0.0, test_fraction=0.0,
                  epochs=1000)
    if backbone == "clip":
        return dict(common, backbone="clip", backbone_model=str(clip_dir), max_frames=12, lr=1e-5)
    return dict(common, backbone="features", text_model="hashing")


def run_backbone(args, backbone: str, workdir: Path, captions: Path, clip_dir: Path | None, workers: int | None,
                 source: str, tag: str) -> dict:
    """Synthetic steps and the pipeline of one (backbone, workers, frame source)."""
    options = backbone_options(args, backbone, clip_dir)
    recipe = make_recipe(workdir, captions, tag, num_workers=workers, frame_source=source, **options)
    try:
        synthetic, full = interleaved(recipe, args.rounds, args.steps, args.synthetic_steps)
    finally:
        recipe.cleanup()
    return {
        "backbone": backbone, "workers": recipe.num_workers, "frame_source": recipe.frame_source,
        "setup_s": recipe.setup_s, "synthetic": synthetic, "pipeline": full,
        "pipeline_over_synthetic_throughput": full["samples_per_s"] / synthetic["samples_per_s"],
        "data_wait_below_step": full["data_wait_ms"] < full["step_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="an existing work folder (with --captions)")
    parser.add_argument("--captions", type=Path)
    parser.add_argument("--videos", type=int, default=512, help="training videos of the made work folder")
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA, help="more real clips, when the folder exists")
    parser.add_argument("--decoder", default="auto", help="keyframes decoder for the made work folder (opencv without av)")
    parser.add_argument("--clip", default="tiny", help="tiny | vit-b32 | a CLIP folder")
    parser.add_argument("--backbones", default="clip,features")
    parser.add_argument("--workers", default="2", help="comma-separated loader worker counts for clip (auto: the default)")
    parser.add_argument("--frame-sources", default="auto", help="comma-separated, for clip (auto, cache, pil, gpu)")
    parser.add_argument("--sections", default="frames,steps", help="frames, clip-steps, steps (pipeline)")
    parser.add_argument("--clip-variants", default="infonce,margin,mama-last,mama-heads",
                        help=f"for clip-steps: {', '.join(CLIP_VARIANTS)}")
    parser.add_argument("--frames-limit", type=int, default=0, help="frames section: at most this many keyframes")
    parser.add_argument("--frames-size", type=int, default=0, help="frames section: this image size (default: the CLIP's)")
    parser.add_argument("--cache-workers", type=int, default=0, help="frames section: processes filling the cache")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--meta-fraction", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of synthetic and pipeline steps")
    parser.add_argument("--steps", type=int, default=15, help="pipeline steps per round (the first --log-every are left out)")
    parser.add_argument("--synthetic-steps", type=int, default=5, help="synthetic steps per round")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the training process (0: default)")
    parser.add_argument("--keep", type=Path, help="keep the made work folder here (reused when it exists)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "train_throughput.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"),
        "load_before": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mama-throughput-")))
        sections = args.sections.split(",")
        workdir = captions = None
        if args.workdir:
            workdir, captions, how = args.workdir, args.captions, "given"
        elif args.keep and (args.keep / "captions.csv").exists():
            workdir, captions, how = args.keep / "work", args.keep / "captions.csv", f"reused {args.keep}"
        elif "frames" in sections or "steps" in sections or "workdir" in sections:
            base = args.keep or scratch / "data"
            workdir, captions, how = scaled_workdir(base, args.videos, [args.media], args.decoder)
        if workdir is not None:
            result["workdir"] = {"path": str(workdir), "made_by": how}
            print(f"work folder: {workdir} ({how})", flush=True)
        clip_dir = None
        if "clip" in args.backbones:
            clip_dir = Path(args.clip) if Path(args.clip).is_dir() else build_clip(scratch / "clip", args.clip)
            from transformers import CLIPConfig

            image_size = CLIPConfig.from_pretrained(clip_dir).vision_config.image_size
        if "frames" in sections and (clip_dir is not None or args.frames_size):
            image_size = args.frames_size or image_size
            frames = frame_loading(workdir, image_size, args.device, args.frames_limit or None, args.cache_workers)
            result["frames"] = frames
            print(f"frame loading, {frames['frames']} keyframes at {image_size} px, one process: "
                  f"pil {frames['pil_s']:.2f} s, cache {frames['cache_s']:.3f} s "
                  f"({frames['cache_speedup_over_pil']:.1f}x faster; through a memory map "
                  f"{frames['cache_mmap_s']:.3f} s)"
                  + (f", gpu {frames['gpu_s']:.3f} s" if frames.get("gpu_s") else ""), flush=True)
        if "clip-steps" in sections and clip_dir is not None:
            variants = args.clip_variants.split(",")
            result["clip_steps"] = clip_step_variants(clip_dir, variants, args.batch_size, 12, args.device,
                                                      args.rounds, args.synthetic_steps)
            print(f"clip step, {args.batch_size} videos x 12 frames, inputs on the device:")
            for name, row in result["clip_steps"].items():
                print(f"  {name:<11}{row['ms_per_step']:9.1f} ms  {row['ratio_to_infonce'] or float('nan'):.2f}x infonce"
                      + (f"  (CUDA graph: {row['cuda_graph']})" if row["cuda_graph"] else ""), flush=True)
        if "steps" in sections:
            result["runs"] = []
            print(f"{'backbone':<9}{'workers':>8}{'source':>8}{'synthetic ms':>14}{'pipeline ms':>13}"
                  f"{'wait ms':>9}{'step ms':>9}{'wait %':>8}{'ratio':>7}", flush=True)
            for backbone in args.backbones.split(","):
                settings = [(None if w == "auto" else int(w), s)
                            for w in args.workers.split(",") for s in args.frame_sources.split(",")]
                if backbone != "clip":
                    settings = [(0, "auto")]
                for workers, source in settings:
                    tag = f"{backbone}-w{workers}-{source}"
                    try:
                        row = run_backbone(args, backbone, workdir, captions, clip_dir, workers, source, tag)
                    except Exception as exc:  # noqa: BLE001 - e.g. no GPU JPEG decoder: say so, go on
                        result.setdefault("failed_runs", []).append({"setting": tag, "error": repr(exc)})
                        print(f"{backbone:<9}{str(workers):>8}{source:>8}  failed: {type(exc).__name__}: {exc}", flush=True)
                        continue
                    result["runs"].append(row)
                    s, p = row["synthetic"], row["pipeline"]
                    print(f"{backbone:<9}{row['workers']:>8}{str(row['frame_source']):>8}{s['ms_per_step']:>14.1f}"
                          f"{p['ms_per_step']:>13.1f}{p['data_wait_ms']:>9.1f}{p['step_ms']:>9.1f}"
                          f"{100 * p['data_wait_share']:>7.1f}%{row['pipeline_over_synthetic_throughput']:>7.2f}",
                          flush=True)
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"load average before {result['load_before']}, after {result['load_after']}; written {args.out}")


if __name__ == "__main__":
    main()
