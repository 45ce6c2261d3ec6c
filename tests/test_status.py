"""``mama-augment status`` and ``workdir_status`` on synthetic work folders."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import mama_augment.cli.status  # noqa: F401  (registers the command)
from mama_augment.cli import app
from mama_augment.configfile import record_run_config
from mama_augment.manifest import CAPTIONS, parts_dir
from mama_augment.status import find_metric, workdir_status
from test_report import EVAL, make_workdir


def test_workdir_status_counts(tmp_path):
    facts = make_workdir(tmp_path, n_ok=5, captioned=3)
    workdir = facts["workdir"]
    status = workdir_status(workdir)

    kf = status["stages"]["keyframes"]
    assert (kf["rows"], kf["done"], kf["failed"], kf["pending"]) == (7, 5, 2, None)
    assert {e["kind"]: e["count"] for e in kf["error_kinds"]} == {"zero_byte": 1, "not_a_video": 1}
    assert kf["error_kinds"][0]["example"]
    assert kf["embedders"] == {"pixels": 5} and kf["uncompacted_parts"] == 0

    cap = status["stages"]["captions"]
    assert (cap["rows"], cap["done"], cap["failed"]) == (4, 3, 1)
    assert cap["uncompacted_parts"] == 1  # captions were left as a part file
    # v000 has captions #0 and #1, so 2 per video are expected: 1 missing for v001 and
    # v002, 2 for each of v003 and v004 that have none.
    assert cap["captions_per_video"] == 2 and cap["pending"] == 6 and cap["videos_pending"] == 2
    assert {(m["model"], m["prompt_name"], m["backend"], m["ok"], m["failed"]) for m in cap["models"]} == {
        ("llava-hf/llava-1.5-7b-hf", "default", "offline", 3, 0),
        ("llava-hf/llava-1.5-7b-hf", "default", "server", 0, 1),
    }
    assert cap["error_kinds"] == [{"kind": "server_error", "count": 1, "example": "HTTP 500 after 4 retries"}]

    runs = status["stages"]["runs"]
    assert runs["count"] == 1 and runs["evaluated"] == 1
    run = runs["runs"][0]
    assert (run["loss"], run["step"], run["metrics_rows"], run["t2v_r1"], run["v2t_r1"]) == ("mama", 2, 3, 42.5, 40.0)
    assert run["pictures"] == ["loss_weight.png", "training.png"]

    disk = {row["name"]: row for row in status["disk"]}
    assert {"grids/", "frames/", "runs/", "keyframes.parquet", ".parts/"} <= set(disk)
    assert disk["frames/"]["files"] == 15 and disk["grids/"]["files"] == 5
    assert status["disk_total_bytes"] == sum(r["bytes"] for r in status["disk"])
    assert status["problems"] == []

    # The recorded caption configuration says how many captions a grid should get.
    record_run_config(workdir, "caption", {"num_captions": 1, "model": "llava"})
    status = workdir_status(workdir)
    assert status["stages"]["captions"]["pending"] == 2
    assert "caption" in status["configs"]


def test_find_metric_shapes():
    assert find_metric(EVAL, "t2v") == 42.5 and find_metric(EVAL, "v2t") == 40.0
    assert find_metric({"val": {"t2v_R@1": 1.0}, "test": {"t2v_R@1": 2.0}}, "t2v") == 2.0
    assert find_metric({"per_concept": [{"t2v_R@1": 5.0}]}, "t2v") is None


def test_status_cli_text_and_json(tmp_path):
    facts = make_workdir(tmp_path, n_ok=3)
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--workdir", str(facts["workdir"])])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "keyframes  3 done, 2 failed" in out and "zero_byte" in out and "not_a_video" in out
    assert "captions   3 done, 1 failed" in out and "llava-hf/llava-1.5-7b-hf" in out
    assert "mama-features-seed0" in out and "42.5" in out
    assert "grids/" in out and "frames/" in out

    result = runner.invoke(app, ["status", "--workdir", str(facts["workdir"]), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["stages"]["keyframes"]["done"] == 3 and data["stages"]["captions"]["failed"] == 1


def test_status_reports_unreadable_manifests(tmp_path):
    facts = make_workdir(tmp_path, n_ok=2, with_run=True)
    workdir = facts["workdir"]
    (workdir / "keyframes.parquet").write_bytes(b"this is not parquet")
    (parts_dir(workdir, CAPTIONS) / "part-00000000000000000001-1-deadbeef.parquet").write_bytes(b"PAR1 truncated")
    (facts["run_dir"] / "eval.json").write_text("{not json")

    status = workdir_status(workdir)
    kf = status["stages"]["keyframes"]
    assert kf["error"] and "keyframes.parquet" in kf["error"] and kf["done"] == 0
    cap = status["stages"]["captions"]
    assert cap["done"] == 2 and cap["pending"] is None  # readable rows still count
    assert [p["path"] for p in cap["unreadable_parts"]] == [
        ".parts/captions/part-00000000000000000001-1-deadbeef.parquet"
    ]
    assert len(status["problems"]) == 3

    result = CliRunner().invoke(app, ["status", "--workdir", str(workdir)])
    assert result.exit_code == 1
    assert "cannot read" in result.output and "unreadable part" in result.output and "eval.json" in result.output
    assert "Traceback" not in result.output
    as_json = CliRunner().invoke(app, ["status", "--workdir", str(workdir), "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["stages"]["keyframes"]["error"]


def test_status_empty_and_missing_workdir(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "not run yet" in result.output and "runs       none yet" in result.output
    missing = runner.invoke(app, ["status", "--workdir", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_status_reads_no_embeddings(tmp_path, monkeypatch):
    # status must stay cheap on a work folder of hundreds of thousands of videos: the
    # embeddings are most of keyframes.parquet and are never needed for counting.
    import pyarrow.parquet as pq

    facts = make_workdir(tmp_path, n_ok=5, captioned=3)
    read_columns = []
    real_read = pq.ParquetFile.read  # how the manifests read a file

    def recording(self, *args, columns=None, **kwargs):
        read_columns.append(columns)
        return real_read(self, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", recording)
    status = workdir_status(facts["workdir"])
    assert status["stages"]["keyframes"]["done"] == 5 and read_columns
    assert all(columns is not None and "keyframe_embeddings" not in columns for columns in read_columns)
