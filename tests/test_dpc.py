"""DPC-KNN keyframe selection: against a brute-force reference, on planted clusters,
and on the degenerate inputs videos produce (duplicates, one frame, few frames)."""

from __future__ import annotations

import numpy as np
import pytest

from mama_augment.keyframes import dpc
from mama_augment.keyframes.dpc import (
    DPCResult,
    auto_num_keyframes,
    dpc_knn,
    select_keyframes,
)

# ------------------------------------------------------------------ reference


def brute_force(embeddings: np.ndarray, knn: int = 5):
    """O(N^2) DPC-KNN written from the definition, in float64, with the same tie rules
    and the same snapping of round-off distances to zero."""
    x = embeddings.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    sq[sq < dpc.SNAP_SQ_DIST] = 0.0
    k = min(knn, n - 1)
    others = sq + np.diag(np.full(n, np.inf))
    rho = np.exp(-np.sort(others, axis=1)[:, :k].mean(axis=1))
    delta = np.zeros(n)
    parent = np.full(n, -1)
    for i in range(n):
        best = -1
        for j in range(n):
            denser = rho[j] > rho[i] or (rho[j] == rho[i] and j < i)
            if j != i and denser and (best < 0 or sq[i, j] < sq[i, best]):
                best = j
        parent[i] = best
        delta[i] = np.sqrt(sq[i].max() if best < 0 else sq[i, best])
    gamma = rho * delta
    return rho, delta, gamma, parent


def planted_clusters(num_clusters: int, per_cluster: int = 25, dim: int = 32, spread: float = 0.15, seed: int = 0):
    """Tight Gaussian blobs around random unit directions; returns (x, cluster_of_row)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(num_clusters), per_cluster)
    noise = spread * rng.standard_normal((len(truth), dim)) / np.sqrt(dim)
    return (centres[truth] + noise).astype(np.float32), truth


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny blocks and chunks, so small inputs go through every merge and chunk path."""
    monkeypatch.setattr(dpc, "_BLOCK", 16)
    monkeypatch.setattr(dpc, "_CHUNK_ELEMENTS", 64)


# ------------------------------------------------------------ exactness


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [7, 50, 133])
def test_chunked_scores_equal_brute_force(small_blocks, seed, n):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)).astype(np.float32)
    rho, delta, gamma, parent = brute_force(x)
    result = dpc_knn(x, 5, selection="gamma")
    np.testing.assert_allclose(result.rho, rho, rtol=1e-5)
    np.testing.assert_allclose(result.delta, delta, atol=1e-5)
    np.testing.assert_array_equal(result.parent, parent)
    expected = np.sort(np.lexsort((np.arange(n), -gamma))[:5])
    np.testing.assert_array_equal(result.centers, expected)


def test_brute_force_agreement_with_duplicate_frames(small_blocks):
    rng = np.random.default_rng(3)
    distinct = rng.standard_normal((30, 8)).astype(np.float32)
    x = distinct[rng.integers(0, 30, 90)]  # every frame repeated about three times
    rho, delta, gamma, parent = brute_force(x, knn=4)
    result = dpc_knn(x, 6, knn=4, selection="gamma")
    np.testing.assert_allclose(result.rho, rho, rtol=1e-5)
    np.testing.assert_allclose(result.delta, delta, atol=1e-5)
    np.testing.assert_array_equal(result.parent, parent)


def test_block_size_does_not_change_the_result(monkeypatch):
    x, _ = planted_clusters(6, per_cluster=40, seed=4)
    default = dpc_knn(x, 6, selection="gamma")
    monkeypatch.setattr(dpc, "_BLOCK", 7)
    monkeypatch.setattr(dpc, "_CHUNK_ELEMENTS", 50)
    small = dpc_knn(x, 6, selection="gamma")
    np.testing.assert_array_equal(default.centers, small.centers)
    np.testing.assert_array_equal(default.labels, small.labels)
    np.testing.assert_allclose(default.gamma, small.gamma, rtol=1e-5)


# ------------------------------------------------------- planted clusters


@pytest.mark.parametrize("selection", ["gamma", "cover"])
@pytest.mark.parametrize("num_clusters", [2, 3, 5, 8])
def test_one_centre_per_planted_cluster(num_clusters, selection):
    for seed in range(3):
        x, truth = planted_clusters(num_clusters, seed=seed)
        result = dpc_knn(x, num_clusters, selection=selection)
        assert sorted(truth[result.centers].tolist()) == list(range(num_clusters))
        # Each found cluster is exactly one planted cluster.
        for label in range(num_clusters):
            members = truth[result.labels == label]
            assert len(set(members.tolist())) == 1
            assert len(members) == 25


@pytest.mark.parametrize("num_clusters", [1, 2, 3, 5, 8, 13])
def test_auto_finds_the_planted_count(num_clusters):
    for seed in range(3):
        x, truth = planted_clusters(num_clusters, seed=seed)
        keyframes = select_keyframes(x, "auto")
        assert len(keyframes) == num_clusters
        assert sorted(truth[keyframes].tolist()) == list(range(num_clusters))


def test_auto_respects_bounds():
    x, _ = planted_clusters(8, seed=0)
    assert len(select_keyframes(x, "auto", min_keyframes=10, max_keyframes=12)) in (10, 11, 12)
    assert len(select_keyframes(x, "auto", min_keyframes=1, max_keyframes=3)) <= 3
    with pytest.raises(ValueError):
        select_keyframes(x, "auto", min_keyframes=5, max_keyframes=4)


def test_auto_gap_rule():
    gamma = np.array([0.9, 0.55, 0.6, 0.1, 0.05, 0.045])  # biggest drop after the third
    assert auto_num_keyframes(gamma, 1, 10) == 3
    assert auto_num_keyframes(gamma, 4, 10) == 4  # the next biggest drop within bounds
    assert auto_num_keyframes(gamma, 1, 2) == 1  # 0.9 / 0.6 beats 0.6 / 0.55
    assert auto_num_keyframes(np.array([1.0, 1.0, 0.0, 0.0]), 1, 10) == 2  # drop to zero
    assert auto_num_keyframes(np.zeros(5), 2, 10) == 2  # nothing informative
    assert auto_num_keyframes(np.ones(2), 3, 10) == 2  # fewer frames than the minimum


# ------------------------------------------------------------ labels


def test_labels_are_consistent():
    x, _ = planted_clusters(4, per_cluster=30, spread=0.6, seed=5)
    result = dpc_knn(x, 7, selection="gamma")
    k = len(result.centers)
    assert isinstance(result, DPCResult)
    np.testing.assert_array_equal(result.labels[result.centers], np.arange(k))
    assert result.labels.min() == 0 and result.labels.max() == k - 1
    densest = int(np.argmax(result.rho))
    assert result.parent[densest] == -1
    for i in range(len(x)):  # classic DPC: a non-centre shares its nearest denser point's label
        if i not in result.centers and i != densest:
            assert result.labels[i] == result.labels[result.parent[i]]
    assert (result.parent[np.arange(len(x)) != densest] >= 0).all()


def test_cover_labels_are_nearest_centre():
    x, _ = planted_clusters(4, per_cluster=30, spread=0.6, seed=6)
    result = dpc_knn(x, 6, selection="cover")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    nearest = np.argmin(((unit[:, None] - unit[None, result.centers]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(result.labels, nearest)


def _coverage(x: np.ndarray, keyframes) -> float:
    unit = x.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    dist = np.sqrt(np.clip(2.0 - 2.0 * unit @ unit[np.asarray(keyframes)].T, 0.0, None))
    return float(dist.min(axis=1).mean())


def _drifting_video(frames: int, seed: int, dim: int = 16) -> np.ndarray:
    """A random walk with a few jumps: slow drift within shots, cuts between them."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((frames, dim)) * 0.3
    steps[rng.random(frames) < 0.1] *= 12
    return (np.cumsum(steps, axis=0) + rng.standard_normal(dim) * 3).astype(np.float32)


@pytest.mark.parametrize("frames", [13, 15, 20, 28, 36, 60, 150])
def test_cover_is_never_worse_than_uniform_nor_than_its_dpc_start(frames):
    from mama_augment.keyframes.dpc import _scores, pick_centers, uniform_indices

    for seed in range(8):
        x = _drifting_video(frames, seed)
        chosen = select_keyframes(x, 12, selection="cover")
        assert len(set(chosen.tolist())) == 12 and list(chosen) == sorted(chosen)
        cover = _coverage(x, chosen)
        assert cover <= _coverage(x, uniform_indices(frames, 12)) * (1 + 1e-5)
        scores = _scores(x, 5)
        assert cover <= _coverage(x, pick_centers(scores.gamma, scores.rank, 12)) * (1 + 1e-5)


def test_cover_is_a_swap_local_optimum():
    x = _drifting_video(40, seed=3)
    chosen = list(select_keyframes(x, 8, selection="cover"))
    best = _coverage(x, chosen)
    for slot in range(len(chosen)):
        for frame in range(len(x)):
            if frame not in chosen:
                trial = chosen[:slot] + [frame] + chosen[slot + 1 :]
                assert _coverage(x, trial) >= best * (1 - 1e-5)


def test_cover_on_long_inputs_swaps_among_candidates_and_uniform_frames(monkeypatch):
    import mama_augment.keyframes.dpc as dpc

    x = _drifting_video(300, seed=5)
    monkeypatch.setattr(dpc, "MEDOID_MAX_FRAMES", 100)  # take the path of inputs above the limit
    limited = select_keyframes(x, 12, selection="cover")
    assert len(limited) == 12
    assert _coverage(x, limited) <= _coverage(x, dpc.uniform_indices(300, 12)) * (1 + 1e-5)


# ------------------------------------------------------ degenerate inputs


@pytest.mark.parametrize("selection", ["gamma", "cover"])
def test_all_identical_frames_are_spread_evenly(selection):
    x = np.tile(np.array([[0.3, -1.0, 2.0, 0.5]], dtype=np.float32), (50, 1))
    keyframes = select_keyframes(x, 12, selection=selection)
    np.testing.assert_array_equal(keyframes, np.floor((np.arange(12) + 0.5) * 50 / 12).astype(int))
    np.testing.assert_array_equal(select_keyframes(x, 12, selection=selection), keyframes)
    assert len(select_keyframes(x, "auto")) == 1


def test_identical_frames_within_tolerance_tie():
    base = np.random.default_rng(8).standard_normal(64).astype(np.float32)
    x = np.stack([base, base * 3.0, base + 1e-6, base * 0.5])  # same direction
    result = dpc_knn(x, 2)
    assert (result.gamma == 0).all()
    assert (result.rho == result.rho[0]).all()


def test_two_static_scenes_get_one_keyframe_each_then_spread():
    x = np.zeros((40, 3), dtype=np.float32)
    x[:20, 0] = 1.0
    x[20:, 1] = 1.0
    result = dpc_knn(x, 5)
    assert result.centers.tolist()[:1] == [0]
    assert 20 in result.centers  # the first frame of the second scene leads it
    assert len(set(result.centers.tolist())) == 5
    assert (result.gamma[[0, 20]] > 0).all() and (np.delete(result.gamma, [0, 20]) == 0).all()


def test_single_frame():
    x = np.ones((1, 8), dtype=np.float32)
    np.testing.assert_array_equal(select_keyframes(x, 12), [0])
    result = dpc_knn(x, 3)
    np.testing.assert_array_equal(result.centers, [0])
    np.testing.assert_array_equal(result.labels, [0])
    np.testing.assert_array_equal(select_keyframes(x, "auto"), [0])


@pytest.mark.parametrize("n", [2, 5, 12])
def test_no_more_frames_than_keyframes_keeps_all(n):
    x = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)
    np.testing.assert_array_equal(select_keyframes(x, 12), np.arange(n))
    result = dpc_knn(x, 12)
    np.testing.assert_array_equal(result.labels, np.arange(n))


def test_knn_larger_than_frames_is_clipped():
    x = np.random.default_rng(9).standard_normal((6, 4)).astype(np.float32)
    assert len(select_keyframes(x, 3, knn=50)) == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "12"])
def test_bad_counts_raise(bad):
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(ValueError):
        select_keyframes(x, bad)


def test_bad_inputs_raise():
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(ValueError):
        select_keyframes(x, 3, knn=0)
    with pytest.raises(ValueError):
        select_keyframes(x, 3, selection="kmeans")
    with pytest.raises(ValueError):
        select_keyframes(np.zeros((0, 4), dtype=np.float32), 3)
    with pytest.raises(ValueError):
        select_keyframes(x[0], 3)
    nan = x.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ValueError):
        select_keyframes(nan, 3)
    zero = x.copy()
    zero[2] = 0.0
    with pytest.raises(ValueError):
        select_keyframes(zero, 3)


# ------------------------------------------------------------ determinism


def test_deterministic_and_dtype_independent():
    rng = np.random.default_rng(10)
    x = np.cumsum(rng.standard_normal((200, 32)), axis=0)
    first = select_keyframes(x.astype(np.float32), 12)
    assert first.dtype == np.int64
    assert (np.diff(first) > 0).all()  # temporal order
    np.testing.assert_array_equal(select_keyframes(x.astype(np.float32), 12), first)
    np.testing.assert_array_equal(select_keyframes(x, 12), first)  # float64 in
    np.testing.assert_array_equal(select_keyframes(x * 7.0, 12), first)  # scale-free
