"""``mama-augment qa`` on a retrieval run of the synthetic work folder: the heads learn
what the frozen embeddings hold, the zero-shot baseline runs without training, and
the run folder follows the conventions."""

from __future__ import annotations

import json

import pandas as pd
import torch
import pytest
from typer.testing import CliRunner

from mama_augment.cli import app
from mama_augment.datasets.qa import QAItem
from mama_augment.train.qa import answer_vocabulary
from train_helpers import CONCEPT_WORDS, make_workdir
from workdir_helpers import lock_held_elsewhere

runner = CliRunner()
N_VIDEOS, N_TRAIN = 60, 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A work folder, its retrieval run, and MSRVTT-QA / multiple-choice files asking for
    each video's concept."""
    root = tmp_path_factory.mktemp("qa")
    workdir, captions = make_workdir(root, n_videos=N_VIDEOS, id_format="video{i}")
    result = runner.invoke(app, ["train", "--workdir", str(workdir), "--captions", str(captions), "--text-model",
                                 "hashing", "--epochs", "2", "--batch-size", "16", "--name", "base", "-q"])
    assert result.exit_code == 0, result.output
    concepts = pd.read_csv(captions)["concept"].tolist()
    files = root / "qa"
    files.mkdir()
    for split, videos in (("train", range(N_TRAIN)), ("test", range(N_TRAIN, N_VIDEOS))):
        rows = [{"answer": concepts[v], "id": n, "question": "what is shown?", "video_id": v} for n, v in enumerate(videos)]
        (files / f"{split}_qa.json").write_text(json.dumps(rows))
        options = CONCEPT_WORDS[:5]
        lines = [json.dumps({"question": "which thing is it?", "answer": options.index(concepts[v]), "video_id": f"video{v}",
                             "options": options}) for v in videos if concepts[v] in options]
        (files / f"{split}_mc.jsonl").write_text("\n".join(lines) + "\n")
    return workdir, files


def test_trained_heads_answer_from_the_frozen_model_and_write_the_run_folder(trained):
    workdir, files = trained
    result = runner.invoke(app, ["qa", "--run", str(workdir / "runs" / "base"), "--questions", str(files / "train_qa.json"),
                                 "--questions", str(files / "test_qa.json"), "--epochs", "40", "--device", "cpu",
                                 "--name", "qa-open"])
    assert result.exit_code == 0, result.output
    run = workdir / "runs" / "qa-open"
    assert json.loads((run / "config.json").read_text())["task"] == "qa" and (run / "qa_heads.safetensors").exists()
    entry = json.loads((run / "eval.json").read_text())["test"]
    assert entry["questions"] == N_VIDEOS - N_TRAIN and entry["open_ended_questions"] == entry["questions"]
    assert entry["answers_from"] == "train" and entry["answer_coverage"] <= 100
    test_answers = pd.Series([r["answer"] for r in json.loads((files / "test_qa.json").read_text())])
    majority = 100 * test_answers.value_counts().iloc[0] / len(test_answers)
    assert entry["trained"]["accuracy"] > majority + 10
    assert entry["trained"]["by_type"]["what"]["questions"] == entry["questions"]
    assert "zero-shot" in result.output and "trained" in result.output
    # a QA run is not a retrieval run: evaluate and qa say so instead of "no weights yet"
    for command in (["evaluate", "--run", str(run)], ["qa", "--run", str(run), "--questions", str(files / "test_qa.json")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "is a question-answering run" in result.output, result.output


def test_multiple_choice_heads_and_zero_shot_baseline(trained):
    workdir, files = trained
    base = workdir / "runs" / "base"
    args = ["qa", "--run", str(base), "--questions", str(files / "train_mc.jsonl"), "--questions",
            str(files / "test_mc.jsonl"), "--epochs", "40", "--device", "cpu", "--name", "qa-mc"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    entry = json.loads((workdir / "runs" / "qa-mc" / "eval.json").read_text())["test"]
    assert entry["multiple_choice_questions"] == entry["questions"] > 0
    assert entry["trained"]["accuracy"] > 20 + 10  # five candidates: chance is 20 %
    result = runner.invoke(app, [*args, "--zero-shot"])
    assert result.exit_code == 0, result.output
    entry = json.loads((workdir / "runs" / "qa-mc" / "eval.json").read_text())["test"]
    assert "trained" not in entry and 0 <= entry["zero_shot"]["accuracy"] <= 100
    assert not (workdir / "runs" / "qa-mc" / "qa_heads.safetensors").exists()


def test_questions_without_video_are_counted_and_a_training_run_is_never_overwritten(trained):
    workdir, files = trained
    stray = files / "stray" / "test_qa.json"
    stray.parent.mkdir(exist_ok=True)
    stray.write_text(json.dumps([{"answer": "dog", "id": 0, "question": "what?", "video_id": 1},
                                 {"answer": "dog", "id": 1, "question": "what?", "video_id": 9999}]))
    base = workdir / "runs" / "base"
    result = runner.invoke(app, ["qa", "--run", str(base), "--questions", str(stray), "--zero-shot", "--device", "cpu",
                                 "--name", "qa-stray"])
    assert result.exit_code == 1, result.output
    assert "1 questions left out" in result.output and "unmatched_video_id: 1" in result.output
    result = runner.invoke(app, ["qa", "--run", str(base), "--questions", str(stray), "--zero-shot", "--name", "base"])
    assert result.exit_code == 2 and "retrieval run itself" in result.output
    result = runner.invoke(app, ["qa", "--run", str(base), "--questions", str(stray), "--device", "cpu", "--name", "x"])
    assert result.exit_code == 2 and "train questions" in result.output


def test_answer_vocabulary_is_the_most_frequent_training_answers():
    items = [QAItem(str(n), "v", "q", a) for n, a in enumerate(["Dog", "cat", "dog ", "bird", "cat", "ant"])]
    assert answer_vocabulary(items, 3) == ["cat", "dog", "ant"]


def test_an_answer_outside_the_vocabulary_counts_as_wrong(trained):
    workdir, files = trained
    result = runner.invoke(app, ["qa", "--run", str(workdir / "runs" / "base"), "--questions", str(files / "train_qa.json"),
                                 "--questions", str(files / "test_qa.json"), "--answers", "1", "--epochs", "3",
                                 "--device", "cpu", "--name", "qa-one-answer"])
    assert result.exit_code == 0, result.output
    entry = json.loads((workdir / "runs" / "qa-one-answer" / "eval.json").read_text())["test"]
    assert entry["answers"] == 1 and entry["answer_coverage"] < 100
    assert entry["trained"]["accuracy"] <= entry["answer_coverage"] + 1e-9
    assert entry["zero_shot"]["accuracy"] <= entry["answer_coverage"] + 1e-9


def test_eval_json_keeps_a_few_questions_with_the_models_answers(trained, monkeypatch):
    from mama_augment.train import qa

    monkeypatch.setattr(qa, "EXAMPLES", 5)  # fewer than the split's questions: the cap is used
    workdir, files = trained
    result = runner.invoke(app, ["qa", "--run", str(workdir / "runs" / "base"), "--questions", str(files / "train_qa.json"),
                                 "--questions", str(files / "test_qa.json"), "--questions", str(files / "train_mc.jsonl"),
                                 "--questions", str(files / "test_mc.jsonl"), "--epochs", "5", "--device", "cpu",
                                 "--name", "qa-examples"])
    assert result.exit_code == 0, result.output
    entry = json.loads((workdir / "runs" / "qa-examples" / "eval.json").read_text())["test"]
    examples = entry["examples"]
    assert entry["examples_from"] == "trained" and len(examples) == 5 < entry["questions"]
    # spread over the split: the multiple-choice questions come after the open-ended ones
    assert {bool(e.get("candidates")) for e in examples} == {True, False}
    for e in examples:
        assert e["correct"] == (str(e["predicted"]).strip().lower() == str(e["answer"]).strip().lower())
        if e.get("candidates"):
            assert e["predicted"] in e["candidates"] and e["answer"] in e["candidates"]


def test_report_and_status_show_a_qa_run(trained):
    from mama_augment.report import build_report

    workdir, files = trained
    result = runner.invoke(app, ["qa", "--run", str(workdir / "runs" / "base"), "--questions", str(files / "train_mc.jsonl"),
                                 "--questions", str(files / "test_mc.jsonl"), "--epochs", "5", "--device", "cpu",
                                 "--name", "qa-shown"])
    assert result.exit_code == 0, result.output
    entry = json.loads((workdir / "runs" / "qa-shown" / "eval.json").read_text())["test"]
    page = build_report(workdir).read_text()
    run_part = page.split('data-run="qa-shown"')[1].split("</article>")[0]
    assert "Question answering" in run_part and "zero-shot" in run_part
    assert f"{entry['trained']['accuracy']:.4g}" in run_part
    assert "which thing is it?" in run_part and "qa-examples" in run_part
    assert "Evaluation (eval.json)" not in run_part
    result = runner.invoke(app, ["status", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "qa-shown" in line)
    assert f"accuracy {entry['trained']['accuracy']:.4g} %" in line


def test_the_answer_count_defaults_to_the_releases_own(trained):
    workdir, files = trained
    qa_rows = {s: json.loads((files / f"{s}_qa.json").read_text()) for s in ("train", "test")}
    tgif = files / "tgif"
    tgif.mkdir(exist_ok=True)
    for split, rows in qa_rows.items():
        lines = ["gif_name\tquestion\tanswer\tvid_id\tkey\ttype"]
        lines += [f"video{r['video_id']}\twhat is shown\t{r['answer']}\t{r['video_id']}\t{r['id']}\t0" for r in rows]
        (tgif / f"{split.title()}_frameqa_question.tsv").write_text("\n".join(lines) + "\n")
    base = str(workdir / "runs" / "base")
    cases = (([str(tgif / "Train_frameqa_question.tsv"), str(tgif / "Test_frameqa_question.tsv")], [], 1540, "tgif-qa"),
             ([str(files / "train_qa.json"), str(files / "test_qa.json")], [], 1000, "msrvtt-qa"),
             ([str(tgif / "Train_frameqa_question.tsv"), str(tgif / "Test_frameqa_question.tsv")], ["--answers", "7"], 7, None))
    for n, (paths, extra, expected, source) in enumerate(cases):
        args = ["qa", "--run", base, *[a for p in paths for a in ("--questions", p)], *extra, "--zero-shot",
                "--device", "cpu", "--name", f"qa-k{n}"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        config = json.loads((workdir / "runs" / f"qa-k{n}" / "config.json").read_text())
        assert config["answers"] == expected and config.get("answers_default_of") == source


class _Stopped(Exception):
    pass


def _stop_after_first_epoch(epochs_done: int) -> None:
    if epochs_done == 1:
        raise _Stopped()


def test_a_stopped_qa_run_resumes_to_the_uninterrupted_result(trained, tmp_path):
    from safetensors.torch import load_file

    from mama_augment.train.qa import QASettings, run_qa

    workdir, files = trained
    # a val split, so that the heads of the best epoch (kept across the stop) are used
    val = tmp_path / "val_qa.json"
    val.write_text((files / "test_qa.json").read_text())
    val_mc = tmp_path / "val_mc.jsonl"
    val_mc.write_text((files / "test_mc.jsonl").read_text())
    questions = [str(files / "train_qa.json"), str(val), str(files / "test_qa.json"),
                 str(files / "train_mc.jsonl"), str(val_mc), str(files / "test_mc.jsonl")]
    base = workdir / "runs" / "base"

    def settings():
        return QASettings(base_run=str(base), questions=questions, epochs=3, batch_size=16, learning_rate=3e-3)

    run_qa(settings(), name="qa-whole", device="cpu")
    with pytest.raises(_Stopped):
        run_qa(settings(), name="qa-stopped", device="cpu", epoch_callback=_stop_after_first_epoch)
    stopped = workdir / "runs" / "qa-stopped"
    assert (stopped / "qa_checkpoint.safetensors").exists() and not (stopped / "eval.json").exists()
    # options that change training are refused with --resume
    refused = runner.invoke(app, ["qa", "--run", str(base), "--name", "qa-stopped", "--resume", "--epochs", "5"])
    assert refused.exit_code == 2 and "--epochs" in refused.output, refused.output
    result = runner.invoke(app, ["qa", "--run", str(base), "--name", "qa-stopped", "--resume", "--device", "cpu"])
    assert result.exit_code == 0, result.output

    whole, resumed = load_file(workdir / "runs" / "qa-whole" / "qa_heads.safetensors"), load_file(stopped / "qa_heads.safetensors")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    history = [json.loads((workdir / "runs" / n / "config.json").read_text())["history"] for n in ("qa-whole", "qa-stopped")]
    assert [row["epoch"] for row in history[0]] == [0, 1, 2, 3] and history[1] == history[0]  # epoch 0: untrained
    evals = [json.loads((workdir / "runs" / n / "eval.json").read_text())["test"] for n in ("qa-whole", "qa-stopped")]
    assert evals[1]["trained"] == evals[0]["trained"] and evals[1]["heads_kept"] == evals[0]["heads_kept"]
    # questions without a type: one multiple-choice head for all, recorded and printed
    assert evals[1]["choice_epochs"] == evals[0]["choice_epochs"] and set(evals[0]["choice_epochs"]) == {"all"}
    config = json.loads((stopped / "config.json").read_text())
    assert config["choice_epochs"] == evals[0]["choice_epochs"] and config["heads_kept"] == evals[0]["heads_kept"]
    assert f"heads kept: {evals[0]['heads_kept']}" in result.output


def test_resume_without_a_checkpoint_is_a_usage_error(trained):
    workdir, files = trained
    base = str(workdir / "runs" / "base")
    result = runner.invoke(app, ["qa", "--run", base, "--name", "qa-never", "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.output, result.output
    result = runner.invoke(app, ["qa", "--workdir", str(workdir), "--name", "qa-never", "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.output, result.output
    result = runner.invoke(app, ["qa", "--resume"])
    assert result.exit_code == 2 and "--name and --workdir" in result.output, result.output
    runner.invoke(app, ["qa", "--run", base, "--questions", str(files / "test_qa.json"), "--zero-shot",
                        "--device", "cpu", "--name", "qa-zero"])
    result = runner.invoke(app, ["qa", "--run", base, "--name", "qa-zero", "--resume"])
    assert result.exit_code == 2 and "zero-shot" in result.output, result.output


def test_causal_vidqa_is_answered_with_its_paired_types(trained, tmp_path):
    workdir, _ = trained
    concepts = pd.read_csv(workdir.parent / "captions.csv")["concept"].tolist()  # make_workdir writes it there
    data = tmp_path / "data"
    options = CONCEPT_WORDS[:5]
    for v in range(N_VIDEOS):
        right = options.index(concepts[v]) if concepts[v] in options else 0
        entry = {"question": "which thing is it?", "answer": options}
        text = {"descriptive": entry, "explanatory": entry, "predictive": {**entry, "reason": options},
                "counterfactual": {**entry, "reason": options}}
        answer = {"descriptive": {"answer": right}, "explanatory": {"answer": right},
                  "predictive": {"answer": right, "reason": right}, "counterfactual": {"answer": right, "reason": right}}
        (data / "QA" / f"video{v}").mkdir(parents=True)
        (data / "QA" / f"video{v}" / "text.json").write_text(json.dumps(text))
        (data / "QA" / f"video{v}" / "answer.json").write_text(json.dumps(answer))
    (data / "split").mkdir()
    (data / "split" / "train.txt").write_text("".join(f"video{v}\n" for v in range(N_TRAIN)))
    (data / "split" / "test.txt").write_text("".join(f"video{v}\n" for v in range(N_TRAIN, N_VIDEOS)))
    result = runner.invoke(app, ["qa", "--run", str(workdir / "runs" / "base"), "--questions", str(data / "QA"),
                                 "--questions", str(data / "split" / "train.txt"), "--questions",
                                 str(data / "split" / "test.txt"), "--epochs", "3", "--device", "cpu",
                                 "--name", "qa-causal"])
    assert result.exit_code == 0, result.output
    entry = json.loads((workdir / "runs" / "qa-causal" / "eval.json").read_text())["test"]
    assert entry["multiple_choice_questions"] == 6 * (N_VIDEOS - N_TRAIN)
    by_type = entry["trained"]["by_type"]
    assert set(by_type) == {"D", "E", "P-A", "P-R", "P-AR", "C-A", "C-R", "C-AR"}
    assert by_type["P-AR"]["questions"] == N_VIDEOS - N_TRAIN
    assert by_type["P-AR"]["accuracy"] <= min(by_type["P-A"]["accuracy"], by_type["P-R"]["accuracy"]) + 1e-9
    assert "P-AR" in result.output
# ---- the multiple-choice head starts from zero-shot ---------------------------------------


def _candidates_near_videos(generator, n: int, width: int, dim: int, spread: float):
    """A fixed direction, ``n`` unit videos, ``width`` candidates each scattered around
    its video by ``spread``, a random answer index each and the row numbers."""
    import torch
    import torch.nn.functional as F

    marker = F.normalize(torch.ones(dim), dim=0)
    video = F.normalize(torch.randn(n, dim, generator=generator), dim=-1)
    candidates = F.normalize(video[:, None, :] + spread * torch.randn(n, width, dim, generator=generator), dim=-1)
    answers = torch.randint(width, (n,), generator=generator)
    return marker, video, candidates, answers, torch.arange(n)


def _choice_split(n_questions: int, seed: int, width: int = 4, dim: int = 16):
    """Synthetic embeddings of multiple-choice questions where retrieval similarity
    misleads: the distractors lie close to the video, the right candidate far from it
    but along one fixed direction that a learned correction can find."""
    import torch
    import torch.nn.functional as F

    from mama_augment.train.qa import _Embedded

    generator = torch.Generator().manual_seed(seed)
    marker, video, candidates, answers, rows = _candidates_near_videos(generator, n_questions, width, dim, 0.6)
    candidates[rows, answers] = F.normalize(marker + 0.3 * torch.randn(n_questions, dim, generator=generator), dim=-1)
    items = [QAItem(str(q), f"v{q}", "which?", f"c{int(a)}", tuple(f"c{k}" for k in range(width)), int(a))
             for q, a in enumerate(answers)]
    question = F.normalize(torch.randn(1, dim, generator=generator), dim=-1).expand(n_questions, dim).clone()
    return _Embedded(items, video, question, candidates, torch.ones(n_questions, width, dtype=torch.bool))


def _choice_accuracy(emb, scores) -> float:
    import numpy as np

    from mama_augment.train.qa import _credits

    return 100.0 * float(np.mean(_credits(emb.items, None, [], scores, emb.mask.numpy())))


def test_the_untrained_multiple_choice_head_answers_as_zero_shot():
    import numpy as np

    from mama_augment.train.qa import _head_scores, _zero_shot_scores, build_heads

    emb = _choice_split(50, seed=3)
    heads = build_heads(16, 8, answers=3, logit_scale=30.0)
    for h in heads:
        h.eval()
    _, trained = _head_scores(heads, emb, "cpu")
    _, zero_shot = _zero_shot_scores(emb, emb.video[:0], [])
    assert np.array_equal(trained, zero_shot)
    assert float(heads[1].logit_scale.detach().exp()) == pytest.approx(30.0)


def test_the_correction_learns_what_zero_shot_misses_and_a_useless_one_is_not_kept():
    from mama_augment.train.qa import QASettings, _head_scores, _train_heads, _zero_shot_scores

    train, val = _choice_split(300, seed=0), _choice_split(100, seed=1)
    settings = QASettings(base_run="unused", questions=["unused"], epochs=20, batch_size=32, hidden=32, seed=0)
    heads, history, kept, _ = _train_heads(settings, train, val, [], "cpu", logit_scale=20.0)
    zero_shot = _choice_accuracy(val, _zero_shot_scores(val, val.video[:0], [])[1])
    trained = _choice_accuracy(val, _head_scores(heads, val, "cpu")[1])
    assert zero_shot < 30 and trained > zero_shot + 40
    assert history[0]["epoch"] == 0 and history[0]["val_choice_accuracy"] == pytest.approx(zero_shot)
    assert "multiple-choice epoch" in kept and "(untrained)" not in kept
    # Training answers that are all wrong teach only harm: epoch 0, zero-shot itself, is kept.
    wrong = _choice_split(300, seed=0)
    wrong.items = [QAItem(i.question_id, i.video_id, i.question, i.answer, i.candidates, (i.answer_index + 1) % 4)
                   for i in wrong.items]
    heads, _, kept, _ = _train_heads(settings, wrong, val, [], "cpu", logit_scale=20.0)
    assert "multiple-choice epoch 0 (untrained)" in kept
    assert _choice_accuracy(val, _head_scores(heads, val, "cpu")[1]) == pytest.approx(zero_shot)


def test_a_trained_epoch_must_beat_the_untrained_head_beyond_chance():
    import numpy as np

    from mama_augment.train.qa import beats_untrained

    untrained = np.array([1.0] * 60 + [0.0] * 40)
    lucky = untrained.copy()
    lucky[60:63] = 1.0  # three more right answers out of 100: val noise
    better = untrained.copy()
    better[60:80] = 1.0
    worse_then_better = better.copy()
    worse_then_better[:10] = 0.0  # ten lost, twenty gained: 10 net of 30 changed, within chance
    assert not beats_untrained(lucky, untrained) and not beats_untrained(untrained, untrained)
    assert beats_untrained(better, untrained) and not beats_untrained(worse_then_better, untrained)
    assert not beats_untrained(untrained, better)


def test_a_qa_run_takes_its_run_lock(trained):
    """While another process writes QA run X (it holds X's lock, as a running `qa` or
    `train` does), a second `qa` into X stops at once, exit 1, and touches nothing; a QA
    run of another name is not held up."""
    workdir, files = trained
    base = workdir / "runs" / "base"
    args = ["qa", "--run", str(base), "--questions", str(files / "train_mc.jsonl"), "--questions",
            str(files / "test_mc.jsonl"), "--epochs", "1", "--device", "cpu", "--name", "qa-locked"]
    assert runner.invoke(app, args).exit_code == 0
    evaluation = workdir / "runs" / "qa-locked" / "eval.json"
    before = evaluation.read_bytes()
    with lock_held_elsewhere(workdir, "train-qa-locked"):
        for second in (args, [*args, "--zero-shot"], ["qa", "--run", str(base), "--name", "qa-locked", "--resume"]):
            result = runner.invoke(app, second)
            assert result.exit_code == 1 and "another 'train-qa-locked' run" in result.output, result.output
            assert "Traceback" not in result.output
        assert evaluation.read_bytes() == before
        other = runner.invoke(app, [*args[:-1], "qa-unlocked"])
        assert other.exit_code == 0, other.output
    assert runner.invoke(app, args).exit_code == 0


def test_a_run_begun_without_choice_dropout_resumes_without_it(tmp_path):
    """The multiple-choice correction trains with dropout now; a run whose config.json
    predates it continues as it began (no dropout), a newer run with its own rate."""
    from dataclasses import asdict

    from mama_augment.train.qa import QASettings, _resumed_settings
    from mama_augment.train.qa_state import CHECKPOINT_FILE
    from mama_augment.train.runs import RunPaths

    paths = RunPaths.of(tmp_path, "qa-old")
    paths.root.mkdir(parents=True)
    (paths.root / CHECKPOINT_FILE).write_bytes(b"")
    stored = asdict(QASettings(base_run="base", questions=["train.jsonl"], choice_dropout=0.3))
    paths.config.write_text(json.dumps(stored))
    assert _resumed_settings(paths, None).choice_dropout == 0.3
    del stored["choice_dropout"]
    paths.config.write_text(json.dumps(stored))
    assert _resumed_settings(paths, None).choice_dropout == 0.0
    assert QASettings(base_run="base", questions=["q"]).choice_dropout > 0


def _two_kind_split(n_per_kind: int, seed: int, kinds=("A", "B"), width: int = 4, dim: int = 16):
    """Kind A as :func:`_choice_split` (the right candidate far from the video, along a
    fixed direction a correction can learn); kind B where retrieval is right (the right
    candidate closest to the video) and one distractor lies along that direction, so
    the correction learned on A picks it."""
    import torch
    import torch.nn.functional as F

    from mama_augment.train.qa import _Embedded

    a = _choice_split(n_per_kind, seed, width, dim)
    generator = torch.Generator().manual_seed(seed + 1000)
    marker, video, candidates, answers, rows = _candidates_near_videos(generator, n_per_kind, width, dim, 0.7)
    candidates[rows, answers] = F.normalize(video + 0.1 * torch.randn(n_per_kind, dim, generator=generator), dim=-1)
    decoy = (answers + 1) % width
    candidates[rows, decoy] = F.normalize(marker + 0.3 * torch.randn(n_per_kind, dim, generator=generator), dim=-1)
    items = [QAItem(f"{kinds[0]}{i.question_id}", i.video_id, i.question, i.answer, i.candidates, i.answer_index,
                    question_type=kinds[0]) for i in a.items]
    items += [QAItem(f"{kinds[1]}{q}", f"w{q}", "which?", f"c{int(r)}", tuple(f"c{k}" for k in range(width)), int(r),
                     question_type=kinds[1]) for q, r in enumerate(answers)]
    return _Embedded(items, torch.cat([a.video, video]), torch.cat([a.question, a.question]),
                     torch.cat([a.candidates, candidates]), torch.ones(2 * n_per_kind, width, dtype=torch.bool))


def test_the_correction_is_kept_per_question_kind():
    """One correction, trained on kind A, helps A and hurts B: A answers with it, B
    zero-shot, each kind chosen on its own val questions."""
    from mama_augment.train.qa import QASettings, _head_scores, _train_heads, _zero_shot_scores, choice_epochs

    train, val = _choice_split(300, seed=0), _two_kind_split(100, seed=1)
    train.items = [QAItem(i.question_id, i.video_id, i.question, i.answer, i.candidates, i.answer_index,
                          question_type="A") for i in train.items]
    settings = QASettings(base_run="unused", questions=["unused"], epochs=20, batch_size=32, hidden=32, seed=0)
    heads, history, kept, choice_kept = _train_heads(settings, train, val, [], "cpu", logit_scale=20.0)
    a, b = _subset(val, "A"), _subset(val, "B")
    zero_a = _choice_accuracy(a, _zero_shot_scores(a, a.video[:0], [])[1])
    zero_b = _choice_accuracy(b, _zero_shot_scores(b, b.video[:0], [])[1])
    # the toy is what it says: the last epoch's correction helps A and hurts B
    assert _choice_accuracy(a, _head_scores(heads, a, "cpu")[1]) > zero_a + 40
    assert _choice_accuracy(b, _head_scores(heads, b, "cpu")[1]) < zero_b - 20
    epochs = choice_epochs(choice_kept)
    assert epochs["B"] == 0 and epochs["A"] > 0, kept
    assert "A epoch" in kept and "B epoch 0 (untrained)" in kept
    assert set(history[-1]["val_choice_accuracy_by_kind"]) == {"A", "B"}
    _, scores = _head_scores(heads, val, "cpu", choice_kept)
    credit_a = _choice_accuracy(a, scores[: len(a.items)])
    assert credit_a > zero_a + 40 and _choice_accuracy(b, scores[len(a.items):]) == pytest.approx(zero_b)
    # a kind val did not have answers zero-shot
    c = _two_kind_split(50, seed=2, kinds=("C", "D"))
    _, scores = _head_scores(heads, c, "cpu", choice_kept)
    assert scores.tolist() == _zero_shot_scores(c, c.video[:0], [])[1].tolist()


def _subset(emb, kind: str):
    from mama_augment.train.qa import _Embedded

    rows = [r for r, i in enumerate(emb.items) if i.question_type == kind]
    return _Embedded([emb.items[r] for r in rows], emb.video[rows], emb.question[rows], emb.candidates[rows],
                     emb.mask[rows])


def test_a_stopped_run_resumes_to_the_same_head_per_question_kind(tmp_path):
    from mama_augment.train.qa import QASettings, _head_scores, _Keeping, _train_heads

    train, val = _choice_split(300, seed=0), _two_kind_split(100, seed=1, kinds=("A", "B/odd.kind"))
    train.items = [QAItem(i.question_id, i.video_id, i.question, i.answer, i.candidates, i.answer_index,
                          question_type="A") for i in train.items]
    settings = QASettings(base_run="unused", questions=["unused"], epochs=6, batch_size=32, hidden=32, seed=0)
    whole = _train_heads(settings, train, val, [], "cpu", 20.0, _Keeping(tmp_path / "whole.safetensors"))
    stopped = tmp_path / "stopped.safetensors"
    with pytest.raises(_Stopped):
        _train_heads(settings, train, val, [], "cpu", 20.0, _Keeping(stopped, epoch_callback=_stop_after_first_epoch))
    resumed = _train_heads(settings, train, val, [], "cpu", 20.0, _Keeping(stopped, resume=True))
    assert resumed[1] == whole[1] and resumed[2] == whole[2]  # history, kept text
    assert {k: v[0] for k, v in resumed[3].items()} == {k: v[0] for k, v in whole[3].items()}
    assert whole[3]["B/odd.kind"][0] == 0 and whole[3]["A"][0] > 0
    assert (_head_scores(whole[0], val, "cpu", whole[3])[1] == _head_scores(resumed[0], val, "cpu", resumed[3])[1]).all()


def test_a_checkpoint_from_before_kinds_is_refused_with_a_message(tmp_path):
    from mama_augment.errors import MamaError
    from mama_augment.train import checkpoint as ckpt
    from mama_augment.train.qa import QASettings, _Keeping, _train_heads, build_heads
    from mama_augment.train.qa_state import load_progress

    train, val = _choice_split(60, seed=0), _choice_split(20, seed=1)
    settings = QASettings(base_run="unused", questions=["unused"], epochs=1, batch_size=32, hidden=8, seed=0)
    path = tmp_path / "qa_checkpoint.safetensors"
    _train_heads(settings, train, val, [], "cpu", 20.0, _Keeping(path))
    tensors, state = ckpt.load(path)
    # as written before: best per head name, no state version
    del state["state_version"], state["kept_heads"]
    state["best"] = {"choice": {"accuracy": 50.0, "epoch": 1}}
    ckpt.atomic_save({k.replace("best.0.", "best.choice."): v for k, v in tensors.items()}, path, state)
    import torch

    heads = build_heads(16, 8, 0)
    optimizer = torch.optim.AdamW([p for h in heads for p in h.parameters()])
    with pytest.raises(MamaError, match="per question kind.*without --resume"):
        load_progress(path, heads, optimizer, torch.Generator(), state["fingerprint"])
