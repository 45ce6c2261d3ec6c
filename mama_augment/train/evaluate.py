"""Text-video retrieval metrics and ``mama-augment evaluate``.

Ranks are 1-based and pessimistic about nothing: an item's rank is one plus the
number of *other* items scored strictly higher. Text->video: every original caption
of the split is a query over the split's videos. Video->text: every video is a query
over the split's captions, ranked by its best-scoring own caption (the usual rule
when videos have several captions).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mama_augment.fileio import atomic_write_text
from mama_augment.errors import UsageError

METRIC_KEYS = ("R@1", "R@5", "R@10", "MdR", "MnR")


def _summarise(ranks: np.ndarray) -> dict:
    if len(ranks) == 0:
        return {k: float("nan") for k in METRIC_KEYS}
    return {
        "R@1": float(np.mean(ranks <= 1) * 100),
        "R@5": float(np.mean(ranks <= 5) * 100),
        "R@10": float(np.mean(ranks <= 10) * 100),
        "MdR": float(np.median(ranks)),
        "MnR": float(np.mean(ranks)),
    }


def retrieval_ranks(video_emb: torch.Tensor, text_emb: torch.Tensor, caption_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text->video rank of each caption, video->text rank of each video)."""
    caption_video_t = torch.as_tensor(caption_video, dtype=torch.long, device=text_emb.device)
    sim = text_emb.float() @ video_emb.float().T  # (captions, videos)
    target = sim.gather(1, caption_video_t[:, None])
    t2v = 1 + (sim > target).sum(1)
    sim_v = sim.T  # (videos, captions)
    own = caption_video_t[None, :] == torch.arange(len(video_emb), device=sim.device)[:, None]
    best_own = sim_v.masked_fill(~own, float("-inf")).max(1).values
    v2t = 1 + ((sim_v > best_own[:, None]) & ~own).sum(1)
    return t2v.cpu().numpy(), v2t.cpu().numpy()


def retrieval_metrics(video_emb, text_emb, caption_video, caption_concepts=None, video_concepts=None) -> dict:
    """Overall and (when concepts are given) per-concept retrieval metrics."""
    t2v, v2t = retrieval_ranks(video_emb, text_emb, np.asarray(caption_video))
    result = {
        "videos": int(len(video_emb)),
        "captions": int(len(text_emb)),
        "text_to_video": _summarise(t2v),
        "video_to_text": _summarise(v2t),
    }
    if caption_concepts is not None and any(c is not None for c in caption_concepts):
        rows = []
        counts = Counter(str(c) for c in caption_concepts)
        for concept in sorted(counts, key=lambda c: (-counts[c], c)):
            q = np.asarray([str(c) == concept for c in caption_concepts])
            v = np.asarray([str(c) == concept for c in (video_concepts or [])], dtype=bool)
            row = {"concept": concept, "captions": int(q.sum()), "videos": int(v.sum())}
            row.update({f"t2v_{k}": val for k, val in _summarise(t2v[q]).items()})
            row.update({f"v2t_{k}": val for k, val in _summarise(v2t[v] if len(v) == len(v2t) else np.zeros(0)).items()})
            rows.append(row)
        result["per_concept"] = rows
    return result


def evaluate_split(model, data, split: str, batch_size: int = 256) -> dict:
    """Metrics of ``model`` on one split of ``data`` (original captions only)."""
    pairs = data.split(split)
    if len(pairs.videos) == 0:
        raise UsageError(f"the {split!r} split has no captioned videos")
    was_training = model.training
    model.eval()
    try:
        video_emb = model.encode_videos(pairs.videos, batch_size)
        text_emb = model.encode_texts(pairs.captions, batch_size)
    finally:
        model.train(was_training)
    caption_concepts = [data.caption_concept[c] for c in pairs.captions]
    video_concepts = [data.videos.concepts[v] for v in pairs.videos]
    result = retrieval_metrics(video_emb, text_emb, pairs.caption_video, caption_concepts, video_concepts)
    result["split"] = split
    return result


def format_table(result: dict) -> str:
    """The overall rows and (if any) per-concept text->video rows as plain text."""
    head = f"split {result.get('split', '?')}: {result['videos']} videos, {result['captions']} captions"
    if result.get("checkpoint") == "best":
        head += f"; best checkpoint (epoch {result['checkpoint_epoch']}, by validation R@1)"
    elif result.get("checkpoint") == "last":
        head += "; last checkpoint"
    lines = [head, ""]
    header = f"{'direction':<14}" + "".join(f"{k:>8}" for k in METRIC_KEYS)
    lines.append(header)
    for direction in ("text_to_video", "video_to_text"):
        m = result[direction]
        lines.append(f"{direction.replace('_', ' '):<14}" + "".join(
            f"{m[k]:8.1f}" if k != "MdR" else f"{m[k]:8.1f}" for k in METRIC_KEYS
        ))
    if result.get("per_concept"):
        lines += ["", f"{'concept (text->video)':<28}{'captions':>9}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MdR':>8}"]
        for row in result["per_concept"]:
            lines.append(
                f"{row['concept'][:28]:<28}{row['captions']:>9}{row['t2v_R@1']:8.1f}{row['t2v_R@5']:8.1f}"
                f"{row['t2v_R@10']:8.1f}{row['t2v_MdR']:8.1f}"
            )
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def evaluate_run(
    run_dir: str | Path,
    captions: str | None = None,
    split: str = "test",
    device: str = "auto",
    workdir: str | Path | None = None,
    checkpoint: str = "best",
) -> dict:
    """Load a finished (or checkpointed) run, evaluate it on ``split`` and write
    ``eval.json`` in the run folder (one entry per split, captions file and, for
    ``checkpoint="last"``, ``@last``).

    ``checkpoint``: ``best`` (default), the weights of the epoch with the best
    validation R@1, as retrieval papers report; ``last``, the final weights. The
    entry says which was used (``checkpoint``, and the best one's epoch and step).
    """
    from mama_augment.train.loop import load_run, run_weights

    run_dir = Path(run_dir)
    if split not in ("train", "val", "test"):
        raise UsageError(f"--split must be train, val or test, not {split!r}")
    chosen = run_weights(run_dir, checkpoint)
    config, model, data = load_run(run_dir, captions=captions, device=device, workdir=workdir,
                                   checkpoint=chosen["checkpoint"])
    result = evaluate_split(model, data, split)
    result["run"] = str(run_dir)
    result["captions_file"] = captions or config.captions
    result["checkpoint"] = chosen["checkpoint"]
    if chosen["checkpoint"] == "best":
        result["checkpoint_epoch"] = chosen["epoch"]
        result["checkpoint_step"] = chosen["step"]
        result["checkpoint_val_R@1"] = chosen["val_R@1"]
    path = run_dir / "eval.json"
    existing = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            existing = {}
    key = split if not captions else f"{split}:{Path(captions).name}"
    if checkpoint == "last":
        key += "@last"
    existing[key] = _json_safe(result)
    atomic_write_text(path, json.dumps(existing, indent=2))
    return result


def ranks_for(model, data, split: str) -> tuple[np.ndarray, np.ndarray, Sequence]:
    """Raw ranks (for benchmarks that slice them differently)."""
    pairs = data.split(split)
    model.eval()
    video_emb = model.encode_videos(pairs.videos)
    text_emb = model.encode_texts(pairs.captions)
    t2v, v2t = retrieval_ranks(video_emb, text_emb, pairs.caption_video)
    return t2v, v2t, pairs
