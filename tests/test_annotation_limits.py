"""Annotation files as they circulate, damaged or hostile: deep JSON, huge or padded
files, long and bad JSON lines, foreign bytes, a header without rows, and how much of a
file the tool echoes back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.datasets import read_annotations, read_multiple_choice, read_pairs_file
from mama_augment.errors import UsageError
from workdir_helpers import write

runner = CliRunner()

DEEP = "[" * 100_000 + "]" * 100_000
SPARSE_SIZE = 2 * 1024**3  # holes on disk: costs nothing to write, 2 GB to read



def sparse(path: Path, head: str, size: int = SPARSE_SIZE) -> Path:
    """``head`` then zeros up to ``size`` bytes, as a sparse file."""
    with open(path, "wb") as handle:
        handle.write(head.encode())
        handle.truncate(size)
    return path


def msrvtt_sentences(count: int) -> str:
    sentences = [{"caption": f"a person does thing {n}", "video_id": f"video{n % 50}", "sen_id": n} for n in range(count)]
    return json.dumps({"sentences": sentences})


def clean_exit(result) -> bool:
    """A CLI error printed as a message (SystemExit), never a traceback."""
    return isinstance(result.exception, SystemExit) and "Traceback" not in result.output


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from train_helpers import make_workdir

    root = tmp_path_factory.mktemp("run")
    workdir, captions = make_workdir(root, n_videos=30)
    result = runner.invoke(app, ["train", "--captions", str(captions), "--workdir", str(workdir), "--text-model", "hashing",
                                 "--epochs", "1", "--batch-size", "8", "--name", "tiny", "-q"])
    assert result.exit_code == 0, result.output
    return workdir, workdir / "runs" / "tiny"


# ----------------------------------------------------------------------------- deep JSON


def test_deeply_nested_json_is_a_clear_error_not_a_traceback(tmp_path):
    deep = write(tmp_path / "MSRVTT_data.json", DEEP)
    with pytest.raises(UsageError, match="nested too deeply"):
        read_annotations([deep])
    with pytest.raises(UsageError, match="nested too deeply"):
        read_multiple_choice(write(tmp_path / "mc.json", DEEP))
    result = runner.invoke(app, ["datasets", str(deep)])
    assert result.exit_code == 2 and "nested too deeply" in result.output and clean_exit(result), result.output
    # named formats go the same way
    for name in ("msrvtt", "clip-vip", "msvd-json", "mama"):
        path = write(tmp_path / name / ("c.jsonl" if name == "mama" else "c.json"), DEEP)
        with pytest.raises(UsageError):
            read_annotations([path], name)


def test_a_deeply_nested_json_line_is_a_counted_bad_line(tmp_path):
    path = write(tmp_path / "train9k.jsonl", '{"clip_id": "video1", "text": "a dog"}\n'
                                           f'{{"clip_id": "video2", "text": {DEEP}}}\n'
                                           '{"clip_id": "video3", "text": "a cat"}\n')
    result = read_annotations([path])
    assert result.frame["video_id"].tolist() == ["video1", "video3"]
    assert result.problems.counts["malformed_line"] == 1
    assert "line 2" in result.problems.examples["malformed_line"]


def test_train_and_evaluate_refuse_deep_json_with_a_usage_error(tmp_path, trained_run):
    workdir, run = trained_run
    deep = write(tmp_path / "MSRVTT_data.json", DEEP)
    result = runner.invoke(app, ["train", "--captions", str(deep), "--workdir", str(workdir), "--text-model", "hashing",
                                 "--epochs", "1", "--name", "deep", "-q"])
    assert result.exit_code == 2 and "nested too deeply" in result.output and clean_exit(result), result.output
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--captions", str(deep)])
    assert result.exit_code == 2 and "nested too deeply" in result.output and clean_exit(result), result.output
    mc = write(tmp_path / "msrvtt_mc_test.json", DEEP)
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--multiple-choice", str(mc)])
    assert result.exit_code == 2 and "nested too deeply" in result.output and clean_exit(result), result.output


# ----------------------------------------------------------------------------- size


def test_a_json_document_over_the_cap_is_refused_before_it_is_read(tmp_path):
    # A valid beginning, then 2 GB of zeros (a copy cut short and padded): refused from its size.
    path = sparse(tmp_path / "train_val_videodatainfo.json", msrvtt_sentences(200)[:-2] + ", ")
    result = runner.invoke(app, ["datasets", str(path)])
    assert result.exit_code == 2 and clean_exit(result), result.output
    assert "cap" in result.output and "MAMA_MAX_ANNOTATION_MB" in result.output


def test_a_padded_line_based_file_stops_at_the_zeros(tmp_path):
    rows = "video_id,caption\n" + "".join(f"video{n},caption {n}\n" for n in range(300))
    path = sparse(tmp_path / "captions.csv", rows)
    result = runner.invoke(app, ["datasets", str(path)])
    assert result.exit_code == 2 and clean_exit(result), result.output
    assert "NUL byte" in result.output and f"{len(rows):,}" in result.output


def test_the_cap_applies_to_what_is_read_whole_and_can_be_raised(tmp_path, monkeypatch):
    document = write(tmp_path / "MSRVTT_data.json", msrvtt_sentences(2000))  # ~120 KB
    table = write(tmp_path / "captions.csv", "video_id,caption\n" + "".join(f"v{n},caption {n}\n" for n in range(20000)))
    assert document.stat().st_size > 100_000 and table.stat().st_size > 100_000
    monkeypatch.setenv("MAMA_MAX_ANNOTATION_MB", "0.1")
    with pytest.raises(UsageError, match=r"over the 0\.1 MB cap.*MAMA_MAX_ANNOTATION_MB"):
        read_annotations([document])
    assert len(read_annotations([table]).frame) == 20000  # read line by line: no cap on the file
    long_line = write(tmp_path / "AllVideoDescriptions.txt", "# MSVD\nclip1 " + "word " * 30_000 + "\nclip2 a cat\n")
    with pytest.raises(UsageError, match="line longer than"):
        read_annotations([long_line])
    monkeypatch.setenv("MAMA_MAX_ANNOTATION_MB", "1")
    assert len(read_annotations([document]).frame) == 2000
    assert len(read_annotations([long_line]).frame) == 2
    monkeypatch.setenv("MAMA_MAX_ANNOTATION_MB", "lots")
    result = runner.invoke(app, ["datasets", str(write(tmp_path / "test_videodatainfo.json", msrvtt_sentences(5)))])
    assert result.exit_code == 2 and "MAMA_MAX_ANNOTATION_MB" in result.output and clean_exit(result)


# ----------------------------------------------------------------------------- JSON lines, foreign bytes


def test_a_json_line_longer_than_the_head_reads_fine(tmp_path):
    long_caption = "a long caption " * 6000  # ~90 KB on the first line
    path = write(tmp_path / "train9k.jsonl", json.dumps({"clip_id": "video1", "text": long_caption}) + "\n"
                                             + json.dumps({"clip_id": "video2", "text": "short"}) + "\n")
    result = read_annotations([path])
    assert result.frame["caption"].tolist() == [long_caption.strip(), "short"]
    assert not result.problems


@pytest.mark.parametrize("name, record", [
    ("train9k.jsonl", '{{"clip_id": "video{n}", "text": "caption {n}"}}'),
    ("captions.jsonl", '{{"video_id": "video{n}", "caption": "caption {n}"}}'),
])
def test_a_bad_json_line_is_counted_with_its_number_and_the_others_used(tmp_path, name, record):
    lines = [record.format(n=n) for n in range(5)]
    lines[0] = lines[0][:-5]  # the first line cut short
    lines[3] = "not json at all"
    path = write(tmp_path / name, "\n".join(lines) + "\n")
    result = read_annotations([path])
    assert result.frame["video_id"].tolist() == ["video1", "video2", "video4"]
    assert result.problems.counts["malformed_line"] == 2
    assert "line 1" in result.problems.examples["malformed_line"]


def test_own_csv_counts_a_latin1_byte_like_every_format(tmp_path):
    path = write(tmp_path / "captions.csv", "video_id,caption\nv1,un caf\xe9\nv2,a dog\n".encode("latin-1"))
    result = read_annotations([path])
    assert result.frame["video_id"].tolist() == ["v1", "v2"]
    assert result.problems.counts["non_utf8_text"] == 1
    assert "line 2" in result.problems.examples["non_utf8_text"]
    jsonl = write(tmp_path / "more.jsonl", b'{"video_id": "v3", "caption": "caf\xe9"}\n{"video_id": "v4", "caption": "x"}\n')
    assert read_pairs_file(jsonl)["video_id"].tolist() == ["v3", "v4"]


# ----------------------------------------------------------------------------- a file without rows


def test_a_captions_file_without_rows_is_named_as_an_error(tmp_path, trained_run):
    workdir, run = trained_run
    header_only = write(tmp_path / "captions.csv", "video_id,caption,split\n")
    with pytest.raises(UsageError, match=r"captions\.csv holds no caption rows"):
        read_annotations([header_only])
    result = runner.invoke(app, ["datasets", str(header_only)])
    assert result.exit_code == 1 and clean_exit(result), result.output
    assert "no_caption_rows: 1" in result.output and "captions.csv" in result.output
    result = runner.invoke(app, ["train", "--captions", str(header_only), "--workdir", str(workdir),
                                 "--text-model", "hashing", "--epochs", "1", "--name", "empty", "-q"])
    assert result.exit_code == 2 and "captions.csv holds no caption rows" in result.output, result.output
    assert not (workdir / "runs" / "empty" / "config.json").exists()
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--captions", str(header_only)])
    assert result.exit_code == 2 and "captions.csv holds no caption rows" in result.output, result.output


def test_a_file_without_rows_next_to_a_good_one_is_still_an_error(tmp_path):
    good = write(tmp_path / "train.csv", "video_id,caption\nv1,a dog\n")
    header_only = write(tmp_path / "test.csv", "video_id,caption\n")
    with pytest.raises(UsageError, match=r"test\.csv holds no caption rows"):
        read_annotations([good, header_only])


# ----------------------------------------------------------------------------- what is echoed


def test_what_is_echoed_from_a_file_is_capped(tmp_path, trained_run):
    workdir, _ = trained_run
    huge_id = "x" * 20_000
    descriptions = write(tmp_path / "AllVideoDescriptions.txt", "# MSVD\nclip1 a dog runs\nclip2 a cat sits\n")
    split_list = write(tmp_path / "train_list.txt", "clip1\nclip2\n" + huge_id + "\n")
    result = runner.invoke(app, ["datasets", str(descriptions), str(split_list)])
    assert result.exit_code == 1, result.output
    assert "split_list_id_without_captions" in result.output
    assert max(len(line) for line in result.output.splitlines()) < 400
    captions = write(tmp_path / "captions.csv", f"video_id,caption\nv0000,a dog\n{huge_id},{'y' * 20_000}\n")
    result = runner.invoke(app, ["datasets", str(captions), "-w", str(workdir)])
    assert result.exit_code == 1 and "unmatched ids: 1" in result.output, result.output
    assert max(len(line) for line in result.output.splitlines()) < 400


# ----------------------------------------------------------------------------- export reads them alike


def test_export_reads_the_captions_table_as_train_does(tmp_path):
    from mama_augment.export.config import ExportConfig
    from mama_augment.export.stage import run_export
    from workdir_helpers import make_captioned_workdir

    info = make_captioned_workdir(tmp_path, num_videos=3, captions_per_video=1)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(info["originals"].read_bytes() + f"{info['ids'][0]},un caf\xe9\n".encode("latin-1"))
    report = run_export(ExportConfig(format="jsonl", out=tmp_path / "out", captions=latin1), info["workdir"])
    assert report.extra["original_captions_non_utf8_text"] == 1
    assert "un caf\ufffd" in (tmp_path / "out" / "pairs.jsonl").read_text(encoding="utf-8")

    header_only = write(tmp_path / "header.csv", "video_id,caption\n")
    with pytest.raises(UsageError, match="holds no caption rows"):
        run_export(ExportConfig(format="jsonl", out=tmp_path / "out2", captions=header_only), info["workdir"])
    assert not (tmp_path / "out2").exists()


def test_train_and_evaluate_store_capped_examples(tmp_path, trained_run):
    workdir, run = trained_run
    huge_id = "z" * 20_000
    rows = "".join(f"v{n:04d},a caption of video {n}\n" for n in range(30))
    captions = write(tmp_path / "captions.csv", f"video_id,caption\n{rows}{huge_id},{'y' * 20_000}\n")
    result = runner.invoke(app, ["train", "--captions", str(captions), "--workdir", str(workdir), "--text-model", "hashing",
                                 "--epochs", "1", "--batch-size", "8", "--name", "echo", "-q"])
    assert result.exit_code == 0, result.output
    summary = (workdir / "runs" / "echo" / "summary.json").read_text()
    assert "unmatched_video_id" in summary and huge_id not in summary
    mc = write(tmp_path / "msrvtt_mc_test.jsonl",
               '{"video_id": "v0000", "candidates": ["a caption of video 0", "other"], "answer": 0}\n'
               + json.dumps({"video_id": huge_id, "candidates": ["x", "y"], "answer": 9}) + "\n"
               + json.dumps({"video_id": huge_id, "candidates": ["x", "y"], "answer": 1}) + "\n")
    runner.invoke(app, ["evaluate", "--run", str(run), "--multiple-choice", str(mc)])
    stored = (run / "eval.json").read_text()
    assert "multiple_choice" in stored and huge_id not in stored
