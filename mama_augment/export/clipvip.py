"""``clip-vip``: the jsonl annotation CLIP-ViP (and the MAMA release built on it) reads.

``clip-vip.jsonl``, one line per video: ``{"clip_id", "text": [captions...],
"num_frame", ...}``. CLIP-ViP samples ``text`` at random each step, so original and
generated captions together are the augmented set. With pictures (the default) the
keyframes are written for CLIP-ViP's ``vis_format: "frame"``:
``frames/<clip_id>/<name>_000.jpg``... where ``name`` is the last part of ``clip_id``,
and ``num_frame`` is their count; point the dataset's ``vis`` at ``frames/``.
``clip_id`` is the ``video_id`` (made path-safe when it is not); the extra keys
(``video_id``, ``sources``, ``weights``, ``flags``, ``split``) are ignored by CLIP-ViP.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from mama_augment.errors import ItemError
from mama_augment.export.base import ShardContext, ShardResult
from mama_augment.export.files import picture_path, place_picture, safe_relative_path
from mama_augment.export.lines import assemble, part_lines, write_part
from mama_augment.export.records import Sample

OUTPUT = "clip-vip.jsonl"


class ClipVipFormat:
    name = "clip-vip"
    units = ("video",)
    summary = "CLIP-ViP jsonl (clip_id, text list), keyframes in frames/ for vis_format frame"

    def write_shard(self, ctx: ShardContext, samples: Sequence[Sample]) -> ShardResult:
        result = ShardResult()
        lines = []
        for sample in samples:
            video = sample.video
            clip_id = safe_relative_path(video.video_id)
            record = {
                "clip_id": clip_id,
                "text": [entry.text for entry in video.captions],
                "video_id": video.video_id,
                "sources": [entry.source for entry in video.captions],
                "weights": [entry.weight for entry in video.captions],
                "flags": [entry.flags for entry in video.captions],
                "split": video.split,
            }
            if ctx.config.images:
                try:
                    if not video.keyframe_paths:
                        raise ItemError("missing_image", "no keyframes recorded")
                    name = clip_id.split("/")[-1]
                    folder = os.path.join(ctx.out, "frames", clip_id)
                    # Every keyframe is checked before the first is placed: no half a clip.
                    sources = [picture_path(ctx.work_folder, path, "keyframe") for path in video.keyframe_paths]
                    os.makedirs(folder, exist_ok=True)
                    for rank, source in enumerate(sources):
                        target = os.path.join(folder, f"{name}_{rank:03d}.jpg")
                        place_picture(source, target, make_parent=False)
                        result.pictures.append(f"frames/{clip_id}/{name}_{rank:03d}.jpg")
                except ItemError as exc:
                    result.fail(sample, exc)
                    continue
                record["num_frame"] = len(video.keyframe_paths)
            lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
            result.written += 1
        write_part(ctx.parts, ctx.index, lines)
        return result

    def finish(self, out, parts, shards: list[dict]) -> list[str]:
        assemble(out / OUTPUT, part_lines(parts, shards), tail="\n" if any(s["samples"] for s in shards) else "")
        return [OUTPUT]
