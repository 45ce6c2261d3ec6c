"""Build a real captioned image set for ``benchmarks/train_quality.py``.

Source: the npm package ``emoji-datasource-twitter`` (Twemoji artwork, CC-BY 4.0, and
``emoji.json`` with the Unicode names, categories and subcategories)::

    npm install --prefix /tmp/emoji emoji-datasource-twitter@16.0.0
    python benchmarks/data/emoji_workdir.py --package /tmp/emoji/node_modules/emoji-datasource-twitter

Every emoji image (64 px PNG on white) is a one-frame video: its EfficientNet-Lite0
embedding (the ``cnn`` embedder) is the single keyframe embedding of a
``keyframes.parquet`` row. Captions are the lower-cased Unicode names (short, terse,
sometimes ambiguous: "keycap 0", "person in lotus position"); the concept is the
subcategory (99 of them, long-tailed: 259 country flags, one amphibian).

Writes into --out:
  work/keyframes.parquet     one row per image
  captions_clean.csv         video_id, caption, split, concept, category, noisy
  captions_noisy30.csv       the same with --noise of the training captions (outside
                             the meta set) shuffled among themselves
  meta_set.csv               --meta-fraction of the training pairs, evenly across
                             subcategories, always clean (the "small unbiased meta-data")
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd


def split_of(video_id: str) -> str:
    u = int(hashlib.sha256(video_id.encode()).hexdigest()[:16], 16) / float(1 << 64)
    return "test" if u < 0.1 else "val" if u < 0.2 else "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", default="/tmp/emoji/node_modules/emoji-datasource-twitter")
    parser.add_argument("--out", default="benchmarks/out/emoji")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--meta-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from PIL import Image

    from mama_augment.embed import get_embedder
    from mama_augment.embed.base import EmbedderOptions
    from mama_augment.manifest import KEYFRAMES, PartWriter, compact, remove_manifest

    package = Path(args.package)
    entries = [e for e in json.loads((package / "emoji.json").read_text()) if e.get("has_img_twitter")]
    out = Path(args.out)
    workdir = out / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    embedder = get_embedder("cnn", EmbedderOptions(device="cpu", batch_size=64))

    images, rows, captions = [], [], []
    for entry in entries:
        path = package / "img" / "twitter" / "64" / entry["image"]
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            images.append(np.asarray(Image.alpha_composite(white, rgba).convert("RGB")))
        video_id = entry["unified"].lower()
        rows.append({"video_id": video_id, "path": str(path), "status": "ok", "media_type": "image",
                     "num_sampled": 1, "keyframe_indices": [0], "keyframe_times_s": [0.0],
                     "width": 64, "height": 64, "embedder": embedder.name})
        captions.append({"video_id": video_id, "caption": entry["name"].lower(), "split": split_of(video_id),
                         "concept": entry["subcategory"], "category": entry["category"]})
    embeddings = np.concatenate([embedder.embed(images[i : i + 64]) for i in range(0, len(images), 64)])
    for row, emb in zip(rows, embeddings):
        row["keyframe_embeddings"] = [emb.astype(np.float32).tolist()]
        row["embedding_dim"] = int(emb.shape[0])
    remove_manifest(workdir, KEYFRAMES)
    PartWriter(workdir, KEYFRAMES).write(rows)
    compact(workdir, KEYFRAMES)

    frame = pd.DataFrame(captions)
    frame["noisy"] = False
    rng = np.random.default_rng(args.seed)
    # Meta set: round-robin over subcategories (sorted), at most half of each.
    train = frame[frame.split == "train"]
    count = int(round(args.meta_fraction * len(train)))
    queues = {c: list(rng.permutation(g.index.to_numpy()))[: len(g) // 2] for c, g in sorted(train.groupby("concept"))}
    meta_index: list[int] = []
    while len(meta_index) < count and any(queues.values()):
        for c in sorted(queues):
            if queues[c] and len(meta_index) < count:
                meta_index.append(int(queues[c].pop()))
    frame.loc[meta_index].to_csv(out / "meta_set.csv", index=False)
    frame.to_csv(out / "captions_clean.csv", index=False)

    candidates = train.index.difference(meta_index).to_numpy()
    pick = rng.choice(candidates, size=int(round(args.noise * len(candidates))), replace=False)
    noisy = frame.copy()
    noisy.loc[pick, "caption"] = rng.permutation(noisy.loc[pick, "caption"].to_numpy())
    noisy["noisy"] = noisy["caption"] != frame["caption"]
    noisy.to_csv(out / f"captions_noisy{int(args.noise * 100)}.csv", index=False)
    print(json.dumps({
        "images": len(frame), "train": int((frame.split == "train").sum()), "val": int((frame.split == "val").sum()),
        "test": int((frame.split == "test").sum()), "meta_set": len(meta_index), "concepts": frame.concept.nunique(),
        "shuffled_train_captions": int(noisy.noisy.sum()), "embedding_dim": int(embeddings.shape[1]),
    }))


if __name__ == "__main__":
    main()
