"""Retrieval quality of InfoNCE, margin only, weighting only and full MAMA on a real
captioned image set (Twemoji artwork + Unicode names, see benchmarks/data/emoji_workdir.py),
with clean captions and with a known fraction of shuffled training captions.

    python benchmarks/data/emoji_workdir.py            # once: builds benchmarks/out/emoji
    python benchmarks/train_quality.py --seeds 0,1,2   # the comparison
    python benchmarks/train_quality.py --sweep-margins 0.05,0.1,0.2,0.3 --methods margin

Every run is a plain ``run_train`` with the ``features`` backbone (frozen
EfficientNet-Lite0 image features, frozen all-MiniLM-L6-v2 caption features, trained
heads) and is evaluated with ``evaluate_split`` on the test split (clean captions in
both variants). Runs already in the work folder are evaluated again, not retrained
(``--fresh`` retrains). Reported per (data, method): mean and standard deviation over
seeds of text->video and video->text R@1, R@1 on the rarest and on the most frequent
concepts (subcategories holding the rarest / most frequent third of the test captions,
by training frequency), and for weighted runs the mean learned weight of shuffled
versus correct training pairs under the final weighting net.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

METHODS = {
    # name: (loss, margin or None for the default, meta-weighting)
    "infonce": ("infonce", 0.0, False),
    "margin": ("mama", None, False),
    "weighting": ("mama", 0.0, True),
    "mama": ("mama", None, True),
}


def concept_groups(captions: pd.DataFrame) -> tuple[set, set]:
    """(rare, frequent) concepts: by training frequency, the concepts that together
    hold the rarest / most frequent third of the test captions."""
    train_freq = captions[captions.split == "train"].concept.value_counts()
    test = captions[captions.split == "test"]
    test_counts = test.concept.value_counts()
    order = sorted(test_counts.index, key=lambda c: (train_freq.get(c, 0), c))
    total, acc, rare = test_counts.sum(), 0, set()
    for c in order:
        if acc >= total / 3:
            break
        rare.add(c)
        acc += test_counts[c]
    acc, frequent = 0, set()
    for c in reversed(order):
        if acc >= total / 3:
            break
        frequent.add(c)
        acc += test_counts[c]
    return rare, frequent


def run_one(args, data_name: str, captions_path: Path, method: str, seed: int, margin: float | None, tag: str) -> dict:
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.evaluate import evaluate_split, retrieval_ranks
    from mama_augment.train.loop import run_train
    from mama_augment.train.runs import load_run

    loss, method_margin, weighting = METHODS[method]
    mu = method_margin if method_margin is not None else (margin if margin is not None else TrainConfig().margin)
    name = f"{data_name}-{method}-mu{mu:g}-s{seed}{tag}"
    run_dir = args.workdir / "runs" / name
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    started = time.time()
    if not (run_dir / "model.safetensors").exists():
        if run_dir.exists():
            shutil.rmtree(run_dir)
        config = TrainConfig(
            captions=str(captions_path), augment="none", loss=loss, margin=mu, meta_weighting=weighting,
            meta_set=str(args.meta_set) if weighting and args.meta_set else None,
            meta_fraction=args.meta_fraction, virtual_lr=args.virtual_lr, meta_lr=args.meta_lr,
            meta_every=args.meta_every, meta_params=args.meta_params,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            head_hidden=args.head_hidden,
            seed=seed, name=name, progress=False, text_model=args.text_model,
        )
        run_train(config, args.workdir)
    seconds = time.time() - started
    _, model, data = load_run(run_dir, device="cpu")
    result = evaluate_split(model, data, "test")
    # Rare / frequent concept R@1 from the raw ranks.
    pairs = data.split("test")
    video_emb = model.encode_videos(pairs.videos)
    text_emb = model.encode_texts(pairs.captions)
    t2v, _ = retrieval_ranks(video_emb, text_emb, pairs.caption_video)
    concepts = np.asarray([data.caption_concept[c] for c in pairs.captions])
    row = {
        "data": data_name, "method": method, "margin": mu, "seed": seed, "seconds": round(seconds, 1),
        "t2v_R@1": result["text_to_video"]["R@1"], "v2t_R@1": result["video_to_text"]["R@1"],
        "t2v_R@5": result["text_to_video"]["R@5"], "t2v_MdR": result["text_to_video"]["MdR"],
        "rare_t2v_R@1": float(np.mean(t2v[np.isin(concepts, list(args.rare))] <= 1) * 100),
        "frequent_t2v_R@1": float(np.mean(t2v[np.isin(concepts, list(args.frequent))] <= 1) * 100),
    }
    weights_path = run_dir / "pair_weights.parquet"
    if weighting and weights_path.exists():
        pw = pd.read_parquet(weights_path)
        truth = pd.read_csv(captions_path, dtype={"video_id": str})[["video_id", "caption", "noisy"]]
        pw = pw.merge(truth, on=["video_id", "caption"], how="left")
        if pw.noisy.any():
            noisy, clean = pw[pw.noisy == True], pw[pw.noisy == False]  # noqa: E712
            weight = "weight_normalised" if "weight_normalised" in pw else "weight"  # runs from before the audit schema
            row["weight_shuffled"] = float(noisy[weight].mean())
            row["weight_correct"] = float(clean[weight].mean())
            row["weight_ratio"] = row["weight_shuffled"] / row["weight_correct"]
    return row


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    keys = sorted({(r["data"], r["method"], r["margin"]) for r in rows}, key=lambda k: (k[0], list(METHODS).index(k[1]), k[2]))
    for data_name, method, mu in keys:
        group = [r for r in rows if (r["data"], r["method"], r["margin"]) == (data_name, method, mu)]
        entry = {"data": data_name, "method": method, "margin": mu, "seeds": len(group)}
        for metric in ("t2v_R@1", "v2t_R@1", "rare_t2v_R@1", "frequent_t2v_R@1", "weight_ratio", "weight_shuffled", "weight_correct"):
            values = [r[metric] for r in group if r.get(metric) is not None]
            if values:
                entry[metric] = statistics.mean(values)
                entry[metric + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def print_table(table: list[dict]) -> None:
    print(f"{'data':<8}{'method':<10}{'mu':>5}{'n':>3}  {'t2v R@1':>13}  {'v2t R@1':>13}  {'rare R@1':>13}  {'freq R@1':>13}  {'w shuf/corr':>11}")
    for e in table:
        def cell(k):
            return f"{e[k]:6.2f} ± {e[k + '_sd']:4.2f}" if k in e else f"{'-':>13}"
        ratio = f"{e['weight_shuffled']:.2f}/{e['weight_correct']:.2f}" if "weight_shuffled" in e else "-"
        print(f"{e['data']:<8}{e['method']:<10}{e['margin']:5.2f}{e['seeds']:3d}  {cell('t2v_R@1')}  {cell('v2t_R@1')}  "
              f"{cell('rare_t2v_R@1')}  {cell('frequent_t2v_R@1')}  {ratio:>11}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("benchmarks/out/emoji"))
    parser.add_argument("--data", default="clean,noisy30", help="captions_<NAME>.csv files to use")
    parser.add_argument("--methods", default="infonce,margin,weighting,mama")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sweep-margins", default="", help="comma list: run margin-using methods at each")
    from mama_augment.train.config import TrainConfig

    d = TrainConfig()  # the library's defaults are the benchmark's defaults
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--head-hidden", type=int, default=d.head_hidden, help="0: linear projection heads")
    parser.add_argument("--virtual-lr", type=float, default=d.virtual_lr)
    parser.add_argument("--meta-lr", type=float, default=d.meta_lr)
    parser.add_argument("--meta-every", type=int, default=d.meta_every)
    parser.add_argument("--meta-params", default=d.meta_params)
    parser.add_argument("--meta-fraction", type=float, default=d.meta_fraction)
    parser.add_argument("--no-meta-file", action="store_true", help="draw the meta set from the (noisy) training pairs")
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2")
    parser.add_argument("--tag", default="", help="suffix of run names (separates explorations)")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/train_quality.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    args.workdir = args.data_dir / "work"
    args.meta_set = None if args.no_meta_file else args.data_dir / "meta_set.csv"
    clean = pd.read_csv(args.data_dir / "captions_clean.csv", dtype={"video_id": str})
    args.rare, args.frequent = concept_groups(clean)
    margins = [float(m) for m in args.sweep_margins.split(",") if m] or [None]
    rows = []
    for data_name in args.data.split(","):
        path = args.data_dir / f"captions_{data_name}.csv"
        for method in args.methods.split(","):
            method_margins = margins if METHODS[method][1] is None else [None]
            for mu in method_margins:
                for seed in (int(s) for s in args.seeds.split(",")):
                    row = run_one(args, data_name, path, method, seed, mu, args.tag)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    table = summarise(rows)
    print()
    print_table(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "runs": rows, "summary": table}, indent=2))


if __name__ == "__main__":
    main()
