"""The resumable state of a QA run's training, and the share of each batch a process takes.

``qa_checkpoint.safetensors`` in the QA run folder is written at the end of every epoch,
with the conventions of the retrieval run's checkpoint (``train/checkpoint.py``): the
heads, the AdamW state and the batch-order generator as tensors, each head of its best
validation epoch beside them (``best.<n>.``: the open-ended head, and the multiple-choice
head once per question kind, each kind keeping its own) with the untrained heads'
validation credits (``untrained.<n>``), and the scalars (epochs done, each kept head's
name, best accuracy and epoch, the per-epoch history) as JSON in the header. The batch order is drawn from
that generator alone, so a run resumed from it trains what the uninterrupted run would
have trained.

On several processes (torchrun) every process embeds and evaluates alike and trains on
its share of every batch (:func:`batch_share`); the gradients are averaged as
``train/distributed.py`` does for retrieval, each process's loss scaled so that the
average is the gradient of the whole batch's mean loss, as on one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mama_augment.errors import MamaError

CHECKPOINT_FILE = "qa_checkpoint.safetensors"
_HEADS = ("open", "choice")
# In the header. 2: ``best`` is a list (one entry per kept head: ``open`` and
# ``choice:<question kind>``), its tensors ``best.<n>.*`` / ``untrained.<n>``; without the
# key (1), one multiple-choice head for every kind, which cannot be split per kind.
STATE_VERSION = 2
CHOICE_PREFIX = "choice:"


def choice_key(kind: str) -> str:
    """The name under which the multiple-choice head kept for question ``kind`` is recorded."""
    return CHOICE_PREFIX + kind


@dataclass
class Progress:
    """Where training stands after ``epochs_done`` epochs (epoch 0: the untrained heads)."""

    epochs_done: int = 0
    # per kept head ("open", or choice_key(kind) for each multiple-choice question kind
    # in val): (validation accuracy in %, epoch, state dict): the head kept so far
    best: dict = field(default_factory=dict)
    # per kept head: the untrained head's validation credits, which a trained epoch must beat
    untrained: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def batch_share(size: int, rank: int, world_size: int) -> slice:
    """Process ``rank``'s contiguous rows of a batch of ``size``: shares differ by one row
    at most, so a batch that does not split evenly (the last of an epoch) still goes to
    every process; a process may get none when the batch has fewer rows than processes."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def save_progress(path: Path, heads, optimizer, generator, progress: Progress, fingerprint: dict) -> None:
    """Write the state after an epoch (atomically: a kill leaves the previous one)."""
    from mama_augment.train import checkpoint as ckpt

    import torch

    tensors = {f"{kind}.{k}": v for kind, h in zip(_HEADS, heads) for k, v in h.state_dict().items()}
    # Kept heads are numbered: a question kind is free text, unfit for a tensor name.
    names = list(dict.fromkeys([*progress.best, *progress.untrained]))
    for n, name in enumerate(names):
        if name in progress.best:
            tensors.update({f"best.{n}.{k}": v for k, v in progress.best[name][2].items()})
        if name in progress.untrained:
            tensors[f"untrained.{n}"] = torch.as_tensor(progress.untrained[name], dtype=torch.float64)
    optimizer_tensors, optimizer_description = ckpt.flatten_optimizer(optimizer.state_dict(), "optim")
    tensors.update(optimizer_tensors)
    tensors["rng.batches"] = generator.get_state()
    state = {
        "epochs_done": progress.epochs_done, "history": progress.history, "optimizer": optimizer_description,
        "kept_heads": names,
        "best": [{"head": name, "accuracy": progress.best[name][0], "epoch": progress.best[name][1]}
                 if name in progress.best else None for name in names],
        "fingerprint": fingerprint, "state_version": STATE_VERSION,
    }
    ckpt.atomic_save(tensors, path, state)


def load_progress(path: Path, heads, optimizer, generator, fingerprint: dict) -> Progress:
    """Restore heads, optimizer and generator from ``path``; the progress it records.

    ``fingerprint`` describes the training data (question and answer counts): a resume
    over question files that changed since the run began would not continue that run.
    """
    from mama_augment.train import checkpoint as ckpt

    try:
        tensors, state = ckpt.load(path)
        outdated = state.get("state_version") != STATE_VERSION
    except Exception as exc:  # safetensors, torch and a damaged header raise many kinds
        raise MamaError(f"cannot read the QA checkpoint {path}: {exc}; start the run again without --resume") from None
    if outdated:
        raise MamaError(f"the QA checkpoint {path} was written before the multiple-choice head was kept per question "
                        "kind: start the run again without --resume")
    try:
        for kind, head in zip(_HEADS, heads):
            head.load_state_dict({k[len(kind) + 1:]: v for k, v in tensors.items() if k.startswith(f"{kind}.")})
        optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, state["optimizer"], "optim"))
        generator.set_state(tensors["rng.batches"])
        epochs_done = int(state["epochs_done"])
    except Exception as exc:  # safetensors, torch and a damaged header raise many kinds
        raise MamaError(f"cannot read the QA checkpoint {path}: {exc}; start the run again without --resume") from None
    if state.get("fingerprint") != fingerprint:
        raise MamaError(f"the questions differ from those the run began with ({state.get('fingerprint')} then, "
                        f"{fingerprint} now): start the run again without --resume")
    best, untrained = {}, {}
    for n, (name, recorded) in enumerate(zip(state["kept_heads"], state["best"])):
        prefix = f"best.{n}."
        if recorded is not None:
            best[name] = (float(recorded["accuracy"]), int(recorded["epoch"]),
                          {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        if f"untrained.{n}" in tensors:
            untrained[name] = tensors[f"untrained.{n}"].numpy()
    return Progress(epochs_done, best, untrained, list(state.get("history") or []))


class ShardedEncoder:
    """The frozen model as ``_embed`` (train/qa.py) uses it, each of ``world_size``
    processes encoding its share of the videos and texts and every process receiving all
    of them, in order: the embedding, a QA run's costly part, is divided too.

    Texts are handed to the model when encoded, as this process's share, so afterwards
    the model holds that share: a QA run does not encode with it again.
    """

    def __init__(self, model, rank: int, world_size: int):
        self._model, self._rank, self._world_size = model, rank, world_size
        self._texts: list[str] = []

    def __getattr__(self, name):  # eval(), train(), training, device: the model's own
        return getattr(self._model, name)

    def set_texts(self, texts) -> None:
        self._texts = list(texts)

    def encode_videos(self, indices, batch_size: int = 256):
        return self._encode(list(indices), lambda mine: self._model.encode_videos(mine, batch_size))

    def encode_texts(self, indices, batch_size: int = 256):
        import numpy as np

        def encode(mine):
            self._model.set_texts([self._texts[int(i)] for i in mine])
            return self._model.encode_texts(np.arange(len(mine)), batch_size)

        return self._encode(list(indices), encode)

    def _encode(self, indices: list, encode):
        import torch
        import torch.distributed as dist

        total, world = len(indices), self._world_size
        if total < world:  # a process would have nothing to encode (and no width to send)
            return encode(indices)
        local = encode(indices[batch_share(total, self._rank, world)])
        width = -(-total // world)  # the largest share
        padded = torch.zeros(width, *local.shape[1:], dtype=local.dtype, device=local.device)
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        sizes = [len(range(total)[batch_share(total, r, world)]) for r in range(world)]
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])
