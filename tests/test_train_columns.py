"""The compact columns of a run's data read as the lists they replace, and the data
built from a work folder is held in them."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from mama_augment.datasets.splits import SPLITS, split_of_video
from mama_augment.train.columns import CategoryColumn, FrameRows, ListColumn, NullableInts, Ragged, TextColumn
from mama_augment.train.config import TrainConfig
from mama_augment.train.data import _split_winners, _video_concepts, build_data, epoch_batches
from train_helpers import make_workdir


def test_text_column_reads_as_its_list():
    words = ["a dog", "", "é à ü", "日本語のキャプション", "x" * 300, "tab\tand\nnewline"]
    column = TextColumn(words)
    assert len(column) == len(words) and list(column) == words and column == words
    assert [column[i] for i in range(len(words))] == words
    assert column[-1] == words[-1] and column[np.int64(2)] == words[2]
    assert column[1:4] == words[1:4] and column[np.array([5, 0])] == [words[5], words[0]]
    assert TextColumn.from_arrow(pa.array(words).slice(1)) == words[1:]
    assert TextColumn.from_arrow(column.to_arrow()) == words
    assert pickle.loads(pickle.dumps(column)) == words
    partly = iter(column)
    next(partly)  # a loop left unfinished does not stop the column from growing
    column.append("more")
    assert column[-1] == "more" and len(column) == len(words) + 1
    with pytest.raises(IndexError):
        column[len(column)]
    assert not TextColumn() and TextColumn.from_arrow(pa.array([], pa.string())) == []


def test_category_and_nullable_columns_read_as_their_lists():
    original = "original"
    values = [original, "generated", None, original, "meta", None]
    column = CategoryColumn(values)
    assert list(column) == values and column == values and Counter(column) == Counter(values)
    assert column[0] is original and "generated" in column and "other" not in column
    assert column.mask(original).tolist() == [v == original for v in values]
    assert column.mask("absent").tolist() == [False] * len(values)
    ints = NullableInts([0, None, 3])
    ints += [None]
    assert list(ints) == [0, None, 3, None] and ints[1] is None and bool(ints) and not NullableInts()


def test_ragged_frame_rows_and_lists():
    rows = Ragged.from_rows([[3, 1], [7], [4, 5, 6]])
    assert len(rows) == 3 and rows == [np.array([3, 1]), np.array([7]), np.array([4, 5, 6])]
    assert rows.lengths().tolist() == [2, 1, 3] and np.concatenate(list(rows)).tolist() == [3, 1, 7, 4, 5, 6]
    frames = np.arange(12, dtype=np.float16).reshape(6, 2)
    videos = FrameRows(frames, np.array([4, 0]), np.array([2, 3]))
    assert videos[0].tolist() == frames[4:6].tolist() and videos[1].tolist() == frames[0:3].tolist()
    assert FrameRows(None, np.zeros(2), np.zeros(2))[1].shape == (0, 0)
    paths = ListColumn([["a.jpg", "b.jpg"], [], None])
    assert list(paths) == [["a.jpg", "b.jpg"], [], []] and paths[0] == ["a.jpg", "b.jpg"]


def test_split_votes_follow_the_counter_rule():
    """The vectorised vote matches split_of_video's Counter.most_common, ties included."""
    rng = np.random.default_rng(0)
    votes_video = rng.integers(0, 300, 2000)
    votes_split = rng.integers(0, 3, 2000).astype(np.int8)
    winner, several = _split_winners(votes_video, votes_split, 320)
    counters: dict[int, Counter] = {}
    for v, s in zip(votes_video.tolist(), votes_split.tolist()):
        counters.setdefault(v, Counter())[SPLITS[s]] += 1
    for v in range(320):
        expected = split_of_video(f"v{v}", counters.get(v), True, 0.1, 0.1)
        assert (SPLITS[winner[v]] if winner[v] >= 0 else "train") == expected
        assert several[v] == (len(counters.get(v, ())) > 1)


def test_video_concepts_follow_the_counter_rule():
    rng = np.random.default_rng(1)
    names = ["dog", "car", None, "tree", "boat"]
    concepts = CategoryColumn(names[k] for k in rng.integers(0, len(names), 1500))
    caption_video = rng.integers(0, 200, 1500)
    got = _video_concepts(concepts, caption_video, 210)
    votes: dict[int, Counter] = {}
    for c, v in enumerate(caption_video.tolist()):
        if concepts[c] is not None:
            votes.setdefault(v, Counter())[concepts[c]] += 1
    assert list(got) == [votes[i].most_common(1)[0][0] if i in votes else None for i in range(210)]


def test_build_data_holds_columns_not_an_object_a_row(tmp_path):
    workdir, captions = make_workdir(tmp_path, n_videos=120, with_split=True, generated=True)
    data = build_data(TrainConfig(captions=str(captions), meta_weighting=False, loss="infonce"), workdir)
    assert isinstance(data.texts, TextColumn) and isinstance(data.videos.video_ids, TextColumn)
    assert isinstance(data.caption_source, CategoryColumn) and isinstance(data.video_split, CategoryColumn)
    assert isinstance(data.caption_concept, CategoryColumn) and isinstance(data.videos.concepts, CategoryColumn)
    assert isinstance(data.caption_index, NullableInts) and isinstance(data.train_captions, Ragged)
    assert isinstance(data.videos.keyframe_embeddings, FrameRows) and isinstance(data.videos.keyframe_paths, ListColumn)
    # The columns index as the lists did: each training video's captions are its own.
    for video, captions_of in zip(data.train_videos, data.train_captions):
        assert (data.caption_video[captions_of] == video).all()
    videos, picked = epoch_batches(data, 0, 0, 8, "one")[0]
    assert (data.caption_video[picked] == videos).all()


def test_frame_rows_each_reads_every_video_of_a_mapped_file(tmp_path):
    """Handing a chunk's pages back to the kernel changes no value, even of a page this
    process wrote (copy-on-write), and works on the cache's kind of mapping."""
    values = np.random.default_rng(2).standard_normal((5000, 64)).astype(np.float16)
    values.tofile(tmp_path / "frames.f16")
    frames = np.memmap(tmp_path / "frames.f16", dtype=np.float16, mode="c", shape=values.shape)
    frames[7, 3] = 9.0  # written here only
    counts = np.full(1000, 5)
    rows = FrameRows(frames, np.arange(1000)[::-1] * 5, counts)
    order = list(range(0, 1000, 3)) + [999, 0]
    expected = [frames[rows.offsets[i] : rows.offsets[i] + 5].mean(axis=0) for i in order]
    got = rows.each(order, lambda e: e.mean(axis=0), chunk=16)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert frames[7, 3] == 9.0 and np.array_equal(frames[8:], values[8:])
