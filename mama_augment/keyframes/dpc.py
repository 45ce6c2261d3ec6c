"""Density-peak clustering with k-nearest-neighbour density (DPC-KNN) for keyframes.

One file on purpose (over 450 lines): one pure algorithm and its exact, blocked
implementation; the method is described in docs/method.md ("Keyframes and grids").

Pure numpy, no I/O. For N frame embeddings x_i (scaled to unit norm here) and
d_ij = ||x_i - x_j||:

* density   rho_i   = exp(-mean of d_ij^2 over the k nearest neighbours j of i)
* distance  delta_i = d to the nearest *denser* point; for the densest point, the
  largest d to any point
* score     gamma_i = rho_i * delta_i

Two ways to turn scores into K centres (centres are real frames: the keyframes,
returned in temporal order):

* ``gamma`` - the method as published: the K highest gamma; labels follow the
  classic DPC assignment (each point joins its nearest denser point's cluster,
  visited from the densest down). ``dpc_knn``'s default.
* ``cover`` - ``select_keyframes``'s default: DPC-KNN density peaks moved to cover the
  video (``pick_covering_centers``): among the 2K highest-gamma frames, start from the
  highest and add, K - 1 times, the one that most lowers the mean distance of all
  frames to their nearest keyframe; then k-medoids swaps (``refine_medoids``) from that
  start and from K uniform frames, keeping the better, so the pick is never worse than
  uniform frames; labels are the nearest centre. On the real clips
  (benchmarks/coverage.py, cnn embeddings, 12 of 2 fps frames) plain ``gamma`` covered
  the video no better than 12 uniform frames (1.03x of uniform's mean distance), the
  greedy start alone 0.909x, ``cover`` 0.903x; a k-medoids search from 21 starts found
  0.902x, about the best any 12 frames can do there.

``num_keyframes="auto"`` takes K at the largest ratio between consecutive sorted
scores, within bounds (``auto_num_keyframes``).

Ties are broken by frame index, so equal inputs give equal outputs:

* j is denser than i when rho_j > rho_i, or rho_j == rho_i and j < i;
* among equally near denser points the smallest index is the nearest;
* among equal scores the denser point (in the order above) ranks higher.

Squared distances below ``SNAP_SQ_DIST`` (1e-5, i.e. d < 0.0032) count as 0: that is
float32 round-off for unit vectors (measured <= 1.5e-6 for identical vectors), so
identical frames tie exactly instead of by noise.

Identical or near-identical frames carry no information: a duplicate of a denser point
has delta = 0 and gamma = 0. When fewer than K points have gamma > 0 (few distinct
frames), the remaining centres are zero-score frames spread in time: each is the frame
farthest in frame index from those already chosen (ties: smallest index); if no frame
has a positive score (all frames identical), the K centres are evenly spaced in time.
So ``dpc_knn`` always returns min(K, N) distinct frames.

Cost: the k-nearest-neighbour pass is a blocked float32 matrix product over the upper
triangle (each block once, used for its rows and its columns), keeping only the k best
per row: O(N^2 D) time, O(N k) memory plus one block. delta comes from the neighbour
lists when a denser point is among them (exact: every unlisted point is at least as
far as the k-th neighbour); only the other rows ("local peaks", a small fraction) get a
chunked pass over all points. Many exact duplicates (a still video) send most rows to
that pass: at worst one more N x N product. "Exact" means: equal to the definition
computed in float32 (the tests compare with a float64 brute force).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Selection = Literal["cover", "gamma"]
SELECTIONS: tuple[str, ...] = ("cover", "gamma")
DEFAULT_SELECTION: Selection = "cover"
SNAP_SQ_DIST = 1e-5
DEFAULT_KNN = 5
COVER_CANDIDATES_PER_CENTER = 2.0
MEDOID_MAX_FRAMES = 1024  # above this, medoid swaps consider only candidate frames
MEDOID_MAX_PASSES = 200
DEFAULT_MIN_KEYFRAMES = 1
DEFAULT_MAX_KEYFRAMES = 32
_BLOCK = 512  # rows x columns of one kNN product block (1 MB of float32: cache-friendly)
_CHUNK_ELEMENTS = 1 << 21  # elements of one row chunk in the delta pass (8 MB of float32)


@dataclass(frozen=True)
class DPCResult:
    """Centres (frame indices, ascending), one label per frame (index into ``centers``;
    ``gamma`` selection: classic DPC assignment, ``cover``: nearest centre) and the
    per-frame scores. ``parent`` is each frame's nearest denser frame (-1 for the
    densest)."""

    centers: np.ndarray  # int64 (K,)
    labels: np.ndarray  # int64 (N,)
    rho: np.ndarray  # float64 (N,)
    delta: np.ndarray  # float64 (N,)
    gamma: np.ndarray  # float64 (N,)
    parent: np.ndarray  # int64 (N,)


# ---------------------------------------------------------------------------- scores


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (frames, dim), got shape {x.shape}")
    x = x.astype(np.float32, copy=True)
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    if len(x) and not (norms > 0).all():
        raise ValueError("embeddings contain all-zero rows, which have no direction")
    x /= norms[:, None]
    return x


def _sq_dist_from_dot(dot: np.ndarray) -> np.ndarray:
    """Squared distances between unit vectors from their dot products, snapped at 0."""
    sq = np.subtract(2.0, 2.0 * dot, dtype=np.float32)
    sq[sq < SNAP_SQ_DIST] = 0.0
    return sq


def _merge_dense(best_dot, best_idx, rows: slice, dot_block: np.ndarray, col_offset: int) -> None:
    """Merge the k largest dot products of each row of ``dot_block`` into the lists."""
    k = best_dot.shape[1]
    width = dot_block.shape[1]
    if width > k:
        part = np.argpartition(dot_block, width - k, axis=1)[:, width - k :]
        cand_dot = np.take_along_axis(dot_block, part, axis=1)
    else:
        part = np.broadcast_to(np.arange(width), dot_block.shape)
        cand_dot = dot_block
    all_dot = np.concatenate([best_dot[rows], cand_dot], axis=1)
    all_idx = np.concatenate([best_idx[rows], part + col_offset], axis=1)
    keep = np.argpartition(all_dot, all_dot.shape[1] - k, axis=1)[:, -k:]
    best_dot[rows] = np.take_along_axis(all_dot, keep, axis=1)
    best_idx[rows] = np.take_along_axis(all_idx, keep, axis=1)


def _merge_sparse(best_dot, best_idx, row_ids, col_ids, values) -> None:
    """Merge a few candidates (row, column, dot) into the lists of their rows."""
    k = best_dot.shape[1]
    touched = np.unique(row_ids)
    cand_rows = np.concatenate([np.repeat(touched, k), row_ids])
    cand_dot = np.concatenate([best_dot[touched].ravel(), values])
    cand_idx = np.concatenate([best_idx[touched].ravel(), col_ids])
    order = np.lexsort((-cand_dot, cand_rows))  # by row, then largest dot first
    starts = np.searchsorted(cand_rows[order], touched)
    take = order[(starts[:, None] + np.arange(k)).ravel()]
    best_dot[touched] = cand_dot[take].reshape(-1, k)
    best_idx[touched] = cand_idx[take].reshape(-1, k)


def _merge_block(best_dot, best_idx, a0: int, b0: int, dot: np.ndarray, transposed: bool) -> None:
    """Offer block ``dot`` (rows a0.., columns b0..) to the lists of its rows, or with
    ``transposed`` to the lists of its columns.

    Only entries above a row's current k-th best can enter its list. After the first
    block few do, so they are found with one comparison and merged sparsely; a block
    with many (the first ones) goes through argpartition.
    """
    k = best_dot.shape[1]
    if transposed:
        threshold = best_dot[b0 : b0 + dot.shape[1]].min(axis=1)
        hits = dot > threshold[None, :]
    else:
        threshold = best_dot[a0 : a0 + dot.shape[0]].min(axis=1)
        hits = dot > threshold[:, None]
    count = int(np.count_nonzero(hits))
    if count == 0:
        return
    if count > 2 * k * max(dot.shape):
        if transposed:
            _merge_dense(best_dot, best_idx, slice(b0, b0 + dot.shape[1]), np.ascontiguousarray(dot.T), a0)
        else:
            _merge_dense(best_dot, best_idx, slice(a0, a0 + dot.shape[0]), dot, b0)
        return
    flat = np.flatnonzero(hits)  # much faster than 2-D nonzero when hits are rare
    row_in_block, col_in_block = np.divmod(flat, dot.shape[1])
    values = dot.ravel()[flat]
    if transposed:
        _merge_sparse(best_dot, best_idx, col_in_block + b0, row_in_block + a0, values)
    else:
        _merge_sparse(best_dot, best_idx, row_in_block + a0, col_in_block + b0, values)


def _knn(x: np.ndarray, k: int, block: int = _BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other points of every point: (indices, snapped squared distances),
    each row sorted by (distance, index).

    Invariant: every point left out of a row's list is at least as far as the list's
    k-th entry (an entry only skips a list when it is no better than the k-th best).
    """
    n = len(x)
    best_dot = np.full((n, k), -np.inf, dtype=np.float32)
    best_idx = np.full((n, k), -1, dtype=np.int64)
    for a0 in range(0, n, block):
        a1 = min(n, a0 + block)
        for b0 in range(a0, n, block):
            b1 = min(n, b0 + block)
            dot = x[a0:a1] @ x[b0:b1].T
            if b0 == a0:
                np.fill_diagonal(dot, -np.inf)  # a point is not its own neighbour
            _merge_block(best_dot, best_idx, a0, b0, dot, transposed=False)
            if b0 != a0:
                _merge_block(best_dot, best_idx, a0, b0, dot, transposed=True)
    sq = _sq_dist_from_dot(best_dot)
    order = np.lexsort((best_idx, sq), axis=1)
    return np.take_along_axis(best_idx, order, axis=1), np.take_along_axis(sq, order, axis=1)


def _density_rank(rho: np.ndarray) -> np.ndarray:
    """rank[i] = position of i when sorted by (rho descending, index ascending)."""
    order = np.lexsort((np.arange(len(rho)), -rho))
    rank = np.empty(len(rho), dtype=np.int64)
    rank[order] = np.arange(len(rho))
    return rank


def _delta_and_parent(
    x: np.ndarray, rank: np.ndarray, nbr_idx: np.ndarray, nbr_sq: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n, k = nbr_idx.shape
    delta_sq = np.zeros(n, dtype=np.float64)
    parent = np.full(n, -1, dtype=np.int64)

    denser = rank[nbr_idx] < rank[:, None]
    has_denser = denser.any(axis=1)
    first = np.argmax(denser, axis=1)  # lists are sorted by (distance, index)
    rows = np.arange(n)
    near_sq = nbr_sq[rows, first]
    if k >= n - 1:
        exact = has_denser  # every other point is listed
    else:
        # Unlisted points are at least as far as the k-th neighbour: strictly nearer
        # means no unlisted point can be nearer or tie.
        exact = has_denser & (near_sq < nbr_sq[:, -1])
    delta_sq[exact] = near_sq[exact]
    parent[exact] = nbr_idx[exact, first[exact]]

    rest = np.flatnonzero(~exact)  # local density peaks (and the densest point)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n))
    for start in range(0, len(rest), chunk):
        ids = rest[start : start + chunk]
        sq = _sq_dist_from_dot(x[ids] @ x.T)
        sq[np.arange(len(ids)), ids] = 0.0
        is_denser = rank[None, :] < rank[ids, None]
        masked = np.where(is_denser, sq, np.inf)
        nearest = np.argmin(masked, axis=1)  # first minimum = smallest index
        found = np.isfinite(masked[np.arange(len(ids)), nearest])
        delta_sq[ids[found]] = masked[np.arange(len(ids)), nearest][found]
        parent[ids[found]] = nearest[found]
        top = ids[~found]  # the densest point: no denser point exists
        if len(top):
            delta_sq[top] = sq[~found].max(axis=1)
    return np.sqrt(delta_sq), parent


@dataclass(frozen=True)
class _Scores:
    x: np.ndarray  # unit rows, float32
    rho: np.ndarray
    delta: np.ndarray
    gamma: np.ndarray
    parent: np.ndarray
    rank: np.ndarray  # position in the density order (0 = densest)


def _scores(embeddings: np.ndarray, knn: int) -> _Scores:
    if isinstance(knn, bool) or not isinstance(knn, (int, np.integer)) or knn <= 0:
        raise ValueError(f"knn must be a positive integer, got {knn!r}")
    x = _unit_rows(embeddings)
    n = len(x)
    if n == 0:
        raise ValueError("no embeddings given")
    if n == 1:
        return _Scores(x, np.ones(1), np.zeros(1), np.zeros(1), np.full(1, -1, np.int64), np.zeros(1, np.int64))
    nbr_idx, nbr_sq = _knn(x, min(int(knn), n - 1))
    # Rows are sorted, so equal neighbour distances give bit-equal densities.
    rho = np.exp(-nbr_sq.astype(np.float64).mean(axis=1))
    rank = _density_rank(rho)
    delta, parent = _delta_and_parent(x, rank, nbr_idx, nbr_sq)
    return _Scores(x, rho, delta, rho * delta, parent, rank)


# ----------------------------------------------------------------------- centres


def _score_order(gamma: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Frame indices by gamma descending, then density rank ascending."""
    return np.lexsort((rank, -gamma))


def _spread_in_time(chosen: list[int], n: int, count: int) -> list[int]:
    """Add ``count`` frames, each the farthest in index from those already chosen
    (ties: smallest index); with none chosen, the centres of ``count`` equal segments."""
    chosen = list(chosen)
    if not chosen:
        return np.floor((np.arange(count) + 0.5) * n / count).astype(int).tolist()
    positions = np.arange(n)
    gap = np.min(np.abs(positions[:, None] - np.array(chosen)[None, :]), axis=1)
    for _ in range(count):
        pick = int(np.argmax(gap))  # first maximum = smallest index
        if gap[pick] <= 0:
            break
        chosen.append(pick)
        gap = np.minimum(gap, np.abs(positions - pick))
    return chosen


def pick_centers(gamma: np.ndarray, rank: np.ndarray, num_centers: int) -> np.ndarray:
    """``gamma`` selection: the ``num_centers`` highest scores (zero scores spread in
    time when too few are positive), as ascending frame indices."""
    n = len(gamma)
    num_centers = min(num_centers, n)
    order = _score_order(gamma, rank)
    chosen = order[gamma[order] > 0][:num_centers].tolist()
    if len(chosen) < num_centers:
        chosen = _spread_in_time(chosen, n, num_centers - len(chosen))
    return np.array(sorted(chosen), dtype=np.int64)


def uniform_indices(n: int, count: int) -> np.ndarray:
    """The centre frame of each of ``count`` equal segments of ``n`` frames (ascending)."""
    count = min(count, n)
    return np.floor((np.arange(count) + 0.5) * n / count).astype(np.int64)


def _greedy_cover(dist: np.ndarray, first: int, count: int) -> list[int]:
    """Columns of ``dist`` (frames x candidates): start from ``first`` and add, ``count``
    - 1 times, the column that most lowers the summed distance of every frame to its
    nearest chosen column (ties: the smaller column)."""
    chosen = [first]
    nearest = dist[:, first].copy()
    for _ in range(count - 1):
        totals = np.minimum(nearest[:, None], dist).sum(axis=0)
        totals[chosen] = np.inf
        best = int(np.argmin(totals))
        chosen.append(best)
        nearest = np.minimum(nearest, dist[:, best])
    return chosen


def refine_medoids(dist: np.ndarray, chosen: list[int], max_passes: int = MEDOID_MAX_PASSES) -> tuple[list[int], float]:
    """k-medoids swap search (PAM's swap step) on ``dist`` (frames x candidate columns).

    While some swap of a chosen column for an unchosen one lowers the summed distance
    of every frame to its nearest chosen column, make the best such swap (ties: the
    first slot, then the smaller column). Returns the chosen columns and their total.
    Each pass costs K x frames x columns; ``max_passes`` bounds a pathological run.
    """
    chosen = list(chosen)
    n = dist.shape[0]
    rows = np.arange(n)
    total = float(dist[:, chosen].min(axis=1).sum())
    if len(chosen) >= dist.shape[1]:
        return chosen, total
    for _ in range(max_passes):
        current = dist[:, chosen]
        if len(chosen) > 1:
            order = np.argsort(current, axis=1, kind="stable")[:, :2]
            first_slot = order[:, 0]
            nearest = current[rows, first_slot]
            second = current[rows, order[:, 1]]
        else:
            first_slot = np.zeros(n, dtype=np.int64)
            nearest = current[:, 0]
            second = np.full(n, np.inf)
        best_total, best_slot, best_column = total - max(1e-9, 1e-12 * total), -1, -1
        for slot in range(len(chosen)):
            # Every frame's distance to the nearest chosen column once ``slot`` is gone.
            base = np.where(first_slot == slot, second, nearest)
            totals = np.minimum(base[:, None], dist).sum(axis=0)
            totals[chosen] = np.inf
            column = int(np.argmin(totals))
            if totals[column] < best_total:
                best_total, best_slot, best_column = float(totals[column]), slot, column
        if best_slot < 0:
            break
        chosen[best_slot] = best_column
        total = float(dist[:, chosen].min(axis=1).sum())
    return chosen, total


def pick_covering_centers(
    x: np.ndarray,
    gamma: np.ndarray,
    rank: np.ndarray,
    num_centers: int,
    candidates_per_center: float = COVER_CANDIDATES_PER_CENTER,
) -> np.ndarray:
    """``cover`` selection: DPC-KNN density peaks, moved to cover the video.

    1. Start (DPC-KNN): among the round(candidates_per_center * K) highest-gamma frames,
       the highest-gamma frame (the densest point, always a DPC centre) and then, K - 1
       times, the candidate that most lowers the summed distance of all frames to their
       nearest chosen frame. With no more than K positive scores, ``pick_centers``.
    2. Refine: k-medoids swaps (``refine_medoids``) from that start, over every frame
       when there are at most ``MEDOID_MAX_FRAMES`` (one N x N distance matrix), else
       over the candidates and the uniform frames.
    3. Guard: the same swaps from K uniformly spaced frames; the lower summed distance
       wins (ties: the DPC start). So the pick never covers worse than uniform frames.
    """
    n = len(gamma)
    num_centers = min(num_centers, n)
    order = _score_order(gamma, rank)
    positive = order[gamma[order] > 0]
    candidates = positive[: max(num_centers, int(round(candidates_per_center * num_centers)))]
    # With no more than K positive scores the DPC centres are fixed (pick_centers).
    fixed = pick_centers(gamma, rank, num_centers) if len(positive) <= num_centers else None
    uniform = uniform_indices(n, num_centers)
    if n <= MEDOID_MAX_FRAMES:
        columns = np.arange(n)
    else:
        columns = np.union1d(candidates, uniform)
        if fixed is not None:
            columns = np.union1d(columns, fixed)
    position = {int(frame): i for i, frame in enumerate(columns)}
    dist = np.sqrt(_sq_dist_from_dot(x @ x[columns].T)).astype(np.float64)  # (N, columns)
    if fixed is None:
        greedy = _greedy_cover(dist[:, [position[int(c)] for c in candidates]], 0, num_centers)
        start = candidates[greedy]
    else:
        start = fixed
    from_dpc, dpc_total = refine_medoids(dist, [position[int(c)] for c in start])
    from_uniform, uniform_total = refine_medoids(dist, [position[int(u)] for u in uniform])
    chosen = from_uniform if uniform_total < dpc_total else from_dpc
    return np.sort(columns[chosen]).astype(np.int64)


def assign_labels(centers: np.ndarray, parent: np.ndarray, rank: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Classic DPC assignment: from the densest point down, each point takes the label
    of its nearest denser point; a centre starts its own label (its position in
    ``centers``). A densest point that is not a centre joins its nearest centre."""
    labels = np.full(len(parent), -1, dtype=np.int64)
    labels[centers] = np.arange(len(centers))
    order = np.argsort(rank)
    top = order[0]
    if labels[top] < 0:
        labels[top] = int(np.argmin(_sq_dist_from_dot(x[centers] @ x[top])))
    for i in order[1:]:
        if labels[i] < 0:
            labels[i] = labels[parent[i]]
    return labels


def assign_nearest(centers: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each point joins its nearest centre (ties: the earlier centre); centres their own."""
    labels = np.argmin(_sq_dist_from_dot(x @ x[centers].T), axis=1).astype(np.int64)
    labels[centers] = np.arange(len(centers))
    return labels


def dpc_knn(
    embeddings: np.ndarray,
    num_clusters: int,
    knn: int = DEFAULT_KNN,
    selection: Selection = "gamma",
) -> DPCResult:
    """Cluster frames with DPC-KNN; ``centers`` (ascending frame indices) are keyframes.

    ``selection="gamma"`` (the default here) is the method as published: the K
    highest gamma are the centres and labels follow nearest denser points.
    ``"cover"`` picks among the top-gamma candidates to cover the video (see
    ``pick_covering_centers``) and labels each frame with its nearest centre.
    N <= num_clusters keeps every frame, each its own cluster.
    """
    num_clusters = _check_count(num_clusters, "num_clusters")
    return _cluster(_scores(embeddings, knn), num_clusters, _check_selection(selection))


def _cluster(scores: _Scores, num_clusters: int, selection: Selection) -> DPCResult:
    n = len(scores.rho)
    if selection == "cover":
        centers = pick_covering_centers(scores.x, scores.gamma, scores.rank, num_clusters)
    else:
        centers = pick_centers(scores.gamma, scores.rank, num_clusters)
    if len(centers) == n:
        labels = np.arange(n, dtype=np.int64)
    elif selection == "cover":
        labels = assign_nearest(centers, scores.x)
    else:
        labels = assign_labels(centers, scores.parent, scores.rank, scores.x)
    return DPCResult(
        centers=centers,
        labels=labels,
        rho=scores.rho,
        delta=scores.delta,
        gamma=scores.gamma,
        parent=scores.parent,
    )


# ---------------------------------------------------------------------- keyframes


def auto_num_keyframes(
    gamma: np.ndarray,
    min_keyframes: int = DEFAULT_MIN_KEYFRAMES,
    max_keyframes: int = DEFAULT_MAX_KEYFRAMES,
) -> int:
    """K at the largest relative drop of the sorted scores, within [min, max].

    With g_1 >= g_2 >= ... the scores in descending order, K is the m in
    [min_keyframes, min(max_keyframes, N - 1)] with the largest g_m / g_(m+1) (a drop
    to a zero score counts as infinite, a zero g_m as no drop); ties take the smaller
    m. A ratio rather than a difference, so the answer does not depend on the scale of
    the scores and the densest point's inflated delta does not swamp the rest.
    N <= min_keyframes gives N.
    """
    n = len(gamma)
    lo = max(1, int(min_keyframes))
    hi = min(int(max_keyframes), n - 1)
    if n <= lo:
        return n
    if hi < lo:
        return lo
    g = np.sort(np.asarray(gamma, dtype=np.float64))[::-1]
    head, tail = g[lo - 1 : hi], g[lo : hi + 1]  # g_m and g_(m+1) for m = lo..hi
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tail > 0, head / np.where(tail > 0, tail, 1.0), np.inf)
    ratio[head <= 0] = 0.0
    return lo + int(np.argmax(ratio))


def select_keyframes(
    embeddings: np.ndarray,
    num_keyframes: int | Literal["auto"] = 12,
    knn: int = DEFAULT_KNN,
    min_keyframes: int = DEFAULT_MIN_KEYFRAMES,
    max_keyframes: int = DEFAULT_MAX_KEYFRAMES,
    selection: Selection = DEFAULT_SELECTION,
) -> np.ndarray:
    """Keyframe indices (ascending) chosen by DPC-KNN from frame embeddings (N, D).

    ``num_keyframes`` is a count, or ``"auto"`` to take it from the largest drop in the
    sorted scores (see ``auto_num_keyframes``) within ``min_keyframes`` and
    ``max_keyframes`` (the bounds apply to ``auto`` only). ``selection`` is ``"cover"``
    (default: top-gamma candidates picked to cover the video) or ``"gamma"`` (the K
    highest scores). Returns min(K, N) distinct frames.
    """
    selection = _check_selection(selection)
    if isinstance(num_keyframes, str):
        if num_keyframes != "auto":
            raise ValueError(f"num_keyframes must be a positive integer or 'auto', got {num_keyframes!r}")
        if min_keyframes <= 0 or max_keyframes < min_keyframes:
            raise ValueError(f"need 0 < min_keyframes <= max_keyframes, got {min_keyframes} and {max_keyframes}")
        scores = _scores(embeddings, knn)
        count = auto_num_keyframes(scores.gamma, min_keyframes, max_keyframes)
        return _cluster(scores, count, selection).centers
    count = _check_count(num_keyframes, "num_keyframes")
    return _cluster(_scores(embeddings, knn), count, selection).centers


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_selection(selection: str) -> Selection:
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of: {', '.join(SELECTIONS)}")
    return selection  # type: ignore[return-value]
