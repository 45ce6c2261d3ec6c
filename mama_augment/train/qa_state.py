"""The resumable state of a QA run's training, and the share of each batch a process takes.

``qa_checkpoint.safetensors`` in the QA run folder is written at the end of every epoch,
with the conventions of the retrieval run's checkpoint (``train/checkpoint.py``): the
heads, the AdamW state and the batch-order generator as tensors, each head of its best
validation epoch beside them (``best.``) with the untrained heads' validation credits
(``untrained.``), and the scalars (epochs done, each head's best accuracy and epoch,
the per-epoch history) as JSON in the header. The batch order is drawn from
that generator alone, so a run resumed from it trains what the uninterrupted run would
have trained.

On several processes (torchrun) every process embeds and evaluates alike and trains on
its share of every batch (:func:`batch_share`); the gradients are averaged as
``train/distributed.py`` does for retrieval, each process's loss scaled so that the
average is the gradient of the whole batch's mean loss, as on one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from mama_augment.errors import MamaError

CHECKPOINT_FILE = "qa_checkpoint.safetensors"
_HEADS = ("open", "choice")


def _no_best() -> dict:
    return {kind: (-math.inf, 0, None) for kind in _HEADS}


@dataclass
class Progress:
    """Where training stands after ``epochs_done`` epochs (epoch 0: the untrained heads)."""

    epochs_done: int = 0
    # per head: (validation accuracy in %, epoch, state dict or None): the head kept so far
    best: dict = field(default_factory=_no_best)
    # per head: the untrained head's validation credits, which a trained epoch must beat
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
    for kind, (_, _, state) in progress.best.items():
        if state is not None:
            tensors.update({f"best.{kind}.{k}": v for k, v in state.items()})
    for kind, credit in progress.untrained.items():
        tensors[f"untrained.{kind}"] = torch.as_tensor(credit, dtype=torch.float64)
    optimizer_tensors, optimizer_description = ckpt.flatten_optimizer(optimizer.state_dict(), "optim")
    tensors.update(optimizer_tensors)
    tensors["rng.batches"] = generator.get_state()
    state = {
        "epochs_done": progress.epochs_done, "history": progress.history, "optimizer": optimizer_description,
        "best": {kind: {"accuracy": acc if math.isfinite(acc) else None, "epoch": epoch}
                 for kind, (acc, epoch, _) in progress.best.items()},
        "fingerprint": fingerprint,
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
    best = _no_best()
    for kind, recorded in (state.get("best") or {}).items():
        prefix = f"best.{kind}."
        head_state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if kind in best and head_state:
            accuracy = recorded.get("accuracy")
            best[kind] = (-math.inf if accuracy is None else float(accuracy), int(recorded.get("epoch") or 0),
                          head_state)
    untrained = {kind: tensors[f"untrained.{kind}"].numpy() for kind in _HEADS if f"untrained.{kind}" in tensors}
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
