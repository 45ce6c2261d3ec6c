"""``mama-augment export``: every format read back with the library its users use."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.export import FORMATS
from mama_augment.export.stage import run_export
from mama_augment.export.config import ExportConfig
from mama_augment.quality.config import FilterConfig
from mama_augment.quality.stage import run_filter
from workdir_helpers import make_captioned_workdir, make_run

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def work(tmp_path):
    info = make_captioned_workdir(tmp_path, num_videos=7, captions_per_video=2, failed_videos=(5,))
    info["run"] = make_run(tmp_path, info)
    info["ok_ids"] = [v for i, v in enumerate(info["ids"]) if i != 5]
    return info


def export(info, fmt, out, **options):
    options.setdefault("captions", info["originals"])
    report = run_export(ExportConfig(format=fmt, out=out, **options), info["workdir"])
    return report


def expected_pairs(info, ids=None):
    """(video_id, caption, source) of every pair the work folder holds, originals first."""
    ids = ids or info["ok_ids"]
    pairs = []
    for video_id in ids:
        pairs += [(o["video_id"], o["caption"], "original") for o in info["original_rows"] if o["video_id"] == video_id]
        pairs += [(video_id, text, "generated") for (v, _), text in sorted(info["generated"].items()) if v == video_id]
    return pairs


# ----------------------------------------------------------------------------- formats


def test_webdataset_video_unit_reads_back_with_webdataset(work, tmp_path):
    wds = pytest.importorskip("webdataset", reason="webdataset is in the test extra")
    out = tmp_path / "wds"
    report = export(work, "webdataset", out, run=work["run"], shard_size=4)
    assert report.exit_code == 0 and report.done == 6 and report.extra["shards"] == 2
    index = json.loads((out / "index.json").read_text())
    assert index["urls"] == "shard-{000000..000001}.tar"
    urls = [str(out / f"shard-{i:06d}.tar") for i in range(2)]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(6)]
    metas = [json.loads(s["json"]) for s in samples]
    assert [m["video_id"] for m in metas] == work["ok_ids"]
    got = [(m["video_id"], c["caption"], c["source"]) for m in metas for c in m["captions"]]
    assert got == expected_pairs(work)
    first = samples[0]
    grid = work["workdir"] / f"grids/{work['ok_ids'][0]}.jpg"
    assert first["jpg"] == grid.read_bytes()
    assert sorted(k for k in first if k.startswith("kf")) == ["kf00.jpg", "kf01.jpg", "kf02.jpg"]
    assert Image.open(io.BytesIO(first["kf01.jpg"])).size == (48, 36)
    generated = [c for c in metas[0]["captions"] if c["source"] == "generated"]
    assert generated[0]["model"] == "tiny-llava" and generated[0]["seed"] == 1000
    assert len(generated[0]["prompt_sha256"]) == 64 and generated[0]["weight"] > 0


def test_webdataset_pair_unit_is_image_text_pairs(work, tmp_path):
    out = tmp_path / "wds-pairs"
    export(work, "webdataset", out, unit="pair", shard_size=5)
    pairs = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = sorted({name.split(".", 1)[0] for name in members})
        for key in keys:
            assert {f"{key}.jpg", f"{key}.txt", f"{key}.json"} == {n for n in members if n.startswith(key + ".")}
            meta = json.loads(members[f"{key}.json"])
            assert meta["caption"]["caption"] == members[f"{key}.txt"].decode()
            pairs.append((meta["video_id"], members[f"{key}.txt"].decode(), meta["caption"]["source"]))
    assert pairs == expected_pairs(work)


def test_hf_parquet_loads_with_datasets_and_decodes_images(work, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is in the test extra")
    out = tmp_path / "hf"
    export(work, "hf", out, shard_size=5, run=work["run"])
    files = sorted(str(p) for p in (out / "data").glob("*.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    assert isinstance(loaded.features["image"], datasets.Image)
    assert [(r["video_id"], r["caption"], r["source"]) for r in loaded] == expected_pairs(work)
    assert loaded[0]["image"].size == (96, 54)
    # The dataset card makes the folder itself loadable.
    by_folder = datasets.load_dataset(str(out), split="train")
    assert by_folder.num_rows == len(expected_pairs(work))
    assert all(w is not None for w in loaded["weight"])


def test_hf_without_images_points_at_the_work_folder(work, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is in the test extra")
    out = tmp_path / "hf-paths"
    export(work, "hf", out, images=False)
    loaded = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert loaded[0]["image"].size == (96, 54)
    assert not list(out.rglob("*.jpg"))


def test_llava_json_has_image_token_prompt_and_caption(work, tmp_path):
    out = tmp_path / "llava"
    export(work, "llava", out, shard_size=3)
    records = json.loads((out / "llava.json").read_text())
    assert [(r["metadata"]["video_id"], r["conversations"][1]["value"], r["metadata"]["source"]) for r in records] == expected_pairs(work)
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        human, gpt = record["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n") and "grid of 3 frames" in human["value"]
        assert (out / record["image"]).is_file()
    assert {r["image"] for r in records} == {f"images/{v}.jpg" for v in work["ok_ids"]}


def test_clip_vip_jsonl_and_frame_folders(work, tmp_path):
    out = tmp_path / "clipvip"
    export(work, "clip-vip", out, shard_size=2)
    lines = [json.loads(line) for line in (out / "clip-vip.jsonl").read_text().splitlines()]
    assert [line["clip_id"] for line in lines] == work["ok_ids"]
    for line in lines:
        assert line["text"] == [c for v, c, _ in expected_pairs(work, [line["clip_id"]])]
        name = line["clip_id"].split("/")[-1]
        # CLIP-ViP's frame reader: VIS/<clip_id>/<name>_%03d.jpg for i < num_frame.
        assert line["num_frame"] == 3
        for i in range(line["num_frame"]):
            assert (out / "frames" / line["clip_id"] / f"{name}_{i:03d}.jpg").is_file()


def test_csv_and_jsonl_rows_and_train_can_read_the_csv(work, tmp_path):
    from mama_augment.datasets import read_pairs_file

    export(work, "csv", tmp_path / "csv", run=work["run"])
    export(work, "jsonl", tmp_path / "jsonl", run=work["run"])
    with open(tmp_path / "csv" / "pairs.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["video_id"], r["caption"], r["source"]) for r in rows] == expected_pairs(work)
    assert all(float(r["weight"]) > 0 for r in rows)
    lines = [json.loads(x) for x in (tmp_path / "jsonl" / "pairs.jsonl").read_text().splitlines()]
    assert [(r["video_id"], r["caption"], r["source"], r["weight"]) for r in lines] == [
        (r["video_id"], r["caption"], r["source"], float(r["weight"])) for r in rows
    ]
    frame = read_pairs_file(tmp_path / "csv" / "pairs.csv")
    assert len(frame) == len(rows)


def test_every_registered_format_exports(work, tmp_path):
    for name in FORMATS:
        report = export(work, name, tmp_path / f"all-{name}")
        assert report.exit_code == 0, name
        assert report.total > 0, name


def _rename_video(workdir: Path, old: str, new: str) -> None:
    """Give one video of the work folder another id in every manifest (its pictures stay)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in ("keyframes", "captions"):
        path = workdir / f"{name}.parquet"
        table = pq.read_table(path)
        ids = [new if v == old else v for v in table.column("video_id").to_pylist()]
        index = table.schema.get_field_index("video_id")
        pq.write_table(table.set_column(index, table.schema.field(index), pa.array(ids, pa.string())), path)


@pytest.mark.parametrize("fmt", ["llava", "clip-vip"])
def test_long_video_id_gets_a_file_name_that_fits(work, tmp_path, monkeypatch, fmt):
    long_id = "clips/" + "a" * 230
    _rename_video(work["workdir"], work["ok_ids"][0], long_id)

    def no_link(*args, **kwargs):  # export and work folder on different file systems: copies via temporary names
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    out = tmp_path / fmt
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", fmt, "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    names = [p.name for p in out.rglob("*")]
    assert max(len(n.encode()) for n in names) <= 255
    long_names = [n for n in names if n.startswith("a" * 100)]
    assert long_names  # a readable prefix of the id survives
    assert len(long_names[0]) < 230


def test_safe_relative_path_shortens_long_components_deterministically():
    from mama_augment.export.files import safe_relative_path

    first, second = "x/" + "b" * 300, "x/" + "b" * 299 + "c"
    assert safe_relative_path(first) == safe_relative_path(first)
    assert safe_relative_path(first) != safe_relative_path(second)
    assert all(len(part) <= 200 for part in safe_relative_path(first).split("/"))
    assert safe_relative_path("sub/clip") == "sub/clip"


# ----------------------------------------------------------------------------- filters


def test_sources_and_split_filters(work, tmp_path):
    export(work, "jsonl", tmp_path / "gen", sources=("generated",))
    rows = [json.loads(x) for x in (tmp_path / "gen" / "pairs.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rows} == {"generated"} and len(rows) == 12
    export(work, "jsonl", tmp_path / "test-split", split="test")
    rows = [json.loads(x) for x in (tmp_path / "test-split" / "pairs.jsonl").read_text().splitlines()]
    test_ids = {o["video_id"] for o in work["original_rows"] if o["split"] == "test"} & set(work["ok_ids"])
    assert {r["video_id"] for r in rows} == test_ids and {r["split"] for r in rows} == {"test"}


def test_unknown_split_is_a_usage_error_naming_the_splits(work, tmp_path):
    out = tmp_path / "bogus"
    for by in ("train", "column"):
        result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", "jsonl", "-o", str(out),
                                     "--captions", str(work["originals"]), "--split", "bogus", "--split-by", by,
                                     "--no-progress"])
        assert result.exit_code == 2, result.output
        assert "bogus" in result.output and "test, train" in result.output
        assert not out.exists()  # nothing written, not an empty export
    # By the captions' split column, no captions give no split ...
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", "jsonl", "-o", str(out),
                                 "--split", "train", "--split-by", "column", "--no-progress"])
    assert result.exit_code == 2 and "--captions" in result.output, result.output
    # ... while train splits generated captions alone by the hash of the id.
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", "jsonl", "-o", str(out),
                                 "--split", "train", "--no-progress"])
    assert result.exit_code == 0 and "a hash of video_id" in result.output, result.output


def _write_captions(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("layout", ["no split column", "split column"])
def test_export_split_selects_the_videos_train_used(work, tmp_path, layout):
    """``--split NAME`` exports the videos training put in NAME: without a split column
    by the hash of the id with the run's fractions; with one, by the majority of a
    video's captions in any spelling (``Validation``), a video without originals in
    train. Before, the first failed and the second missed val and the generated-only video."""
    from mama_augment.train.config import TrainConfig
    from mama_augment.train.data import build_data

    ids = work["ok_ids"]
    originals = [dict(o) for o in work["original_rows"] if o["video_id"] in ids[1:]]  # ids[0]: generated only
    if layout == "split column":
        originals[0]["split"] = "Validation"
        originals[1]["split"] = "test"
        originals.append({**originals[1], "caption": "another caption", "split": "train"})
        originals.append({**originals[1], "caption": "a third caption", "split": "train"})
        path = _write_captions(tmp_path / "split.csv", originals, ["video_id", "caption", "split"])
    else:
        path = _write_captions(tmp_path / "plain.csv", originals, ["video_id", "caption"])
    run = make_run(tmp_path / "trained", work)
    recorded = {"captions": str(path), "loss": "mama", "meta_weighting": False,
                "test_fraction": 0.1, "val_fraction": 0.2}  # not the defaults: v002 is val only by these
    (run / "config.json").write_text(json.dumps(recorded))
    trained = build_data(TrainConfig.from_dict(recorded), work["workdir"], need="keyframe_paths")
    placed = dict(zip(trained.videos.video_ids, trained.video_split))
    assert len(set(placed.values())) == 3  # the fixture puts a video in every split

    for split in ("train", "val", "test"):
        out = tmp_path / f"export-{split}"
        export(work, "jsonl", out, run=run, captions=None, split=split)
        lines = (out / "pairs.jsonl").read_text().splitlines() if (out / "pairs.jsonl").exists() else []
        assert {json.loads(line)["video_id"] for line in lines} == {v for v in ids if placed[v] == split}, split


def test_weight_filters_drop_exactly_the_low_weight_pairs(work, tmp_path):
    import pandas as pd

    weights = pd.read_parquet(work["run"] / "pair_weights.parquet")
    weights = weights[weights["video_id"].isin(work["ok_ids"])]
    export(work, "jsonl", tmp_path / "min", run=work["run"], min_weight=1.0)
    kept = {(r["video_id"], r["caption"]) for r in map(json.loads, (tmp_path / "min" / "pairs.jsonl").read_text().splitlines())}
    assert kept == {(r.video_id, r.caption) for r in weights.itertuples() if r.weight >= 1.0}

    everything = pd.read_parquet(work["run"] / "pair_weights.parquet")
    ranked = everything.sort_values(["weight", "loss"], ascending=[True, False])
    dropped_ids = set(ranked["pair_id"].head(int(len(everything) * 0.25)))
    report = export(work, "jsonl", tmp_path / "least", run=work["run"], drop_least_trusted=25)
    kept = {(r["video_id"], r["caption"]) for r in map(json.loads, (tmp_path / "least" / "pairs.jsonl").read_text().splitlines())}
    assert kept == {(r.video_id, r.caption) for r in weights.itertuples() if r.pair_id not in dropped_ids}
    assert report.extra["dropped_least_trusted"] == len(weights[weights["pair_id"].isin(dropped_ids)])


def test_weight_filters_need_a_weighted_run(work, tmp_path):
    unweighted = make_run(tmp_path / "plain", work, weighted=False)
    with pytest.raises(Exception, match="without meta-weighting"):
        export(work, "csv", tmp_path / "x", run=unweighted, min_weight=0.5)
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "--format", "csv", "--out", str(tmp_path / "y"),
                                 "--min-weight", "0.5"])
    assert result.exit_code == 2 and "need --run" in result.output


def test_drop_flags_removes_exactly_the_flagged_captions(tmp_path):
    texts = {(0, 0): "", (1, 0): "The video shows something happening in a dynamic and engaging manner.",
             (2, 1): "In one sentence, describe what happens in the video.",
             (3, 0): "A golden retriever leaps into a cold mountain lake.",
             (4, 0): "A golden retriever leaps into a cold mountain lake"}
    info = make_captioned_workdir(tmp_path, num_videos=6, texts=texts)
    run_filter(FilterConfig(text_model="hashing"), info["workdir"])
    import pandas as pd

    flags = pd.read_parquet(info["workdir"] / "caption_flags.parquet")
    flagged = {(r.video_id, r.caption_index) for r in flags.itertuples() if len(r.flags)}
    assert {(info["ids"][v], c) for v, c in texts} == flagged
    export(info, "jsonl", tmp_path / "clean", drop_flags=("all",), sources=("generated",))
    kept = {(r["video_id"], r["caption_index"]) for r in map(json.loads, (tmp_path / "clean" / "pairs.jsonl").read_text().splitlines())}
    assert kept == set(info["generated"]) - flagged
    # One flag only: the duplicates stay unless asked; --dedupe keeps one of the pair.
    export(info, "jsonl", tmp_path / "short", drop_flags=("too_short",), sources=("generated",), dedupe=True)
    kept = {(r["video_id"], r["caption_index"]) for r in map(json.loads, (tmp_path / "short" / "pairs.jsonl").read_text().splitlines())}
    assert kept == set(info["generated"]) - {(info["ids"][0], 0), (info["ids"][4], 0)}
    # Flags travel with the exported captions.
    rows = [json.loads(x) for x in (tmp_path / "short" / "pairs.jsonl").read_text().splitlines()]
    assert {tuple(r["flags"]) for r in rows if (r["video_id"], r["caption_index"]) == (info["ids"][2], 1)} == {("prompt_echo",)}


def test_flags_of_changed_captions_are_not_trusted(tmp_path):
    from mama_augment.manifest import CAPTIONS, PartWriter, compact, read_manifest

    info = make_captioned_workdir(tmp_path, num_videos=3, texts={(0, 0): ""})
    run_filter(FilterConfig(text_model="hashing"), info["workdir"])
    row = read_manifest(info["workdir"], CAPTIONS).to_pylist()[0]
    row["caption"] = "A new caption written after the filter ran."
    with PartWriter(info["workdir"], CAPTIONS) as writer:
        writer.write([row])
    compact(info["workdir"], CAPTIONS)
    report = export(info, "jsonl", tmp_path / "stale", drop_flags=("all",), sources=("generated",))
    assert report.extra["flags_stale"] == 1 and report.extra["kept_without_flags"] == 1
    kept = [json.loads(x) for x in (tmp_path / "stale" / "pairs.jsonl").read_text().splitlines()]
    assert any(r["caption"] == row["caption"] and r["flags"] is None for r in kept)


def test_drop_flags_without_filter_is_a_usage_error(work, tmp_path):
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", "csv", "-o", str(tmp_path / "o"),
                                 "--drop-flags", "generic"])
    assert result.exit_code == 2 and "mama-augment filter" in result.output
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", "csv", "-o", str(tmp_path / "o"),
                                 "--drop-flags", "nonsense"])
    assert result.exit_code == 2 and "unknown flag" in result.output


# ----------------------------------------------------------------------------- streaming, resume, errors


def test_external_sort_gives_the_same_export(work, tmp_path):
    export(work, "jsonl", tmp_path / "memory", run=work["run"])
    export(work, "jsonl", tmp_path / "disk", run=work["run"], sort_memory_rows=3, batch_rows=2)
    assert (tmp_path / "memory" / "pairs.jsonl").read_text() == (tmp_path / "disk" / "pairs.jsonl").read_text()
    assert not (tmp_path / "disk" / ".mama-export" / "tmp").exists()


def test_missing_picture_is_a_failed_sample_not_a_crash(work, tmp_path):
    (work["workdir"] / f"grids/{work['ok_ids'][1]}.jpg").unlink()
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", "webdataset", "-o", str(tmp_path / "w"),
                                 "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "missing_image" in result.output
    index = json.loads((tmp_path / "w" / "index.json").read_text())
    assert index["counts"]["failed"] == 1 and index["counts"]["written"] == 5
    assert index["shards"][0]["failed"][0]["video_id"] == work["ok_ids"][1]


def test_out_folder_rules(work, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", "csv", "-o", str(foreign), "--overwrite"])
    assert result.exit_code == 2 and "holds no mama-augment export" in result.output
    assert (foreign / "notes.txt").exists()

    out = tmp_path / "out"
    assert export(work, "csv", out).exit_code == 0
    again = export(work, "csv", out)
    assert again.extra["note"].startswith("already complete") and again.done == 0
    with pytest.raises(Exception, match="other options or inputs"):
        export(work, "csv", out, sources=("generated",))
    replaced = export(work, "csv", out, sources=("generated",), overwrite=True)
    assert replaced.done == 12


def test_overwrite_deletes_only_what_the_export_wrote(work, tmp_path):
    out = tmp_path / "o"
    assert export(work, "llava", out).exit_code == 0
    assert len(list((out / "images").rglob("*.jpg"))) == 6
    (out / "notes.txt").write_text("mine")
    (out / "images" / "mine.jpg").write_bytes(b"mine")
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", "csv", "-o", str(out),
                                 "--captions", str(work["originals"]), "--overwrite", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "images" / "mine.jpg").read_bytes() == b"mine"
    assert "2 file(s) the export did not write were left" in result.output
    # The earlier export's own files are gone: its JSON and every grid it placed.
    assert not (out / "llava.json").exists()
    assert [p.name for p in (out / "images").rglob("*") if p.is_file()] == ["mine.jpg"]
    assert (out / "pairs.csv").is_file() and json.loads((out / "index.json").read_text())["format"] == "csv"


def test_unwritable_out_is_a_usage_error(work, tmp_path):
    (tmp_path / "plain-file").write_text("x")
    out = tmp_path / "plain-file" / "export"  # its parent is a file: no folder can be made there
    result = runner.invoke(app, ["export", "-w", str(work["workdir"]), "-f", "csv", "-o", str(out), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and "cannot be written" in result.output


def test_no_keyframes_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["export", "-w", str(tmp_path / "empty"), "-f", "csv", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "run `mama-augment keyframes` first" in result.output


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from mama_augment.export.stage import run_export
    from mama_augment.export import webdataset
    from mama_augment.export.config import ExportConfig

    workdir, out, kill_after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    calls = {"n": 0}
    original = webdataset.TarWriter.add

    def add(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_after:  # in the middle of a shard: some members written, not all
            self.handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    webdataset.TarWriter.add = add
    run_export(ExportConfig(format="webdataset", out=out, shard_size=2), workdir)
    """
)


def test_killed_export_resumes_without_duplicate_or_half_shards(work, tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # 5 members per video (grid, 3 keyframes, json): member 13 is in shard 1 (videos 3 and 4).
    proc = subprocess.run([sys.executable, str(script), str(work["workdir"]), str(out), "13"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar"]
    leftovers = [p for p in out.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1  # the half-written shard, under its temporary name only
    assert not (out / "index.json").exists()

    report = export(work, "webdataset", out, captions=None, shard_size=2)
    assert report.skipped == 2 and report.done == 4 and report.exit_code == 0
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    ids = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            ids += [json.loads(tar.extractfile(m).read())["video_id"] for m in tar.getmembers() if m.name.endswith(".json")]
    assert ids == work["ok_ids"]


def test_split_by_column_keeps_the_captions_split_values_as_written(work, tmp_path):
    """``--split-by column``: what --split meant before it followed train (a video by
    its first caption's split value, any name the file uses)."""
    ids = work["ok_ids"]
    originals = [dict(o) for o in work["original_rows"] if o["video_id"] in ids]
    originals[1]["split"] = "test-1k"
    assert originals[2]["split"] == "train"  # outvoted below: train would call it test
    originals += [{**originals[2], "caption": f"caption {k}", "split": "test"} for k in range(2)]
    path = _write_captions(tmp_path / "named.csv", originals, ["video_id", "caption", "split"])
    out = tmp_path / "named"
    report = export(work, "jsonl", out, captions=path, split="test-1k", split_by="column")
    assert report.extra["split"].startswith("test-1k")
    assert {json.loads(line)["video_id"] for line in (out / "pairs.jsonl").read_text().splitlines()} == {ids[1]}
    first = {}
    for o in originals:
        first.setdefault(o["video_id"], o["split"])
    out = tmp_path / "first"
    export(work, "jsonl", out, captions=path, split="test", split_by="column")
    got = {json.loads(line)["video_id"] for line in (out / "pairs.jsonl").read_text().splitlines()}
    assert got == {v for v, s in first.items() if s == "test"} and originals[2]["video_id"] not in got
