"""Does ``mama-augment filter`` find planted caption problems, and how fast is the near-duplicate search?

Planted problems (default): ``--videos`` realistic captions (benchmarks/data/video_captions.py),
``--share`` of them each made empty, generic, a prompt echo, an exact copy or a
near copy of another video's caption; ``run_filter`` with the library defaults on a
work folder holding them; precision and recall of each flag against its planted kind
(``too_short`` for empty; ``near_duplicate`` for copies and the captions they copy),
and of "any flag" against all planted captions. ``--thresholds`` also sweeps the
near-duplicate threshold (the embeddings are cached after the first run).

    python benchmarks/filter.py --videos 3000 --thresholds 0.88,0.9,0.92,0.94,0.95,0.96

Nearest-neighbour speed (``--nn``): the near-duplicate step (``find_duplicates``, index
build + search + groups) on ``--nn-size`` caption embeddings given in advance, for each
faiss index, with recall against exact search of the pairs above the threshold,
measured on ``--nn-queries`` queries. Two sets of embeddings: the ``hashing`` text
encoder (512-d) of realistic captions with planted copies, and unit vectors around
random centres (384-d, the size of all-MiniLM-L6-v2).

    python benchmarks/filter.py --nn --nn-size 100000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))


def build_workdir(workdir: Path, captions: list[str], prompt) -> None:
    from mama_augment.manifest import CAPTIONS, KEYFRAMES, PartWriter, compact, remove_manifest, utc_now

    ids = [f"video{i:06d}" for i in range(len(captions))]
    remove_manifest(workdir, KEYFRAMES)
    remove_manifest(workdir, CAPTIONS)
    with PartWriter(workdir, KEYFRAMES) as writer:
        writer.write([{"video_id": v, "status": "ok", "grid_path": f"grids/{v}.jpg", "grid_rows": 3, "grid_cols": 4,
                       "keyframe_paths": [f"frames/{v}/{k:02d}.jpg" for k in range(12)]} for v in ids])
    compact(workdir, KEYFRAMES)
    sampling = json.dumps({"temperature": 0.2, "max_tokens": 96, "base_seed": 0})
    with PartWriter(workdir, CAPTIONS) as writer:
        writer.write([{"video_id": v, "caption_index": 0, "caption": text, "raw_output": text, "status": "ok",
                       "model": "llava-hf/llava-1.5-7b-hf", "prompt_name": prompt.name, "prompt_sha256": prompt.sha256,
                       "sampling": sampling, "seed": i, "completion_tokens": len(text.split()) + 2,
                       "created_at": utc_now()} for i, (v, text) in enumerate(zip(ids, captions))])
    compact(workdir, CAPTIONS)


def precision_recall(predicted: set, truth: set) -> dict:
    tp = len(predicted & truth)
    return {"precision": tp / len(predicted) if predicted else 1.0, "recall": tp / len(truth) if truth else 1.0,
            "flagged": len(predicted), "planted": len(truth), "true_positives": tp}


def planted(args) -> None:
    import pandas as pd

    from mama_augment.caption.prompts import load_prompt
    from mama_augment.quality.config import FilterConfig
    from mama_augment.quality.stage import run_filter
    from video_captions import plant

    prompt = load_prompt("default")
    captions, truth = plant(args.videos, prompt.render(3, 4, 12), share=args.share, seed=args.seed)
    workdir = Path(args.out) / f"planted-{args.videos}-{args.seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    build_workdir(workdir, captions, prompt)
    planted_any = set().union(*truth.values())
    kinds = {"too_short": "empty", "generic": "generic", "prompt_echo": "echo", "near_duplicate": "duplicate"}
    thresholds = [float(t) for t in args.thresholds.split(",")] if args.thresholds else [FilterConfig().duplicate_threshold]
    results = []
    for threshold in thresholds:
        config = FilterConfig(text_model=args.text_model, duplicate_threshold=threshold)
        started = time.perf_counter()
        report = run_filter(config, workdir)
        seconds = time.perf_counter() - started
        flags = pd.read_parquet(workdir / "caption_flags.parquet")
        position = {f"video{i:06d}": i for i in range(len(captions))}
        by_flag = {name: {position[v] for v, f in zip(flags["video_id"], flags["flags"]) if name in f} for name in kinds}
        any_flag = {position[v] for v, f in zip(flags["video_id"], flags["flags"]) if len(f)}
        row = {"threshold": threshold, "seconds": round(seconds, 1), "timings": report.extra.get("timings"),
               **{name: precision_recall(by_flag[name], truth[kind]) for name, kind in kinds.items()},
               "any": precision_recall(any_flag, planted_any),
               "false_positives": {name: [captions[i] for i in sorted(by_flag[name] - truth[kinds[name]])[:5]]
                                   for name in kinds},
               "missed": {name: [captions[i] for i in sorted(truth[kinds[name]] - by_flag[name])[:5]] for name in kinds}}
        # The stricter reading: only the copies are problems, the captions they copy are clean.
        row["near_duplicate_copies_only"] = precision_recall(by_flag["near_duplicate"], truth["copies"])
        results.append(row)
        print(f"threshold {threshold}: " + "  ".join(
            f"{name} P={row[name]['precision']:.3f} R={row[name]['recall']:.3f}" for name in [*kinds, "any"]
        ) + f"  ({seconds:.1f} s)", flush=True)
    # Held-out filler, checked with the generic model fitted on this dataset's descriptions.
    from mama_augment.quality.generic import GenericModel
    from mama_augment.quality.text import tokens
    from video_captions import HELD_OUT_GENERIC, HELD_OUT_GENERIC_2

    model = GenericModel().fit([tokens(c) for i, c in enumerate(captions) if i not in planted_any])
    held_out_result = {}
    for name, sentences in (("set1_used_once_for_tuning", HELD_OUT_GENERIC), ("set2_never_tuned_on", HELD_OUT_GENERIC_2)):
        flagged = [c for c in sentences if model.check(tokens(c)).generic]
        held_out_result[name] = {"recall": len(flagged) / len(sentences), "flagged": len(flagged), "of": len(sentences),
                                 "missed": [c for c in sentences if c not in flagged]}
        print(f"held-out generic filler {name}: {len(flagged)} of {len(sentences)} flagged")
    realistic = [c for i, c in enumerate(captions) if i not in planted_any]
    false_generic = [c for c in realistic if model.check(tokens(c)).generic]
    held_out_result["realistic_flagged_generic"] = {"count": len(false_generic), "of": len(realistic),
                                                    "examples": false_generic[:5]}
    out = Path(args.out) / f"filter-planted-{args.videos}.json"
    out.write_text(json.dumps({"videos": args.videos, "share": args.share, "text_model": args.text_model,
                               "results": results, "held_out_generic": held_out_result}, indent=2))
    print(f"written {out}")


def nn_speed(args) -> None:
    import os

    from mama_augment.quality.duplicates import find_duplicates, nearest_neighbours
    from mama_augment.train.text import HashingTextEncoder
    from video_captions import near_copy, realistic_caption

    rng = random.Random(args.seed)
    n = args.nn_size
    texts = [realistic_caption(rng) for _ in range(n)]
    for i in rng.sample(range(n), n // 50):  # 2 % near copies of other captions
        texts[i] = near_copy(rng, texts[rng.randrange(n)])
    videos = [f"v{i}" for i in range(n)]
    started = time.perf_counter()
    hashed = HashingTextEncoder().encode(texts).astype(np.float32)
    encode_s = time.perf_counter() - started
    gen = np.random.default_rng(args.seed)
    centres = gen.normal(size=(2000, 384)).astype(np.float32)
    dense = centres[gen.integers(0, 2000, n)] + 0.35 * gen.normal(size=(n, 384)).astype(np.float32)
    copies = gen.choice(n, n // 50, replace=False)
    dense[copies] = dense[gen.integers(0, n, len(copies))] + 0.03 * gen.normal(size=(len(copies), 384))
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    rows = []
    for label, vectors, threshold in (("hashing-512 captions", hashed, 0.95), ("dense-384 clusters", dense, 0.95)):
        vectors = np.ascontiguousarray(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
        queries = np.random.default_rng(1).choice(len(vectors), min(args.nn_queries, len(vectors)), replace=False)
        # Exact neighbours of the sample of queries (brute force over all vectors), for recall.
        import faiss

        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        started = time.perf_counter()
        exact_sims, exact_ids = flat.search(vectors[queries], 11)
        exact_sample_s = time.perf_counter() - started
        truth_pairs = {(int(q), int(j)) for q, s_row, j_row in zip(queries, exact_sims, exact_ids)
                       for s, j in zip(s_row, j_row) if s >= threshold and j != q}
        for method in args.methods.split(","):
            if method == "exact" and n > args.exact_max:
                rows.append({"set": label, "method": method, "seconds": None,
                             "note": f"brute force on the {len(queries)} sampled queries took {exact_sample_s:.1f} s: "
                                     f"about {exact_sample_s * n / len(queries):.0f} s for all {n}"})
                print(rows[-1], flush=True)
                continue
            started = time.perf_counter()
            sims, ids = nearest_neighbours(vectors, 11, method)
            search_s = time.perf_counter() - started
            found = {(int(q), int(j)) for q in queries for s, j in zip(sims[q], ids[q]) if s >= threshold and j != q}
            recall = len(found & truth_pairs) / len(truth_pairs) if truth_pairs else 1.0
            names = texts if label.startswith("hashing") else [f"t{i}" for i in range(n)]
            lookup = dict(zip(names, vectors))  # embeddings given: the caller's cache

            started = time.perf_counter()
            result = find_duplicates(names, videos, lambda distinct: np.stack([lookup[t] for t in distinct]),
                                     threshold=threshold, method=method)
            total_s = time.perf_counter() - started
            rows.append({"set": label, "method": method, "search_s": round(search_s, 1),
                         "find_duplicates_s": round(total_s, 1), "pair_recall": round(recall, 4),
                         "pairs_in_sample": len(truth_pairs), "near_duplicates": int(result.near_duplicate.sum())})
            print(rows[-1], flush=True)
    out = Path(args.out) / f"filter-nn-{n}.json"
    out.write_text(json.dumps({"size": n, "threads": os.cpu_count(), "hashing_encode_s": round(encode_s, 1),
                               "rows": rows}, indent=2))
    print(f"written {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=3000)
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2")
    parser.add_argument("--thresholds", default="")
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--nn", action="store_true")
    parser.add_argument("--nn-size", type=int, default=100_000)
    parser.add_argument("--nn-queries", type=int, default=2000)
    parser.add_argument("--methods", default="exact,ivf,hnsw")
    parser.add_argument("--exact-max", type=int, default=20_000, help="Above this size exact search is only sampled.")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    nn_speed(args) if args.nn else planted(args)


if __name__ == "__main__":
    main()
