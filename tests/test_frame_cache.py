"""The frame cache holds exactly what decoding gives, is brought up to date when
keyframes change, and is never trusted: damaged, truncated, stale or foreign caches
are detected and rebuilt or repaired."""

import os
import zlib

import numpy as np
import pytest
import pyarrow.parquet as pq
from PIL import Image

from mama_augment.errors import MamaError
from mama_augment.train.frame_cache import (
    DATA_FILE,
    INDEX_FILE,
    NOT_DECODABLE,
    cache_folder,
    frame_bytes,
    open_frame_cache,
)
from mama_augment.train.frames import DecodedFrames, frame_pixels

SIZE = 24


def _frames(workdir, n=6, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        rel = f"frames/v{k // 2}/{k:02d}.jpg"
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(30 + k, 40, 3), dtype=np.uint8)).save(workdir / rel)
        paths.append(rel)
    return paths


def _decoded(workdir, paths):
    return DecodedFrames([str(workdir / p) for p in paths], SIZE).frames(range(len(paths)))


def test_cache_holds_what_decoding_gives_and_is_reused(tmp_path):
    paths = _frames(tmp_path)
    source, report = open_frame_cache(tmp_path, paths, SIZE)
    assert report.decoded == len(paths) and report.reused == 0
    assert (source.frames(range(len(paths))) == _decoded(tmp_path, paths)).all()
    assert (source.frames([3, 0]).numpy() == _decoded(tmp_path, paths).numpy()[[3, 0]]).all()
    again, report = open_frame_cache(tmp_path, paths, SIZE, workers=2)
    assert report.decoded == 0 and report.reused == len(paths) and report.rebuilt_reason is None
    assert (again.frames(range(len(paths))) == _decoded(tmp_path, paths)).all()


def test_filling_with_workers_gives_the_same_file(tmp_path):
    paths = _frames(tmp_path / "a")
    _frames(tmp_path / "b")
    open_frame_cache(tmp_path / "a", paths, SIZE, workers=0)
    open_frame_cache(tmp_path / "b", paths, SIZE, workers=2)
    data = [(cache_folder(tmp_path / w, SIZE) / DATA_FILE).read_bytes() for w in ("a", "b")]
    assert data[0] == data[1]


def test_a_damaged_frame_is_detected_decoded_again_and_repaired(tmp_path):
    paths = _frames(tmp_path)
    source, _ = open_frame_cache(tmp_path, paths, SIZE)
    data = cache_folder(tmp_path, SIZE) / DATA_FILE
    slot = int(source.slots[2])
    with open(data, "r+b") as handle:  # flip bytes in the middle of frame 2
        handle.seek(slot * frame_bytes(SIZE) + 100)
        handle.write(b"\x00\xff\x00\xff")
    source, report = open_frame_cache(tmp_path, paths, SIZE)  # the index still looks fine
    assert report.decoded == 0
    frames = source.frames(range(len(paths)))
    assert (frames == _decoded(tmp_path, paths)).all()
    assert source.repaired == 1
    stored = np.fromfile(data, dtype=np.uint8)[slot * frame_bytes(SIZE):(slot + 1) * frame_bytes(SIZE)]
    assert zlib.crc32(stored) == source.crcs[2]  # written back


def test_a_changed_keyframe_is_stale_and_decoded_again(tmp_path):
    paths = _frames(tmp_path)
    open_frame_cache(tmp_path, paths, SIZE)
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(tmp_path / paths[1])
    stat = (tmp_path / paths[1]).stat()
    os.utime(tmp_path / paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    source, report = open_frame_cache(tmp_path, paths, SIZE)
    assert report.stale == 1 and report.decoded == 1 and report.reused == len(paths) - 1
    assert (source.frames([1]).numpy()[0] == frame_pixels(tmp_path / paths[1], SIZE)).all()
    # new keyframes (e.g. after keyframes ran on more videos) are added, the rest reused
    more = paths + _frames(tmp_path / "extra", n=2)
    more = more[:-2] + [f"extra/{p}" for p in more[-2:]]
    source, report = open_frame_cache(tmp_path, more, SIZE)
    assert report.decoded == 2 and report.reused == len(paths)
    assert (source.frames(range(len(more))) == _decoded(tmp_path, more)).all()


def test_another_size_is_another_cache(tmp_path):
    paths = _frames(tmp_path)
    open_frame_cache(tmp_path, paths, SIZE)
    source, report = open_frame_cache(tmp_path, paths, SIZE + 8)
    assert report.decoded == len(paths)
    assert source.frames([0]).shape[1:] == (SIZE + 8, SIZE + 8, 3)
    assert (cache_folder(tmp_path, SIZE) / DATA_FILE).exists()


@pytest.mark.parametrize("damage", ["garbage index", "foreign header", "missing data", "truncated data"])
def test_an_unusable_cache_is_rebuilt(tmp_path, damage):
    paths = _frames(tmp_path)
    open_frame_cache(tmp_path, paths, SIZE)
    folder = cache_folder(tmp_path, SIZE)
    if damage == "garbage index":
        (folder / INDEX_FILE).write_bytes(b"not parquet at all")
    elif damage == "foreign header":
        table = pq.read_table(folder / INDEX_FILE)
        meta = dict(table.schema.metadata)
        meta[b"pillow"] = b"0.0-other"
        pq.write_table(table.replace_schema_metadata(meta), folder / INDEX_FILE)
    elif damage == "missing data":
        (folder / DATA_FILE).unlink()
    else:
        os.truncate(folder / DATA_FILE, frame_bytes(SIZE) * 2 + 10)
    source, report = open_frame_cache(tmp_path, paths, SIZE)
    if damage == "truncated data":  # frames past the end are decoded again, the rest kept
        assert report.rebuilt_reason is None and report.decoded == len(paths) - 2
    else:
        assert report.rebuilt_reason and report.decoded == len(paths)
    assert (source.frames(range(len(paths))) == _decoded(tmp_path, paths)).all()
    assert source.repaired == 0


def test_an_undecodable_keyframe_is_recorded_not_fatal(tmp_path):
    paths = _frames(tmp_path)
    (tmp_path / paths[4]).write_bytes(b"\xff\xd8 not really a jpeg")
    source, report = open_frame_cache(tmp_path, paths, SIZE, workers=2)
    assert report.not_decodable == 1 and source.crcs[4] == NOT_DECODABLE
    assert source.broken(range(len(paths))) == [4]
    with pytest.raises(MamaError, match="cannot read the keyframe"):
        source.frames([4])  # asked for anyway: a clear error, never made-up pixels
