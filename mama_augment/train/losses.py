"""The subtractive angular margin contrastive loss (docs/method.md, "The loss").

Shaped like open_clip's ``ClipLoss``: a small module whose rank and world size are
constructor arguments, a gather function that is the identity on one process, and a
forward that is just the symmetric cross-entropy. It takes L2-normalised video and
text embeddings and the *exponentiated* logit scale and returns per-sample losses
(the weighting net needs them) plus named terms for logging.

With similarity s = cos(theta), the positive logit is
``scale * cos(theta - mu) = scale * (s cos(mu) + sqrt(1 - s^2) sin(mu))``; negatives
keep ``scale * s``. Writing it through the expansion rather than ``cos(acos(s) - mu)``
means mu = 0 is InfoNCE *exactly* (same value, same gradient) and the clamp by
``eps`` only touches the ``sqrt`` term, whose derivative is unbounded at s = +-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def gather_features(
    video: torch.Tensor,
    text: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All embeddings of every rank, in rank order, *with* gradients.

    The backward sums, over ranks, the gradient each rank's loss sends to this rank's
    rows: this rank's embeddings are negatives in every other rank's rows, so the
    gathered copies must carry gradient too (open_clip's ``gather_with_grad``). With
    the local rows merely put back into a no-grad gather, a per-rank loss over its own
    rows would miss those terms. Identity on one process, so the loss runs and is
    tested on one CPU. See ``train/distributed.py`` for the conventions.
    """
    if world_size == 1:
        return video, text
    from mama_augment.train.distributed import all_gather_with_grad  # several processes only

    return all_gather_with_grad(video, rank, world_size), all_gather_with_grad(text, rank, world_size)


def positive_logits(similarity: torch.Tensor, scale: torch.Tensor, margin: float, eps: float) -> torch.Tensor:
    """``scale * cos(theta - margin)`` for cosines ``similarity`` of positive pairs."""
    if margin == 0.0:
        return scale * similarity
    clamped = similarity.clamp(-1 + eps, 1 - eps)
    sine = torch.sqrt(1 - clamped * clamped)  # sin(theta) >= 0 for theta in [0, pi]
    return scale * (similarity * math.cos(margin) + sine * math.sin(margin))


def margin_logits(similarity: torch.Tensor, scale: torch.Tensor, margin: float, eps: float = 1e-6, offset: int = 0) -> torch.Tensor:
    """Logits from a (local rows x all columns) cosine matrix, margin on positives only.

    The positive of row ``i`` is column ``offset + i``.
    """
    rows = similarity.shape[0]
    index = torch.arange(rows, device=similarity.device)
    logits = scale * similarity
    if margin == 0.0:
        return logits
    positives = similarity[index, index + offset]
    adjusted = positive_logits(positives, scale, margin, eps)
    # index_put keeps the graph; negatives (every off-positive entry) are untouched.
    return logits.index_put((index, index + offset), adjusted)


@dataclass
class LossOutput:
    """``per_sample``: (B,) video->text + text->video cross-entropy of each pair;
    ``loss``: their mean; ``terms``: named scalars for logging (detached)."""

    per_sample: torch.Tensor
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class ContrastiveLoss(nn.Module):
    """Symmetric contrastive loss with a subtractive angular margin on positives.

    ``margin=0`` is InfoNCE (CLIP's loss, summed over both directions per sample).
    """

    def __init__(self, margin: float = 0.0, eps: float = 1e-6, rank: int = 0, world_size: int = 1):
        super().__init__()
        if margin < 0:
            raise ValueError("margin must not be negative")
        self.margin = float(margin)
        self.eps = float(eps)
        self.rank = rank
        self.world_size = world_size

    def get_logits(self, video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video->text logits (local videos x all texts) and text->video logits
        (local texts x all videos); the margin sits on each row's positive."""
        all_video, all_text = gather_features(video, text, self.rank, self.world_size)
        offset = self.rank * video.shape[0]
        logits_per_video = margin_logits(video @ all_text.T, scale, self.margin, self.eps, offset)
        logits_per_text = margin_logits(text @ all_video.T, scale, self.margin, self.eps, offset)
        return logits_per_video, logits_per_text

    def forward(self, video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, terms: bool = True) -> LossOutput:
        """``terms=False`` skips the logged terms (the meta step has no use for them)."""
        logits_per_video, logits_per_text = self.get_logits(video, text, scale)
        # Cross-entropy in float32 even under autocast: bf16 log-softmax is too coarse
        # for losses near zero, and the weighting net reads these values.
        if logits_per_video.dtype in (torch.float16, torch.bfloat16):
            logits_per_video = logits_per_video.float()
            logits_per_text = logits_per_text.float()
        labels = torch.arange(video.shape[0], device=video.device) + self.rank * video.shape[0]
        video_to_text = F.cross_entropy(logits_per_video, labels, reduction="none")
        text_to_video = F.cross_entropy(logits_per_text, labels, reduction="none")
        per_sample = video_to_text + text_to_video
        loss = per_sample.mean()
        if not terms:
            return LossOutput(per_sample=per_sample, loss=loss)
        with torch.no_grad():
            positives = (video * text).sum(-1).clamp(-1, 1)
            terms = {
                "loss_video_to_text": video_to_text.mean().detach(),
                "loss_text_to_video": text_to_video.mean().detach(),
                "positive_angle": torch.arccos(positives).mean(),
            }
        return LossOutput(per_sample=per_sample, loss=loss, terms=terms)


def build_loss(name: str, margin: float, eps: float = 1e-6, rank: int = 0, world_size: int = 1) -> ContrastiveLoss:
    """The ``--loss name`` of ``config.LOSSES``: ``margin`` on positives where the entry
    takes a margin (mama), else margin 0 (infonce)."""
    from mama_augment.train.config import LOSSES

    entry = LOSSES.get(name)
    if entry is None:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return ContrastiveLoss(margin if entry.takes_margin else 0.0, eps, rank, world_size)
