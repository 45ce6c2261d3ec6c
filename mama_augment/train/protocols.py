"""Retrieval and multiple-choice protocols on similarity matrices (no model, no I/O).

Every function takes a similarity matrix ``sim`` of shape (captions, videos) and, for
each caption, the column of its video (``caption_video``).

Protocols (``PROTOCOLS``):

* ``one-caption``: one caption per video (MSR-VTT 1k-A). Text->video: each caption
  ranks the videos; video->text: each video ranks the captions. When a video has several
  captions only its first (in file order) is kept, see :func:`first_caption_per_video`.
* ``multi-sentence``: every caption of every video is a query (MSVD, MSR-VTT full test,
  VATEX). Text->video as above; video->text counts a hit at K when *any* of the video's
  captions ranks within the top K of all captions, i.e. the video's best-ranked own
  caption is ranked against the other videos' captions only.
* ``paragraph``: one paragraph per video, all its sentences joined in time order
  (DiDeMo, ActivityNet Captions); the same ranking as ``one-caption``.

Ties. A query's rank is its *expected* rank when tied items are put in random order:
``1 + higher + ties / 2``, where ``higher`` counts the items scored strictly higher than
the right one and ``ties`` the other items scored exactly the same. R@K is the
probability that the right item lands within the top K under that random order:
``clip((K - higher) / (ties + 1), 0, 1)``. With no ties (the usual case with float
embeddings) these are the plain rank and hit. Why: the rule neither rewards nor punishes
ties; a collapsed model that scores everything alike gets chance-level numbers, where
the optimistic rule (``1 + higher``) would give it R@1 = 100 and the pessimistic rule
(``1 + higher + ties``) would give it the worst rank whatever it learned.

DSL (dual softmax, Cheng et al. 2021): before ranking, each similarity is multiplied
by a softmax prior taken over the *other* axis - for text->video over the captions of
each video (``sim * softmax(T * sim, dim=0)``), for video->text over the videos of each
caption (``sim * softmax(T * sim, dim=1)``), with ``T`` = :data:`DSL_TEMPERATURE`. It
uses the whole query set at once (a transductive re-scoring), so it is reported next to
the plain numbers, never in their place.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

# Chosen from the files alone (torch-free), re-exported here for the scoring code.
from mama_augment.datasets.protocol import PROTOCOL_TITLES, PROTOCOLS, choose_protocol  # noqa: F401

TIE_RULE = "expected rank under random order of tied items: rank = 1 + higher + ties/2, R@K = clip((K - higher) / (ties + 1), 0, 1)"
DSL_TEMPERATURE = 100.0
RECALL_AT = (1, 5, 10)
METRIC_KEYS = ("R@1", "R@5", "R@10", "MdR", "MnR")
_CHUNK = 4096


def _tensor(sim) -> torch.Tensor:
    """``sim`` as a float tensor in which NaN (a broken model) scores lowest, so it can
    never rank first."""
    tensor = torch.as_tensor(sim)
    tensor = tensor if tensor.is_floating_point() else tensor.float()
    nan = torch.isnan(tensor)
    return torch.where(nan, torch.tensor(float("-inf"), dtype=tensor.dtype, device=tensor.device), tensor) if nan.any() else tensor


def text_to_video_counts(sim, caption_video) -> tuple[np.ndarray, np.ndarray]:
    """(higher, ties) of each caption's own video among all videos."""
    sim = _tensor(sim)
    target = torch.as_tensor(np.asarray(caption_video), dtype=torch.long, device=sim.device)
    higher, ties = [], []
    for start in range(0, sim.shape[0], _CHUNK):
        block = sim[start : start + _CHUNK]
        own = block.gather(1, target[start : start + _CHUNK, None])
        higher.append((block > own).sum(1))
        ties.append((block == own).sum(1) - 1)  # the own video equals itself
    return _numpy(higher), _numpy(ties)


def video_to_text_counts(sim, caption_video) -> tuple[np.ndarray, np.ndarray]:
    """(higher, ties) of each video's best-scored own caption among the other videos'
    captions. Every video needs at least one caption."""
    sim = _tensor(sim)
    n_videos = sim.shape[1]
    caption_video = torch.as_tensor(np.asarray(caption_video), dtype=torch.long, device=sim.device)
    if n_videos and int(torch.bincount(caption_video, minlength=n_videos).min()) == 0:
        raise ValueError("every video needs at least one caption for video->text ranking")
    best = torch.full((n_videos,), float("-inf"), dtype=sim.dtype, device=sim.device)
    best = best.scatter_reduce(0, caption_video, sim.gather(1, caption_video[:, None])[:, 0], reduce="amax")
    higher = torch.zeros(n_videos, dtype=torch.long, device=sim.device)
    ties = torch.zeros(n_videos, dtype=torch.long, device=sim.device)
    columns = torch.arange(n_videos, device=sim.device)
    for start in range(0, sim.shape[0], _CHUNK):
        block = sim[start : start + _CHUNK]
        other = caption_video[start : start + _CHUNK, None] != columns[None, :]
        higher += ((block > best[None, :]) & other).sum(0)
        ties += ((block == best[None, :]) & other).sum(0)
    return higher.cpu().numpy(), ties.cpu().numpy()


def _numpy(blocks: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(blocks).cpu().numpy() if blocks else np.zeros(0, dtype=np.int64)


def expected_ranks(higher, ties) -> np.ndarray:
    return 1.0 + np.asarray(higher, dtype=np.float64) + np.asarray(ties, dtype=np.float64) / 2.0


def recall_at(higher, ties, k: int) -> np.ndarray:
    """Per query: the probability that the right item is within the top ``k``."""
    higher = np.asarray(higher, dtype=np.float64)
    ties = np.asarray(ties, dtype=np.float64)
    return np.clip((k - higher) / (ties + 1.0), 0.0, 1.0)


def summarise(higher, ties) -> dict:
    """R@1, R@5, R@10 (percent), median and mean rank of a set of queries."""
    higher = np.asarray(higher)
    if len(higher) == 0:
        return {k: float("nan") for k in METRIC_KEYS}
    ranks = expected_ranks(higher, ties)
    out = {f"R@{k}": float(np.mean(recall_at(higher, ties, k)) * 100) for k in RECALL_AT}
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    return out


def _dual_softmax(sim: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    return sim * torch.softmax(sim * temperature, dim=dim)


def dual_softmax(sim, temperature: float = DSL_TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor]:
    """(text->video, video->text) re-scored similarities, both (captions, videos)."""
    sim = _tensor(sim)
    return _dual_softmax(sim, temperature, 0), _dual_softmax(sim, temperature, 1)


def retrieval(sim, caption_video, dsl: bool = False, temperature: float = DSL_TEMPERATURE) -> dict:
    """Counts of both directions (and with ``dsl`` the dual-softmax counts too):
    ``{"text_to_video": (higher, ties), "video_to_text": (higher, ties), ...}``."""
    out = {
        "text_to_video": text_to_video_counts(sim, caption_video),
        "video_to_text": video_to_text_counts(sim, caption_video),
    }
    if dsl:  # one re-scored matrix at a time: each is as large as ``sim``
        sim = _tensor(sim)
        out["dsl_text_to_video"] = text_to_video_counts(_dual_softmax(sim, temperature, 0), caption_video)
        out["dsl_video_to_text"] = video_to_text_counts(_dual_softmax(sim, temperature, 1), caption_video)
    return out


def first_caption_per_video(caption_video) -> np.ndarray:
    """Positions of each video's first caption, in caption order (``one-caption``)."""
    caption_video = np.asarray(caption_video)
    _, first = np.unique(caption_video, return_index=True)
    return np.sort(first)


def group_metrics(higher, ties, groups: Sequence) -> dict:
    """:func:`summarise` of the queries of each group (``None`` groups are left out)."""
    groups = np.asarray([None if g is None else str(g) for g in groups], dtype=object)
    higher, ties = np.asarray(higher), np.asarray(ties)
    return {
        name: summarise(higher[groups == name], ties[groups == name])
        for name in sorted({g for g in groups if g is not None})
    }


def frequency_thirds(counts: Mapping[str, int]) -> dict[str, str]:
    """Concept -> ``rare`` / ``medium`` / ``frequent``: concepts sorted by count (then
    name) and cut into three groups of as equal a number of concepts as possible, the
    rarer groups taking the extra one. Fewer than three concepts: no thirds."""
    if len(counts) < 3:
        return {}
    ordered = sorted(counts, key=lambda c: (counts[c], c))
    names = ("rare", "medium", "frequent")
    return {c: names[i] for i, block in enumerate(np.array_split(np.asarray(ordered, dtype=object), 3)) for c in block}


def multiple_choice(scores, answers: Iterable[int]) -> dict:
    """Accuracy (percent) of picking the highest-scored candidate. ``scores`` is (items,
    candidates), NaN where an item has fewer candidates. Ties at the top share the
    credit: an item whose answer ties with t others counts 1 / (t + 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    answers = np.asarray(list(answers), dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(answers):
        raise ValueError("scores must be (items, candidates) with one answer per item")
    if len(answers) == 0:
        return {"items": 0, "accuracy": float("nan"), "chance": float("nan")}
    filled = np.where(np.isnan(scores), -np.inf, scores)
    right = filled[np.arange(len(answers)), answers]
    best = filled.max(1)
    tied = (filled == best[:, None]).sum(1)
    credit = np.where(right >= best, 1.0 / tied, 0.0)
    candidates = (~np.isnan(scores)).sum(1)
    return {
        "items": int(len(answers)),
        "accuracy": float(credit.mean() * 100),
        "chance": float(np.mean(1.0 / candidates) * 100),
    }
