"""Every command's exit codes as the README states them: 0 all succeeded, 1 some items
(or the stage) failed, 2 usage error. One cheap case per documented rule, on small
generated work folders (no decoding, no model, no training)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from mama_augment.cli import app
from workdir_helpers import make_captioned_workdir, make_run

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("exit-codes")
    info = make_captioned_workdir(root, num_videos=3)
    work = info["workdir"]
    (root / "plain").mkdir()
    (root / "a-file").write_text("x")
    unweighted = make_run(root / "unweighted", info, weighted=False)
    damaged = make_run(root / "damaged", info)
    (damaged / "config.json").write_text("{not json")
    no_column = root / "no-column"
    shutil.copytree(work, no_column)
    pq.write_table(pq.read_table(no_column / "captions.parquet").drop_columns(["prompt_sha256"]),
                   no_column / "captions.parquet")
    missing_picture = root / "missing-picture"
    shutil.copytree(work, missing_picture)
    next((missing_picture / "grids").rglob("*.jpg")).unlink()
    damaged_manifest = root / "damaged-manifest"
    shutil.copytree(work, damaged_manifest)
    (damaged_manifest / "keyframes.parquet").write_bytes(b"not parquet")
    return {
        "root": root, "work": work, "originals": info["originals"], "run": make_run(root, info),
        "unweighted": unweighted, "damaged": damaged, "no_column": no_column, "missing_picture": missing_picture,
        "damaged_manifest": damaged_manifest,
    }


# (command, arguments with {placeholders} from the fixture, expected exit code)
CASES = [
    ("keyframes", ["{root}/none.mp4", "-w", "{root}/kw"], 2),  # missing input
    ("keyframes", ["{root}/none.mp4", "-w", "{root}/kw", "--fps", "nan"], 2),  # bad option
    ("keyframes", ["{root}/none.mp4", "-w", "{root}/plain", "--overwrite"], 2),  # not a work folder
    ("keyframes", ["{root}/none.mp4", "-w", "{root}/a-file/w"], 2),  # unwritable work folder
    ("caption", ["-w", "{work}", "--temperature", "nan"], 2),
    ("train", ["--captions", "{originals}", "-w", "{root}/no-work"], 2),
    ("evaluate", ["--run", "{root}/plain"], 2),
    ("audit", ["--run", "{run}"], 0),
    ("audit", ["--run", "{unweighted}"], 1),  # no weights: losses listed instead
    ("audit", ["--run", "{damaged}"], 1),  # damaged config.json
    ("audit", ["--run", "{root}/plain"], 2),  # not a run
    ("qa", ["--run", "{root}/plain", "--questions", "{root}/none.json"], 2),  # not a run
    ("qa", ["--run", "{run}", "--questions", "{root}/none.json"], 2),  # missing input
    ("datasets", [], 0),
    ("datasets", ["{root}/none.csv"], 2),
    ("filter", ["-w", "{root}/no-captions", "--text-model", "hashing"], 2),
    ("filter", ["-w", "{no_column}", "--text-model", "hashing", "--no-progress"], 2),
    ("export", ["-w", "{work}", "-f", "csv", "-o", "{root}/e-ok", "--no-progress"], 0),
    ("export", ["-w", "{missing_picture}", "-f", "webdataset", "-o", "{root}/e-missing", "--no-progress"], 1),
    ("export", ["-w", "{work}", "-f", "csv", "-o", "{root}/e-split", "--captions", "{originals}",
                "--split", "bogus"], 2),
    ("export", ["-w", "{work}", "-f", "csv", "-o", "{root}/a-file/e"], 2),  # unwritable output
    ("status", ["-w", "{work}"], 0),
    ("status", ["-w", "{damaged_manifest}"], 1),  # a manifest it cannot read
    ("status", ["-w", "{root}/no-work"], 2),
    ("report", ["-w", "{root}/no-work"], 2),
    ("report", ["-w", "{work}", "--output", "{root}/a-file/r"], 2),
    ("config", ["show", "--command", "nope"], 2),
    ("config", ["show"], 0),
]


@pytest.mark.parametrize("command, args, expected", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_documented_exit_code(folders, command, args, expected):
    values = {k: str(v) for k, v in folders.items()}
    result = runner.invoke(app, [command, *[a.format(**values) for a in args]], env={"MAMA_CONFIG": ""})
    assert result.exit_code == expected, result.output
    assert "Traceback" not in result.output
    if expected == 2 and command != "config":
        assert result.output.strip().splitlines()[-1].startswith("Error:")  # one line saying what is wrong


def test_every_command_has_a_case_and_the_readme_states_the_codes():
    commands = set(typer.main.get_command(app).commands)
    assert commands <= {command for command, _, _ in CASES}
    general = re.search(r"Exit codes: 0 (.*?)\n\n", README, re.S).group(1)
    general = " ".join(general.split())
    assert "1 some items" in general and "2 usage error" in general
    for rule in ("missing input", "cannot be written"):
        assert rule in general, rule
