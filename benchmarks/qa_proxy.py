"""Does a QA model on top of a MAMA retrieval run answer as well as one on top of
InfoNCE? Video QA measured on a proxy built from the real captioned image sets of
``benchmarks/train_quality.py`` (see benchmarks/data/emoji_workdir.py: Twemoji and
OpenMoji, each image a one-frame video).

Questions come from each data set's annotations (``captions_clean.csv``), one of each
kind per image, in the ``qa-jsonl`` layout (``train.jsonl`` / ``val.jsonl`` /
``test.jsonl``, the split of the image as in the retrieval runs, so test images are
never trained on):

* ``category`` (open-ended): "what category is this?", the answer the image's concept
  (Twemoji's subcategory, OpenMoji's subgroup);
* ``yes/no`` (open-ended): "is it about WORD?", WORD a word of the image's name (yes)
  or of another image's name that its own name lacks (no), half each;
* ``name`` (multiple-choice): "which of these names it?", five candidates, the image's
  name and four names of other images, in random order. This is the retrieval task the
  run trained on (its candidates are captions): nothing is left for a QA head to learn;
* ``category-mc`` (multiple-choice): "which category is it?", the image's concept and
  four other concepts;
* ``word-mc`` (multiple-choice): "which of these words is in its name?", one word of
  its name and four words its name lacks (images whose name has no word of three
  letters or more get none).

The last two need the question: their candidates are answers, not captions, as in
NExT-QA or TGIF-QA's Action / Transition. They draw from their own random stream, so
the first three kinds' questions are those of the earlier files (``qa-wrong30``); the
files now go to ``qa-wrong30-mc3``.

A share (``--wrong``, 30 %) of the training questions gets a wrong answer (another
concept, the other yes/no, another candidate); val and test answers are all right.

For each seed, a retrieval run with ``--loss mama`` and one with ``--loss infonce``
(library defaults otherwise, on the noisy30 captions, as the training benchmark), then
``qa`` from each (library defaults, seed = the seed), which scores zero-shot too; the
summary counts, per multiple-choice kind, the runs whose kept head is trained (the head
is kept per question kind) and at which val epochs.
Reported: test (and val) accuracy, open-ended (category and yes/no together) and
multiple-choice (all kinds together and each kind), of the heads and of zero-shot, next
to the majority-answer baseline (open-ended: per kind, the most frequent training
answer; multiple-choice: the candidate most often right in training, so chance for
names, which do not repeat); MAMA
minus InfoNCE paired by seed with 95 % t intervals; and seconds per epoch of QA
training (the run's seconds over its epochs, the embedding included: an upper bound)
against retrieval training's (the run's seconds over its epochs).

    PYTHONPATH=. python benchmarks/qa_proxy.py --data-dirs benchmarks/out/twemoji,benchmarks/out/openmoji --seeds 0,1,2,3,4,5,6,7,8,9
    PYTHONPATH=. python benchmarks/qa_proxy.py --summarise benchmarks/out/qa_proxy.json   # a partial run's summary

Runs already in a work folder are reused, and so are the rows already in ``--out``
(``--fresh`` retrains and reruns them).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.train_quality import paired  # noqa: E402  (one paired t interval for every benchmark)

QUESTION_SEED = 1234  # the question files do not depend on the run seed
CANDIDATES = 5
LOSSES = ("mama", "infonce")
OPEN_KINDS = ("category", "yes/no")
# name: the retrieval task itself (candidates are names, as the captions the run trained
# on); category-mc and word-mc need the question: their candidates are no captions.
CHOICE_KINDS = ("name", "category-mc", "word-mc")


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2]


def build_questions(data_dir: Path, wrong: float) -> Path:
    """The question files of ``data_dir`` (written once; see the module doc)."""
    out = data_dir / f"qa-wrong{round(wrong * 100)}-mc3"
    if (out / "test.jsonl").exists():
        return out
    rng = np.random.default_rng(QUESTION_SEED)
    # The kinds added later draw from their own stream: the first kinds' questions are
    # those of the earlier files, so earlier results stay comparable.
    extra = np.random.default_rng(QUESTION_SEED + 1)
    captions = pd.read_csv(data_dir / "captions_clean.csv", dtype={"video_id": str})
    images = captions.drop_duplicates("video_id").reset_index(drop=True)
    names = images.caption.tolist()
    concepts = sorted(images.concept.unique())
    vocabulary = sorted({w for n in names for w in _words(n)})
    rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for index, image in images.iterrows():
        split, own = image.split, set(_words(image.caption))
        noisy = split == "train"

        def choice(draw, right_text, wrong_texts, kind, question, suffix):
            candidates = [right_text, *sorted(wrong_texts)]
            draw.shuffle(candidates)
            right = candidates.index(right_text)
            if noisy and draw.random() < wrong:
                right = (right + 1 + int(draw.integers(CANDIDATES - 1))) % CANDIDATES
            rows[split].append({"question_id": f"{image.video_id}_{suffix}", "video_id": image.video_id,
                                "question": question, "candidates": candidates, "answer": right,
                                "answer_type": kind})

        # category
        answer = image.concept
        if noisy and rng.random() < wrong:
            answer = concepts[(concepts.index(answer) + 1 + rng.integers(len(concepts) - 1)) % len(concepts)]
        rows[split].append({"question_id": f"{image.video_id}_c", "video_id": image.video_id,
                            "question": "what category is this?", "answer": answer, "answer_type": "category"})
        # yes/no on a word of its name, or of another name
        if own and rng.random() < 0.5:
            word, answer = sorted(own)[rng.integers(len(own))], "yes"
        else:
            word = vocabulary[rng.integers(len(vocabulary))]
            while word in own:
                word = vocabulary[rng.integers(len(vocabulary))]
            answer = "no"
        if noisy and rng.random() < wrong:
            answer = "no" if answer == "yes" else "yes"
        rows[split].append({"question_id": f"{image.video_id}_y", "video_id": image.video_id,
                            "question": f"is it about {word}?", "answer": answer, "answer_type": "yes/no"})
        # multiple choice: which name (the retrieval task itself), which category, which word
        others = set()
        while len(others) < CANDIDATES - 1:
            other = int(rng.integers(len(images)))
            if other != index and names[other] != image.caption:
                others.add(names[other])
        choice(rng, image.caption, others, "name", "which of these names it?", "n")
        other_concepts = [c for c in concepts if c != image.concept]
        picked = extra.choice(len(other_concepts), CANDIDATES - 1, replace=False)
        choice(extra, image.concept, {other_concepts[k] for k in picked}, "category-mc", "which category is it?", "m")
        if own:  # a name of short words only has no word to ask about
            lacking = set()
            while len(lacking) < CANDIDATES - 1:
                word = vocabulary[extra.integers(len(vocabulary))]
                if word not in own:
                    lacking.add(word)
            choice(extra, sorted(own)[extra.integers(len(own))], lacking, "word-mc", "which of these words is in its name?",
                   "w")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, items in rows.items():
        (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    tmp.rename(out)
    return out


def majority_baseline(questions: Path) -> dict:
    """Test accuracy of answering with the most frequent training answer: open-ended,
    that answer of the question's kind; multiple-choice, the candidate that was the
    right training answer of its kind most often (ties share the credit). Names: chance,
    1/5; a test image's name is never a training answer while its four distractors may
    be, so the rule would fall below chance there."""
    def read(split):
        return [json.loads(line) for line in (questions / f"{split}.jsonl").read_text().splitlines()]

    train, test = read("train"), read("test")
    majority = {}
    for kind in OPEN_KINDS:
        majority[kind] = Counter(r["answer"] for r in train if r["answer_type"] == kind).most_common(1)[0][0]
    out = {}
    for kind, answer in majority.items():
        rows = [r for r in test if r["answer_type"] == kind]
        out[kind] = 100.0 * sum(r["answer"] == answer for r in rows) / len(rows)
    open_rows = [r for r in test if r["answer_type"] in majority]
    out["open"] = 100.0 * sum(r["answer"] == majority[r["answer_type"]] for r in open_rows) / len(open_rows)
    credits = []
    for kind in CHOICE_KINDS:
        if kind == "name":
            kind_credits = [1.0 / len(r["candidates"]) for r in test if r["answer_type"] == kind]
            out[kind] = 100.0 * sum(kind_credits) / len(kind_credits)
            credits += kind_credits
            continue
        counts = Counter(r["candidates"][r["answer"]] for r in train if r["answer_type"] == kind)
        kind_credits = []
        for r in (r for r in test if r["answer_type"] == kind):
            votes = [counts[c] for c in r["candidates"]]
            top = [k for k, v in enumerate(votes) if v == max(votes)]
            kind_credits.append(1.0 / len(top) if r["answer"] in top else 0.0)
        out[kind] = 100.0 * sum(kind_credits) / len(kind_credits)
        credits += kind_credits
    out["choice"] = 100.0 * sum(credits) / len(credits)
    return out


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half width of its 95 % t interval."""
    from scipy import stats

    n = len(values)
    mean = statistics.mean(values)
    half = float(stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)) if n > 1 else math.nan
    return mean, half


def _accuracies(score: dict) -> dict:
    by_type = score["by_type"]

    def pooled(kinds):
        groups = [by_type[k] for k in kinds if k in by_type]
        return sum(g["accuracy"] * g["questions"] for g in groups) / sum(g["questions"] for g in groups)

    out = {"all": score["accuracy"], "open": pooled(OPEN_KINDS), "choice": pooled(CHOICE_KINDS)}
    out.update({kind: by_type[kind]["accuracy"] for kind in (*OPEN_KINDS, *CHOICE_KINDS)})
    return out


def run_one(args, data_dir: Path, questions: Path, loss: str, seed: int) -> dict:
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.loop import run_train
    from mama_augment.train.qa import QASettings, run_qa

    workdir = data_dir / "work"
    name = f"qa-base-noisy30-{loss}-s{seed}{args.tag}"
    run_dir = workdir / "runs" / name
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    if not (run_dir / "model.safetensors").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.time()
        config = TrainConfig(captions=str(data_dir / "captions_noisy30.csv"), loss=loss, seed=seed, name=name,
                             progress=False)
        run_train(config, workdir)
        (run_dir / "bench_seconds.json").write_text(json.dumps({"seconds": time.time() - started}))
    train_seconds = json.loads((run_dir / "bench_seconds.json").read_text())["seconds"]
    train_epochs = json.loads((run_dir / "config.json").read_text())["epochs"]
    files = [str(questions / f"{s}.jsonl") for s in ("train", "val", "test")]
    row = {"data": data_dir.name, "loss": loss, "seed": seed,
           "train_s_per_epoch": train_seconds / train_epochs}
    # One run gives both: a trained run scores zero-shot too, on the same embeddings
    # (a separate zero-shot run would embed everything again, for the same numbers).
    settings = QASettings(base_run=str(run_dir), questions=files, seed=seed)
    started = time.time()
    result = run_qa(settings, name=f"{name}-qa", device="cpu")
    seconds = time.time() - started
    test, val = result.eval["test"], result.eval["val"]
    for kind in ("trained", "zero_shot"):
        row[kind] = _accuracies(test[kind])
        row[f"val_{kind}"] = _accuracies(val[kind])
    row["heads_kept"] = test["heads_kept"]
    row["choice_epochs"] = test.get("choice_epochs", {})
    row["answer_coverage"] = test["answer_coverage"]
    row["qa_s_per_epoch"] = seconds / settings.epochs  # the embedding included: an upper bound
    return row


def summarise(rows: list[dict], baselines: dict) -> list[str]:
    metrics = ("open", *OPEN_KINDS, "choice", *CHOICE_KINDS)
    lines = []
    for data in sorted({r["data"] for r in rows}):
        group = [r for r in rows if r["data"] == data]
        lines.append(f"== {data}: majority answer " + "  ".join(f"{m} {baselines[data][m]:.2f}" for m in metrics))
        for loss in LOSSES:
            runs = [r for r in group if r["loss"] == loss]
            if not runs:
                continue
            for kind in ("trained", "zero_shot", "val_trained", "val_zero_shot"):
                cells = []
                for metric in metrics:
                    mean, half = interval([r[kind][metric] for r in runs if kind in r])
                    cells.append(f"{metric} {mean:6.2f} ± {half:4.2f}")
                lines.append(f"{loss:<8}{kind:<14} n={len(runs)}  " + "  ".join(cells))
            if all("choice_epochs" in r for r in runs):  # the head kept per question kind
                for metric in CHOICE_KINDS:
                    kept = Counter("untrained" if r["choice_epochs"].get(metric, 0) == 0 else "trained" for r in runs)
                    epochs = sorted(r["choice_epochs"][metric] for r in runs if r["choice_epochs"].get(metric))
                    lines.append(f"{loss:<8}multiple-choice head kept, {metric}: {dict(kept)} epochs {epochs}")
            else:  # rows from before: one head for every kind
                kept = Counter("untrained" if "multiple-choice epoch 0 " in r["heads_kept"] else "trained" for r in runs)
                lines.append(f"{loss:<8}multiple-choice head kept: {dict(kept)}")
            lines.append(f"{loss:<8}seconds per epoch: train {statistics.mean(r['train_s_per_epoch'] for r in runs):.3f}, "
                         f"qa {statistics.mean(r['qa_s_per_epoch'] for r in runs):.3f}")
        by_seed = {loss: {r["seed"]: r for r in group if r["loss"] == loss} for loss in LOSSES}
        seeds = sorted(set(by_seed["mama"]) & set(by_seed["infonce"]))
        if not seeds:
            continue
        for kind in ("trained", "zero_shot"):
            for metric in ("open", "choice", *CHOICE_KINDS):
                d = paired([by_seed["mama"][s][kind][metric] for s in seeds],
                           [by_seed["infonce"][s][kind][metric] for s in seeds])
                lines.append(f"mama - infonce {kind:<10}{metric:<12} {d['mean']:+6.2f} [{d['low']:+6.2f}, {d['high']:+6.2f}] n={d['n']}")
        for loss in LOSSES:
            runs = [by_seed[loss][s] for s in seeds]
            for metric in ("open", "choice", *CHOICE_KINDS):
                d = paired([r["trained"][metric] for r in runs], [r["zero_shot"][metric] for r in runs])
                lines.append(f"{loss} trained - zero-shot {metric:<12} {d['mean']:+6.2f} [{d['low']:+6.2f}, {d['high']:+6.2f}]")
                base = baselines[data][metric]
                mean, half = interval([r["trained"][metric] - base for r in runs])
                lines.append(f"{loss} trained - majority {metric:<12} {mean:+6.2f} ± {half:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dirs", default="benchmarks/out/twemoji,benchmarks/out/openmoji")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--wrong", type=float, default=0.3, help="share of training answers made wrong")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--tag", default="")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/qa_proxy.json"))
    parser.add_argument("--summarise", type=Path, default=None,
                        help="print the summary of an earlier output (complete or not) and run nothing")
    args = parser.parse_args()
    if args.summarise:
        earlier = json.loads(args.summarise.read_text())
        print("\n".join(summarise(earlier["runs"], earlier["baselines"])))
        return
    import torch

    torch.set_num_threads(args.threads)
    data_dirs = [Path(d) for d in args.data_dirs.split(",") if d]
    questions = {d.name: build_questions(d, args.wrong) for d in data_dirs}
    baselines = {d.name: majority_baseline(questions[d.name]) for d in data_dirs}
    # The rows of an interrupted run with the same --out are kept (--fresh: none).
    rows = [] if args.fresh or not args.out.exists() else json.loads(args.out.read_text())["runs"]
    done = {(r["data"], r["loss"], r["seed"]) for r in rows}
    for seed in (int(s) for s in args.seeds.split(",")):
        for data_dir in data_dirs:
            for loss in LOSSES:
                if (data_dir.name, loss, seed) in done:
                    continue
                row = run_one(args, data_dir, questions[data_dir.name], loss, seed)
                rows.append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"runs": rows, "baselines": baselines}, indent=2))
    lines = summarise(rows, baselines)
    print("\n".join(lines))
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "runs": rows,
                                    "baselines": baselines, "summary": lines}, indent=2))


if __name__ == "__main__":
    main()
