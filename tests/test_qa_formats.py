"""Video question answering releases, laid out as the real files are: one test per
release (tiny synthetic files), detection, robustness (BOM, CRLF, re-saved delimiters),
counted problems, id matching and the ``datasets`` command."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.datasets import Source, detect_format
from mama_augment.datasets.qa import QA_FORMATS, QAItem, detect_qa_format, load_qa, read_qa
from mama_augment.errors import UsageError
from workdir_helpers import write

runner = CliRunner()



def xu_json(rows: list[tuple[int, str, str, int]]) -> str:
    """MSRVTT-QA / MSVD-QA ``*_qa.json``: a list of {answer, id, question, video_id}."""
    return json.dumps([{"answer": a, "id": n, "question": q, "video_id": v} for n, (v, q, a, _) in enumerate(rows)])


# ----------------------------------------------------------------------------- MSRVTT-QA / MSVD-QA


def test_msrvtt_qa_numbers_are_msrvtt_video_names(tmp_path):
    train = write(tmp_path / "train_qa.json", xu_json([(0, "what is a man doing?", "sing", 0),
                                                      (0, "who is singing?", "man", 0)]))
    test = write(tmp_path / "test_qa.json", xu_json([(7010, "what is shown?", "car", 0)]))
    assert detect_qa_format(Source(train)) == "msrvtt-qa"
    qa = read_qa([train, test])
    assert qa.items == [
        QAItem("0", "video0", "what is a man doing?", "sing", split="train"),
        QAItem("1", "video0", "who is singing?", "man", split="train"),
        QAItem("0", "video7010", "what is shown?", "car", split="test"),
    ]
    assert not qa.problems and qa.formats == ["msrvtt-qa"]


def test_msvd_qa_ids_go_through_youtube_mapping(tmp_path):
    train = write(tmp_path / "train_qa.json", xu_json([(1, "what is eating?", "squirrel", 0), (3, "who runs?", "man", 0)]))
    mapping = write(tmp_path / "youtube_mapping.txt", "-4wsuPCjDBc_5_15 vid1\r\n-7KMZQEsJW4_205_208 vid2\r\n")
    assert detect_qa_format(Source(mapping)) == "msvd-qa-map"
    qa = read_qa([train, mapping])
    assert [i.video_id for i in qa.items] == ["-4wsuPCjDBc_5_15", "vid3"]
    assert qa.problems.counts == {"video_not_in_mapping": 1}
    assert qa.formats == ["msvd-qa", "msvd-qa-map"]


def test_msvd_qa_named_without_mapping_keeps_vid_names(tmp_path):
    train = write(tmp_path / "train_qa.json", xu_json([(5, "what is eating?", "squirrel", 0)]))
    qa = read_qa([train], "msvd-qa")
    assert qa.items[0].video_id == "vid5" and qa.problems.counts == {"video_not_in_mapping": 1}


# ----------------------------------------------------------------------------- JSON Lines variants


def test_jsonl_variant_with_clip_name_answer_type_and_candidates(tmp_path):
    lines = [
        {"question": "what is a man doing?", "answer": "sing", "video_id": "video7010", "answer_type": "what"},
        {"question": "who sings?", "answer": "man", "clip_name": "video7011", "question_id": "q9"},
        {"question": "what happens?", "answer": 1, "video_id": "video7012", "options": ["a dog", "a cat", "a car"]},
        {"question": "no answer", "video_id": "video7013"},
    ]
    path = write(tmp_path / "msrvtt_qa_test.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    assert detect_qa_format(Source(path)) == "qa-jsonl"
    qa = read_qa([path])
    assert qa.items == [
        QAItem("0", "video7010", "what is a man doing?", "sing", question_type="what", split="test"),
        QAItem("q9", "video7011", "who sings?", "man", split="test"),
        QAItem("2", "video7012", "what happens?", "a cat", ("a dog", "a cat", "a car"), 1, split="test"),
    ]
    assert qa.problems.counts == {"malformed_record": 1}


# ----------------------------------------------------------------------------- TGIF-QA


def test_tgif_frameqa_types_and_action_candidates(tmp_path):
    frame = write(tmp_path / "Train_frameqa_question.tsv",
                  "gif_name\tquestion\tanswer\tvid_id\tkey\ttype\n"
                  "tumblr_a1\twhat is the man holding\tguitar\t1\t101\t0\n"
                  "tumblr_a2\thow many dogs are there\ttwo\t2\t102\t1\n"
                  "tumblr_a3\twhat color is the car\tred\t3\t103\t7\n")
    action = write(tmp_path / "Test_action_question.csv",
                   "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\n"
                   "tumblr_b1\twhat does the girl do 3 times\tnod\tjump\twave\tblink\tclap\t2\t9\t201\n"
                   "tumblr_b2\twhat does he do\tnod\tjump\twave\tblink\tclap\t7\t9\t202\n")
    assert detect_qa_format(Source(frame)) == detect_qa_format(Source(action)) == "tgif-qa"
    qa = read_qa([frame, action])
    assert [(i.question_id, i.video_id, i.answer, i.question_type, i.split) for i in qa.items] == [
        ("101", "tumblr_a1", "guitar", "object", "train"),
        ("102", "tumblr_a2", "two", "number", "train"),
        ("103", "tumblr_a3", "red", None, "train"),
        ("201", "tumblr_b1", "wave", "action", "test"),
    ]
    assert qa.items[3].candidates == ("nod", "jump", "wave", "blink", "clap") and qa.items[3].answer_index == 2
    assert qa.problems.counts == {"unknown_question_type": 1, "malformed_record": 1}


def test_tgif_resaved_with_commas_and_quotes_reads_the_same(tmp_path):
    tabs = write(tmp_path / "a" / "Train_transition_question.csv",
                 "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\n"
                 "tumblr_c1\twhat does she do after sitting\tstand\trun\tsmile, then wave\tsit\tnod\t2\t4\t301\n")
    commas = write(tmp_path / "b" / "Train_transition_question.csv",
                   "\ufeffgif_name,question,a1,a2,a3,a4,a5,answer,vid_id,key\r\n"
                   'tumblr_c1,what does she do after sitting,stand,run,"smile, then wave",sit,nod,2,4,301\r\n')
    assert read_qa([tabs]).items == read_qa([commas]).items
    assert read_qa([tabs]).items[0].question_type == "transition"


# ----------------------------------------------------------------------------- NExT-QA


NEXT_HEADER = "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"


def test_next_qa_multiple_choice_with_video_paths(tmp_path):
    val = write(tmp_path / "val.csv", NEXT_HEADER
                + "4010069381,369,640,480,why did the boy pick up the ball,1,6,CW,to eat,to throw it,to sleep,to sit,to cry\n"
                + "4010069381,369,640,480,what did the boy do after,4,7,TN,sit,run,eat,cry,jump\n"
                + "7777,100,640,480,where is this,0,0,DL,park,room,sea,car,bus\n")
    mapping = write(tmp_path / "map_vid_vidorID.json", json.dumps({"4010069381": "1106/4010069381"}))
    assert detect_qa_format(Source(val)) == "next-qa"
    assert detect_qa_format(Source(mapping)) == "next-qa-map"
    qa = read_qa([val, mapping])
    first = qa.items[0]
    assert (first.question_id, first.video_id, first.answer, first.answer_index, first.question_type, first.split) == (
        "4010069381_6", "1106/4010069381", "to throw it", 1, "CW", "val")
    assert len(first.candidates) == 5
    assert qa.items[2].video_id == "7777" and qa.problems.counts == {"video_not_in_mapping": 1}


def test_next_oe_without_candidates_is_open_ended(tmp_path):
    path = write(tmp_path / "test.csv", "video,frame_count,width,height,question,answer,qid,type\n"
                                        "4010069381,369,640,480,what is the boy holding,ball,0,DO\n")
    item = read_qa([path]).items[0]
    assert not item.multiple_choice and item.answer == "ball" and item.question_type == "DO"


# ----------------------------------------------------------------------------- ActivityNet-QA


def test_activitynet_qa_questions_joined_to_answers(tmp_path):
    questions = write(tmp_path / "test_q.json", json.dumps([
        {"question": "is the athlete wearing trunks", "question_id": "v_JDg--pjY5gg_1", "video_name": "JDg--pjY5gg"},
        {"question": "what is he doing", "question_id": "v_JDg--pjY5gg_2", "video_name": "JDg--pjY5gg"},
    ]))
    answers = write(tmp_path / "test_a.json", json.dumps([
        {"answer": "yes", "question_id": "v_JDg--pjY5gg_1", "type": 3},
        {"answer": "dance", "question_id": "v_other_1", "type": 0},
    ]))
    assert detect_qa_format(Source(questions)) == detect_qa_format(Source(answers)) == "activitynet-qa"
    qa = read_qa([questions, answers])
    assert qa.items == [QAItem("v_JDg--pjY5gg_1", "JDg--pjY5gg", "is the athlete wearing trunks", "yes",
                               question_type="yes/no", split="test")]
    assert qa.problems.counts == {"question_without_answer": 1, "answer_without_question": 1}


# ----------------------------------------------------------------------------- shared behaviour


def test_every_format_is_described():
    for name, fmt in QA_FORMATS.items():
        assert fmt.benchmark and fmt.files and fmt.example.startswith("mama-augment "), name


def test_ids_match_keyframes_with_the_caption_rules(tmp_path):
    questions = write(tmp_path / "train_q.json", json.dumps([
        {"question": "q1", "question_id": "a_1", "video_name": "JDg--pjY5gg"},
        {"question": "q2", "question_id": "b_1", "video_name": "missing"},
    ]))
    answers = write(tmp_path / "train_a.json", json.dumps([
        {"answer": "yes", "question_id": "a_1", "type": 3}, {"answer": "no", "question_id": "b_1", "type": 3}]))
    qa = load_qa([questions, answers], video_ids=["anet/v_JDg--pjY5gg", "anet/v_other"])
    assert [i.video_id for i in qa.items] == ["anet/v_JDg--pjY5gg", "missing"]
    assert qa.problems.counts == {"unmatched_video_id": 1}
    with pytest.raises(UsageError, match="none of the 2 video ids"):
        load_qa([questions, answers], video_ids=["other"])


def test_a_qa_file_given_as_captions_says_what_it_is(tmp_path):
    mapping = write(tmp_path / "youtube_mapping.txt", "-4wsuPCjDBc_5_15 vid1\n-7KMZQEsJW4_205_208 vid2\n")
    with pytest.raises(UsageError, match="question-answering file \\(msvd-qa-map\\)"):
        detect_format(Source(mapping))


def test_a_file_with_nothing_usable_is_an_error(tmp_path):
    path = write(tmp_path / "train_qa.json", json.dumps([{"answer": "", "id": 0, "question": "q", "video_id": 1}]))
    with pytest.raises(UsageError, match="no usable questions"):
        read_qa([path])


def test_datasets_command_lists_and_checks_qa_files(tmp_path):
    listing = runner.invoke(app, ["datasets"])
    assert listing.exit_code == 0
    for name in QA_FORMATS:
        assert name in listing.output
    train = write(tmp_path / "train_qa.json", xu_json([(0, "what is a man doing?", "sing", 0)]))
    result = runner.invoke(app, ["datasets", str(train)])
    assert result.exit_code == 0, result.output
    assert "msrvtt-qa, 1 questions" in result.output and "train: 1 questions (1 open-ended" in result.output
    mixed = write(tmp_path / "captions.csv", "video_id,caption\nvideo0,a man sings\n")
    result = runner.invoke(app, ["datasets", str(train), str(mixed)])
    assert result.exit_code == 2 and "separate calls" in result.output


def test_next_qa_resaved_by_a_spreadsheet_reads_the_same(tmp_path):
    row = '4010069381,369,640,480,"why did the boy, smiling, pick it up",1,6,CW,to eat,to throw it,to sleep,to sit,to cry\n'
    plain = write(tmp_path / "a" / "val.csv", NEXT_HEADER + row)
    resaved = write(tmp_path / "b" / "val.csv", ("\ufeff" + NEXT_HEADER.replace(",", ";")
                                                  + row.replace(",", ";").replace("boy; smiling;", "boy, smiling,")
                                                  ).replace("\n", "\r\n"))
    assert detect_qa_format(Source(resaved)) == "next-qa"
    assert read_qa([plain]).items == read_qa([resaved]).items
    assert read_qa([plain]).items[0].question == "why did the boy, smiling, pick it up"


def test_jsonl_bad_lines_are_counted_not_fatal(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"question": "q1", "answer": "a", "video_id": "v1"}\n'
                                           '{"question": "q2", "answer": \n'
                                           '{"question": "q3", "answer": "b", "video_id": "v2"}\n')
    qa = read_qa([path])
    assert [i.question for i in qa.items] == ["q1", "q3"] and qa.problems.counts == {"malformed_line": 1}


def test_datasets_command_matches_qa_ids_to_a_work_folder(tmp_path):
    from train_helpers import make_workdir

    workdir, _ = make_workdir(tmp_path, n_videos=4, id_format="all/video{i}")
    test = write(tmp_path / "test_qa.json", xu_json([(1, "what?", "dog", 0), (2, "who?", "man", 0), (77, "what?", "x", 0)]))
    out = tmp_path / "unmatched.txt"
    result = runner.invoke(app, ["datasets", str(test), "-w", str(workdir), "--unmatched", str(out)])
    assert result.exit_code == 1, result.output
    assert "video ids matched: 2 of 3" in result.output and "unmatched_video_id: 1" in result.output
    assert out.read_text() == "video77\n"


def test_layout_variants_of_later_copies(tmp_path):
    # MSVD-QA without the "id" field; NExT-QA with a video_id column
    train = write(tmp_path / "train_qa.json", json.dumps([{"answer": "dog", "question": "what runs?", "video_id": 2}]))
    mapping = write(tmp_path / "youtube_mapping.txt", "abc_1_2 vid2\n")
    assert [(i.question_id, i.video_id) for i in read_qa([train, mapping]).items] == [("0", "abc_1_2")]
    nextqa = write(tmp_path / "val.csv", NEXT_HEADER.replace("video,", "video_id,", 1)
                   + "4010069381,369,640,480,why,1,6,CW,to eat,to throw it,to sleep,to sit,to cry\n")
    assert detect_qa_format(Source(nextqa)) == "next-qa"
    assert read_qa([nextqa]).items[0].question_id == "4010069381_6"


def test_datasets_command_with_format_auto_still_checks_qa_files(tmp_path):
    train = write(tmp_path / "train_qa.json", xu_json([(0, "what is a man doing?", "sing", 0)]))
    result = runner.invoke(app, ["datasets", str(train), "--captions-format", "auto"])
    assert result.exit_code == 0 and "msrvtt-qa, 1 questions" in result.output, result.output


# ----------------------------------------------------------------------------- files read as streams


def test_a_caption_csv_is_still_recognised_as_captions(tmp_path):
    # Every caption file passes QA detection first: it must work on the streamed Source.
    captions = write(tmp_path / "captions.csv", "video_id,caption\nv1,a dog runs\nv2,a cat sleeps\n")
    assert detect_qa_format(Source(captions)) is None
    assert detect_format(Source(captions)) != "msvd-qa-map"


def test_a_mapping_larger_than_the_head_is_recognised(tmp_path):
    lines = "".join(f"clip{n:06d}_{n}_{n + 3} vid{n}\n" for n in range(1, 20_000))
    mapping = write(tmp_path / "youtube_mapping.txt", lines)
    assert Source(mapping).head_is_whole() is False
    assert detect_qa_format(Source(mapping)) == "msvd-qa-map"


def test_a_blank_question_file_is_named_empty(tmp_path):
    blank = write(tmp_path / "train_qa.json", "  \n\n")
    with pytest.raises(UsageError, match="is empty"):
        read_qa([blank])


# ----------------------------------------------------------------------------- Causal-VidQA


def causal_video(root, video_id: str, answers=(0, 1, 2, 3, 4, 0)) -> None:
    """``QA/<video>/text.json`` and ``answer.json`` as the release lays them out."""
    def choices(word):
        return [f"{word} {k}" for k in range(5)]

    text = {"descriptive": {"question": "what is the man holding?", "answer": choices("a cup")},
            "explanatory": {"question": "why does he run?", "answer": choices("he is late")},
            "predictive": {"question": "what will he do next?", "answer": choices("sit"), "reason": choices("tired")},
            "counterfactual": {"question": "what if it rained?", "answer": choices("stay"), "reason": choices("wet")}}
    d, e, pa, pr, ca, cr = answers
    answer = {"descriptive": {"answer": d}, "explanatory": {"answer": e}, "predictive": {"answer": pa, "reason": pr},
              "counterfactual": {"answer": ca, "reason": cr}}
    write(root / "QA" / video_id / "text.json", json.dumps(text))
    write(root / "QA" / video_id / "answer.json", json.dumps(answer))


def test_causal_vidqa_folder_with_split_lists(tmp_path):
    data = tmp_path / "data"
    for video_id in ("vidA_000010_000020", "vidB_000001_000011", "vidC_000005_000015"):
        causal_video(data, video_id)
    train = write(data / "split" / "train.txt", "vidA_000010_000020\nvidB_000001_000011\n")
    valid = write(data / "split" / "valid.txt", "vidC_000005_000015\nvidGone_1_2\n")
    assert detect_qa_format(Source(train)) == "causal-vidqa-split"
    assert detect_qa_format(Source(data / "QA" / "vidA_000010_000020" / "text.json")) == "causal-vidqa"
    qa = read_qa([data / "QA", train, valid])
    assert len(qa.items) == 18 and {i.split for i in qa.items} == {"train", "val"}
    first = qa.items[:6]
    assert [i.question_id for i in first] == [f"vidA_000010_000020_{k}" for k in range(6)]
    assert [i.question_type for i in first] == ["D", "E", "P-A", "P-R", "C-A", "C-R"]
    # the reason question is the prediction's question, answered with a reason
    assert first[3].question == "what will he do next?" and first[3].answer == "tired 3"
    assert first[3].candidates == tuple(f"tired {k}" for k in range(5)) and first[3].answer_index == 3
    assert qa.problems.counts == {"video_not_in_folder": 1}
    # the lists alone find the QA folder where the release puts it (data/split beside data/QA)
    assert read_qa([train]).items == [i for i in qa.items if i.split == "train"]
    # a single video's text.json, its answer.json beside it
    assert read_qa([data / "QA" / "vidA_000010_000020" / "text.json"]).items == [
        QAItem(i.question_id, i.video_id, i.question, i.answer, i.candidates, i.answer_index, i.question_type)
        for i in first]


def test_causal_vidqa_pickled_split_is_refused_with_the_conversion(tmp_path):
    import pickle

    data = tmp_path / "data"
    causal_video(data, "vidA_1_2")
    pickled = data / "split" / "train.pkl"
    pickled.parent.mkdir(parents=True)
    pickled.write_bytes(pickle.dumps(["vidA_1_2"]))
    with pytest.raises(UsageError, match=r"one video id per line.*train\.txt"):
        read_qa([data / "QA", pickled])
    result = runner.invoke(app, ["datasets", str(data / "QA"), str(pickled)])
    assert result.exit_code == 2 and "train.txt" in result.output, result.output


def test_causal_vidqa_accuracy_pairs_answer_and_reason_as_the_paper(tmp_path):
    from mama_augment.datasets.qa_eval import qa_accuracy

    data = tmp_path / "data"
    causal_video(data, "v1")
    causal_video(data, "v2")
    test = write(data / "split" / "test.txt", "v1\nv2\n")
    qa = read_qa([data / "QA", test])
    right = {i.question_id: i.answer_index for i in qa.items}
    # v1: all right but its predictive reason; v2: all right but its counterfactual answer
    predictions = {**right, "v1_3": (right["v1_3"] + 1) % 5, "v2_4": (right["v2_4"] + 1) % 5}
    score = qa_accuracy(qa.items, predictions)
    by_type = {k: g.accuracy for k, g in score.by_type.items()}
    assert by_type == {"D": 100, "E": 100, "P-A": 100, "P-R": 50, "P-AR": 50, "C-A": 50, "C-R": 100, "C-AR": 50}
    assert score.questions == 12
    # the official "Acc": D, E, P-AR and C-AR of each video, 6 of 8 right
    assert score.accuracy == pytest.approx(75.0)


def test_datasets_lists_and_checks_causal_vidqa(tmp_path):
    data = tmp_path / "data"
    causal_video(data, "v1")
    test = write(data / "split" / "test.txt", "v1\n")
    listing = runner.invoke(app, ["datasets"])
    assert "causal-vidqa" in listing.output and "causal-vidqa-split" in listing.output
    result = runner.invoke(app, ["datasets", str(data / "QA"), str(test)])
    assert result.exit_code == 0, result.output
    assert "causal-vidqa, 1 video folders" in result.output and "test: 6 questions" in result.output
    assert "C-R 1" in result.output
