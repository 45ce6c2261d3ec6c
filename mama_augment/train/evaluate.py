"""Text-video retrieval metrics and ``mama-augment evaluate``.

The protocols (one caption per video, multi-sentence, paragraph), the tie rule and
the dual-softmax (DSL) numbers are defined in :mod:`mama_augment.train.protocols`;
this module encodes a split with a model, runs them, and writes ``eval.json``.
Text->video: every original caption of the split is a query over the split's videos.
Video->text: every video is a query over the split's captions, ranked by its
best-scoring own caption.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mama_augment.fileio import atomic_write_text, json_safe
from mama_augment.errors import UsageError
from mama_augment.train import protocols
from mama_augment.train.protocols import METRIC_KEYS  # noqa: F401  (re-exported)
from mama_augment.train.runs import GENERATED_CAPTIONS_NOTE, RunPaths, load_run, run_weights

DSL_NOTE = "dual softmax re-scoring over the whole query set (transductive): reported next to the plain numbers, not comparable with them"


def retrieval_ranks(video_emb: torch.Tensor, text_emb: torch.Tensor, caption_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text->video rank of each caption, video->text rank of each video): expected
    ranks under random order of ties (see :mod:`~mama_augment.train.protocols`)."""
    sim = text_emb.float() @ video_emb.float().T  # (captions, videos)
    t2v = protocols.text_to_video_counts(sim, caption_video)
    v2t = protocols.video_to_text_counts(sim, caption_video)
    return protocols.expected_ranks(*t2v), protocols.expected_ranks(*v2t)


def ranks_for(model, data, split: str) -> tuple[np.ndarray, np.ndarray, object]:
    """(text->video ranks of every caption of ``split``, video->text ranks of its
    videos, the split's pairs): raw ranks for benchmarks that slice the queries
    themselves (every caption a query, as the multi-sentence protocol)."""
    pairs = data.split(split)
    was_training = model.training
    model.eval()
    try:
        video_emb = model.encode_videos(pairs.videos)
        text_emb = model.encode_texts(pairs.captions)
    finally:
        model.train(was_training)
    t2v, v2t = retrieval_ranks(video_emb, text_emb, pairs.caption_video)
    return t2v, v2t, pairs


def _prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def retrieval_metrics(video_emb, text_emb, caption_video, caption_concepts=None, video_concepts=None,
                      protocol: str = "multi-sentence", dsl: bool = False, concept_counts: dict | None = None) -> dict:
    """Overall and (when concepts are given) per-concept and per-frequency-third
    retrieval metrics of one protocol; with ``dsl`` the dual-softmax numbers too."""
    caption_video = np.asarray(caption_video)
    sim = text_emb.float() @ video_emb.float().T  # (captions, videos)
    counts = protocols.retrieval(sim, caption_video, dsl=dsl)
    result = {
        "videos": int(len(video_emb)),
        "captions": int(len(text_emb)),
        "protocol": protocol,
        "protocol_description": protocols.PROTOCOL_TITLES.get(protocol, protocol),
        "tie_rule": protocols.TIE_RULE,
        "text_to_video": protocols.summarise(*counts["text_to_video"]),
        "video_to_text": protocols.summarise(*counts["video_to_text"]),
    }
    if dsl:
        result["dsl"] = {
            "text_to_video": protocols.summarise(*counts["dsl_text_to_video"]),
            "video_to_text": protocols.summarise(*counts["dsl_video_to_text"]),
            "temperature": protocols.DSL_TEMPERATURE,
            "note": DSL_NOTE,
        }
    if caption_concepts is not None and any(c is not None for c in caption_concepts):
        video_concepts = list(video_concepts) if video_concepts is not None else [None] * len(video_emb)
        t2v, v2t = counts["text_to_video"], counts["video_to_text"]
        by_caption = protocols.group_metrics(*t2v, caption_concepts)
        by_video = protocols.group_metrics(*v2t, video_concepts)
        sizes = Counter(str(c) for c in caption_concepts if c is not None)
        video_sizes = Counter(str(c) for c in video_concepts if c is not None)
        result["per_concept"] = [
            {"concept": concept, "captions": sizes[concept], "videos": video_sizes.get(concept, 0),
             **_prefixed("t2v", by_caption[concept]),
             **_prefixed("v2t", by_video.get(concept) or protocols.summarise([], []))}
            for concept in sorted(sizes, key=lambda c: (-sizes[c], c))
        ]
        thirds = protocols.frequency_thirds(concept_counts or sizes)
        if thirds:
            caption_third = [thirds.get(str(c)) if c is not None else None for c in caption_concepts]
            video_third = [thirds.get(str(c)) if c is not None else None for c in video_concepts]
            t2v_thirds = protocols.group_metrics(*t2v, caption_third)
            v2t_thirds = protocols.group_metrics(*v2t, video_third)
            result["concept_frequency"] = "training captions per concept" if concept_counts else "evaluated captions per concept"
            result["concept_thirds"] = [
                {"third": name, "concepts": sum(1 for t in thirds.values() if t == name),
                 "captions": caption_third.count(name), "videos": video_third.count(name),
                 **_prefixed("t2v", t2v_thirds.get(name) or protocols.summarise([], [])),
                 **_prefixed("v2t", v2t_thirds.get(name) or protocols.summarise([], []))}
                for name in ("rare", "medium", "frequent")
            ]
    return result


def _training_concept_counts(data) -> dict:
    """Original training captions per concept: how common a concept is in what the
    model learned from (the basis of the rare/frequent thirds)."""
    counts: Counter = Counter()
    for c, v in enumerate(data.caption_video):
        concept = data.caption_concept[c]
        if concept is not None and data.caption_source[c] == "original" and data.video_split[int(v)] == "train":
            counts[str(concept)] += 1
    return dict(counts)


def evaluate_split(model, data, split: str, batch_size: int = 256, protocol: str = "auto", dsl: bool = False,
                   paragraph: bool = False) -> dict:
    """Metrics of ``model`` on one split of ``data`` (its evaluation captions, ``data.eval_source``) under
    ``protocol`` (``auto``: see :func:`~mama_augment.train.protocols.choose_protocol`)."""
    pairs = data.split(split)
    if len(pairs.videos) == 0:
        raise UsageError(f"the {split!r} split has no captioned videos")
    if protocol not in ("auto", *protocols.PROTOCOLS):
        raise UsageError(f"--protocol must be auto or one of {', '.join(protocols.PROTOCOLS)}, not {protocol!r}")
    if protocol == "paragraph" and not paragraph:
        raise UsageError("--protocol paragraph needs paragraph captions: DiDeMo or ActivityNet Captions files, "
                         "whose readers join each video's sentences in time order")
    chosen = protocols.choose_protocol(pairs.caption_video, paragraph) if protocol == "auto" else protocol
    captions, caption_video = pairs.captions, pairs.caption_video
    if chosen in ("one-caption", "paragraph"):
        keep = protocols.first_caption_per_video(caption_video)
        captions, caption_video = captions[keep], caption_video[keep]
    was_training = model.training
    model.eval()
    try:
        video_emb = model.encode_videos(pairs.videos, batch_size)
        text_emb = model.encode_texts(captions, batch_size)
    finally:
        model.train(was_training)
    caption_concepts = [data.caption_concept[c] for c in captions]
    video_concepts = [data.videos.concepts[v] for v in pairs.videos]
    result = retrieval_metrics(video_emb, text_emb, caption_video, caption_concepts, video_concepts,
                               protocol=chosen, dsl=dsl, concept_counts=_training_concept_counts(data) or None)
    if len(captions) < len(pairs.captions):
        result["captions_left_out"] = int(len(pairs.captions) - len(captions))
        result["captions_left_out_why"] = "one caption per video: each video's first caption (file order) is its query"
    result["split"] = split
    return result


def _metric_row(label: str, metrics: dict) -> str:
    return f"{label:<22}" + "".join(f"{metrics[k]:8.1f}" for k in METRIC_KEYS)


def format_table(result: dict) -> str:
    """The overall rows (plain, then DSL), per-concept and per-third text->video rows
    and the multiple-choice accuracy, as plain text."""
    head = f"split {result.get('split', '?')}: {result['videos']} videos, {result['captions']} captions"
    if result.get("checkpoint") == "best":
        head += f"; best checkpoint (epoch {result['checkpoint_epoch']}, by validation R@1)"
    elif result.get("checkpoint") == "last":
        head += "; last checkpoint"
    lines = [head]
    if result.get("eval_captions"):
        lines.append(f"captions: {result['eval_captions']}"
                     + (f" - {result['eval_captions_note']}" if result.get("eval_captions_note") else ""))
    if result.get("protocol"):
        lines.append(f"protocol: {result['protocol_description']}")
        if result.get("captions_left_out"):
            lines.append(f"  ({result['captions_left_out']} captions left out: {result['captions_left_out_why']})")
        lines.append("ties: expected rank under random order of tied items")
        lines += ["", f"{'direction':<22}" + "".join(f"{k:>8}" for k in METRIC_KEYS)]
        for direction in ("text_to_video", "video_to_text"):
            lines.append(_metric_row(direction.replace("_", " "), result[direction]))
        if result.get("dsl"):
            for direction in ("text_to_video", "video_to_text"):
                lines.append(_metric_row(direction.replace("_", " ") + " (DSL)", result["dsl"][direction]))
            lines.append(f"DSL: {result['dsl']['note']}")
    header = f"{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MdR':>8}"
    if result.get("per_concept"):
        lines += ["", f"{'concept (text->video)':<28}{'captions':>9}" + header]
        for row in result["per_concept"]:
            lines.append(
                f"{row['concept'][:28]:<28}{row['captions']:>9}{row['t2v_R@1']:8.1f}{row['t2v_R@5']:8.1f}"
                f"{row['t2v_R@10']:8.1f}{row['t2v_MdR']:8.1f}"
            )
    if result.get("concept_thirds"):
        lines += ["", f"{'concept third (text->video)':<28}{'captions':>9}" + header
                  + f"   concepts ranked by {result['concept_frequency']}"]
        for row in result["concept_thirds"]:
            values = "".join(f"{row['t2v_' + k]:8.1f}" for k in ("R@1", "R@5", "R@10", "MdR"))
            label = f"{row['third']} ({row['concepts']} concept{'s' if row['concepts'] != 1 else ''})"
            lines.append(f"{label:<28}{row['captions']:>9}{values}")
    choice = result.get("multiple_choice")
    if choice:
        lines += ["", f"multiple choice: {choice['items']} items, accuracy {choice['accuracy']:.1f} % "
                      f"(chance {choice['chance']:.1f} %; ties share the credit)"]
        if choice.get("rejected_items"):
            total = choice["items"] + choice["rejected_items"]
            lines.append(f"  {choice['rejected_items']} of {total} items rejected (not scored; the accuracy is over "
                         f"the other {choice['items']}):")
            for line in choice.get("input_problems", []):
                lines.append(f"    {line}")
        if choice.get("unmatched_items"):
            lines.append(f"    video_not_in_keyframes: {choice['unmatched_items']} (e.g. {choice['unmatched_example']})")
    return "\n".join(lines)


def evaluate_run(
    run_dir: str | Path,
    captions: str | Sequence[str] | None = None,
    split: str = "test",
    device: str = "auto",
    workdir: str | Path | None = None,
    protocol: str = "auto",
    dsl: bool = True,
    multiple_choice: str | None = None,
    captions_format: str | None = None,
    checkpoint: str = "best",
) -> dict:
    """Load a finished (or checkpointed) run, evaluate it on ``split`` and write
    ``eval.json`` in the run folder (one entry per split and captions file, and for
    ``checkpoint="last"`` a key ending in ``@last``).

    ``checkpoint``: ``best`` (default), the weights of the epoch with the best
    validation R@1, as retrieval papers report; ``last``, the final weights. The
    entry says which were used (``checkpoint``, and the best one's epoch and step).

    ``captions`` (one file or several, any format of :mod:`mama_augment.datasets`)
    replace the run's own; ``multiple_choice`` adds the accuracy on a file of
    ``video_id, candidates, answer`` items."""
    from mama_augment.datasets import CaptionSpec, read_annotations

    run_dir = Path(run_dir)
    if split not in ("train", "val", "test"):
        raise UsageError(f"--split must be train, val or test, not {split!r}")
    if protocol not in ("auto", *protocols.PROTOCOLS):
        raise UsageError(f"--protocol must be one of auto, {', '.join(protocols.PROTOCOLS)}, not {protocol!r}")
    if captions_format and not captions:
        raise UsageError("--captions-format names the format of --captions files: give them too")
    spec = CaptionSpec.of(captions, captions_format) if captions else None
    chosen = run_weights(run_dir, checkpoint)
    config, model, data = load_run(run_dir, captions=spec, device=device, workdir=workdir,
                                   checkpoint=chosen["checkpoint"])
    source = spec or (CaptionSpec.of(config.captions, getattr(config, "captions_format", None)) if config.captions else None)
    paragraph = read_annotations(source).paragraph if source else False  # read once already: cached
    if len(data.split(split).videos) or not multiple_choice:
        result = evaluate_split(model, data, split, protocol=protocol, dsl=dsl, paragraph=paragraph)
    else:
        result = {"split": split, "videos": 0, "captions": 0, "note": "no captioned videos in this split: multiple choice only"}
    if multiple_choice:
        result["multiple_choice"] = evaluate_multiple_choice(model, data, multiple_choice)
    result["run"] = str(run_dir)
    result["eval_captions"] = data.eval_source
    if data.eval_source == "generated":
        result["eval_captions_note"] = GENERATED_CAPTIONS_NOTE
    result["captions_file"] = list(source.paths) if source and len(source.paths) > 1 else (source.paths[0] if source else None)
    result["checkpoint"] = chosen["checkpoint"]
    if chosen["checkpoint"] == "best":
        result["checkpoint_epoch"] = chosen["epoch"]
        result["checkpoint_step"] = chosen["step"]
        result["checkpoint_val_R@1"] = chosen["val_R@1"]
    path = RunPaths(run_dir).eval
    existing = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            existing = {}
    key = split if not spec else f"{split}:{spec.label()}"
    if protocol != "auto":
        key += f" ({protocol})"
    if checkpoint == "last":
        key += "@last"
    existing[key] = json_safe(result)
    atomic_write_text(path, json.dumps(existing, indent=2))
    return result


def evaluate_multiple_choice(model, data, path: str | Path, batch_size: int = 256) -> dict:
    """Accuracy of picking each item's answer among its candidates by similarity to the
    video (ties share the credit). Items whose video is not in the work folder are
    left out and counted."""
    from mama_augment.datasets import Problems, match_video_ids, read_multiple_choice
    from mama_augment.datasets.base import clip_text

    problems = Problems()
    items = read_multiple_choice(path, problems)
    match = match_video_ids([item.video_id for item in items], data.videos.video_ids)
    index_of = {v: i for i, v in enumerate(data.videos.video_ids)}
    usable = [item for item in items if item.video_id in match.mapping]
    if not usable:
        raise UsageError(
            f"no video of the multiple-choice file {path} is in keyframes.parquet "
            f"(e.g. {clip_text(items[0].video_id, 80)!r}; keyframes: {', '.join(repr(v) for v in data.videos.video_ids[:3])})"
        )
    texts = [text for item in usable for text in item.candidates]
    width = max(len(item.candidates) for item in usable)
    was_training = model.training
    model.eval()
    try:
        model.set_texts(list(data.texts) + texts)
        text_emb = model.encode_texts(np.arange(len(data.texts), len(data.texts) + len(texts)), batch_size).float()
        videos = [index_of[match.mapping[item.video_id]] for item in usable]
        video_emb = model.encode_videos(videos, batch_size).float()
    finally:
        model.set_texts(data.texts)
        model.train(was_training)
    scores = np.full((len(usable), width), np.nan)
    start = 0
    for row, item in enumerate(usable):
        count = len(item.candidates)
        scores[row, :count] = (text_emb[start : start + count] @ video_emb[row]).cpu().numpy()
        start += count
    result = protocols.multiple_choice(scores, [item.answer for item in usable])
    result["file"] = str(path)
    unmatched = [item.video_id for item in items if item.video_id not in match.mapping]
    if unmatched:
        result["unmatched_items"] = len(unmatched)
        result["unmatched_example"] = clip_text(unmatched[0], 80)  # an id read from the user's file
    if problems:
        result["input_problems"] = problems.lines()
    # Every item of the file that was not scored, by kind: the accuracy is over the rest.
    rejected = dict(problems.counts)
    if unmatched:
        rejected["video_not_in_keyframes"] = len(unmatched)
    result["rejected_items"] = sum(rejected.values())
    result["rejected_by_kind"] = rejected
    return result
