"""Video question answering on top of a retrieval run (``mama-augment qa``).

The retrieval run's model (its best weights by default) is frozen and embeds every
video, question and answer text once; small heads are trained on those embeddings:

* open-ended: classification over the K most frequent training answers (``answers``);
  a question whose answer is outside that vocabulary is left out of training and
  counts as wrong in evaluation (``answer_coverage`` says how many, an upper bound on
  the accuracy);
* multiple-choice: one score per (question, candidate) against the video, the text
  being ``"<question> <candidate>"``: the retrieval similarity of the text to the video
  plus a learned correction, trained with cross-entropy over the candidates (the scores
  times a learned logit scale, started at the retrieval model's). The correction's last
  layer starts at zero, so the untrained head answers exactly as zero-shot and training
  can only move away from it where the training answers say so; it trains with dropout
  (``choice_dropout``), without which it learns the training answers by heart.

Both the open-ended head and the correction read ``[video, text, video * text]`` of the
projected, normalised embeddings (the text: the question, or the question with the
candidate). The zero-shot baseline needs no QA training: a candidate's score is its
retrieval similarity to the video, and an open-ended answer's the similarity of the
answer text to the video (the question is not used: scoring every question with every
answer would encode questions x K texts).

With a ``val`` split each head is kept at its own best validation epoch (open-ended
accuracy for the one, multiple-choice accuracy for the other), epoch 0 (untrained: the
multiple-choice head is then zero-shot) included, and a trained epoch only when it
beats the untrained head beyond chance (:func:`beats_untrained`), so the kept
multiple-choice head is never below zero-shot on val. The multiple-choice head is kept
per question kind (:func:`choice_kind`): one correction is trained for all of them, but
each kind answers with the epoch that is best on its own val questions, or zero-shot
where none beats it (a correction that helps one kind can hurt another: the retrieval
task itself gains nothing from it). The run folder is ``<workdir>/runs/<name>/``:
``config.json`` (``task: qa`` and every setting), ``qa_heads.safetensors`` (the heads,
the answer vocabulary in its header) and ``eval.json`` (one entry per evaluated split,
with ``examples``: up to :data:`EXAMPLES` of its questions and the model's answers).
As with retrieval runs, training saves its state after every epoch
(``qa_checkpoint.safetensors``, train/qa_state.py), from which ``resume`` continues, and
runs on several processes under torchrun, rank 0 writing.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mama_augment.checks import check_name, check_number
from mama_augment.datasets.qa import QAItem, load_qa
from mama_augment.datasets.qa_eval import is_correct, normalise_answer, question_groups, score_credit
from mama_augment.errors import MamaError, UsageError
from mama_augment.fileio import atomic_write_text, json_safe
from mama_augment.train.runs import QA_TASK, RunPaths

log = logging.getLogger(__name__)

TASK = QA_TASK
HEADS_FILE = "qa_heads.safetensors"
# In the heads file's header. 3: as 2, and the multiple-choice head kept for each
# question kind (``choice_kinds`` in the header: kind, kept epoch, and its tensors'
# prefix ``choice_kind.<n>``, none for a kind answered zero-shot); ``choice.*`` is the
# head of the kinds without an entry when ``other_kinds`` is ``"choice"``. 2: the
# multiple-choice head is ``choice.correction.*`` (an MLP added to the retrieval
# similarity) and ``choice.logit_scale``; files without the key (version 1) hold
# ``choice.0-3.*``, an MLP whose output was the whole score.
HEADS_VERSION = 3
# Open-ended answers per release, as the papers that introduced them: Xu et al. (2017)
# answer MSRVTT-QA and MSVD-QA over the 1000 most frequent training answers; TGIF-QA's
# FrameQA is answered over its whole training vocabulary, 1540 answers (Jang et al.
# 2017). Other releases (and later works' files) keep 1000; eval.json reports the
# coverage, so a too small vocabulary shows.
DEFAULT_ANSWERS = 1000
DEFAULT_ANSWERS_BY_FORMAT = {"msrvtt-qa": 1000, "msvd-qa": 1000, "tgif-qa": 1540}
EVAL_SPLITS = ("val", "test")
# Questions of each evaluated split stored with the model's answer (eval.json
# ``examples``): enough for a reader to see what the model gets wrong, small enough
# that eval.json stays readable whatever the split's size.
EXAMPLES = 24


@dataclass
class QASettings:
    """Every option of a QA run (written to its ``config.json``)."""

    base_run: str
    questions: list[str]
    questions_format: str | None = None
    checkpoint: str = "best"
    answers: int | None = None  # None: the release's own (DEFAULT_ANSWERS_BY_FORMAT)
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    hidden: int = 512
    # Dropout of the multiple-choice correction (its inputs and hidden units); see ChoiceHead.
    choice_dropout: float = 0.5
    seed: int = 0
    zero_shot: bool = False
    task: str = TASK

    def validate(self) -> None:
        if not self.questions:
            raise UsageError("give the question files with --questions")
        if self.answers is not None:
            check_number(self.answers, "--answers", minimum=1, maximum=1_000_000)
        check_number(self.epochs, "--epochs", minimum=1, maximum=100_000)
        check_number(self.batch_size, "--batch-size", minimum=1, maximum=1_000_000)
        check_number(self.learning_rate, "--learning-rate", above=0, maximum=10)
        check_number(self.weight_decay, "--weight-decay", minimum=0, maximum=10)
        check_number(self.hidden, "--hidden", minimum=1, maximum=100_000)
        check_number(self.choice_dropout, "choice_dropout", minimum=0, maximum=0.95)
        check_number(self.seed, "--seed", minimum=0, maximum=2**63 - 1)


def default_answers(formats: Sequence[str]) -> tuple[int, str | None]:
    """The answer count of the first of ``formats`` (the question files' detected
    formats) that has its own, and that format; else :data:`DEFAULT_ANSWERS`."""
    for name in formats:
        if name in DEFAULT_ANSWERS_BY_FORMAT:
            return DEFAULT_ANSWERS_BY_FORMAT[name], name
    return DEFAULT_ANSWERS, None


def choice_kind(item: QAItem) -> str:
    """The question kind whose own multiple-choice head answers ``item``: its question
    type as the evaluation groups it (NExT-QA's code, not its family), or ``""`` for
    every question without a type (a file without types keeps one head for all)."""
    return question_groups(item)[-1] if (item.question_type or "").strip() else ""


def _kind_label(kind: str) -> str:
    return kind or "all"


def answer_vocabulary(items: Sequence[QAItem], size: int) -> list[str]:
    """The ``size`` most frequent (normalised) answers of the open-ended ``items``; ties
    in alphabetical order, so the vocabulary does not depend on the file order."""
    counts = Counter(normalise_answer(i.answer) for i in items if not i.multiple_choice)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


# ---- heads -----------------------------------------------------------------------------


def _fused(video, text):
    import torch

    return torch.cat([video, text, video * text], dim=-1)


def _similarity(video, candidates):
    """(questions, width) retrieval similarity of each candidate text to its question's
    video; zero-shot and the multiple-choice head share it, so that their scores agree to
    the bit when the correction is zero."""
    return (candidates @ video[:, :, None]).squeeze(-1)


def build_heads(dim: int, hidden: int, answers: int, logit_scale: float = 1 / 0.07):
    """(open-ended head: fused -> answer logits, multiple-choice head: see
    :class:`ChoiceHead`); ``logit_scale`` is the retrieval model's (not its log)."""
    import torch
    from torch import nn

    def mlp(inputs: int, out: int) -> nn.Module:
        return nn.Sequential(nn.LayerNorm(inputs), nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, out))

    class ChoiceHead(nn.Module):
        """score = cos(video, text) + correction; the loss reads score * exp(logit_scale).

        The correction's output layer starts at zero: before training the scores are the
        zero-shot ones exactly, and the scale starts at the retrieval model's, so the
        first steps' loss is retrieval's own view of the candidates."""

        def __init__(self) -> None:
            super().__init__()
            self.correction = mlp(3 * dim, 1)
            nn.init.zeros_(self.correction[-1].weight)
            nn.init.zeros_(self.correction[-1].bias)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(max(logit_scale, 1.0))))

        def forward(self, video, candidates, keep=None):
            """(questions, width) scores; ``video`` (questions, dim), ``candidates``
            (questions, width, dim), texts that hold the question. ``keep``: in
            training, the dropout masks of the correction's inputs and hidden units
            (:func:`_dropout_masks`)."""
            layer_norm, first, activation, last = self.correction
            inputs = layer_norm(_fused(video[:, None, :].expand_as(candidates), candidates))
            if keep is not None:
                inputs = inputs * keep[0]
            hidden_units = activation(first(inputs))
            if keep is not None:
                hidden_units = hidden_units * keep[1]
            return _similarity(video, candidates) + last(hidden_units).squeeze(-1)

    return mlp(3 * dim, max(answers, 1)), ChoiceHead()


def _dropout_masks(rows: int, width: int, dim: int, hidden: int, rate: float, generator):
    """Inverted-dropout masks of the correction's inputs and hidden units for a batch of
    ``rows`` questions, drawn from the batch-order generator for the whole batch: every
    process draws the same masks and takes its share's rows, so a run on several
    processes (and a resumed one: the generator is in the checkpoint) trains what one
    uninterrupted process trains. None when ``rate`` is 0.

    Why dropout: the correction reads one embedding per (question, candidate) text, and
    without it learns the training answers by heart within an epoch or two (the 30 %
    wrong answers included) and falls below zero-shot on new videos; on the proxy
    benchmark (benchmarks/qa_proxy.py) dropout 0.5 is what let it rise above zero-shot on
    the validation questions whose candidates are not captions."""
    import torch

    if rate <= 0:
        return None
    scale = 1.0 / (1.0 - rate)
    return tuple((torch.rand(rows, width, size, generator=generator) >= rate).float() * scale
                 for size in (3 * dim, hidden))


@dataclass
class _Embedded:
    """Frozen embeddings of one split's questions."""

    items: list[QAItem]
    video: object  # (questions, dim)
    question: object  # (questions, dim); open-ended items
    candidates: object  # (questions, width, dim); multiple-choice items, zeros past a question's candidates
    mask: object  # (questions, width) bool


def _embed(model, data, items: dict[str, list[QAItem]], answer_texts: list[str],
           batch_size: int) -> tuple[dict[str, _Embedded], object]:
    """Each split's embeddings (``items``: questions whose video is in ``data``), and
    the embeddings of ``answer_texts``."""
    import torch

    index_of = {v: i for i, v in enumerate(data.videos.video_ids)}
    texts: dict[str, int] = {}

    def text_id(text: str) -> int:
        return texts.setdefault(text, len(texts))

    answer_ids = [text_id(a) for a in answer_texts]
    layout = {}
    for split, chosen in items.items():
        questions = [text_id(i.question) for i in chosen]
        candidates = [[text_id(f"{i.question} {c}") for c in i.candidates] for i in chosen]
        layout[split] = (questions, candidates)
    videos = sorted({index_of[i.video_id] for s in items.values() for i in s})
    was_training = model.training
    model.eval()
    try:
        video_emb = model.encode_videos(videos, batch_size).float()
        model.set_texts(list(texts))
        text_emb = model.encode_texts(np.arange(len(texts)), batch_size).float()
    finally:
        model.set_texts(data.texts)
        model.train(was_training)
    row_of = {v: r for r, v in enumerate(videos)}
    dim = text_emb.shape[1]
    out = {}
    for split, chosen in items.items():
        questions, candidates = layout[split]
        width = max((len(c) for c in candidates), default=0)
        cand = torch.zeros(len(chosen), max(width, 1), dim)
        mask = torch.zeros(len(chosen), max(width, 1), dtype=torch.bool)
        for row, ids in enumerate(candidates):
            if ids:
                cand[row, : len(ids)] = text_emb[ids].cpu()
                mask[row, : len(ids)] = True
        video_rows = [row_of[index_of[i.video_id]] for i in chosen]
        out[split] = _Embedded(chosen, video_emb[video_rows].cpu() if chosen else torch.zeros(0, dim),
                               text_emb[questions].cpu() if chosen else torch.zeros(0, dim), cand, mask)
    return out, text_emb[answer_ids].cpu() if answer_ids else torch.zeros(0, dim)


# ---- scoring ---------------------------------------------------------------------------


def _choice_credit(scores: np.ndarray, answer: int) -> float:
    """1 for the answer scored highest; ties at the top share the credit."""
    best = scores.max()
    return 1.0 / int((scores == best).sum()) if scores[answer] >= best else 0.0


def _credits(items: list[QAItem], open_scores: np.ndarray | None, vocabulary: list[str],
             choice_scores: np.ndarray | None, mask: np.ndarray) -> list[float]:
    credit = []
    for row, item in enumerate(items):
        if item.multiple_choice:
            valid = choice_scores[row][mask[row]]
            credit.append(_choice_credit(valid, item.answer_index))
        elif open_scores is None or not vocabulary:
            credit.append(0.0)
        else:
            credit.append(1.0 if is_correct(item, vocabulary[int(open_scores[row].argmax())]) else 0.0)
    return credit


def _example_rows(count: int) -> list[int]:
    """:data:`EXAMPLES` rows spread evenly over ``count`` (files list questions grouped
    by video or type: the first ones would show one kind only)."""
    limit = EXAMPLES
    if count <= limit:
        return list(range(count))
    return sorted({int(k * count / limit) for k in range(limit)})


def _examples(items: list[QAItem], open_scores: np.ndarray | None, vocabulary: list[str],
              choice_scores: np.ndarray, mask: np.ndarray, credit: list[float]) -> list[dict]:
    """A few questions with the model's answer next to the truth."""
    out = []
    for row in _example_rows(len(items)):
        item = items[row]
        example = {"question_id": item.question_id, "video_id": item.video_id, "question": item.question,
                   "type": question_groups(item)[-1], "answer": item.answer}
        if item.multiple_choice:
            valid = choice_scores[row][mask[row]]
            example["candidates"] = list(item.candidates)
            example["predicted"] = item.candidates[int(valid.argmax())]
        else:
            example["predicted"] = vocabulary[int(open_scores[row].argmax())] if (
                open_scores is not None and vocabulary) else None
        example["correct"] = credit[row] == 1.0
        out.append(example)
    return out


def _zero_shot_scores(emb: _Embedded, answer_emb, answer_texts: list[str]):
    open_scores = (emb.video @ answer_emb.T).numpy() if len(answer_texts) else None
    choice_scores = _similarity(emb.video, emb.candidates).numpy()
    return open_scores, choice_scores


def _head_scores(heads, emb: _Embedded, device, choice_kept: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Open-ended and multiple-choice scores of ``emb``'s questions. ``choice_kept``
    (from :func:`_train_heads`): per question kind, (epoch, the multiple-choice head's
    state, or None for zero-shot), under the key None the entry of the kinds not named;
    without it, or for a kind without an entry, ``heads[1]`` as it is answers."""
    import copy

    import torch

    open_head, choice_head = heads
    with torch.no_grad():
        video, candidates = emb.video.to(device), emb.candidates.to(device)
        open_scores = open_head(_fused(video, emb.question.to(device))).float().cpu().numpy()
        choice = choice_head(video, candidates)
        if choice_kept:
            rows_of: dict = {}
            for row, item in enumerate(emb.items):
                if item.multiple_choice:
                    kind = choice_kind(item)
                    rows_of.setdefault(kind if kind in choice_kept else None, []).append(row)
            zero_shot = _similarity(video, candidates)  # all rows at once: the zero-shot scores to the bit
            kind_head = copy.deepcopy(choice_head)
            for kind, rows in rows_of.items():
                if kind not in choice_kept:
                    continue  # heads[1] itself
                rows = torch.tensor(rows, device=choice.device)
                state = choice_kept[kind][1]
                if state is None:
                    choice[rows] = zero_shot[rows]
                else:
                    kind_head.load_state_dict(state)
                    choice[rows] = kind_head(video[rows], candidates[rows])
    return open_scores, choice.float().cpu().numpy()


# ---- training --------------------------------------------------------------------------


def _kinds_credit(items: list[QAItem], credit: list[float]) -> dict[str, np.ndarray]:
    """The credits of the open-ended and of the multiple-choice questions (the kinds
    present only)."""
    out = {}
    for kind, wanted in (("open", False), ("choice", True)):
        chosen = [c for item, c in zip(items, credit) if item.multiple_choice == wanted]
        if chosen:
            out[kind] = np.asarray(chosen, dtype=float)
    return out


def _kept_credit(items: list[QAItem], credit: list[float]) -> dict[str, np.ndarray]:
    """The credits each kept head is chosen on: ``open`` (the open-ended questions) and
    one entry per multiple-choice question kind (:func:`choice_key`)."""
    from mama_augment.train.qa_state import choice_key

    grouped: dict[str, list[float]] = {}
    for item, c in zip(items, credit):
        grouped.setdefault(choice_key(choice_kind(item)) if item.multiple_choice else "open", []).append(c)
    return {name: np.asarray(values, dtype=float) for name, values in grouped.items()}


def beats_untrained(credit: np.ndarray, untrained: np.ndarray) -> bool:
    """Whether a trained head's val credits beat the untrained head's on the same
    questions beyond chance: a paired sign test at about 95 % (questions gained minus
    questions lost above 1.96 standard deviations of that count under no difference).

    The best of many noisy val epochs is an optimistic pick: without this test, a
    multiple-choice head whose training taught nothing would replace zero-shot by an
    epoch that was lucky on val and is below zero-shot on test."""
    gained = float(np.clip(credit - untrained, 0, None).sum())
    lost = float(np.clip(untrained - credit, 0, None).sum())
    return gained - lost > 1.96 * math.sqrt(gained + lost)


def _train_heads(settings: QASettings, train: _Embedded, val: _Embedded | None, vocabulary: list[str], device,
                 logit_scale: float = 1 / 0.07, keep: "_Keeping | None" = None):
    """Heads trained on ``train``; with ``val``, each head of its own best validation
    epoch, epoch 0 (untrained) included. ``logit_scale``: the retrieval model's, where
    the multiple-choice head's scale starts.

    ``keep`` (a run folder's checkpoint, this process's rank): the state is saved after
    every epoch and, with ``keep.resume``, training continues from it (train/qa_state.py).

    Returns the heads (the open-ended one at its kept epoch; the multiple-choice one
    too when val has one question kind, else as training left it), the per-epoch
    history, the text that says which epochs were kept, and the multiple-choice head
    kept per question kind (see :func:`_head_scores`; empty
    without val multiple-choice questions: ``heads[1]`` answers them all).
    """
    import torch
    import torch.nn.functional as F

    from mama_augment.train.config import LOGIT_SCALE_MAX, LOGIT_SCALE_MIN
    from mama_augment.train.distributed import average_gradients, broadcast_module, sum_across_ranks
    from mama_augment.train.qa_state import CHOICE_PREFIX, Progress, batch_share, load_progress, save_progress

    keep = keep or _Keeping()
    rank, world_size = keep.rank, keep.world_size
    position = {a: k for k, a in enumerate(vocabulary)}
    items = train.items
    labels = torch.tensor([position.get(normalise_answer(i.answer), -1) if not i.multiple_choice else -1 for i in items])
    open_rows = torch.nonzero(labels >= 0).flatten()
    choice_rows = torch.tensor([r for r, i in enumerate(items) if i.multiple_choice], dtype=torch.long)
    choice_answers = torch.tensor([i.answer_index for i in items if i.multiple_choice], dtype=torch.long)
    if len(open_rows) == 0 and len(choice_rows) == 0:
        raise UsageError("no training question can be learned: the train split has no question with a video "
                         "of the work folder (see `mama-augment datasets --workdir`)")
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    heads = [h.to(device) for h in build_heads(train.video.shape[1], settings.hidden, len(vocabulary), logit_scale)]
    for head in heads:  # seeded alike everywhere; rank 0's copy wins should an init differ
        broadcast_module(head, world_size)
    params = [p for h in heads for p in h.parameters()]
    # No weight decay on gains, biases and the logit scale (as retrieval training).
    decay, no_decay = [], []
    for h in heads:
        for name, p in h.named_parameters():
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.learning_rate)
    video, question = train.video.to(device), train.question.to(device)
    cand, mask = train.candidates.to(device), train.mask.to(device)
    fingerprint = {"train_questions": len(items), "open_rows": len(open_rows), "choice_rows": len(choice_rows),
                   "answers": len(vocabulary), "val_questions": len(val.items) if val is not None else 0}
    # Each head is kept at its own best epoch: one epoch rarely suits both (the
    # open-ended head starts from nothing, the multiple-choice one from zero-shot), and
    # the multiple-choice head once per question kind: one correction serves every kind,
    # but where it helps one it may hurt another. A trained epoch must also beat the
    # untrained head on the same questions (see beats_untrained).
    progress = Progress()

    def validate(epoch: int, row: dict) -> None:
        if val is None or not val.items:
            return
        open_scores, choice_scores = _head_scores(heads, val, device)
        credit = _credits(val.items, open_scores, vocabulary, choice_scores, val.mask.numpy())
        row["val_accuracy"] = 100.0 * float(np.mean(credit))
        for kind, kind_credit in _kinds_credit(val.items, credit).items():
            row[f"val_{kind}_accuracy"] = 100.0 * float(kind_credit.mean())
        kept_credit = _kept_credit(val.items, credit)
        choice_kinds = [name for name in kept_credit if name.startswith(CHOICE_PREFIX)]
        if len(choice_kinds) > 1:
            row["val_choice_accuracy_by_kind"] = {_kind_label(name[len(CHOICE_PREFIX):]): 100.0 * float(
                kept_credit[name].mean()) for name in sorted(choice_kinds)}
        for name, head_credit in kept_credit.items():
            accuracy = 100.0 * float(head_credit.mean())
            if epoch == 0:
                progress.untrained[name] = head_credit
            elif not beats_untrained(head_credit, progress.untrained[name]):
                continue
            if name not in progress.best or accuracy > progress.best[name][0]:
                head = heads[0 if name == "open" else 1]
                progress.best[name] = (accuracy, epoch, {k: v.detach().clone() for k, v in head.state_dict().items()})

    if keep.resume:
        progress = load_progress(keep.checkpoint, heads, optimizer, generator, fingerprint)
        log.info("qa resumed after epoch %d of %d", progress.epochs_done, settings.epochs)
    else:
        for h in heads:
            h.eval()
        row = {"epoch": 0}
        validate(0, row)
        progress.history.append(row)
    for epoch in range(progress.epochs_done + 1, settings.epochs + 1):
        for h in heads:
            h.train()
        losses = []
        batches = [("open", open_rows[torch.randperm(len(open_rows), generator=generator)]),
                   ("choice", torch.randperm(len(choice_rows), generator=generator))]
        for kind, order in batches:
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                mine = batch_share(len(batch), rank, world_size)
                rows = batch[mine]  # this process's share
                # drawn by every process, rows or none, so that the generators stay alike
                masks = _dropout_masks(len(batch), cand.shape[1], cand.shape[2], settings.hidden,
                                      settings.choice_dropout, generator) if kind == "choice" else None
                if len(rows) == 0:  # a short last batch: still take part in the gradient average
                    loss = _zero_loss(heads[0] if kind == "open" else heads[1])
                elif kind == "open":
                    logits = heads[0](_fused(video[rows], question[rows]))
                    loss = F.cross_entropy(logits, labels[rows].to(device))
                else:
                    picked = choice_rows[rows]
                    if masks is not None:
                        masks = tuple(m[mine].to(device) for m in masks)
                    scores = heads[1](video[picked], cand[picked], masks)
                    logits = (scores * heads[1].logit_scale.exp()).masked_fill(~mask[picked], float("-inf"))
                    loss = F.cross_entropy(logits, choice_answers[rows].to(device))
                share = len(rows) / len(batch)
                optimizer.zero_grad()
                # averaged over the processes, these give the gradient of the batch's mean loss
                (loss * (share * world_size) if world_size > 1 else loss).backward()
                average_gradients(params, world_size)
                optimizer.step()
                with torch.no_grad():
                    heads[1].logit_scale.clamp_(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)
                losses.append(loss.detach() * share)
        for h in heads:
            h.eval()
        train_loss = float(sum_across_ranks(torch.stack(losses), world_size).mean()) if losses else float("nan")
        row = {"epoch": epoch, "train_loss": train_loss,
               "choice_logit_scale": float(heads[1].logit_scale.detach().exp())}
        validate(epoch, row)
        progress.history.append(row)
        progress.epochs_done = epoch
        log.info("qa epoch %d: %s", epoch, row)
        if keep.checkpoint is not None and rank == 0:
            save_progress(keep.checkpoint, heads, optimizer, generator, progress, fingerprint)
        if keep.epoch_callback is not None:
            keep.epoch_callback(epoch)
    kept = []
    if "open" in progress.best:
        _, epoch, state = progress.best["open"]
        heads[0].load_state_dict(state)
        kept.append(f"open-ended epoch {epoch}" + (" (untrained)" if epoch == 0 else ""))
    choice_kept: dict = {}
    choice_best = [best for name, best in progress.best.items() if name.startswith(CHOICE_PREFIX)]
    if len(choice_best) == 1:  # one kind (a file without types): heads[1] is its head, as before kinds
        heads[1].load_state_dict(choice_best[0][2])
    for name, (_, epoch, state) in progress.best.items():
        if name.startswith(CHOICE_PREFIX):
            # epoch 0, the untrained head, is zero-shot itself: scored as zero-shot
            choice_kept[name[len(CHOICE_PREFIX):]] = (epoch, state if epoch else None)
    if choice_kept:
        described = {kind: f"epoch {epoch}" + (" (untrained)" if epoch == 0 else "")
                     for kind, (epoch, _) in sorted(choice_kept.items())}
        if list(described) == [""]:
            kept.append(f"multiple-choice {described['']}")
        else:
            kept.append("multiple-choice " + ", ".join(f"{_kind_label(k)} {text}" for k, text in described.items()))
        # a kind val does not have: nothing shows a trained epoch beats zero-shot for it
        choice_kept[None] = (0, None)
    kept_text = "best validation accuracy: " + ", ".join(kept) if kept else "last"
    return heads, progress.history, kept_text, choice_kept


def choice_epochs(choice_kept: dict) -> dict[str, int]:
    """Per question kind, the epoch whose multiple-choice head answers it (0: zero-shot),
    as config.json and eval.json record it (``all``: the questions without a type)."""
    return {_kind_label(kind): epoch for kind, (epoch, _) in sorted(
        (k, v) for k, v in choice_kept.items() if k is not None)}


@dataclass
class _Keeping:
    """Where a training run keeps its state and which process this is (see _train_heads)."""

    checkpoint: Path | None = None
    resume: bool = False
    rank: int = 0
    world_size: int = 1
    epoch_callback: Callable[[int], None] | None = None  # after each epoch's checkpoint (tests stop a run here)


def _zero_loss(head):
    """A loss of 0 that reaches every parameter of ``head``: a process without rows in a
    batch still sends (zero) gradients, so every process averages the same tensors."""
    return sum((p * 0).sum() for p in head.parameters())


# ---- the run ---------------------------------------------------------------------------


@dataclass
class QARunResult:
    run_dir: Path
    eval: dict
    questions_left_out: int = 0
    problems: list[str] = field(default_factory=list)


def _prepare_folder(paths: RunPaths) -> None:
    """A QA run may be rerun into its own folder, never into a training run's."""
    if not paths.config.exists():
        return
    try:
        task = json.loads(paths.config.read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        task = None
    if task != TASK:
        raise UsageError(f"{paths.root} holds another run: choose another --name")


def run_qa(settings: QASettings | None, workdir: str | Path | None = None, name: str | None = None,
           device: str = "auto", resume: bool = False, rank: int = 0, world_size: int = 1,
           epoch_callback: Callable[[int], None] | None = None, base_run: str | Path | None = None) -> QARunResult:
    """Train (unless ``zero_shot``) and evaluate a QA run on a retrieval run's frozen
    model; writes the run folder (see the module doc).

    ``resume``: continue the QA run ``workdir``/runs/``name`` after its last finished
    epoch, with the settings of its config.json (``settings`` is then None; ``base_run``,
    when given, must be the run's own). On ``world_size`` processes (torchrun, the group
    already joined) each trains on its share of every batch and rank 0 alone writes.
    ``epoch_callback(epochs_done)`` runs after each epoch's checkpoint.

    Two writers of one run folder would mix their files: the writer (rank 0) holds the
    run's lock, ``train``'s own (so a ``train`` of that name is kept out too), from its
    first look at the folder to its last file; a second run into the folder meanwhile
    stops at once with a MamaError.
    """
    import contextlib

    with contextlib.ExitStack() as held:
        return _run_qa(settings, workdir, name, device, resume, rank, world_size, epoch_callback, base_run, held)


def _hold_run_lock(held, workdir: Path, name: str, rank: int) -> None:
    from mama_augment.manifest import workdir_lock

    check_name(name, "--name")  # it names the lock file
    if rank == 0 and workdir.is_dir():
        held.enter_context(workdir_lock(workdir, f"train-{name}"))


def _run_qa(settings, workdir, name, device, resume, rank, world_size, epoch_callback, base_run, held) -> QARunResult:
    import torch

    from mama_augment.train import checkpoint as ckpt
    from mama_augment.train.qa_state import CHECKPOINT_FILE, ShardedEncoder
    from mama_augment.train.runs import load_run, run_weights

    if resume:
        if workdir is None or name is None:
            raise UsageError("--resume needs the QA run to continue: its --name and --workdir, or the --run it was made from")
        _hold_run_lock(held, Path(workdir), name, rank)
        settings = _resumed_settings(RunPaths.of(workdir, name), base_run)
    if settings is None:
        raise UsageError("give the retrieval run (--run) and the question files (--questions)")
    settings.validate()
    base = Path(settings.base_run)
    chosen = run_weights(base, settings.checkpoint)
    workdir = Path(workdir) if workdir else base.parent.parent
    name = name or f"qa-{base.name}"
    check_name(name, "--name")
    if not resume:
        _hold_run_lock(held, workdir, name, rank)
    paths = RunPaths.of(workdir, name)
    if paths.root.resolve() == base.resolve():
        raise UsageError("--name names the retrieval run itself: choose another name")
    _prepare_folder(paths)
    checkpoint_path = paths.root / CHECKPOINT_FILE
    is_writer = rank == 0

    _, model, data = load_run(base, device=device, workdir=workdir, checkpoint=chosen["checkpoint"])
    qa = load_qa(settings.questions, settings.questions_format, video_ids=data.videos.video_ids)
    known = set(data.videos.video_ids)
    left_out = Counter(i.split for i in qa.items if i.video_id not in known)
    splits = [s for s in ("train", *EVAL_SPLITS) if qa.split(s)]
    evaluated = [s for s in EVAL_SPLITS if s in splits]
    if not evaluated:
        raise UsageError("the question files have no val or test questions to evaluate (the split comes from the "
                         "file name: test_qa.json, val.csv, Test_frameqa_question.tsv)")
    if not settings.zero_shot and "train" not in splits:
        raise UsageError("training needs the train questions (train_qa.json, train.csv, ...); "
                         "or ask for --zero-shot")
    dev = model.device
    # The vocabulary is the training answers'; a zero-shot run without train questions
    # answers from the evaluated questions' own answers (optimistic: said in eval.json).
    vocabulary_from = "train" if "train" in splits else "evaluated questions"
    if settings.answers is None:
        answers, answers_default_from = default_answers(qa.formats)
    else:
        answers, answers_default_from = settings.answers, None
    vocabulary = answer_vocabulary(qa.split("train") if "train" in splits else
                                   [i for s in evaluated for i in qa.split(s)], answers)
    wanted = evaluated if settings.zero_shot else splits
    items = {s: [i for i in qa.split(s) if i.video_id in known] for s in wanted}
    config = _config(settings, answers, answers_default_from, chosen)
    if resume:
        began = json.loads(paths.config.read_text(encoding="utf-8")).get("base_checkpoint")
        if began != config["base_checkpoint"]:
            raise MamaError(f"the retrieval run's weights changed since the QA run began ({began} then, "
                            f"{config['base_checkpoint']} now): start the QA run again without --resume")
    if is_writer and not resume:
        paths.root.mkdir(parents=True, exist_ok=True)
        checkpoint_path.unlink(missing_ok=True)  # a rerun into its own folder starts afresh
        if not settings.zero_shot:  # written now: a run stopped while training resumes from it
            atomic_write_text(paths.config, json.dumps(config, indent=2))
    # Training must not move the global RNG: a later run in this process starts the same.
    with torch.random.fork_rng(devices=[]):
        encoder = ShardedEncoder(model, rank, world_size) if world_size > 1 else model
        embedded, answer_emb = _embed(encoder, data, items, vocabulary, settings.batch_size)
        heads, history, kept, choice_kept = None, [], None, {}
        if not settings.zero_shot:
            keeping = _Keeping(checkpoint_path, resume, rank, world_size, epoch_callback)
            heads, history, kept, choice_kept = _train_heads(
                settings, embedded["train"], embedded.get("val"), vocabulary, dev,
                float(model.head.logit_scale.detach().exp()), keeping)

    results = {}
    for split in evaluated:
        emb = embedded[split]
        entry: dict = {
            "task": TASK, "split": split, "base_run": str(base), "checkpoint": chosen["checkpoint"],
            "questions_files": [str(p) for p in settings.questions], "questions": len(emb.items),
            "questions_without_video": int(left_out.get(split, 0)),
            "open_ended_questions": sum(not i.multiple_choice for i in emb.items),
            "multiple_choice_questions": sum(i.multiple_choice for i in emb.items),
        }
        open_items = [i for i in emb.items if not i.multiple_choice]
        if open_items:
            in_vocabulary = set(vocabulary)
            entry["answers"] = len(vocabulary)
            entry["answers_from"] = vocabulary_from
            entry["answer_coverage"] = 100.0 * sum(normalise_answer(i.answer) in in_vocabulary for i in open_items) / len(open_items)
        mask = emb.mask.numpy()
        open_scores, choice_scores = _zero_shot_scores(emb, answer_emb, vocabulary)
        credit = _credits(emb.items, open_scores, vocabulary, choice_scores, mask)
        entry["zero_shot"] = score_credit(emb.items, credit).to_dict()
        if heads is not None:
            open_scores, choice_scores = _head_scores(heads, emb, dev, choice_kept)
            credit = _credits(emb.items, open_scores, vocabulary, choice_scores, mask)
            entry["trained"] = score_credit(emb.items, credit).to_dict()
            entry["heads_kept"] = kept
            if choice_kept:
                entry["choice_epochs"] = choice_epochs(choice_kept)
        # the answers of what is reported first: the heads when trained, else zero-shot
        entry["examples_from"] = "trained" if heads is not None else "zero_shot"
        entry["examples"] = _examples(emb.items, open_scores, vocabulary, choice_scores, mask, credit)
        results[split] = entry

    problems = [line for line in qa.problems.lines()]
    if not is_writer:
        return QARunResult(paths.root, results, sum(left_out.values()), problems)
    paths.root.mkdir(parents=True, exist_ok=True)
    config["history"] = history
    if heads is not None:
        config["heads_kept"] = kept
        if choice_kept:
            config["choice_epochs"] = choice_epochs(choice_kept)
    atomic_write_text(paths.config, json.dumps(config, indent=2))
    if heads is not None:
        tensors = {f"{kind}.{k}": v for kind, h in zip(("open", "choice"), heads) for k, v in h.state_dict().items()}
        kinds = []
        for kind, (epoch, state) in sorted((k, v) for k, v in choice_kept.items() if k is not None):
            prefix = f"choice_kind.{len(kinds)}" if state is not None else None
            if state is not None:
                tensors.update({f"{prefix}.{k}": v for k, v in state.items()})
            kinds.append({"kind": kind, "epoch": epoch, "tensors": prefix})
        header = {"vocabulary": vocabulary, "dim": int(answer_emb.shape[1]), "hidden": settings.hidden,
                  "heads_version": HEADS_VERSION, "choice_kinds": kinds,
                  "other_kinds": "zero-shot" if choice_kept else "choice"}
        ckpt.atomic_save(tensors, paths.root / HEADS_FILE, header)
    elif (paths.root / HEADS_FILE).exists():
        (paths.root / HEADS_FILE).unlink()  # a zero-shot rerun: stale heads would not match eval.json
    atomic_write_text(paths.eval, json.dumps(json_safe(results), indent=2))
    return QARunResult(paths.root, results, sum(left_out.values()), problems)


def _config(settings: QASettings, answers: int, answers_default_from: str | None, chosen: dict) -> dict:
    """What config.json holds (the per-epoch ``history`` is added when training ends)."""
    config = asdict(settings)
    config["answers"] = answers  # the count used, whoever chose it
    if settings.answers is None:
        config["answers_default_of"] = answers_default_from or "any release"
    config["base_checkpoint"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in chosen.items()}
    config["history"] = []
    return config


def _resumed_settings(paths: RunPaths, base_run: str | Path | None) -> QASettings:
    """The settings a QA run began with (its config.json), for ``--resume``."""
    import dataclasses

    from mama_augment.train.qa_state import CHECKPOINT_FILE

    if not paths.config.exists():
        raise UsageError(f"nothing to resume: {paths.root} is not a QA run folder (no {RunPaths.CONFIG})")
    try:
        stored = json.loads(paths.config.read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            raise ValueError(f"a JSON {type(stored).__name__}, not an object")
        names = {f.name for f in dataclasses.fields(QASettings)}
        settings = QASettings(**{k: v for k, v in stored.items() if k in names})
    except (OSError, ValueError, TypeError) as exc:
        raise MamaError(f"the run's {RunPaths.CONFIG} ({paths.config}) is damaged: {exc}") from None
    if settings.task != TASK:
        raise UsageError(f"{paths.root} is not a QA run: resume it with `mama-augment train --resume`")
    if "answers_default_of" in stored:
        settings.answers = None  # the release's own count, as the run was started
    if "choice_dropout" not in stored:
        settings.choice_dropout = 0.0  # begun before the correction had dropout: continued without
    if base_run is not None and Path(base_run).resolve() != Path(settings.base_run).resolve():
        raise UsageError(f"--run {base_run} is not the retrieval run {paths.root.name} was made from "
                         f"({settings.base_run}): --resume continues a run as it began")
    if settings.zero_shot:
        raise UsageError(f"{paths.root} is a zero-shot run: it trains nothing to resume; run it again without --resume")
    if not (paths.root / CHECKPOINT_FILE).exists():
        raise UsageError(f"nothing to resume: {paths.root / CHECKPOINT_FILE} does not exist (the run stopped before "
                         "its first epoch ended): run it again without --resume")
    return settings


def format_qa(result: QARunResult) -> str:
    """The accuracies of each evaluated split, overall and per question type."""
    lines = []
    kept = next((entry["heads_kept"] for entry in result.eval.values() if entry.get("heads_kept")), None)
    if kept:
        lines.append(f"heads kept: {kept}")
    for split, entry in result.eval.items():
        lines.append(f"{split}: {entry['questions']} questions ({entry['open_ended_questions']} open-ended, "
                     f"{entry['multiple_choice_questions']} multiple-choice)")
        if "answer_coverage" in entry:
            lines.append(f"  answers: the {entry['answers']} most frequent training answers cover "
                         f"{entry['answer_coverage']:.1f} % of the open-ended questions")
        if entry["questions_without_video"]:
            lines.append(f"  {entry['questions_without_video']} questions left out: their video is not in keyframes.parquet")
        for label, key in (("trained", "trained"), ("zero-shot", "zero_shot")):
            score = entry.get(key)
            if not score:
                continue
            accuracy = score["accuracy"]
            lines.append(f"  {label:<9} accuracy {accuracy:6.2f} %" if accuracy is not None else f"  {label:<9} accuracy -")
            for kind, group in score["by_type"].items():
                value = f"{group['accuracy']:6.2f} %" if group["accuracy"] is not None else "-"
                lines.append(f"    {kind:<14} {value}  ({group['questions']})")
    return "\n".join(lines)
