"""Training reads keyframe embeddings as a stream into one float16 array on disk."""

from __future__ import annotations

import numpy as np
import pytest

from mama_augment.errors import UsageError
from mama_augment.manifest import KEYFRAMES, PartWriter, compact
from mama_augment.train import video_cache
from mama_augment.train.data import load_videos


def _embedding(i: int, frames: int, dim: int = 6) -> np.ndarray:
    return (np.arange(frames * dim, dtype=np.float32).reshape(frames, dim) + 10 * i) / 100


def _workdir(tmp_path):
    workdir = tmp_path / "work"
    with PartWriter(workdir, KEYFRAMES) as writer:
        writer.write([{"video_id": f"v{i}", "status": "ok", "keyframe_embeddings": _embedding(i, 1 + i % 3).tolist(),
                       "keyframe_paths": [f"frames/v{i}/00.jpg"]} for i in (4, 2, 0, 3, 1)])
    compact(workdir, KEYFRAMES)
    with PartWriter(workdir, KEYFRAMES) as writer:  # left as parts: newer rows win
        writer.write([{"video_id": "v2", "status": "ok", "keyframe_embeddings": _embedding(7, 2).tolist()},
                      {"video_id": "v3", "status": "failed", "error": "decode"},
                      {"video_id": "v5", "status": "ok", "keyframe_embeddings": None}])
    return workdir


def test_embeddings_are_float16_views_of_one_cached_array(tmp_path):
    # Every embedding went through to_pydict() as Python floats, one float32 array a
    # video: ~0.85 MB a video, out of memory at 50 k videos before the first step.
    workdir = _workdir(tmp_path)
    videos, issues, _ = load_videos(workdir, "keyframe_embeddings")
    assert videos.video_ids == ["v0", "v1", "v2", "v4"]
    assert issues == {"video_failed_in_keyframes": 1, "video_without_embeddings": 1}
    want = {"v0": _embedding(0, 1), "v1": _embedding(1, 2), "v2": _embedding(7, 2), "v4": _embedding(4, 2)}
    for video_id, array in zip(videos.video_ids, videos.keyframe_embeddings):
        assert array.dtype == np.float16
        np.testing.assert_allclose(array.astype(np.float32), want[video_id], rtol=1e-3)
    files = list((workdir / "cache" / "features").glob("*/frames.f16"))
    assert len(files) == 1
    assert files[0].stat().st_size == 7 * 6 * 2  # 7 frames of 6 float16 values
    assert all(np.shares_memory(a, videos.keyframe_embeddings[0].base) for a in videos.keyframe_embeddings)


def test_cache_is_reused_until_the_manifest_changes(tmp_path, monkeypatch):
    workdir = _workdir(tmp_path)
    first, _, _ = load_videos(workdir, "keyframe_embeddings")

    def not_read(*args, **kwargs):
        raise AssertionError("the manifest was read again")

    with monkeypatch.context() as patch:
        patch.setattr(video_cache, "video_batches", not_read)
        again, issues, _ = load_videos(workdir, "keyframe_embeddings")
    assert again.video_ids == first.video_ids and issues["video_failed_in_keyframes"] == 1
    with PartWriter(workdir, KEYFRAMES) as writer:
        writer.write([{"video_id": "v1", "status": "ok", "keyframe_embeddings": _embedding(9, 1).tolist()}])
    changed, _, _ = load_videos(workdir, "keyframe_embeddings")
    np.testing.assert_allclose(changed.keyframe_embeddings[1].astype(np.float32), _embedding(9, 1), rtol=1e-3)
    assert len(list((workdir / "cache" / "features").iterdir())) == 1  # the stale cache went


def test_paths_backbone_reads_no_embeddings(tmp_path):
    workdir = _workdir(tmp_path)
    (workdir / "frames" / "v4").mkdir(parents=True)
    (workdir / "frames" / "v4" / "00.jpg").write_bytes(b"jpeg")
    videos, issues, _ = load_videos(workdir, "keyframe_paths")
    assert videos.video_ids == ["v4"] and videos.keyframe_paths == [["frames/v4/00.jpg"]]
    assert issues["video_without_frames"] == 4
    assert not (workdir / "cache" / "features").exists()


def test_embeddings_of_several_sizes_are_a_usage_error(tmp_path):
    workdir = tmp_path / "work"
    PartWriter(workdir, KEYFRAMES).write([
        {"video_id": "a", "status": "ok", "keyframe_embeddings": _embedding(0, 1, dim=4).tolist()},
        {"video_id": "b", "status": "ok", "keyframe_embeddings": _embedding(0, 1, dim=6).tolist()},
    ])
    with pytest.raises(UsageError, match="several sizes"):
        load_videos(workdir, "keyframe_embeddings")


def test_features_model_takes_the_cached_array_without_a_copy(tmp_path):
    torch = pytest.importorskip("torch")
    from mama_augment.train.models import _frame_table

    workdir = _workdir(tmp_path)
    videos, _, _ = load_videos(workdir, "keyframe_embeddings")
    flat, offsets = _frame_table(videos.keyframe_embeddings, 6)
    assert flat.dtype == np.float16 and flat.shape == (7, 6)
    assert np.shares_memory(flat, videos.keyframe_embeddings[0])
    for array, offset in zip(videos.keyframe_embeddings, offsets):
        np.testing.assert_array_equal(flat[offset : offset + len(array)], array)
    assert torch.from_numpy(flat).data_ptr() == flat.ctypes.data
    # Arrays that are not views of one table are concatenated, as before.
    loose = [np.ones((2, 3), np.float32), np.zeros((1, 3), np.float32)]
    flat, offsets = _frame_table(loose, 3)
    assert flat.shape == (3, 3) and list(offsets) == [0, 2]


def test_features_model_inputs_are_the_same_from_one_table_or_a_table_a_file(tmp_path):
    """The padded batch a model gets is bit for bit the same whether the videos' frames
    are rows of one table (a copied cache) or of several (the embeddings files, mapped):
    gathered a file at a time (CPU), or the files stacked into one table (CUDA's way)."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from mama_augment.train.columns import FrameRows
    from mama_augment.train.data import VideoTable
    from mama_augment.train.models import FeaturesModel, _stacked_tables

    rng = np.random.default_rng(5)
    dim, videos = 8, 40
    counts = rng.integers(1, 6, videos)
    table = rng.integers(0, 3, videos).astype(np.int32)
    files, offsets = [], np.zeros(videos, np.int64)
    for t in range(3):
        mine = np.flatnonzero(table == t)
        # Each file holds its videos in a shuffled order, with rows no video points at between them.
        starts = np.cumsum(counts[mine][::-1] + 1) - (counts[mine][::-1] + 1) + 1
        offsets[mine[::-1]] = starts
        values = rng.standard_normal((int(starts[-1] + counts[mine][0]) + 2, dim)).astype(np.float16)
        values.tofile(tmp_path / f"{t}.f16")
        files.append(np.memmap(tmp_path / f"{t}.f16", dtype=np.float16, mode="c", shape=values.shape))
    several = FrameRows(files, offsets, counts, table)
    base = np.concatenate([[0], np.cumsum([len(f) for f in files])])
    one = FrameRows(np.concatenate(files), base[table] + offsets, counts)
    stacked, stacked_offsets = _stacked_tables(several, torch.device("cpu"))
    from_stack = FrameRows(stacked.numpy(), stacked_offsets, counts)
    for k in range(videos):
        np.testing.assert_array_equal(several[k], one[k])
    config = SimpleNamespace(temporal="attention", logit_scale_init=None, head_hidden=0, embed_dim=16)
    models = []
    for rows in (one, several, from_stack):
        model = FeaturesModel(dim, SimpleNamespace(dim=4), config, None)
        model.set_videos(VideoTable([f"v{k}" for k in range(videos)], rows, [[]] * videos, [None] * videos))
        models.append(model)
    assert models[1]._tables and not models[0]._tables and not models[2]._tables
    batches = [rng.choice(videos, 12, replace=False), np.array([3]), np.arange(videos), np.array([], np.int64),
               np.flatnonzero(table == 1)]
    for batch in batches:
        want_frames, want_mask = models[0].video_inputs(batch)
        for model in models[1:]:
            frames, mask = model.video_inputs(batch)
            assert frames.dtype == want_frames.dtype and frames.shape == want_frames.shape
            assert torch.equal(frames, want_frames) and torch.equal(mask, want_mask)
