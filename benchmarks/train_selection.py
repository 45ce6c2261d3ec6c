"""How the training defaults were chosen: on validation folds only, never on the test split.

For a data set of benchmarks/data/emoji_workdir.py the test images stay out; the rest
is cut into 4 folds by a hash of the image id. A run with seed s validates on fold
s % 4 (clean captions, about 450-590 queries, so differences of one point are
visible) and trains on the other three, whose captions are the variant's: ``clean``,
``noisy30`` (30 % of them shuffled afresh for the fold) or a generated-caption work
folder (``gen-wrong30`` ...; that folder's captions, for training images only).
Reported per run: validation R@1 of the epoch chosen on the other half of the
validation queries (queries split by parity, both halves averaged: the score of
"keep the best epoch" without choosing and scoring on the same queries), text->video
and video->text and their mean; for weighted runs the mean weight of wrong over right
training pairs (final weighting net) and the share of wrong pairs in a drawn meta set.
Variants are paired by seed: mean difference to ``--reference`` with a 95 % t interval.

    python benchmarks/train_selection.py --data-dir benchmarks/out/emoji --setting noisy30 \\
        --variants '{"infonce": {"loss": "infonce"}, "mama": {}, "random": {"meta_select": "random"}}' \\
        --reference infonce --seeds 0,1,2,3,4,5,6,7

Each variant is a dict of TrainConfig fields over the library defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

FOLDS = 4


def captions_kind(setting: str) -> str:
    """Which captions file a setting's folds are cut from: noisy30, half50 or clean."""
    if setting == "noisy30":
        return "noisy30"
    return "half50" if setting.startswith("half50") else "clean"


def work_folder(data_dir: Path, setting: str) -> Path:
    """``work`` (originals only) or the generated-caption folder a setting names
    (``half50-named-wrong30`` -> ``named-wrong30``)."""
    name = setting.removeprefix("half50-") if setting.startswith("half50-") else setting
    return data_dir / ("work" if name in ("clean", "noisy30", "half50") else name)


def fold_captions(data_dir: Path, setting: str, fold: int) -> Path:
    """The captions file of one validation fold (written once under DATA_DIR/selection/).

    ``half50``: the validation fold keeps every clean caption (the same queries as the
    clean folds); the training part keeps only the captions ``captions_half50.csv``
    keeps, so half the training images have none of their own."""
    kind = captions_kind(setting)
    out = data_dir / "selection" / f"{kind}_fold{fold}.csv"
    if out.exists():
        return out
    clean = pd.read_csv(data_dir / "captions_clean.csv", dtype={"video_id": str}, keep_default_na=False)
    which = clean.video_id.map(lambda v: int(hashlib.sha256(("cv" + v).encode()).hexdigest()[:8], 16) % FOLDS)
    frame = clean.copy()
    rest = frame.split != "test"
    frame.loc[rest, "split"] = np.where(which[rest] == fold, "val", "train")
    frame["noisy"] = False
    if kind == "half50":
        half = pd.read_csv(data_dir / "captions_half50.csv", dtype={"video_id": str}, keep_default_na=False)
        frame = frame[(frame.split != "train") | frame.video_id.isin(set(half.video_id))]
    if setting == "noisy30":
        rng = np.random.default_rng([fold, 5])
        train = frame.index[frame.split == "train"].to_numpy()
        pick = rng.choice(train, size=int(round(0.3 * len(train))), replace=False)
        frame.loc[pick, "caption"] = rng.permutation(frame.loc[pick, "caption"].to_numpy())
        frame["noisy"] = frame.caption != clean.caption
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    return out


def held_out_best(ranks: list[np.ndarray]) -> float:
    """R@1 of the epoch chosen on the other half of the queries, both halves averaged."""
    hits = (np.stack(ranks) <= 1).astype(float)  # epochs x queries
    a, b = hits[:, 0::2], hits[:, 1::2]
    return float(100 * (b[int(np.argmax(a.mean(1)))].mean() + a[int(np.argmax(b.mean(1)))].mean()) / 2)


def run_variant(data_dir: Path, setting: str, name: str, overrides: dict, seed: int,
                measure_evidence: bool = False) -> dict:
    from mama_augment.train import loop
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.evaluate import ranks_for

    class Recipe(loop.TrainRecipe):
        """The library's recipe, also keeping each epoch's validation ranks."""

        def _end_of_epoch(self, epoch, last_losses):
            t2v, v2t, _ = ranks_for(self.model, self.data, "val")
            self.model.train()
            self.ranks.append((t2v, v2t))
            super()._end_of_epoch(epoch, last_losses)

        def _weigh_generated_sources(self, backbone):
            # With a fixed --generated-weight, the evidence is still gathered (and only
            # recorded), so a rule on it can be judged against every variant's result.
            self.measured = None
            if measure_evidence and self.config.generated_weight_value is not None:
                fixed = self.config.generated_weight
                self.config.generated_weight = "auto"
                super()._weigh_generated_sources(backbone)
                self.measured = self.evidence
                self.config.generated_weight = fixed
            return super()._weigh_generated_sources(backbone)

    captions = fold_captions(data_dir, setting, seed % FOLDS)
    workdir = work_folder(data_dir, setting)
    generated = workdir.name != "work"
    config = TrainConfig(**{"captions": str(captions), "augment": "add" if generated else "none", "seed": seed,
                            "progress": False, "name": f"select-{setting}-{name}-s{seed}", **overrides})
    run_dir = workdir / "runs" / config.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    recipe = Recipe(config, workdir)
    recipe.ranks = []
    recipe.measured = None
    started = time.time()
    recipe.setup()
    recipe.train()
    recipe.save()
    seconds = time.time() - started
    row = {"setting": setting, "variant": name, "seed": seed,
           "t2v": held_out_best([r[0] for r in recipe.ranks]), "v2t": held_out_best([r[1] for r in recipe.ranks])}
    row["mean"] = (row["t2v"] + row["v2t"]) / 2
    row["weighting"] = recipe.meta is not None
    row["seconds"] = round(seconds, 2)
    evidence = recipe.measured or (recipe.evidence if recipe.evidence is not None and recipe.evidence.mode == "auto"
                                   else None)
    if evidence is not None:
        row["evidence_s"] = round(evidence.seconds, 2)
        row["evidence_share"] = round(evidence.seconds / seconds, 3)  # of this run (double when only measured)
        row["evidence_weights"] = dict(evidence.weights)
        row["evidence_differences"] = {e.source: e.differences for e in evidence.sources}
        if evidence.skipped:
            row["evidence_skipped"] = evidence.skipped
    if recipe.data.wrong_share is not None:
        row["estimated_wrong_share"] = recipe.data.wrong_share
    data = recipe.data
    if data.agreement_filtered:
        row["agreement_filtered"] = data.agreement_filtered
    if not generated and (recipe.meta is not None or data.agreement_filtered or data.pair_prior is not None):
        # Every training pair's weight as the run used it: the weighting net's (mean 1),
        # times the agreement prior, 0 where the agreement filter left the pair out.
        truth = pd.read_csv(captions, dtype={"video_id": str})
        truth = truth[truth.split == "train"]
        # the readers strip captions (OpenMoji has trailing spaces)
        caption_id = {(data.videos.video_ids[data.caption_video[c]], t.strip()): c for c, t in enumerate(data.texts)
                      if data.caption_source[c] == "original"}
        found = [caption_id.get((v, str(t).strip())) for v, t in zip(truth.video_id, truth.caption)]
        truth = truth[[c is not None for c in found]]
        ids = np.asarray([c for c in found if c is not None])
        weight = np.ones(len(data.texts))
        if recipe.meta is not None:
            pairs = pd.read_parquet(run_dir / "pair_weights.parquet")
            weight[pairs.pair_id.to_numpy()] = pairs.weight.to_numpy()
        if data.pair_prior is not None:
            weight *= data.pair_prior
        kept = np.zeros(len(data.texts), dtype=bool)
        kept[np.concatenate(data.train_captions)] = True
        weight = np.where(kept, weight, 0.0)[ids]
        wrong = truth.noisy.to_numpy(dtype=bool)
        if wrong.any():
            row["weight_ratio"] = float(weight[wrong].mean() / weight[~wrong].mean())
            if data.agreement_filtered:
                row["wrong_dropped"] = float(1 - kept[ids][wrong].mean())
                row["right_dropped"] = float(1 - kept[ids][~wrong].mean())
    if recipe.meta is not None and generated:
        pairs = pd.read_parquet(run_dir / "pair_weights.parquet")
        truth = pd.read_csv(data_dir / ("generated_named.csv" if "named" in setting else "generated.csv"),
                            dtype={"video_id": str})
        pairs = pairs[pairs.caption_source == "generated"].merge(truth[["video_id", "wrong"]], on="video_id")
        if pairs.wrong.any():
            row["weight_ratio"] = float(pairs[pairs.wrong].weight.mean() / pairs[~pairs.wrong].weight.mean())
    if recipe.meta is not None:
        if setting == "noisy30" and not config.meta_set:
            truth = pd.read_csv(captions, dtype={"video_id": str})
            wrong = dict(zip(zip(truth.video_id, truth.caption), truth.noisy))
            row["meta_wrong"] = float(np.mean([wrong[(data.videos.video_ids[v], data.texts[c])]
                                               for v, c in zip(data.meta_videos, data.meta_captions)]))
    shutil.rmtree(run_dir)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("benchmarks/out/emoji"))
    parser.add_argument("--setting", default="noisy30", help="clean, noisy30 or a generated-caption work folder")
    parser.add_argument("--variants", required=True, help="JSON: name -> TrainConfig overrides")
    parser.add_argument("--reference", required=True, help="the variant the others are compared with")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/train_selection.jsonl"))
    parser.add_argument("--measure-evidence", action="store_true",
                        help="gather (and record) the generated-caption evidence in runs with a fixed --generated-weight too")
    args = parser.parse_args()
    import torch
    from scipy import stats

    torch.set_num_threads(1)
    variants = json.loads(args.variants)
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, overrides in variants.items():
            row = {"data": args.data_dir.name, **run_variant(args.data_dir, args.setting, name, overrides, seed,
                                                                   args.measure_evidence)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    reference = {r["seed"]: r for r in rows if r["variant"] == args.reference}
    print()
    for name in variants:
        mine = {r["seed"]: r for r in rows if r["variant"] == name}
        line = f"{args.setting:<14}{name:<24}" + "  ".join(f"{k} {np.mean([r[k] for r in mine.values()]):6.2f}"
                                                           for k in ("t2v", "v2t", "mean"))
        seeds = sorted(set(mine) & set(reference))
        if name != args.reference and len(seeds) > 1:
            d = np.asarray([mine[s]["mean"] - reference[s]["mean"] for s in seeds])
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
            line += f"  mean - {args.reference} {d.mean():+5.2f} [{d.mean() - half:+5.2f}, {d.mean() + half:+5.2f}]"
        for key in ("weight_ratio", "meta_wrong", "wrong_dropped", "right_dropped"):
            values = [r[key] for r in mine.values() if key in r]
            if values:
                line += f"  {key} {np.mean(values):.2f}"
        print(line)


if __name__ == "__main__":
    main()
