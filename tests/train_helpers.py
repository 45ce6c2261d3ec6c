"""Generated fixtures for the train tests: a work folder with planted concepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mama_augment.frame_embeddings import EmbeddingAppender
from mama_augment.manifest import KEYFRAMES, CAPTIONS, PartWriter, compact, rows_to_table

CONCEPT_WORDS = ["dog", "car", "tree", "boat", "cake", "bird", "lamp", "shoe"]
ATTRIBUTE_WORDS = [
    "red", "blue", "green", "small", "large", "old", "new", "fast", "slow", "bright",
    "dark", "wet", "dry", "round", "square", "soft", "loud", "quiet", "tall", "short",
]


def make_workdir(
    root: Path,
    n_videos: int = 160,
    n_concepts: int = 6,
    dim: int = 32,
    seed: int = 0,
    noise: float = 0.3,
    with_split: bool = False,
    generated: bool = False,
    shuffled_fraction: float = 0.0,
    id_format: str = "v{i:04d}",
    layout: str = "arrays",
    max_file_bytes: int | None = None,
) -> tuple[Path, Path]:
    """Keyframes with embeddings built from (concept, attribute) directions and a
    captions CSV naming them; returns (workdir, captions file). ``layout``: "arrays"
    (embeddings in array files, as the keyframes stage writes them) or "rows" (inside
    the rows, as older versions wrote them); ``max_file_bytes`` caps the array files
    (several files, as a large folder has)."""
    rng = np.random.default_rng(seed)
    workdir = root / "work"
    concept_dirs = rng.normal(size=(n_concepts, dim))
    attribute_dirs = rng.normal(size=(len(ATTRIBUTE_WORDS), dim))
    rows, captions = [], []
    # Long-tailed concepts: concept k has weight 1/(k+1).
    probs = 1 / np.arange(1, n_concepts + 1)
    probs /= probs.sum()
    for i in range(n_videos):
        c = int(rng.choice(n_concepts, p=probs))
        a = int(rng.integers(len(ATTRIBUTE_WORDS)))
        frames = int(rng.integers(1, 4))
        base = concept_dirs[c] + attribute_dirs[a]
        emb = base[None, :] + noise * rng.normal(size=(frames, dim))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        video_id = id_format.format(i=i)
        rows.append({
            "video_id": video_id, "status": "ok", "media_type": "video",
            "keyframe_embeddings": emb.astype(np.float32).tolist(), "embedding_dim": dim,
            "keyframe_paths": [], "embedder": "synthetic",
        })
        captions.append({"video_id": video_id, "caption": f"a {ATTRIBUTE_WORDS[a]} {CONCEPT_WORDS[c]}",
                         "concept": CONCEPT_WORDS[c]})
    writer = PartWriter(workdir, KEYFRAMES)
    if layout == "rows":
        writer.write(rows)
    else:
        with EmbeddingAppender(workdir, **({} if max_file_bytes is None else {"max_file_bytes": max_file_bytes})) as arrays:
            writer.write_table(arrays.externalize(rows_to_table(rows, KEYFRAMES.schema)))
    compact(workdir, KEYFRAMES)
    frame = pd.DataFrame(captions)
    if shuffled_fraction:
        pick = rng.random(len(frame)) < shuffled_fraction
        frame.loc[pick, "caption"] = rng.permutation(frame.loc[pick, "caption"].to_numpy())
    if with_split:
        frame["split"] = ["test" if i % 5 == 0 else "val" if i % 5 == 1 else "train" for i in range(len(frame))]
    if generated:
        gen_rows = [
            {"video_id": r["video_id"], "caption_index": 0, "caption": f"a video of a {r['concept']}", "status": "ok"}
            for r in captions[: n_videos // 2]
        ]
        gen = PartWriter(workdir, CAPTIONS)
        gen.write(gen_rows)
        compact(workdir, CAPTIONS)
    path = root / "captions.csv"
    frame.to_csv(path, index=False)
    return workdir, path


def gloo_or_skip():
    """``torch.distributed``, or the calling test module skipped where this PyTorch build
    has no gloo backend (the CPU backend the two-process tests run on)."""
    dist = pytest.importorskip("torch.distributed")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this PyTorch build",
                    allow_module_level=True)
    return dist
