from __future__ import annotations

import csv
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mama_augment.errors import UsageError
from mama_augment.inputs import InputItem, discover_inputs, fingerprint, output_name


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ids(items: list[InputItem]) -> list[str]:
    return [item.video_id for item in items]


def test_folder_walk_is_recursive_sorted_and_skips_hidden_and_unknown(tmp_path):
    root = tmp_path / "in"
    for name in ["b.mp4", "a.MKV", "sub/c.webm", "sub/deeper/d.jpg", "notes.txt", "data.csv", ".hidden.mp4", ".cache/e.mp4", "sub/f.xyz"]:
        touch(root / name)
    items = discover_inputs([root])
    assert ids(items) == ["a", "b", "sub/c", "sub/deeper/d"]
    assert all(item.path.is_absolute() and item.path.exists() for item in items)
    assert items[0].size_bytes == 1 and items[0].mtime is not None and items[0].error is None
    assert [item.media_type for item in items] == ["video", "video", "video", "image"]
    assert discover_inputs([root]) == items  # deterministic


def test_tiny_videos_fixture_is_discovered(tiny_videos):
    assert ids(discover_inputs([tiny_videos])) == ["clips/noise", "photo", "scenes", "solid"]


def test_single_file_with_unknown_suffix_is_kept_with_its_stem(tmp_path):
    path = touch(tmp_path / "clip.weird")
    (item,) = discover_inputs([str(path)])
    assert item.video_id == "clip" and item.path == path.absolute()


def test_colliding_ids_keep_their_suffix(tmp_path):
    touch(tmp_path / "in" / "a.mp4")
    touch(tmp_path / "in" / "a.avi")
    touch(tmp_path / "in" / "b.mp4")
    assert ids(discover_inputs([tmp_path / "in"])) == ["a.avi", "a.mp4", "b"]


def test_same_name_in_two_sources_gets_unique_stable_ids(tmp_path):
    first = touch(tmp_path / "one" / "x.mp4")
    second = touch(tmp_path / "two" / "x.mp4")
    items = discover_inputs([first.parent, second.parent])
    assert len(set(ids(items))) == 2
    assert all(i.startswith("x.mp4~") for i in ids(items))
    assert ids(discover_inputs([first.parent, second.parent])) == ids(items)


def test_same_file_given_twice_is_included_once(tmp_path):
    path = touch(tmp_path / "in" / "a.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{path}\nin/a.mp4\n")
    items = discover_inputs([tmp_path / "in", path, listing])
    assert ids(items) == ["a"]


def test_txt_list_resolves_relative_to_list_and_keeps_missing(tmp_path, monkeypatch):
    touch(tmp_path / "data" / "vids" / "a.mp4")
    listing = tmp_path / "data" / "list.txt"
    listing.write_text("# my videos\n\nvids/a.mp4\n   \nvids/missing.mp4\n")
    monkeypatch.chdir(tmp_path)  # not the list's folder
    items = discover_inputs([str(listing)])
    assert ids(items) == ["vids/a", "vids/missing"]
    assert items[0].path == (tmp_path / "data" / "vids" / "a.mp4").absolute()
    missing = items[1]
    assert missing.size_bytes is None and missing.mtime is None
    assert "not found" in missing.error


def test_csv_list_with_video_ids(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "b.mp4")
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "video_id", "caption"])
        writer.writerow(["a.mp4", "first", "x"])
        writer.writerow([str(tmp_path / "b.mp4"), "", "y"])
    assert ids(discover_inputs([listing])) == ["first", "b"]


def test_explicit_ids_are_never_changed_derived_ones_step_aside(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "b.mp4")
    listing = tmp_path / "list.csv"
    listing.write_text("path,video_id\nb.mp4,a\na.mp4,\n")
    assert ids(discover_inputs([listing])) == ["a", "a.mp4"]


def test_duplicate_explicit_ids_are_a_usage_error(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "b.mp4")
    listing = tmp_path / "list.csv"
    listing.write_text("path,video_id\na.mp4,same\nb.mp4,same\n")
    with pytest.raises(UsageError, match="'same'"):
        discover_inputs([listing])


def test_parquet_list(tmp_path):
    touch(tmp_path / "a.mp4")
    listing = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": ["a.mp4", "gone.mp4"], "video_id": ["va", None]}), listing)
    items = discover_inputs([listing])
    assert ids(items) == ["va", "gone"]
    assert items[0].error is None and items[1].error is not None


def test_list_without_path_column_is_a_usage_error(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("file,video_id\na.mp4,a\n")
    with pytest.raises(UsageError, match="'path' column"):
        discover_inputs([listing])


def test_missing_source_and_empty_result_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="input not found"):
        discover_inputs([tmp_path / "nope"])
    touch(tmp_path / "empty" / "readme.md")
    with pytest.raises(UsageError, match="no videos or images found"):
        discover_inputs([tmp_path / "empty"])


def test_excluded_work_folder_is_not_walked(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "mama-work" / "frames" / "a" / "0001.jpg")
    assert ids(discover_inputs([tmp_path], exclude=[tmp_path / "mama-work"])) == ["a"]
    assert len(discover_inputs([tmp_path])) == 2


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_symlink_loop_does_not_hang(tmp_path):
    touch(tmp_path / "in" / "a.mp4")
    os.symlink(tmp_path / "in", tmp_path / "in" / "loop")
    assert ids(discover_inputs([tmp_path / "in"])) == ["a"]


@pytest.mark.parametrize("video_id, name", [("clip_01", "clip_01"), ("a-b.c", "a-b.c"), ("cats/tabby", "cats+tabby"),
                                            ("x/y/z", "x+y+z"), ("鳥/飛ぶ", "鳥+飛ぶ")])
def test_output_name_keeps_safe_ids_readable(video_id, name):
    assert output_name(video_id) == name


@pytest.mark.parametrize("video_id", ["../../etc/passwd", "/abs/path", "a b?", "c:\\win\\name", ".hidden", "", "x/../y", "a|b",
                                      "a+b", "a~b"])
def test_output_name_sanitises(video_id):
    name = output_name(video_id)
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert all(ch.isalnum() or ch in "_-.+~" for ch in name)
    assert "~" in name and name != video_id
    assert output_name(video_id) == name  # stable


def test_output_name_never_maps_two_ids_to_one_name():
    video_ids = ["a b", "a_b", "a?b", "a:b", "../a_b", "__/a_b", "a/b", "a+b", "a_b-" + "0" * 8, "a", "a/b/c", "a+b/c",
                 "x" * 300, "x" * 301, "鳥" * 80, "鳥" * 81]
    names = [output_name(i) for i in video_ids]
    assert len(set(names)) == len(video_ids)
    assert all(len(n.encode()) <= 200 for n in names)


def test_fingerprint(tmp_path):
    path = touch(tmp_path / "a.mp4", b"12345")
    size, mtime = fingerprint(path)
    assert size == 5 and mtime == pytest.approx(path.stat().st_mtime)
    assert fingerprint(tmp_path / "missing") == (None, None)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_folder_walk_fingerprints_and_links(tmp_path):
    # The walk takes each file's fingerprint and real path itself (one stat a file); a
    # link to a file already found is the same input, a link to another file is read
    # through (its target's fingerprint).
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.mp4").write_bytes(b"x" * 10)
    (tmp_path / "outside.mp4").write_bytes(b"y" * 7)
    os.symlink(folder / "a.mp4", folder / "sub" / "same.mp4")
    os.symlink(tmp_path / "outside.mp4", folder / "sub" / "other.mp4")
    items = discover_inputs([folder])
    assert [item.video_id for item in items] == ["a", "sub/other"]
    assert all(isinstance(item.path, Path) and item.path.is_absolute() for item in items)
    assert [(item.size_bytes, item.mtime) for item in items] == [
        fingerprint(folder / "a.mp4"), fingerprint(tmp_path / "outside.mp4")]
