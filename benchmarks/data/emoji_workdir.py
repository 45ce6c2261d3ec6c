"""Build real captioned image sets for ``benchmarks/train_quality.py`` and ``audit.py``.

Two sources with different artwork, different human annotations and different
keyword lists, so a conclusion drawn on one can be checked on the other:

* ``twemoji``: the npm package ``emoji-datasource-twitter`` (Twemoji artwork, CC-BY
  4.0; ``emoji.json`` with the Unicode names and subcategories). Captions are the
  lower-cased Unicode names; concepts are the 99 subcategories (long-tailed: 259
  country flags, one amphibian). Keywords for the generated captions come from the
  npm package ``emojilib`` (community keyword lists, MIT)::

      npm install --prefix /tmp/emoji emoji-datasource-twitter@16.0.0 emojilib@4.0.3 openmoji@17.0.0
      python benchmarks/data/emoji_workdir.py --source twemoji \\
          --package /tmp/emoji/node_modules/emoji-datasource-twitter \\
          --keywords /tmp/emoji/node_modules/emojilib/dist/emoji-en-US.json \\
          --other-names /tmp/emoji/node_modules/openmoji/data/openmoji.json

* ``openmoji``: the npm package ``openmoji`` (OpenMoji artwork, CC-BY-SA 4.0, its own
  ``data/openmoji.json``). Captions are OpenMoji's annotations (CLDR short names plus
  OpenMoji's own for its 400 extra pictograms); concepts are its 118 subgroups;
  keywords are its CLDR ``tags`` followed by its ``openmoji_tags``. The package ships
  SVG only: PNGs are rendered with ``cairosvg`` (``pip install cairosvg``) or taken
  from ``--png-dir`` (one ``HEXCODE.png`` per pictogram, any renderer)::

      python benchmarks/data/emoji_workdir.py --source openmoji \\
          --package /tmp/emoji/node_modules/openmoji --out benchmarks/out/openmoji \\
          --other-names /tmp/emoji/node_modules/emoji-datasource-twitter/emoji.json

Skin-tone variants and OpenMoji's "component" swatches are left out (near copies).
Every image (64 px on white) is a one-frame video: its EfficientNet-Lite0 embedding
(the ``cnn`` embedder) is the single keyframe embedding of a ``keyframes.parquet`` row,
and the picture itself, ``work/frames/VIDEO_ID.png``, its keyframe file (what the
``clip`` backbone reads).

Writes into --out:
  work/keyframes.parquet     one row per image (no generated captions: originals only)
  captions_clean.csv         video_id, caption, split, concept, category, noisy
  captions_noisy30.csv       the same with --noise of the training captions (outside
                             the meta set) shuffled among themselves
  meta_set.csv               --meta-fraction of the training pairs, evenly across
                             concepts, always clean (the "small unbiased meta-data")
  captions_half50.csv        captions_clean.csv without the captions of half of the
                             training images outside the meta set: with a gen-* work
                             folder, half the training images have only generated
                             captions, so right ones must help
  generated.csv              the generated caption of every image that has keywords,
                             and what each variant gave it (video_id, split, right,
                             wrong30, wrong)
  work/frames/               the pictures as PNG
  gen-right/                 a work folder whose captions.parquet holds every image's
                             right generated caption ("a keyword captioner that is
                             never wrong")
  gen-wrong30/               the same with --noise of the training images' generated
                             captions given to another training image (``caption_index``
                             0; ``generated.csv`` says which are wrong)
  generated_named.csv, named-right/, named-wrong30/   the same for the named captioner

A generated caption is "KW1, KW2, ..., KWn": the first --keywords-per-caption keywords
of the image that are not words of its own name, so it adds words the original caption
lacks rather than repeating it (a weak captioner). Images without such keywords get no
generated caption (a captioner does fail on some inputs). With --other-names, a second
captioner names the picture as the other source does (Twemoji: OpenMoji's CLDR
annotation; OpenMoji: the Unicode name; the same words as the original for about 60 %
of the pictures) and adds three such keywords: "NAME, KW1, KW2, KW3". It writes
``generated_named.csv``, ``named-right/`` and ``named-wrong30/`` like the above.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd


def split_of(video_id: str) -> str:
    u = int(hashlib.sha256(video_id.encode()).hexdigest()[:16], 16) / float(1 << 64)
    return "test" if u < 0.1 else "val" if u < 0.2 else "train"


def _chars(unified: str) -> str:
    return "".join(chr(int(p, 16)) for p in unified.split("-"))


def twemoji_entries(package: Path, keywords_file: Path | None) -> list[dict]:
    keywords = json.loads(keywords_file.read_text()) if keywords_file else {}
    entries = []
    for e in json.loads((package / "emoji.json").read_text()):
        if not e.get("has_img_twitter"):
            continue
        found = keywords.get(_chars(e["unified"])) or keywords.get(_chars(e.get("non_qualified") or e["unified"])) or []
        entries.append({
            "video_id": e["unified"].lower(), "png": package / "img" / "twitter" / "64" / e["image"], "svg": None,
            "caption": e["name"].lower(), "concept": e["subcategory"], "category": e["category"],
            "keywords": [k.replace("_", " ") for k in found[1:]],  # the first is the emoji's slug
        })
    return entries


def openmoji_entries(package: Path, png_dir: Path | None) -> list[dict]:
    entries = []
    for e in json.loads((package / "data" / "openmoji.json").read_text()):
        if e["skintone"] != "" or e["group"] == "component":
            continue
        tags = [t.strip() for t in (e["tags"] + "," + e["openmoji_tags"]).split(",") if t.strip()]
        entries.append({
            "video_id": e["hexcode"].lower(), "png": (png_dir / f"{e['hexcode']}.png") if png_dir else None,
            "svg": package / "color" / "svg" / f"{e['hexcode']}.svg",
            "caption": e["annotation"], "concept": e["subgroups"], "category": e["group"], "keywords": tags,
        })
    return entries


def _code(hexcode: str) -> str:
    """A code point sequence without variation selectors, to match the two sources."""
    return "-".join(p for p in hexcode.upper().split("-") if p != "FE0F")


def other_names(path: Path) -> dict[str, str]:
    """Code point sequence -> name, from OpenMoji's openmoji.json or emoji-datasource's emoji.json."""
    names = {}
    for e in json.loads(Path(path).read_text()):
        if "annotation" in e and e.get("skintone", "") == "":
            names[_code(e["hexcode"])] = e["annotation"]
        elif "unified" in e:
            names[_code(e["unified"])] = e["name"].lower()
    return names


def load_image(entry: dict) -> np.ndarray | None:
    """The picture as RGB uint8 on white, 64 px, or None when it cannot be read."""
    import io

    from PIL import Image

    path = entry["png"]
    try:
        if path is not None:  # a missing file is a picture the renderer could not draw
            im = Image.open(path)
        else:
            try:
                import cairosvg
            except ImportError:
                raise SystemExit("OpenMoji ships SVG: pip install cairosvg, or pass --png-dir with rendered PNGs")
            im = Image.open(io.BytesIO(cairosvg.svg2png(url=str(entry["svg"]), output_width=64, output_height=64)))
        with im:
            rgba = im.convert("RGBA").resize((64, 64))
    except (OSError, ValueError, AttributeError):  # a missing, broken or unrenderable file
        return None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def generated_caption(entry: dict, per_caption: int, name: str | None = None) -> str | None:
    own = set(re.findall(r"[a-z0-9]+", (entry["caption"] + " " + (name or "")).lower()))
    picked: list[str] = []
    for keyword in entry["keywords"]:
        words = re.findall(r"[a-z0-9]+", keyword.lower())
        if not words or set(words) <= own or keyword.lower() in picked:
            continue
        picked.append(keyword.lower())
        if len(picked) == per_caption:
            break
    picked = ([name.lower()] if name else []) + picked
    return ", ".join(picked) if picked else None


def write_generated(workdir: Path, source: Path, rows: list[dict]) -> None:
    """A work folder with ``source``'s keyframes (and pictures) and these captions."""
    from mama_augment.manifest import CAPTIONS, PartWriter, compact, remove_manifest

    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "keyframes.parquet", workdir / "keyframes.parquet")
    frames = workdir / "frames"
    if not frames.exists():
        frames.symlink_to(Path("..") / source.name / "frames", target_is_directory=True)
    remove_manifest(workdir, CAPTIONS)
    PartWriter(workdir, CAPTIONS).write(rows)
    compact(workdir, CAPTIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("twemoji", "openmoji"), default="twemoji")
    parser.add_argument("--package", default="/tmp/emoji/node_modules/emoji-datasource-twitter")
    parser.add_argument("--keywords", type=Path, default=None, help="twemoji: emojilib's dist/emoji-en-US.json")
    parser.add_argument("--png-dir", type=Path, default=None, help="openmoji: pre-rendered HEXCODE.png files")
    parser.add_argument("--other-names", type=Path, default=None,
                        help="the other source's openmoji.json or emoji.json: also write the named variant")
    parser.add_argument("--out", default="benchmarks/out/emoji")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--meta-fraction", type=float, default=0.05)
    parser.add_argument("--keywords-per-caption", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from PIL import Image

    from mama_augment.embed import get_embedder
    from mama_augment.embed.base import EmbedderOptions
    from mama_augment.manifest import KEYFRAMES, PartWriter, compact, remove_manifest

    package = Path(args.package)
    if args.source == "twemoji":
        entries = twemoji_entries(package, args.keywords)
    else:
        entries = openmoji_entries(package, args.png_dir)
    out = Path(args.out)
    workdir = out / "work"
    (workdir / "frames").mkdir(parents=True, exist_ok=True)
    embedder = get_embedder("cnn", EmbedderOptions(device="cpu", batch_size=64))

    images, rows, captions, kept = [], [], [], []
    for entry in entries:
        image = load_image(entry)
        if image is None:
            print(f"skipped (unreadable image): {entry['video_id']}")
            continue
        images.append(image)
        kept.append(entry)
        video_id = entry["video_id"]
        frame = f"frames/{video_id}.png"
        Image.fromarray(image).save(workdir / frame)
        rows.append({"video_id": video_id, "path": str(entry["png"] or entry["svg"]), "status": "ok",
                     "media_type": "image", "num_sampled": 1, "keyframe_indices": [0], "keyframe_times_s": [0.0],
                     "keyframe_paths": [frame], "width": 64, "height": 64, "embedder": embedder.name})
        captions.append({"video_id": video_id, "caption": entry["caption"], "split": split_of(video_id),
                         "concept": entry["concept"], "category": entry["category"]})
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
    # Meta set: round-robin over concepts (sorted), at most half of each.
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
    half_rng = np.random.default_rng([args.seed, 2])
    frame.drop(index=half_rng.choice(candidates, size=len(candidates) // 2, replace=False)).to_csv(
        out / "captions_half50.csv", index=False)

    # Generated captions: right ones, then the same with a share of the training
    # images' captions given to another training image. Separate RNGs keep the files
    # above identical to what earlier versions of this script wrote.
    wrong = f"wrong{int(args.noise * 100)}"
    captioners = {"gen": ("generated.csv", [generated_caption(e, args.keywords_per_caption) for e in kept], 1)}
    if args.other_names:
        names = other_names(args.other_names)
        captioners["named"] = ("generated_named.csv", [
            generated_caption(e, 3, names.get(_code(e["video_id"]))) for e in kept], 3)
    counts = {}
    for prefix, (file_name, texts, stream) in captioners.items():
        gen_rng = np.random.default_rng([args.seed, stream])
        gen = pd.DataFrame({"video_id": frame.video_id, "split": frame.split, "right": texts})
        gen = gen[gen.right.notna()].reset_index(drop=True)
        gen_train = gen.index[gen.split == "train"].to_numpy()
        moved = gen_rng.choice(gen_train, size=int(round(args.noise * len(gen_train))), replace=False)
        gen[wrong] = gen["right"]
        gen.loc[moved, wrong] = gen_rng.permutation(gen.loc[moved, "right"].to_numpy())
        gen["wrong"] = gen[wrong] != gen["right"]
        gen.to_csv(out / file_name, index=False)
        for variant, column in ((f"{prefix}-right", "right"), (f"{prefix}-{wrong}", wrong)):
            write_generated(out / variant, workdir, [
                {"video_id": v, "caption_index": 0, "caption": c, "status": "ok"} for v, c in zip(gen.video_id, gen[column])
            ])
        counts[prefix] = {"captions": len(gen), "train": int(len(gen_train)), "wrong": int(gen.wrong.sum())}
    print(json.dumps({
        "source": args.source, "images": len(frame), "train": int((frame.split == "train").sum()),
        "val": int((frame.split == "val").sum()), "test": int((frame.split == "test").sum()),
        "meta_set": len(meta_index), "concepts": frame.concept.nunique(),
        "shuffled_train_captions": int(noisy.noisy.sum()), "embedding_dim": int(embeddings.shape[1]),
        "generated": counts,
    }))


if __name__ == "__main__":
    main()
