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


# Vectors are indexed and searched this many at a time: above it, ``find_duplicates``
# asks ``embed`` for one batch at a time and memory holds the index and one batch.
BATCH = 16_384
# Inverted lists: 4·√n of them up to LIST_SIZE_FROM texts, as the benchmark tuned them;
# above, lists of about LIST_SIZE vectors. With √n lists each query scans ~√n vectors
# (the search grows as n^1.5); with lists of a fixed size found through a graph over
# their centres, it scans the same number whatever n, and the whole search grows as n.
LIST_SIZE = 64
LIST_SIZE_FROM = 65_536
NPROBE = 16

VectorRows = Callable[[int, int], np.ndarray]  # rows [start, stop) of the vectors, float32


def _new_exact(n: int, dim: int, rows: VectorRows, sample: Callable[[np.ndarray], np.ndarray]):
    return _faiss().IndexFlatIP(dim)


def _new_hnsw(n: int, dim: int, rows: VectorRows, sample: Callable[[np.ndarray], np.ndarray],
              m: int = 32, ef: int = 64):
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef
    index.hnsw.efSearch = ef
    return index


def _new_ivf(n: int, dim: int, rows: VectorRows, sample: Callable[[np.ndarray], np.ndarray]):
    faiss = _faiss()
    rng = np.random.default_rng(0)
    if n <= LIST_SIZE_FROM:
        nlist = int(max(16, 4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        if n > nlist * 40:
            index.train(sample(rng.choice(n, size=nlist * 40, replace=False)))
        else:
            index.train(rows(0, n))
    else:
        # Lists centred on randomly drawn captions (no k-means: its cost grows with the
        # number of lists times the sample, quadratic here); near-duplicates sit far
        # closer to each other than to any centre, so probing the nearest centres finds them.
        nlist = n // LIST_SIZE
        # The centres stored as a byte per dimension: placing each vector and each query
        # walks the graph over them, and as float32 they outgrow the CPU's caches (12 MB
        # at 400 000 texts), so that walk slowed down as n grew (add 40 -> 115 us a vector
        # from 100 000 to 400 000 texts); a byte each keeps it flat. Only which lists are
        # probed depends on it, and the same pairs are found (benchmarks/RESULTS.md).
        quantizer = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efConstruction = 64
        quantizer.hnsw.efSearch = 64
        centres = np.ascontiguousarray(sample(np.sort(rng.choice(n, size=nlist, replace=False))), np.float32)
        quantizer.train(centres)
        quantizer.add(centres)
        # Vectors stored as float16 (of their offset from the list's centre): half the memory
        # of the largest thing held; similarities move by ~1e-4, far below the thresholds' steps.
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)
        index.train(centres)
    index.nprobe = min(NPROBE, nlist)
    return index


NN_INDEXES: dict[str, Callable] = {
    "exact": _new_exact,
    "ivf": _new_ivf,
    "hnsw": _new_hnsw,
}
NN_CHOICES = ("auto", *NN_INDEXES)


def nearest_neighbours(vectors: np.ndarray, k: int, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Similarities and indices of each row's ``k`` nearest rows (itself included), by inner product."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return nearest_neighbours_of(
        len(vectors), lambda start, stop: vectors[start:stop], lambda positions: vectors[positions], k, method
    )


def nearest_neighbours_of(n: int, rows: VectorRows, sample: Callable[[np.ndarray], np.ndarray], k: int,
                          method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest_neighbours` of ``n`` vectors read a batch at a time: ``rows(start, stop)``
    gives rows of them, ``sample(positions)`` the rows at those positions (to place the
    lists of ``ivf``). Memory holds the index and one batch."""
    if method == "auto":
        method = "exact" if n <= EXACT_MAX else "ivf"
    if method not in NN_INDEXES:
        raise UsageError(f"unknown nearest-neighbour index {method!r}; choose one of: {', '.join(NN_CHOICES)}")
    k = max(1, min(k, n))

    def batch(start: int) -> np.ndarray:
        return np.ascontiguousarray(rows(start, min(n, start + BATCH)), dtype=np.float32)

    first = batch(0)
    index = NN_INDEXES[method](n, first.shape[1], rows, sample)
    _add_all(index, n, first, batch)
    sims = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, BATCH):
        part = first if start == 0 else batch(start)
        sims[start:start + len(part)], ids[start:start + len(part)] = index.search(part, k)
    return sims, ids


def _add_all(index, n: int, first: np.ndarray, batch: Callable[[int], np.ndarray]) -> None:
    """Add the ``n`` vectors to ``index``, a batch at a time.

    Inverted lists grow as vectors arrive, each by doubling its capacity: filled one
    vector at a time they end up ~1.35 times the size of what they hold (about 140 MB
    on top of the ~410 MB index at 400 000 texts, at the peak of a filter run). So
    above a batch, each vector's list is found first (the step ``add`` takes anyway),
    every list is given its exact size, and the vectors are added to the lists already
    chosen: the same index for one more reading of the vectors (from the embedding cache).
    """
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if n <= BATCH or not isinstance(lists, faiss.ArrayInvertedLists):
        for start in range(0, n, BATCH):
            index.add(first if start == 0 else batch(start))
        return
    assigned = np.empty(n, dtype=np.int64)
    for start in range(0, n, BATCH):
        part = first if start == 0 else batch(start)
        assigned[start:start + len(part)] = ivf.quantizer.assign(part, 1)[:, 0]
    for list_no, size in enumerate(np.bincount(assigned, minlength=ivf.nlist).tolist()):
        if size:  # from empty, a list's storage is allocated at exactly the size asked for
            lists.resize(list_no, size)
            lists.resize(list_no, 0)
    for start in range(0, n, BATCH):
        part = first if start == 0 else batch(start)
        lists_of = np.ascontiguousarray(assigned[start:start + len(part)])
        ids = np.arange(start, start + len(part), dtype=np.int64)
        ivf.add_core(len(part), faiss.swig_ptr(part), faiss.swig_ptr(ids), faiss.swig_ptr(lists_of))


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
    del keys, distinct  # a normalised copy of every text: not held through the search
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
        if m <= BATCH:  # one call, as small datasets and the tests have always had it
            vectors = np.asarray(embed(first_text), dtype=np.float32)
            sims, neighbours = nearest_neighbours(vectors, k + 1, method)
            del vectors
        else:  # a batch of texts embedded at a time (twice: to index, then to search)
            sims, neighbours = nearest_neighbours_of(
                m, lambda start, stop: embed(first_text[start:stop]),
                lambda positions: embed([first_text[p] for p in positions.tolist()]), k + 1, method)
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
