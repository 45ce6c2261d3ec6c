"""Does MAMA pay off with the defaults a user has? Retrieval quality of InfoNCE and
MAMA on real captioned image sets (see benchmarks/data/emoji_workdir.py: Twemoji and
OpenMoji, different artwork and annotations), in the settings users meet:

* ``noisy30``: 30 % of the training captions shuffled among themselves and no clean
  meta file, so the meta set is drawn from the noisy training pairs (``--meta-file``
  passes the data set's clean ``meta_set.csv`` instead);
* the paper's own setting: clean originals plus one generated caption per image, from
  a weak captioner (``gen-*``: keywords of the image, not words of its name) or a
  better one (``named-*``: the other source's name of the picture plus keywords).
  ``*-wrong30`` gives 30 % of the training images' generated captions to another
  image; ``*-right`` has none wrong and shows whether the generated captions carry
  information at all. Compared: InfoNCE on originals only (``clean``), InfoNCE with the
  generated captions added, MAMA with them added. The ``half50`` settings do the same
  with the original captions of half the training images removed
  (``captions_half50.csv``): there the generated captions are the only text of those
  images, so right ones carry information;
* ``clean``: originals only, all correct.

    python benchmarks/data/emoji_workdir.py ...     # once per data set, see its help
    python benchmarks/train_quality.py --data-dirs benchmarks/out/emoji,benchmarks/out/openmoji \\
        --seeds 0,1,2,3,4,5,6,7,8,9
    python benchmarks/train_quality.py --settings clean,noisy30 --methods weighting,mama --margins 0.05,0.1
    python benchmarks/train_quality.py --backbone clip --backbone-model DIR ...   # a pretrained CLIP

Every run is a plain ``run_train`` with the library defaults (``TrainConfig()``)
unless an option here overrides one; ``features`` is frozen EfficientNet-Lite0 image
features and frozen all-MiniLM-L6-v2 caption features with trained heads. Each run is
evaluated with ``evaluate_split`` on the test split (clean captions), once with the
weights of its best validation epoch (what ``evaluate`` uses by default) and once with
the last ones. Runs already in a work folder are evaluated again, not retrained
(``--fresh`` retrains). Comparisons are paired by seed: mean difference and its 95 %
t interval. Weighted runs also report the mean learned weight (``pair_weights.parquet``,
final weighting net) of the wrong training pairs over the right ones.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

# name: (captions file, work folder under the data dir, --augment)
SETTINGS = {
    "clean": ("captions_clean.csv", "work", "none"),
    "noisy30": ("captions_noisy30.csv", "work", "none"),
    "gen-right": ("captions_clean.csv", "gen-right", "add"),
    "gen-wrong30": ("captions_clean.csv", "gen-wrong30", "add"),
    "named-right": ("captions_clean.csv", "named-right", "add"),
    "named-wrong30": ("captions_clean.csv", "named-wrong30", "add"),
    "half50": ("captions_half50.csv", "work", "none"),
    "half50-gen-right": ("captions_half50.csv", "gen-right", "add"),
    "half50-gen-wrong30": ("captions_half50.csv", "gen-wrong30", "add"),
    "half50-named-right": ("captions_half50.csv", "named-right", "add"),
    "half50-named-wrong30": ("captions_half50.csv", "named-wrong30", "add"),
}
GENERATED_TRUTH = {"gen-": "generated.csv", "named-": "generated_named.csv"}
METHODS = {
    # name: (loss, margin (None: --margins, else the library default), meta-weighting
    # (None: the library default, on when the training pairs look noisy), generated
    # weight ("auto": the library default, by evidence; 1.0: every generated caption used)
    "infonce": ("infonce", 0.0, False, 1.0),
    "margin": ("mama", None, False, 1.0),
    "weighting": ("mama", 0.0, True, 1.0),
    "mama": ("mama", "default", None, "auto"),
    "mama-all": ("mama", "default", None, 1.0),  # the defaults before the evidence step
}
METRICS = ("t2v_R@1", "v2t_R@1", "last_t2v_R@1", "last_v2t_R@1", "rare_t2v_R@1", "frequent_t2v_R@1")


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


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of a - b (paired) and its 95 % t interval."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def weight_ratios(run_dir: Path, data_dir: Path, setting: str, captions_path: Path) -> dict:
    """Mean weight of wrong over right training pairs under the final weighting net."""
    pw = pd.read_parquet(run_dir / "pair_weights.parquet")
    truth_file = next((f for key, f in GENERATED_TRUTH.items() if key in setting), None)
    if truth_file:
        truth = pd.read_csv(data_dir / truth_file, dtype={"video_id": str})[["video_id", "wrong"]]
        generated = pw[pw.caption_source == "generated"].merge(truth, on="video_id", how="left")
        wrong, right = generated[generated.wrong == True], generated[generated.wrong == False]  # noqa: E712
        original = pw[pw.caption_source == "original"]
        out = {"weight_original": float(original.weight.mean()), "weight_right": float(right.weight.mean())}
    else:
        truth = pd.read_csv(captions_path, dtype={"video_id": str})[["video_id", "caption", "noisy"]]
        merged = pw.merge(truth, on=["video_id", "caption"], how="left")
        wrong, right = merged[merged.noisy == True], merged[merged.noisy == False]  # noqa: E712
        out = {"weight_right": float(right.weight.mean())}
    if len(wrong) == 0:
        return {}
    out["weight_wrong"] = float(wrong.weight.mean())
    out["weight_ratio"] = out["weight_wrong"] / out["weight_right"]
    return out


def run_one(args, data_dir: Path, setting: str, method: str, seed: int, margin: float | None) -> dict:
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.evaluate import evaluate_split, retrieval_ranks
    from mama_augment.train.loop import run_train
    from mama_augment.train.runs import load_run

    captions_name, work_name, augment = SETTINGS[setting]
    captions_path, workdir = data_dir / captions_name, data_dir / work_name
    loss, method_margin, weighting, generated_weight = METHODS[method]
    if method_margin == "default":
        mu = TrainConfig().margin if margin is None else margin
    else:
        mu = method_margin if method_margin is not None else margin
    name = f"q-{setting}-{method}-mu{mu:g}-s{seed}{args.tag}"
    run_dir = workdir / "runs" / name
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    started = time.time()
    if not (run_dir / "model.safetensors").exists():
        if run_dir.exists():
            shutil.rmtree(run_dir)
        options = {k: v for k, v in args.overrides.items() if v is not None}
        config = TrainConfig(
            captions=str(captions_path), augment=augment, loss=loss, margin=mu, meta_weighting=weighting,
            meta_set=str(data_dir / "meta_set.csv") if weighting is not False and args.meta_file else None,
            seed=seed, name=name, progress=False, generated_weight=generated_weight, **options,
        )
        run_train(config, workdir)
    seconds = time.time() - started
    row = {"data": data_dir.name, "setting": setting, "method": method, "margin": mu, "seed": seed,
           "seconds": round(seconds, 1)}
    for checkpoint in ("best", "last"):
        _, model, data = load_run(run_dir, device="cpu", checkpoint=checkpoint)
        result = evaluate_split(model, data, "test")
        prefix = "" if checkpoint == "best" else "last_"
        row[prefix + "t2v_R@1"] = result["text_to_video"]["R@1"]
        row[prefix + "v2t_R@1"] = result["video_to_text"]["R@1"]
        if checkpoint == "best":
            pairs = data.split("test")
            t2v, _ = retrieval_ranks(model.encode_videos(pairs.videos), model.encode_texts(pairs.captions), pairs.caption_video)
            concepts = np.asarray([data.caption_concept[c] for c in pairs.captions])
            rare, frequent = args.groups[data_dir.name]
            row["rare_t2v_R@1"] = float(np.mean(t2v[np.isin(concepts, list(rare))] <= 1) * 100)
            row["frequent_t2v_R@1"] = float(np.mean(t2v[np.isin(concepts, list(frequent))] <= 1) * 100)
    summary = json.loads((run_dir / "summary.json").read_text())
    row["best_epoch"] = (summary.get("best") or {}).get("epoch", -1) + 1
    stored = json.loads((run_dir / "config.json").read_text())
    row["weighting"] = bool(stored.get("meta_weighting"))  # as decided by the run
    evidence = summary.get("generated_evidence")
    if evidence:
        weights = list((evidence.get("weights") or {}).values())
        row["generated_weight"] = statistics.mean(weights) if weights else None
        row["evidence_s"] = evidence.get("seconds")
        # share of the run's wall time (evidence, data with the noise estimate and meta set, training)
        row["evidence_share"] = evidence.get("seconds", 0) / summary["seconds"] if summary.get("seconds") else None
        row["evidence_data_share"] = ((evidence.get("seconds", 0) + summary.get("data_seconds", 0)) / summary["seconds"]
                                      if summary.get("seconds") else None)
        row["evidence_differences"] = {e["source"]: e["difference"] for e in evidence.get("sources", [])}
    if "estimated_wrong_share" in summary.get("data", {}):
        row["estimated_wrong_share"] = summary["data"]["estimated_wrong_share"]
    if row["weighting"]:
        row.update(weight_ratios(run_dir, data_dir, setting, captions_path))
    return row


def summarise(rows: list[dict]) -> dict:
    """Means per (data, setting, method, margin) and the paired comparisons of the targets."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["setting"], r["method"], r["margin"]), []).append(r)
    table = []
    for (data, setting, method, mu), group in groups.items():
        entry = {"data": data, "setting": setting, "method": method, "margin": mu, "seeds": len(group)}
        for metric in (*METRICS, "weight_ratio", "weight_wrong", "weight_right", "weight_original", "best_epoch",
                       "estimated_wrong_share", "generated_weight", "evidence_share", "evidence_data_share"):
            values = [r[metric] for r in group if r.get(metric) is not None]
            if values:
                entry[metric] = statistics.mean(values)
                entry[metric + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)

    from mama_augment.train.config import TrainConfig

    default_margin = TrainConfig().margin

    def runs(data, setting, method, mu=None):
        """Runs of a method by seed; ``mama`` without ``mu`` means at the default margin."""
        if mu is None and method == "mama":
            mu = default_margin
        found = [g for k, g in groups.items() if k[:3] == (data, setting, method) and (mu is None or k[3] == mu)]
        return {r["seed"]: r for r in found[0]} if found else {}

    comparisons = []

    def compare(label, data, a, b, metric="t2v_R@1"):
        seeds = sorted(set(a) & set(b))
        if seeds:
            result = paired([a[s][metric] for s in seeds], [b[s][metric] for s in seeds])
            comparisons.append({"data": data, "comparison": label, "metric": metric, **result})

    for data in sorted({r["data"] for r in rows}):
        for setting in SETTINGS:
            for metric in ("t2v_R@1", "v2t_R@1", "last_t2v_R@1"):
                compare(f"{setting}: mama - infonce", data, runs(data, setting, "mama"), runs(data, setting, "infonce"), metric)
        for prefix, originals in (("", "clean"), ("half50-", "half50")):
            base = runs(data, originals, "infonce")
            for captioner in ("gen", "named"):
                for setting in (f"{prefix}{captioner}-right", f"{prefix}{captioner}-wrong30"):
                    compare(f"infonce {setting} - infonce originals only", data, runs(data, setting, "infonce"), base)
                    compare(f"mama {setting} - infonce originals only", data, runs(data, setting, "mama"), base)
                for kind in ("right", "wrong30"):
                    added = runs(data, f"{prefix}{captioner}-{kind}", "infonce")
                    for metric in ("t2v_R@1", "v2t_R@1"):
                        if base and added:
                            better = max((base, added), key=lambda g: statistics.mean(r[metric] for r in g.values()))
                            label = "originals only" if better is base else "with generated"
                            for method in ("mama", "mama-all"):
                                compare(f"{method} {prefix}{captioner}-{kind} - the better InfoNCE ({label})", data,
                                        runs(data, f"{prefix}{captioner}-{kind}", method), better, metric)
        for mu in sorted({r["margin"] for r in rows if r["method"] in ("margin", "mama") and r["margin"]}):
            for setting in SETTINGS:
                for metric in ("t2v_R@1", "v2t_R@1"):
                    compare(f"{setting}: margin {mu:g} - infonce", data, runs(data, setting, "margin", mu),
                            runs(data, setting, "infonce"), metric)
                    weighted = runs(data, setting, "weighting") or runs(data, setting, "mama", 0.0)
                    compare(f"{setting}: mama margin {mu:g} - mama margin 0", data, runs(data, setting, "mama", mu),
                            weighted, metric)
    return {"table": table, "comparisons": comparisons}


def print_summary(summary: dict) -> None:
    print(f"{'data':<10}{'setting':<22}{'method':<10}{'mu':>5}{'n':>4}  {'t2v R@1':>13}  {'v2t R@1':>13}  "
          f"{'t2v last':>8}  {'rare':>6}  {'freq':>6}  {'w wrong/right':>13}")
    for e in summary["table"]:
        def cell(k):
            return f"{e[k]:6.2f} ± {e[k + '_sd']:4.2f}" if k in e else f"{'-':>13}"
        ratio = f"{e['weight_ratio']:.2f}" if "weight_ratio" in e else "-"
        if "generated_weight" in e:
            ratio += f"  gen weight {e['generated_weight']:.2f}, evidence {100 * e.get('evidence_share', 0):.0f} % of wall"
        print(f"{e['data']:<10}{e['setting']:<22}{e['method']:<10}{e['margin']:5.2f}{e['seeds']:4d}  {cell('t2v_R@1')}  "
              f"{cell('v2t_R@1')}  {e.get('last_t2v_R@1', math.nan):8.2f}  {e.get('rare_t2v_R@1', math.nan):6.2f}  "
              f"{e.get('frequent_t2v_R@1', math.nan):6.2f}  {ratio:>13}")
    print()
    for c in summary["comparisons"]:
        print(f"{c['data']:<10}{c['comparison']:<68}{c['metric']:<14}{c['mean']:+6.2f}  [{c['low']:+6.2f}, {c['high']:+6.2f}]  n={c['n']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dirs", default="benchmarks/out/emoji", help="comma list of emoji_workdir.py outputs")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--methods", default="infonce,mama")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--margins", default="", help="comma list: margins for the margin and mama methods")
    parser.add_argument("--meta-file", action="store_true", help="weighted runs use the data set's clean meta_set.csv")
    parser.add_argument("--skip", default="gen-right:mama,named-right:mama,half50-gen-right:mama,half50-named-right:mama",
                        help="setting:method pairs not to run")
    # Library options a run may override; unset ones keep TrainConfig's defaults.
    for flag, kind in (("epochs", int), ("batch-size", int), ("lr", float), ("weight-decay", float),
                       ("head-hidden", int), ("virtual-lr", float), ("meta-lr", float), ("meta-every", int),
                       ("meta-params", str), ("meta-fraction", float), ("meta-select", str), ("text-model", str),
                       ("backbone", str), ("backbone-model", str), ("device", str)):
        parser.add_argument(f"--{flag}", type=kind, default=None)
    parser.add_argument("--meta-holdout", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--tag", default="", help="suffix of run names (separates explorations)")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/train_quality.json"))
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="an earlier output whose runs join this one's summary (e.g. margin runs next to the main ones)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    names = ("epochs", "batch_size", "lr", "weight_decay", "head_hidden", "virtual_lr", "meta_lr", "meta_every",
             "meta_params", "meta_fraction", "meta_select", "text_model", "backbone", "backbone_model", "device",
             "meta_holdout")
    args.overrides = {n: getattr(args, n) for n in names}
    data_dirs = [Path(d) for d in args.data_dirs.split(",") if d]
    args.groups = {}
    for d in data_dirs:
        args.groups[d.name] = concept_groups(pd.read_csv(d / "captions_clean.csv", dtype={"video_id": str}))
    margins = [float(m) for m in args.margins.split(",") if m]
    if "margin" in args.methods.split(",") and not margins:
        parser.error("the margin method needs --margins")
    skip = {tuple(s.split(":")) for s in args.skip.split(",") if s}
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for data_dir in data_dirs:
            for setting in args.settings.split(","):
                for method in args.methods.split(","):
                    if (setting, method) in skip:
                        continue
                    mus = margins if (METHODS[method][1] is None or (margins and method == "mama")) else [None]
                    for mu in mus:
                        row = run_one(args, data_dir, setting, method, seed, mu)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    for earlier in args.merge:
        rows = json.loads(earlier.read_text())["runs"] + rows
    summary = summarise(rows)
    print()
    print_summary(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "groups"}
    args.out.write_text(json.dumps({"settings": settings, "runs": rows, **summary}, indent=2, default=str))


if __name__ == "__main__":
    main()
