"""Benchmark annotation files, laid out as the real ones are: readers, detection,
several files with split lists, id matching, and bad files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.datasets import (
    FORMATS,
    Source,
    detect_format,
    load_captions,
    match_video_ids,
    read_annotations,
    read_multiple_choice,
    split_from_name,
)
from mama_augment.errors import UsageError
from workdir_helpers import write

runner = CliRunner()



def rows(result) -> list[tuple]:
    frame = result.frame
    cols = [c for c in ("video_id", "caption", "split", "concept") if c in frame.columns]
    return [tuple(r) for r in frame[cols].itertuples(index=False)]


# ----------------------------------------------------------------------------- MSR-VTT


def msrvtt_json(videos: list[tuple[str, int, str]], captions_per_video: int = 2, start_sen_id: int = 0) -> str:
    """The layout of train_val_videodatainfo.json / MSRVTT_data.json."""
    data = {
        "info": {"contributor": "Microsoft Research", "data_created": "2016-04-14 14:30:20", "version": "1.0",
                 "description": "This is 1.0 version of the 2016 MSR-VTT dataset.", "year": "2016"},
        "videos": [
            {"category": category, "url": f"https://www.youtube.com/watch?v=yt{n}", "video_id": vid,
             "start time": 137.72, "end time": 149.44, "split": split, "id": n}
            for n, (vid, category, split) in enumerate(videos)
        ],
        "sentences": [
            {"caption": f"caption {k} of {vid}", "video_id": vid, "sen_id": start_sen_id + n * captions_per_video + k}
            for n, (vid, _, _) in enumerate(videos) for k in range(captions_per_video)
        ],
    }
    return json.dumps(data)


def test_msrvtt_official_files_give_splits_and_categories(tmp_path):
    train_val = write(tmp_path / "train_val_videodatainfo.json",
                      msrvtt_json([("video0", 9, "train"), ("video1", 3, "train"), ("video2", 9, "validate")]))
    test = write(tmp_path / "test_videodatainfo.json", msrvtt_json([("video3", 14, "test")], 3, 6))
    assert detect_format(Source(train_val)) == "msrvtt"
    result = read_annotations([train_val, test])
    assert rows(result)[:2] == [("video0", "caption 0 of video0", "train", "category 9"),
                                ("video0", "caption 1 of video0", "train", "category 9")]
    assert result.frame.groupby("split").size().to_dict() == {"train": 4, "val": 2, "test": 3}
    assert result.formats == ["msrvtt"] and not result.paragraph and not result.problems

    names = write(tmp_path / "category.txt", "music\t0\npeople\t1\ngaming\t2\nsports/actions\t3\n"
                  + "".join(f"name{n}\t{n}\n" for n in range(4, 20)))
    named = read_annotations([train_val, test, names])
    assert set(named.frame["concept"]) == {"name9", "sports/actions", "name14"}


def test_msrvtt_clip4clip_layout_9k_and_1k_a(tmp_path):
    videos = [(f"video{n}", n % 3, "train" if n < 6 else "test") for n in range(10)]
    data = write(tmp_path / "MSRVTT_data.json", msrvtt_json(videos, 20))
    nine_k = write(tmp_path / "MSRVTT_train.9k.csv", "video_id\n" + "".join(f"video{n}\n" for n in range(7)))
    jsfusion = write(tmp_path / "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\n"
                     "ret0,msr8,video8,a man is singing on a stage\n"
                     "ret1,msr9,video9,\"a woman, smiling, cooks pasta\"\n")
    assert [detect_format(Source(p)) for p in (data, nine_k, jsfusion)] == ["msrvtt", "split-list", "msrvtt-jsfusion"]
    result = read_annotations([data, nine_k, jsfusion])
    frame = result.frame
    # 9k: every caption of the listed videos trains; 1k-A: one caption per test video, from the csv.
    assert (frame["split"] == "train").sum() == 7 * 20
    test = frame[frame["split"] == "test"]
    assert list(test["caption"]) == ["a man is singing on a stage", "a woman, smiling, cooks pasta"]
    assert list(test["concept"]) == ["category 2", "category 0"]  # from the JSON's videos
    assert result.problems.counts["video_not_in_split_lists"] == 1  # video7: in neither list
    assert "video7" in result.problems.examples["video_not_in_split_lists"]
    assert any("40 caption(s)" in note for note in result.notes)  # the 20 + 20 JSON captions of video8/9


def test_jsfusion_with_an_index_column_and_a_bom(tmp_path):
    path = write(tmp_path / "MSRVTT_JSFUSION_test.csv",
                 "\ufeff,key,vid_key,video_id,sentence\n0,ret0,msr7,video7,a dog runs\n")
    result = read_annotations([path])
    assert rows(result) == [("video7", "a dog runs", "test")]


# ----------------------------------------------------------------------------- MSVD


MSVD_DESCRIPTIONS = """###########################################################
# Microsoft Research Video Description Corpus
# English descriptions, one per line: clip id, then the description
###########################################################
-4wsuPCjDBc_5_15 a squirrel is eating a peanut in it's shell
-4wsuPCjDBc_5_15 a chipmunk is eating
-7KMZQEsJW4_205_208 a woman is slicing an onion
-8y1Q0rA3n8_108_115 a man plays a guitar
"""


def test_msvd_descriptions_with_split_lists(tmp_path):
    descriptions = write(tmp_path / "AllVideoDescriptions.txt", MSVD_DESCRIPTIONS)
    train = write(tmp_path / "train_list.txt", "-4wsuPCjDBc_5_15\n-7KMZQEsJW4_205_208\n")
    test = write(tmp_path / "test_list.txt", "-8y1Q0rA3n8_108_115\n")
    assert detect_format(Source(descriptions)) == "msvd"
    result = read_annotations([descriptions, train, test])
    assert rows(result) == [
        ("-4wsuPCjDBc_5_15", "a squirrel is eating a peanut in it's shell", "train"),
        ("-4wsuPCjDBc_5_15", "a chipmunk is eating", "train"),
        ("-7KMZQEsJW4_205_208", "a woman is slicing an onion", "train"),
        ("-8y1Q0rA3n8_108_115", "a man plays a guitar", "test"),
    ]
    alone = read_annotations([descriptions])
    assert "split" not in alone.frame.columns  # no lists: the hash split of train applies


def test_msvd_raw_captions_as_json_join_tokens(tmp_path):
    path = write(tmp_path / "raw-captions.json", json.dumps({
        "-4wsuPCjDBc_5_15": [["a", "squirrel", "is", "eating"], ["a", "chipmunk", "eats"]],
        "-7KMZQEsJW4_205_208": ["a woman slices an onion"],
    }))
    assert detect_format(Source(path)) == "msvd-json"
    assert rows(read_annotations([path])) == [
        ("-4wsuPCjDBc_5_15", "a squirrel is eating"), ("-4wsuPCjDBc_5_15", "a chipmunk eats"),
        ("-7KMZQEsJW4_205_208", "a woman slices an onion"),
    ]


class _Touch:
    """Unpickling this would create a file: proof that nothing is unpickled."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("name", ["raw-captions.pkl", "raw-captions.json"])
def test_a_pickle_is_refused_with_a_conversion_hint_and_never_loaded(tmp_path, name):
    marker = tmp_path / "unpickled"
    path = write(tmp_path / name, pickle.dumps({"x": [["a"]], "payload": _Touch(marker)}, protocol=4))
    with pytest.raises(UsageError) as error:
        read_annotations([path])
    assert "pickle" in str(error.value) and "json.dump(pickle.load(" in str(error.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------- paragraphs


def test_didemo_paragraph_in_time_order(tmp_path):
    moments = [  # as in train_data.json: the file is not in time order
        {"annotation_id": 2, "description": "the girl jumps into the pool", "times": [[3, 3], [3, 4], [2, 3]],
         "video": "12090392@N02_13482799053_87ef417396.mov", "num_segments": 6, "dl_link": "https://flickr.com/x"},
        {"annotation_id": 1, "description": "a girl walks to the pool", "times": [[0, 0], [0, 1], [0, 0]],
         "video": "12090392@N02_13482799053_87ef417396.mov", "num_segments": 6, "dl_link": "https://flickr.com/x"},
        {"annotation_id": 3, "description": "a dog barks", "times": [[1, 1]], "video": "99@N00_1_ab.mp4",
         "num_segments": 5, "dl_link": "https://flickr.com/y"},
    ]
    path = write(tmp_path / "train_data.json", json.dumps(moments))
    assert detect_format(Source(path)) == "didemo"
    result = read_annotations([path])
    assert rows(result) == [
        ("12090392@N02_13482799053_87ef417396.mov", "a girl walks to the pool the girl jumps into the pool", "train"),
        ("99@N00_1_ab.mp4", "a dog barks", "train"),
    ]
    assert result.paragraph
    # the files are named after the Flickr video: the extension is dropped to match keyframes
    matched = load_captions([path], video_ids=["12090392@N02_13482799053_87ef417396", "99@N00_1_ab"])
    assert set(matched.frame["video_id"]) == {"12090392@N02_13482799053_87ef417396", "99@N00_1_ab"}
    assert matched.match.by_rule["file name"] == 2


def test_activitynet_paragraphs_val_1_is_test_and_v_prefix_matches(tmp_path):
    train = write(tmp_path / "train.json", json.dumps({
        "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[24.25, 38.08], [0.83, 19.86], [38.08, 82.73]],
                          "sentences": [" Then she dances.", "A young woman is seen standing.  ", " She ends."]},
    }))
    val = write(tmp_path / "val_1.json", json.dumps({
        "v_uqiMw7tQ1Cc": {"duration": 55.15, "timestamps": [[0.28, 55.15]], "sentences": ["A weight lifter lifts."]},
    }))
    assert detect_format(Source(train)) == "activitynet"
    result = read_annotations([train, val])
    assert rows(result) == [
        ("v_QOlSCBRmfWY", "A young woman is seen standing. Then she dances. She ends.", "train"),
        ("v_uqiMw7tQ1Cc", "A weight lifter lifts.", "test"),
    ]
    matched = load_captions([train, val], video_ids=["activitynet/QOlSCBRmfWY", "activitynet/uqiMw7tQ1Cc"])
    assert matched.match.by_rule["v_ prefix"] == 2 and not matched.match.unmatched

    ids = write(tmp_path / "val_ids.json", json.dumps(["v_uqiMw7tQ1Cc"]))
    assert detect_format(Source(ids)) == "activitynet-ids"
    with_lists = read_annotations([train, val, write(tmp_path / "train_ids.json", '["v_QOlSCBRmfWY"]'), ids])
    assert list(with_lists.frame["split"]) == ["train", "test"]


# ----------------------------------------------------------------------------- LSMDC, VATEX, WebVid, CLIP-ViP


LSMDC_LINE = "{clip}\t{a}\t{b}\t{a}\t{b}\t{sentence}\n"


def test_lsmdc_tab_separated_files_and_clips_in_movie_folders(tmp_path):
    clip = "0001_American_Beauty_00.00.51.926-00.00.54.129"
    training = write(tmp_path / "LSMDC16_annos_training.csv",
                     LSMDC_LINE.format(clip=clip, a="00.00.51.926", b="00.00.54.129", sentence="SOMEONE looks up.")
                     + LSMDC_LINE.format(clip=clip, a="00.00.51.926", b="00.00.54.129", sentence="He smiles \"broadly\"."))
    test = write(tmp_path / "LSMDC16_challenge_1000_publictect.csv",
                 LSMDC_LINE.format(clip="1010_TITANIC_00.41.32.072-00.41.40.196", a="00.41.32.072", b="00.41.40.196",
                                   sentence="The ship sails."))
    assert detect_format(Source(training)) == "lsmdc"
    result = read_annotations([training, test])
    assert rows(result) == [(clip, "SOMEONE looks up.", "train"), (clip, 'He smiles "broadly".', "train"),
                            ("1010_TITANIC_00.41.32.072-00.41.40.196", "The ship sails.", "test")]
    matched = load_captions([training, test], video_ids=[f"0001_American_Beauty/{clip}",
                                                          "1010_TITANIC/1010_TITANIC_00.41.32.072-00.41.40.196"])
    assert matched.match.by_rule["file name"] == 2


def test_lsmdc_non_utf8_bytes_are_counted_not_fatal(tmp_path):
    line = LSMDC_LINE.format(clip="0001_A_00.00.01.000-00.00.02.000", a="00.00.01.000", b="00.00.02.000",
                             sentence="SOMEONE says caf\xe9.")
    path = write(tmp_path / "LSMDC16_annos_val.csv", line.encode("latin-1") + line.replace("caf\xe9", "tea").encode())
    result = read_annotations([path])
    assert result.problems.counts["non_utf8_text"] == 1
    assert "line 1" in result.problems.examples["non_utf8_text"]
    assert rows(result)[0][1] == "SOMEONE says caf\ufffd." and rows(result)[1][2] == "val"


def test_vatex_english_captions_and_time_suffix_matching(tmp_path):
    path = write(tmp_path / "vatex_training_v1.0.json", json.dumps([
        {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": ["A man plays a drum.", "Someone drums."],
         "chCap": ["一个男人在打鼓。", "有人在打鼓。"]},
        {"videoID": "G9zN5TTuGO4_000179_000189", "enCap": ["A dog runs."], "chCap": ["一只狗在跑。"]},
    ], ensure_ascii=False))
    assert detect_format(Source(path)) == "vatex"
    result = read_annotations([path])
    assert rows(result) == [("Ptf_2VRj-V0_000122_000132", "A man plays a drum.", "train"),
                            ("Ptf_2VRj-V0_000122_000132", "Someone drums.", "train"),
                            ("G9zN5TTuGO4_000179_000189", "A dog runs.", "train")]
    # one video saved whole under its YouTube id, one saved as the clip
    matched = load_captions([path], video_ids=["Ptf_2VRj-V0", "G9zN5TTuGO4_000179_000189"])
    assert dict(matched.match.by_rule) == {"exact": 1, "time suffix": 1}


def test_webvid_csv_with_page_dirs_either_column_order(tmp_path):
    two_m = write(tmp_path / "results_2M_train.csv",
                  "videoid,contentUrl,duration,page_dir,name\n"
                  "31353427,https://ak.picdn.net/a.mp4,PT00H00M15S,006001_006050,\"Merida, mexico - may 23, 2017: tourists walk\"\n"
                  "14781349,https://ak.picdn.net/b.mp4,PT00H00M31S,006001_006050,Happy family using laptop on bed\n")
    ten_m = write(tmp_path / "results_10M_val.csv",
                  "videoid,contentUrl,duration,page_idx,page_dir,name\n"
                  "1066692580,https://ak.picdn.net/c.mp4,PT00H00M09S,1,000001_000050,Aerial shot of a city\n")
    assert detect_format(Source(two_m)) == "webvid" == detect_format(Source(ten_m))
    result = read_annotations([two_m, ten_m])
    assert rows(result) == [
        ("006001_006050/31353427", "Merida, mexico - may 23, 2017: tourists walk", "train"),
        ("006001_006050/14781349", "Happy family using laptop on bed", "train"),
        ("000001_000050/1066692580", "Aerial shot of a city", "val"),
    ]
    flat = load_captions([two_m], video_ids=["webvid/31353427", "webvid/14781349"])
    assert flat.match.by_rule["file name"] == 2


def test_clip_vip_jsonl_string_or_list_and_vindlu_json(tmp_path):
    train = write(tmp_path / "train9k.jsonl",
                  '{"clip_id": "video0", "text": ["a man sings", "a man is singing"]}\n'
                  '{"clip_id": "video1", "text": "a cat sleeps"}\n')
    test = write(tmp_path / "test1ka.jsonl", '{"clip_id": "video7010", "text": "a girl dances"}\n'
                                            '{"clip_id": "video7011", "text": "two dogs play"}\n')
    assert detect_format(Source(train)) == "clip-vip"
    assert rows(read_annotations([train, test])) == [
        ("video0", "a man sings", "train"), ("video0", "a man is singing", "train"),
        ("video1", "a cat sleeps", "train"), ("video7010", "a girl dances", "test"), ("video7011", "two dogs play", "test"),
    ]
    vindlu = write(tmp_path / "msrvtt_ret_test1k.json", json.dumps([{"video": "video7010.mp4", "caption": "a girl dances"}]))
    assert rows(read_annotations([vindlu])) == [("video7010.mp4", "a girl dances", "test")]
    didemo = write(tmp_path / "didemo_ret" / "test.jsonl", '{"clip_id": "x.mov", "text": ["first", "then second"]}\n'
                                                         '{"clip_id": "y.mov", "text": ["only"]}\n')
    paragraph = read_annotations([didemo])
    assert paragraph.paragraph and rows(paragraph)[0] == ("x.mov", "first then second", "test")


def test_own_csv_and_jsonl_still_read_with_split_and_concept(tmp_path):
    csv = write(tmp_path / "captions.csv", "video_id,caption,split,concept\na,one,train,dog\nb,two,test,cat\n")
    jsonl = write(tmp_path / "more.jsonl", '{"video_id": "c", "caption": "three"}\n{"video_id": "d", "caption": "four"}\n')
    assert detect_format(Source(csv)) == "mama" == detect_format(Source(jsonl))
    assert rows(read_annotations([csv])) == [("a", "one", "train", "dog"), ("b", "two", "test", "cat")]


def test_split_list_utf16_with_bom(tmp_path):
    descriptions = write(tmp_path / "AllVideoDescriptions.txt", MSVD_DESCRIPTIONS)
    utf16 = write(tmp_path / "test_list.txt", "-8y1Q0rA3n8_108_115\r\n".encode("utf-16"))
    result = read_annotations([descriptions, utf16])
    assert list(result.frame["split"]) == ["test"]
    assert result.problems.counts["video_not_in_split_lists"] == 2


@pytest.mark.parametrize("name, split", [
    ("MSRVTT_train.9k.csv", "train"), ("MSRVTT_JSFUSION_test.csv", "test"), ("val_list.txt", "val"),
    ("LSMDC16_annos_training.csv", "train"), ("LSMDC16_challenge_1000_publictect.csv", "test"),
    ("vatex_validation_v1.0.json", "val"), ("vatex_public_test_english_v1.1.json", "test"),
    ("results_2M_val.csv", "val"), ("test1ka.jsonl", "test"), ("train_val_videodatainfo.json", None),
    ("AllVideoDescriptions.txt", None),
])
def test_split_from_file_name(name, split):
    assert split_from_name(name) == split


# ----------------------------------------------------------------------------- id matching


def test_id_matching_rules_and_ambiguity():
    keyframes = ["TrainValVideo/video0", "video1.mp4", "v_abc", "yt1", "clips/a", "other/a"]
    match = match_video_ids(["video0", "video1", "abc", "yt1_5_15", "yt1_20_30", "a", "video9"], keyframes)
    assert match.mapping == {"video0": "TrainValVideo/video0", "video1": "video1.mp4", "abc": "v_abc"}
    assert match.by_rule["file name"] == 2 and match.by_rule["v_ prefix"] == 1
    # two MSVD clips of one YouTube video may not both claim it; "a" names two videos
    assert set(match.ambiguous) == {"yt1_5_15", "yt1_20_30", "a"}
    assert match.unmatched == ["video9"]
    assert "unmatched ids: 1 (e.g. video9)" in match.summary()


def test_unmatched_ids_are_counted_and_none_matching_is_an_error(tmp_path):
    path = write(tmp_path / "captions.csv", "video_id,caption\nvideo0,one\nvideo1,two\nvideo2,three\n")
    result = load_captions([path], video_ids=["video0", "video1"])
    assert result.problems.counts["unmatched_video_id"] == 1 and "video2" in result.problems.examples["unmatched_video_id"]
    with pytest.raises(UsageError, match="none of the 3 video ids"):
        load_captions([path], video_ids=["clips/x", "clips/y"])


# ----------------------------------------------------------------------------- bad files


def test_bad_files_give_clear_errors(tmp_path):
    good = write(tmp_path / "train_val_videodatainfo.json", msrvtt_json([("video0", 1, "train")]))
    text = good.read_text()
    truncated = write(tmp_path / "test_videodatainfo.json", text[: len(text) // 2])
    with pytest.raises(UsageError, match="truncated"):
        read_annotations([truncated])
    with pytest.raises(UsageError, match="unknown captions format 'msr-vtt'"):
        read_annotations([good], "msr-vtt")
    with pytest.raises(UsageError, match=r"looks like msrvtt \(MSR-VTT\), not didemo"):
        read_annotations([good], "didemo")
    lsmdc = write(tmp_path / "LSMDC16_annos_val.csv", LSMDC_LINE.format(clip="c", a="00.01", b="00.02", sentence="Hi."))
    with pytest.raises(UsageError, match="looks like lsmdc"):
        read_annotations([lsmdc], "msvd")
    # a file recognised as nothing is read as named, and the reader says what is wrong
    with pytest.raises(UsageError, match="is JSON, not"):
        read_annotations([write(tmp_path / "odd.json", '{"foo": 1}')], "msvd")
    with pytest.raises(UsageError, match="DiDeMo"):
        read_annotations([write(tmp_path / "odd2.json", '{"foo": 1}')], "didemo")
    with pytest.raises(UsageError, match="given twice"):
        read_annotations([good, good])
    with pytest.raises(UsageError, match="empty"):
        read_annotations([write(tmp_path / "empty.json", "")])
    with pytest.raises(UsageError, match="binary"):
        read_annotations([write(tmp_path / "clip.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(100))])
    with pytest.raises(UsageError, match="cannot tell the format"):
        read_annotations([write(tmp_path / "notes.md", "# notes\n\nsome, text, here\nmore, text\n")])
    with pytest.raises(UsageError, match="cannot tell which split"):
        read_annotations([good, write(tmp_path / "ids.txt", "video0\n")])
    with pytest.raises(UsageError, match="multiple-choice"):
        read_annotations([write(tmp_path / "mc.json", json.dumps([{"video": "v.mp4", "caption": ["a", "b"], "answer": 0}]))])
    with pytest.raises(UsageError, match="does not exist"):
        read_annotations([tmp_path / "missing.json"])


def test_missing_fields_empty_captions_and_duplicates_are_counted(tmp_path):
    data = json.loads(msrvtt_json([("video0", 1, "train"), ("video1", 2, "test")]))
    data["sentences"] += [
        {"video_id": "video0", "sen_id": 9},  # no caption
        {"caption": "no video id", "sen_id": 10},
        {"caption": "   ", "video_id": "video1", "sen_id": 11},  # empty
        {"caption": "caption 0 of video0", "video_id": "video0", "sen_id": 12},  # a duplicate
    ]
    path = write(tmp_path / "MSRVTT_data.json", json.dumps(data))
    result = read_annotations([path])
    assert result.problems.counts["malformed_record"] == 2
    assert result.problems.counts["empty_caption"] == 1
    assert result.problems.counts["duplicate_caption"] == 1
    assert len(result.frame) == 5  # 4 captions + the duplicate, which benchmarks count too
    no_sentences = write(tmp_path / "x_videodatainfo.json", json.dumps({"videos": [{"video_id": "v", "category": 1}]}))
    with pytest.raises(UsageError, match="sentences"):
        read_annotations([no_sentences])


def test_split_lists_conflicts_and_strays_are_counted(tmp_path):
    descriptions = write(tmp_path / "AllVideoDescriptions.txt", MSVD_DESCRIPTIONS)
    train = write(tmp_path / "train_list.txt", "-4wsuPCjDBc_5_15\n-7KMZQEsJW4_205_208\n-7KMZQEsJW4_205_208\nghost_1_2\n")
    test = write(tmp_path / "test_list.txt", "-7KMZQEsJW4_205_208\n-8y1Q0rA3n8_108_115\n")
    result = read_annotations([descriptions, train, test])
    counts = result.problems.counts
    assert counts["duplicate_list_entry"] == 1 and counts["split_list_id_without_captions"] == 1
    assert counts["video_in_several_split_lists"] == 1
    splits = dict(zip(result.frame["video_id"], result.frame["split"]))
    assert splits["-7KMZQEsJW4_205_208"] == "test"  # never trained on


# ----------------------------------------------------------------------------- multiple choice


def test_multiple_choice_files(tmp_path):
    jsonl = write(tmp_path / "msrvtt_mc_test.jsonl",
                  '{"qid": 0, "clip_name": "video7010", "options": ["a", "b", "c", "d", "e"], "answer": 2}\n'
                  '{"qid": 1, "clip_name": "video7011", "options": ["a", "b"], "answer": 7}\n')
    items = read_multiple_choice(jsonl)
    assert [(i.video_id, i.answer, len(i.candidates)) for i in items] == [("video7010", 2, 5)]
    vindlu = write(tmp_path / "msrvtt_mc_test.json", json.dumps(
        [{"video": "video7010.mp4", "caption": ["x y", "z w"], "answer": "z w"}]))
    assert read_multiple_choice(vindlu)[0].answer == 1
    with pytest.raises(UsageError, match="no usable multiple-choice item"):
        read_multiple_choice(write(tmp_path / "bad.jsonl", '{"clip_name": "v", "answer": 0}\n{"x": 1}\n'))


# ----------------------------------------------------------------------------- the datasets command


def test_datasets_command_lists_every_format_with_an_example():
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0, result.output
    for name in FORMATS:
        assert f"\n{name} " in "\n" + result.output
    from mama_augment.datasets.qa import QA_FORMATS

    assert result.output.count("$ mama-augment ") == len(FORMATS) + len(QA_FORMATS)


def test_datasets_command_checks_files_against_a_work_folder(tmp_path):
    from train_helpers import make_workdir

    workdir, _ = make_workdir(tmp_path, n_videos=6, id_format="all/video{i}")
    data = write(tmp_path / "MSRVTT_data.json", msrvtt_json([(f"video{n}", n, "train") for n in range(8)]))
    train = write(tmp_path / "MSRVTT_train.9k.csv", "video_id\n" + "".join(f"video{n}\n" for n in range(8)))
    out = tmp_path / "unmatched.txt"
    result = runner.invoke(app, ["datasets", str(data), str(train), "-w", str(workdir), "--unmatched", str(out)])
    assert result.exit_code == 1, result.output  # two ids have no video
    assert "msrvtt, 16 rows" in result.output and "train: 8 videos, 16 captions" in result.output
    assert "video ids matched: 6 of 8 (file name 6)" in result.output
    assert out.read_text().split() == ["video6", "video7"]

    bad = write(tmp_path / "broken.json", data.read_text()[:100])
    result = runner.invoke(app, ["datasets", str(bad)])
    assert result.exit_code == 2 and "truncated" in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a traceback
    result = runner.invoke(app, ["datasets", str(data), "--captions-format", "nope"])
    assert result.exit_code == 2 and "unknown captions format" in result.output
