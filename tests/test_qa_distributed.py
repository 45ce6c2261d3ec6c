"""``mama-augment qa`` on 2 gloo processes trains what one process trains: each process
takes its share of every batch (shares of unequal size included) and the averaged
gradients are those of the whole batch; a run stopped on 2 processes resumes there. Then
the CLI launches torchrun with ``--nproc-per-node 2``, as ``train`` does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mama_augment.train.config import TrainConfig
from mama_augment.train.loop import run_train
from mama_augment.train.qa import QASettings, run_qa
from mama_augment.train.qa_state import batch_share
from train_helpers import CONCEPT_WORDS, gloo_or_skip, make_workdir

dist = gloo_or_skip()

WORLD = 2
RTOL, ATOL = 1e-5, 1e-6
N_VIDEOS, N_TRAIN, N_VAL = 48, 30, 8
# 30 open-ended training questions in batches of 13: 13, 13, 4, so shares of 7 and 6
# rows, and 2 and 2; the multiple-choice batches are cut the same way.
BATCH = 13
# The multiple-choice head's last bias shifts every candidate's score alike, which the
# softmax over candidates ignores: its gradient is zero in exact arithmetic, so it holds
# only rounding noise, which Adam's normalisation scales up. Nothing to compare.
NO_GRADIENT = {"choice.correction.3.bias"}


class _Stopped(Exception):
    pass


def _stop_after_first_epoch(epochs_done: int) -> None:
    if epochs_done == 1:
        raise _Stopped()


def _settings(base: Path, files: Path) -> QASettings:
    questions = [str(files / n) for n in ("train_qa.json", "val_qa.json", "test_qa.json", "train_mc.jsonl",
                                          "val_mc.jsonl", "test_mc.jsonl")]
    return QASettings(base_run=str(base), questions=questions, epochs=3, batch_size=BATCH, learning_rate=3e-3,
                      hidden=32)


def _worker(rank: int, init_file: str, base: str, files: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        run_qa(_settings(Path(base), Path(files)), name="qa-2proc", device="cpu", rank=rank, world_size=WORLD)
        try:
            run_qa(_settings(Path(base), Path(files)), name="qa-2proc-stopped", device="cpu", rank=rank,
                   world_size=WORLD, epoch_callback=_stop_after_first_epoch)
        except _Stopped:
            pass
        else:
            raise RuntimeError("the stop did not happen")
        # A stopped job is restarted whole; here rank 1 must not look for the checkpoint
        # before rank 0 has written it.
        dist.barrier()
        workdir = Path(base).parent.parent
        run_qa(None, workdir=workdir, name="qa-2proc-stopped", device="cpu", resume=True, rank=rank, world_size=WORLD)
        dist.barrier()  # leave together (see tests/test_train_distributed.py)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A tiny retrieval run and open-ended and multiple-choice questions about its videos."""
    root = tmp_path_factory.mktemp("qa-distributed")
    workdir, captions = make_workdir(root, n_videos=N_VIDEOS, n_concepts=4, dim=16, seed=2, id_format="video{i}")
    torch.set_num_threads(1)
    run_train(TrainConfig(captions=str(captions), text_model="hashing", epochs=1, batch_size=16, embed_dim=16,
                          progress=False, device="cpu", name="base", meta_weighting=False), workdir)
    concepts = pd.read_csv(captions)["concept"].tolist()
    files = root / "qa"
    files.mkdir()
    splits = {"train": range(N_TRAIN), "val": range(N_TRAIN, N_TRAIN + N_VAL), "test": range(N_TRAIN + N_VAL, N_VIDEOS)}
    options = CONCEPT_WORDS[:4]
    for split, videos in splits.items():
        rows = [{"answer": concepts[v], "id": n, "question": "what is shown?", "video_id": v} for n, v in enumerate(videos)]
        (files / f"{split}_qa.json").write_text(json.dumps(rows))
        lines = [json.dumps({"question": "which thing is it?", "answer": options.index(concepts[v]),
                             "video_id": f"video{v}", "options": options}) for v in videos]
        (files / f"{split}_mc.jsonl").write_text("\n".join(lines) + "\n")
    return workdir / "runs" / "base", files


@pytest.fixture(scope="module")
def runs(base_run):
    base, files = base_run
    run_qa(_settings(base, files), name="qa-1proc", device="cpu")
    torch.multiprocessing.spawn(_worker, args=(str(base.parent.parent / "store"), str(base), str(files)),
                                nprocs=WORLD, join=True)
    return base.parent


def _assert_same_run(one: Path, two: Path) -> None:
    a, b = load_file(one / "qa_heads.safetensors"), load_file(two / "qa_heads.safetensors")
    assert a.keys() == b.keys()
    for key in sorted(set(a) - NO_GRADIENT):
        torch.testing.assert_close(b[key], a[key], rtol=RTOL, atol=ATOL, msg=lambda m, k=key: f"{k}: {m}")
    history = [json.loads((run / "config.json").read_text())["history"] for run in (one, two)]
    assert [r["epoch"] for r in history[0]] == [r["epoch"] for r in history[1]] == [0, 1, 2, 3]  # epoch 0: the untrained heads
    for row_one, row_two in zip(*history):
        assert ("train_loss" in row_two) == ("train_loss" in row_one)
        if "train_loss" in row_one:
            assert row_two["train_loss"] == pytest.approx(row_one["train_loss"], rel=RTOL, abs=ATOL)
        assert row_two["val_accuracy"] == pytest.approx(row_one["val_accuracy"])


def test_two_processes_train_what_one_process_trains(runs):
    _assert_same_run(runs / "qa-1proc", runs / "qa-2proc")
    entry = json.loads((runs / "qa-2proc" / "eval.json").read_text())["test"]
    assert entry["trained"] == json.loads((runs / "qa-1proc" / "eval.json").read_text())["test"]["trained"]


def test_a_run_stopped_on_two_processes_resumes_there(runs):
    _assert_same_run(runs / "qa-1proc", runs / "qa-2proc-stopped")


def test_batch_shares_cover_the_batch_in_order():
    for size, world in ((13, 2), (4, 3), (1, 2), (0, 2), (12, 4)):
        rows = list(range(size))
        shares = [rows[batch_share(size, rank, world)] for rank in range(world)]
        assert sum(shares, []) == rows
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_launches_torchrun_with_nproc_per_node(base_run):
    base, files = base_run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    command = [sys.executable, "-m", "mama_augment", "qa", "--nproc-per-node", "2", "--master-port", str(_free_port()),
               "--run", str(base), "--questions", str(files / "train_mc.jsonl"), "--questions",
               str(files / "test_mc.jsonl"), "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--name", "qa-cli2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run = base.parent / "qa-cli2"
    assert json.loads((run / "config.json").read_text())["batch_size"] == 8
    for name in ("qa_heads.safetensors", "qa_checkpoint.safetensors", "eval.json"):
        assert (run / name).exists(), name
    assert result.stdout.count("written:") == 1, result.stdout  # rank 0 alone reports


def test_every_rank_exits_with_the_runs_code(base_run, tmp_path):
    """Two processes as torchrun starts them (its environment, no agent): a question
    whose video is not in the work folder makes the run exit 1, on rank 1 too, so a
    launcher that watches any one process sees the run's outcome."""
    base, files = base_run
    test = tmp_path / "test_mc.jsonl"
    test.write_text((files / "test_mc.jsonl").read_text() + json.dumps(
        {"question": "which thing is it?", "answer": 0, "video_id": "video-nowhere", "options": CONCEPT_WORDS[:4]}) + "\n")
    port = _free_port()
    processes = []
    for rank in range(WORLD):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.pop("TORCHELASTIC_RUN_ID", None)
        command = [sys.executable, "-m", "mama_augment", "qa", "--run", str(base), "--questions",
                   str(files / "train_mc.jsonl"), "--questions", str(test), "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--name", "qa-exit-codes"]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          env=env))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [1, 1], outputs
    assert "1 questions left out" in outputs[0] and "written:" not in outputs[1], outputs
