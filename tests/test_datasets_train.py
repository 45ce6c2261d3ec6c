"""``train`` and ``evaluate`` on MSR-VTT's own files, through the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from train_helpers import make_workdir

runner = CliRunner()
N_VIDEOS, N_TRAIN = 60, 45


def _msrvtt_files(tmp_path):
    """MSR-VTT-style files for the synthetic work folder: CLIP4Clip's layout (data json,
    9k list, JSFusion test csv), the official one (train_val / test videodatainfo), a
    category.txt and a multiple-choice file."""
    workdir, captions_csv = make_workdir(tmp_path, n_videos=N_VIDEOS, id_format="TrainValVideo/video{i}")
    frame = pd.read_csv(captions_csv)
    concepts = sorted(set(frame["concept"]))
    videos = [{"video_id": f"video{i}", "category": concepts.index(c), "url": f"https://www.youtube.com/watch?v={i}",
               "start time": 0.0, "end time": 10.0, "split": "train" if i < N_TRAIN else "test", "id": i}
              for i, c in enumerate(frame["concept"])]
    sentences = [{"caption": text, "video_id": f"video{i}", "sen_id": 2 * i + k}
                 for i, caption in enumerate(frame["caption"]) for k, text in enumerate([caption, f"there is {caption}"])]
    out = tmp_path / "msrvtt"
    out.mkdir()
    info = {"year": "2016", "version": "1.0", "description": "test", "contributor": "x", "data_created": "2016"}
    (out / "MSRVTT_data.json").write_text(json.dumps({"info": info, "videos": videos, "sentences": sentences}))
    (out / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"video{i}\n" for i in range(N_TRAIN)))
    (out / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + "".join(
        f"ret{k},msr{i},video{i},{frame['caption'][i]}\n" for k, i in enumerate(range(N_TRAIN, N_VIDEOS))))
    (out / "category.txt").write_text("".join(f"{c}\t{n}\n" for n, c in enumerate(concepts)))
    for name, keep in (("train_val_videodatainfo.json", lambda v: v < N_TRAIN), ("test_videodatainfo.json", lambda v: v >= N_TRAIN)):
        (out / name).write_text(json.dumps({
            "info": info, "videos": [v for v in videos if keep(v["id"])],
            "sentences": [s for s in sentences if keep(int(s["video_id"][5:]))],
        }))
    items = []
    for i in range(N_TRAIN, N_VIDEOS):
        others = [frame["caption"][j] for j in range(N_VIDEOS) if frame["caption"][j] != frame["caption"][i]][:4]
        items.append(json.dumps({"qid": i, "clip_name": f"video{i}", "options": [*others[:2], frame["caption"][i], *others[2:]],
                                 "answer": 2}))
    (out / "msrvtt_mc_test.jsonl").write_text("\n".join(items) + "\n")
    return workdir, out


def test_train_on_msrvtt_9k_then_evaluate_1k_a_multi_sentence_and_multiple_choice(tmp_path):
    workdir, files = _msrvtt_files(tmp_path)
    captions = [files / n for n in ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "category.txt")]
    args = ["train", "--workdir", str(workdir), "--text-model", "hashing", "--epochs", "3", "--batch-size", "16",
            "--meta-fraction", "0.1", "--name", "msrvtt", "-q"]
    for path in captions:
        args += ["--captions", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = workdir / "runs" / "msrvtt"
    config = json.loads((run / "config.json").read_text())
    assert config["captions"] == [str(p) for p in captions]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["test_videos"] == N_VIDEOS - N_TRAIN and summary["data"]["val_videos"] == 0

    # the run's own captions: the 1k-A-style test set, one caption per video
    result = runner.invoke(app, ["evaluate", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert "protocol: one caption per video" in result.output and "text to video (DSL)" in result.output
    entry = json.loads((run / "eval.json").read_text())["test"]
    assert entry["protocol"] == "one-caption" and entry["captions"] == entry["videos"] == N_VIDEOS - N_TRAIN
    assert {row["concept"] for row in entry["per_concept"]} <= {"dog", "car", "tree", "boat", "cake", "bird"}

    # the official files: every caption of a test video is a query
    official = [files / "train_val_videodatainfo.json", files / "test_videodatainfo.json"]
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--captions", str(official[0]), "--captions",
                                 str(official[1]), "--protocol", "multi-sentence",
                                 "--multiple-choice", str(files / "msrvtt_mc_test.jsonl")])
    assert result.exit_code == 0, result.output
    assert "protocol: multi-sentence" in result.output and "multiple choice: 15 items" in result.output
    evaluations = json.loads((run / "eval.json").read_text())
    entry = evaluations["test:train_val_videodatainfo.json+test_videodatainfo.json (multi-sentence)"]
    assert entry["captions"] == 2 * entry["videos"] == 2 * (N_VIDEOS - N_TRAIN)
    assert entry["concept_thirds"] and entry["concept_frequency"] == "training captions per concept"
    assert entry["multiple_choice"]["chance"] == pytest.approx(20.0)
    assert entry["multiple_choice"]["accuracy"] > entry["multiple_choice"]["chance"]

    result = runner.invoke(app, ["evaluate", "--run", str(run), "--protocol", "paragraph"])
    assert result.exit_code == 2 and "paragraph captions" in result.output
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--captions-format", "msrvtt"])
    assert result.exit_code == 2 and "--captions-format" in result.output


def test_train_reports_unmatched_ids_and_rejects_a_wrong_format(tmp_path):
    workdir, files = _msrvtt_files(tmp_path)
    data = json.loads((files / "MSRVTT_data.json").read_text())
    data["sentences"].append({"caption": "a stray video", "video_id": "video9999", "sen_id": 10**6})
    (files / "MSRVTT_data.json").write_text(json.dumps(data))
    base = ["train", "--workdir", str(workdir), "--text-model", "hashing", "--epochs", "1", "--batch-size", "16",
            "--meta-fraction", "0.1", "--captions", str(files / "MSRVTT_data.json"), "-q"]
    result = runner.invoke(app, [*base, "--captions-format", "lsmdc"])
    assert result.exit_code == 2 and "looks like msrvtt (MSR-VTT), not lsmdc" in result.output
    result = runner.invoke(app, [*base, "--captions-format", "webvid,msrvtt"])
    assert result.exit_code == 2 and "2 formats for 1 captions files" in result.output
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "runs" / "mama-features-seed0" / "summary.json").read_text())
    assert any(line.startswith("unmatched_video_id: 1 (e.g. video9999") for line in summary["issues"])
    # The report finds the run's benchmark file and shows its captions beside the videos.
    result = runner.invoke(app, ["report", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    shown = [line for line in result.output.splitlines() if line.startswith("original captions:")]
    assert shown and int(shown[0].split()[2]) > 0 and "MSRVTT_data.json" in shown[0], result.output


def test_repeated_captions_reach_every_torchrun_process(monkeypatch, tmp_path):
    import mama_augment.train.distributed as distributed

    calls = []
    monkeypatch.setattr(distributed, "launch", lambda *args: calls.append(args))
    for key in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    result = runner.invoke(app, ["train", "--nproc-per-node", "2", "--captions", "MSRVTT_data.json", "--captions",
                                 "MSRVTT_train.9k.csv", "--captions-format", "msrvtt,split-list",
                                 "--workdir", str(tmp_path), "--batch-size", "64"])
    assert result.exit_code == 0, result.output
    (train_args, *_), = calls
    assert train_args[:6] == ["--captions", "MSRVTT_data.json", "--captions", "MSRVTT_train.9k.csv",
                              "--captions-format", "msrvtt,split-list"]


def _pairs(out):
    return [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]


def test_export_carries_the_original_captions_of_a_run_trained_on_msrvtt(tmp_path):
    workdir, files = _msrvtt_files(tmp_path)
    names = ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "category.txt")
    args = ["train", "--workdir", str(workdir), "--text-model", "hashing", "--epochs", "1", "--batch-size", "16",
            "--meta-fraction", "0.1", "--name", "msrvtt", "-q"]
    for name in names:
        args += ["--captions", str(files / name)]
    assert runner.invoke(app, args).exit_code == 0
    run = workdir / "runs" / "msrvtt"
    data = json.loads((files / "MSRVTT_data.json").read_text())
    sentences: dict[int, list[str]] = {}
    for sentence in data["sentences"]:
        sentences.setdefault(int(sentence["video_id"][5:]), []).append(sentence["caption"])
    test_queries = pd.read_csv(files / "MSRVTT_JSFUSION_test.csv")
    query_of = {int(v[5:]): s for v, s in zip(test_queries["video_id"], test_queries["sentence"])}
    # What training read: the 9k list's videos with both sentences, the test videos with the
    # JSFusion query only, ids matched to the keyframes ids TrainValVideo/videoN.
    expected = sorted(
        [(f"TrainValVideo/video{i}", text, "train") for i in range(N_TRAIN) for text in sentences[i]]
        + [(f"TrainValVideo/video{i}", query_of[i], "test") for i in range(N_TRAIN, N_VIDEOS)]
    )

    # Default: the captions the run was trained on, as its config.json records them.
    result = runner.invoke(app, ["export", "-w", str(workdir), "--format", "jsonl", "--out", str(tmp_path / "run"),
                                 "--run", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = _pairs(tmp_path / "run")
    assert sorted((r["video_id"], r["caption"], r["split"]) for r in rows if r["source"] == "original") == expected
    assert {r["concept"] for r in rows} <= {"dog", "car", "tree", "boat", "cake", "bird"}  # named by category.txt
    # Every pair the run trained on (the meta set's videos are held out of it) has its weight.
    weights = pd.read_parquet(run / "pair_weights.parquet")
    weighted = {(r["video_id"], r["caption"]): r["weight"] for r in rows if r["weight"] is not None}
    assert weighted == {(r.video_id, r.caption): pytest.approx(r.weight) for r in weights.itertuples()}

    # Other files with a named format, and a split of theirs.
    result = runner.invoke(app, ["export", "-w", str(workdir), "--format", "jsonl", "--out", str(tmp_path / "official"),
                                 "--captions", str(files / "train_val_videodatainfo.json"), "--captions",
                                 str(files / "test_videodatainfo.json"), "--captions-format", "msrvtt",
                                 "--split", "test", "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = _pairs(tmp_path / "official")
    assert sorted((r["video_id"], r["caption"]) for r in rows) == sorted(
        (f"TrainValVideo/video{i}", text) for i in range(N_TRAIN, N_VIDEOS) for text in sentences[i])


def test_export_streams_a_captions_table_and_matches_its_ids_as_training_does(tmp_path):
    from mama_augment.datasets import CaptionSpec
    from mama_augment.export.config import ExportConfig
    from mama_augment.export.sources import plain_table
    from mama_augment.export.stage import run_export

    workdir, files = _msrvtt_files(tmp_path)
    data = json.loads((files / "MSRVTT_data.json").read_text())
    table = pd.DataFrame([{"video_id": s["video_id"], "caption": s["caption"]} for s in data["sentences"]]
                         + [{"video_id": "video9999", "caption": "a video that was never keyframed"}])
    table = table.sample(frac=1.0, random_state=0)  # in no particular order
    table.to_csv(tmp_path / "table.csv", index=False)
    expected = sorted((f"TrainValVideo/{s['video_id']}", s["caption"]) for s in data["sentences"])
    # Our own table is streamed; a benchmark's files are read whole.
    assert plain_table(CaptionSpec.of(str(tmp_path / "table.csv"))) == tmp_path / "table.csv"
    assert plain_table(CaptionSpec.of(str(files / "MSRVTT_data.json"))) is None
    assert plain_table(CaptionSpec.of(str(files / "MSRVTT_train.9k.csv"))) is None  # a split list
    outputs = []
    for name, memory_rows in (("memory", 100_000), ("disk", 7)):  # sorted in memory, and in runs on disk
        report = run_export(ExportConfig(format="jsonl", out=tmp_path / name, captions=str(tmp_path / "table.csv"),
                                         sort_memory_rows=memory_rows, batch_rows=5), workdir)
        assert report.extra["original_captions_unmatched_video_id"] == 1
        rows = _pairs(tmp_path / name)
        assert sorted((r["video_id"], r["caption"]) for r in rows) == expected
        outputs.append((tmp_path / name / "pairs.jsonl").read_text())
        index = json.loads((tmp_path / name / "index.json").read_text())
        assert index["counts"]["original_captions"]["problems"] == {"unmatched_video_id": 1}
        assert index["counts"]["rows_without_video"] == {"original": 1}
    assert outputs[0] == outputs[1]
    assert not (tmp_path / "disk" / ".mama-export" / "tmp").exists()

    # Ids that name no video at all stop the export before it writes anything, as in train.
    pd.DataFrame({"video_id": ["x1", "x2"], "caption": ["a", "b"]}).to_csv(tmp_path / "other.csv", index=False)
    result = runner.invoke(app, ["export", "-w", str(workdir), "-f", "jsonl", "-o", str(tmp_path / "none"),
                                 "--captions", str(tmp_path / "other.csv"), "--no-progress"])
    assert result.exit_code == 2 and "names a video in keyframes.parquet" in result.output, result.output
    assert not (tmp_path / "none").exists()
