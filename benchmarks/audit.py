"""Does ``mama-augment audit`` find wrong captions in real data?

On a set of benchmarks/data/emoji_workdir.py (Twemoji, OpenMoji), variant ``noisy30``
(30 % of the training captions outside the meta set shuffled among themselves; the
``noisy`` column says which), train with the library defaults (``mama``,
meta-weighting, the meta set drawn from those noisy captions; ``--meta-file`` uses the
clean ``meta_set.csv`` instead), then audit the run and measure against the truth:

* mean weight of shuffled over correct training pairs, from ``weight`` (final
  weighting net, mean 1 over all pairs) and from ``mean_weight_last_epoch`` (what
  training used). Target <= 0.5.
* precision of the ``--top`` (100) least-trusted pairs: the fraction truly shuffled,
  against chance (the shuffled fraction of the training pairs), and of the K
  least-trusted where K is the number of shuffled pairs.
* reference (``--reference``): the same precision when an InfoNCE run without
  weights is ranked by loss alone, i.e. what the weighting adds over the loss.

    python benchmarks/data/emoji_workdir.py        # once: builds benchmarks/out/emoji
    python benchmarks/audit.py --seeds 0,1,2 --reference [--data-dir benchmarks/out/openmoji]

Runs already in the work folder are audited again, not retrained (``--fresh``
retrains).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import pandas as pd


def train_and_audit(args, seed: int, weighted: bool) -> dict:
    from mama_augment.train.audit import audit_run
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.loop import run_train

    meta = "-metafile" if weighted and args.meta_file else ""
    name = f"audit-{args.data}-{'mama' if weighted else 'infonce'}{meta}-s{seed}{args.tag}"
    run_dir = args.workdir / "runs" / name
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    started = time.time()
    if not (run_dir / "pair_weights.parquet").exists():
        if run_dir.exists():
            shutil.rmtree(run_dir)
        config = TrainConfig(
            captions=str(args.captions), augment="none", loss="mama" if weighted else "infonce",
            meta_weighting=weighted, meta_set=str(args.meta_set) if weighted and args.meta_file else None,
            seed=seed, name=name, progress=False, text_model=args.text_model,
        )
        run_train(config, args.workdir)
    seconds = time.time() - started
    result = audit_run(run_dir, top=args.top)
    truth = pd.read_csv(args.captions, dtype={"video_id": str})[["video_id", "caption", "noisy"]]
    ranked = result.ranked.merge(truth, on=["video_id", "caption"], how="left")
    if ranked.noisy.isna().any():
        raise SystemExit(f"{ranked.noisy.isna().sum()} audited pairs are not in {args.captions}")
    ranked["noisy"] = ranked.noisy.astype(bool)
    shuffled, correct = ranked[ranked.noisy], ranked[~ranked.noisy]
    k = len(shuffled)
    row = {
        "seed": seed, "method": "mama" if weighted else "infonce (ranked by loss)", "seconds": round(seconds, 1),
        "pairs": len(ranked), "shuffled": k, "chance": k / len(ranked),
        f"precision@{args.top}": float(ranked.head(args.top).noisy.mean()),
        "precision@K": float(ranked.head(k).noisy.mean()),
    }
    if weighted:
        row["weight_shuffled"] = float(shuffled.weight.mean())
        row["weight_correct"] = float(correct.weight.mean())
        row["weight_ratio"] = row["weight_shuffled"] / row["weight_correct"]
        row["last_epoch_ratio"] = float(shuffled.mean_weight_last_epoch.mean() / correct.mean_weight_last_epoch.mean())
        row["below_0.5"] = result.below
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("benchmarks/out/emoji"))
    parser.add_argument("--data", default="noisy30", help="captions_<NAME>.csv (needs a noisy column)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--top", type=int, default=100)
    parser.add_argument("--reference", action="store_true", help="also rank an InfoNCE run by loss")
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2")
    parser.add_argument("--meta-file", action="store_true", help="use the clean meta_set.csv as the meta set")
    parser.add_argument("--tag", default="")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/audit.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    args.workdir = args.data_dir / "work"
    args.captions = args.data_dir / f"captions_{args.data}.csv"
    args.meta_set = args.data_dir / "meta_set.csv"
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for weighted in ([True, False] if args.reference else [True]):
            row = train_and_audit(args, seed, weighted)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    keys = ["weight_ratio", "last_epoch_ratio", f"precision@{args.top}", "precision@K", "chance"]
    summary = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        summary[method] = {}
        for key in keys:
            values = [r[key] for r in group if key in r]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                summary[method][key] = [statistics.mean(values), sd]
        cells = "  ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in summary[method].items())
        print(f"{method:<26} n={len(group)}  {cells}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "runs": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
