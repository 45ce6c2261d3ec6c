"""Near-duplicate captions across videos, by nearest-neighbour search on text embeddings.

1. Captions are normalised (lower case, words only) and identical texts merged: exact
   duplicates are found without any model, and each distinct text is embedded once.
2. Each distinct text's ``k`` nearest neighbours by cosine similarity come from a faiss
   index (``NN_INDEXES``: ``exact`` brute force, ``ivf`` inverted lists, ``hnsw`` graph;
   ``auto`` takes ``exact`` up to ``EXACT_MAX`` texts and ``ivf`` above, which the
   benchmark measured as exact enough for pairs above the threshold).
3. Pairs at or above ``threshold`` are joined into groups (union-find). A caption is a
   near-duplicate when its group holds captions of two or more videos; the same video
   repeating itself is not a duplicate of *another* video's caption.

Each group names one representative (the first caption by ``video_id``,
``caption_index``): ``export --dedupe`` keeps it and drops the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mama_augment.errors import MissingDependency, UsageError

EXACT_MAX = 20_000
DEFAULT_K = 10
_NON_WORD = re.compile(r"[^a-z0-9]+")


def duplicate_key(text: str) -> str:
    """Texts equal after this are exact duplicates (case, punctuation and spacing ignored)."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependency("faiss-cpu", purpose="the near-duplicate check") from None
    return faiss


def _search_exact(vectors: np.ndarray, k: int):
    faiss = _faiss()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(vectors, k)


def _search_ivf(vectors: np.ndarray, k: int, nprobe: int = 16):
    faiss = _faiss()
    n, dim = vectors.shape
    nlist = int(min(4096, max(16, 4 * np.sqrt(n))))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(n, size=min(n, nlist * 40), replace=False)] if n > nlist * 40 else vectors
    index.cp.seed = 0
    index.train(sample)
    index.add(vectors)
    index.nprobe = min(nprobe, nlist)
    return index.search(vectors, k)


def _search_hnsw(vectors: np.ndarray, k: int, m: int = 32, ef: int = 64):
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef
    index.add(vectors)
    index.hnsw.efSearch = ef
    return index.search(vectors, k)


NN_INDEXES: dict[str, Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]] = {
    "exact": _search_exact,
    "ivf": _search_ivf,
    "hnsw": _search_hnsw,
}
NN_CHOICES = ("auto", *NN_INDEXES)


def nearest_neighbours(vectors: np.ndarray, k: int, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Similarities and indices of each row's ``k`` nearest rows (itself included), by inner product."""
    if method == "auto":
        method = "exact" if len(vectors) <= EXACT_MAX else "ivf"
    if method not in NN_INDEXES:
        raise UsageError(f"unknown nearest-neighbour index {method!r}; choose one of: {', '.join(NN_CHOICES)}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = max(1, min(k, len(vectors)))
    return NN_INDEXES[method](vectors, k)


@dataclass
class DuplicateResult:
    """Per caption (aligned with the input order)."""

    group: np.ndarray  # int64 group id (the smallest caption position in the group); -1 when alone
    group_videos: np.ndarray  # int32 distinct videos in the group (1 when alone)
    keep: np.ndarray  # bool: the group's representative (True when alone)
    nearest_similarity: np.ndarray  # float64: best similarity to another video's caption; NaN if none
    nearest_video: list  # that caption's video_id, or None
    distinct_group: np.ndarray  # int64 per caption: its near-duplicate group, or its own distinct text

    @property
    def near_duplicate(self) -> np.ndarray:
        return self.group_videos >= 2

    def expand(self, positions: np.ndarray, n: int) -> "DuplicateResult":
        """The result of a subset of ``n`` captions, spread back to all of them (the others alone)."""
        positions = np.asarray(positions, dtype=np.int64)
        group = np.full(n, -1, dtype=np.int64)
        group[positions] = np.where(self.group >= 0, positions[np.maximum(self.group, 0)], -1)
        group_videos = np.ones(n, dtype=np.int32)
        group_videos[positions] = self.group_videos
        keep = np.ones(n, dtype=bool)
        keep[positions] = self.keep
        nearest_similarity = np.full(n, np.nan)
        nearest_similarity[positions] = self.nearest_similarity
        nearest_video: list = [None] * n
        for position, video in zip(positions.tolist(), self.nearest_video):
            nearest_video[position] = video
        distinct_group = -1 - np.arange(n, dtype=np.int64)  # alone: a group of its own
        distinct_group[positions] = self.distinct_group
        return DuplicateResult(group, group_videos, keep, nearest_similarity, nearest_video, distinct_group)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(
    texts: Sequence[str],
    videos: Sequence[str],
    embed: Callable[[list[str]], np.ndarray],
    threshold: float = 0.95,
    k: int = DEFAULT_K,
    method: str = "auto",
) -> DuplicateResult:
    """Near-duplicate groups of ``texts`` (captions in ``(video_id, caption_index)`` order).

    ``embed`` maps distinct texts to L2-normalised vectors.
    """
    n = len(texts)
    keys = [duplicate_key(t) for t in texts]
    distinct: dict[str, int] = {}
    text_of = np.empty(n, dtype=np.int64)
    for i, key in enumerate(keys):
        # A caption without words is no description: it gets a text of its own.
        text_of[i] = distinct.setdefault(key if key else f"\0{i}", len(distinct))
    m = len(distinct)
    # Videos of each distinct text (first two are enough to know "another video").
    owners: list[list[str]] = [[] for _ in range(m)]
    first_text: list[str] = [""] * m
    for i in range(n):
        t = text_of[i]
        if not owners[t]:
            first_text[t] = texts[i]
        if videos[i] not in owners[t] and len(owners[t]) < 2:
            owners[t].append(videos[i])
    uf = _UnionFind(m)
    best_sim = np.full(m, np.nan)
    best_video: list = [None] * m
    if m >= 2:
        vectors = np.asarray(embed(first_text), dtype=np.float32)
        sims, neighbours = nearest_neighbours(vectors, k + 1, method)
        rows, cols = np.nonzero((sims >= threshold) & (neighbours >= 0))
        for t, u in zip(rows.tolist(), neighbours[rows, cols].tolist()):
            if u != t:
                uf.union(t, u)
        # The most similar caption of another video among the neighbours (reported for
        # every caption, above the threshold or not, to help choose the threshold).
        for t in range(m):
            mine = owners[t][0]
            for similarity, u in zip(sims[t].tolist(), neighbours[t].tolist()):
                if u < 0 or u == t:
                    continue
                other = next((v for v in owners[u] if v != mine), None)
                if other is not None:
                    best_sim[t], best_video[t] = similarity, other
                    break
    roots = np.array([uf.find(t) for t in range(m)], dtype=np.int64)
    group_video_sets: dict[int, set] = {}
    for i in range(n):
        group_video_sets.setdefault(int(roots[text_of[i]]), set()).add(videos[i])
    group = np.full(n, -1, dtype=np.int64)
    group_videos = np.ones(n, dtype=np.int32)
    keep = np.ones(n, dtype=bool)
    nearest_similarity = np.full(n, np.nan)
    nearest_video: list = [None] * n
    seen_group: dict[int, int] = {}
    for i in range(n):
        t = int(text_of[i])
        root = int(roots[t])
        if len(owners[t]) >= 2:  # the same text on another video
            nearest_similarity[i] = 1.0
            nearest_video[i] = next(v for v in owners[t] if v != videos[i])
        else:
            nearest_similarity[i] = best_sim[t]
            nearest_video[i] = best_video[t]
        count = len(group_video_sets[root])
        if count >= 2:
            first = seen_group.setdefault(root, i)
            group[i] = first
            group_videos[i] = count
            keep[i] = first == i
    return DuplicateResult(group=group, group_videos=group_videos, keep=keep, nearest_similarity=nearest_similarity,
                           nearest_video=nearest_video, distinct_group=roots[text_of])
