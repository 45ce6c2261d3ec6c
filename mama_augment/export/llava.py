"""``llava``: LLaVA's instruction-tuning JSON, one conversation per (video, caption) pair.

``llava.json`` is a JSON list of
``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\nPROMPT"},
{"from": "gpt", "value": CAPTION}], "metadata": {...}}``: ``image`` is the grid,
relative to the export folder (``images/<video_id>.jpg``; pass the folder as
``--image_folder``), PROMPT the prompt the caption was generated with, rendered for the
video's grid (original captions get ``--prompt``, default: the default caption
prompt). ``metadata`` holds the provenance, weight and flags; LLaVA's loader ignores it.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from mama_augment.errors import ItemError
from mama_augment.export.base import ShardContext, ShardResult
from mama_augment.export.files import picture_path, place_picture, pointed_path, safe_relative_path
from mama_augment.export.lines import assemble, part_lines, write_part
from mama_augment.export.records import Sample

IMAGE_TOKEN = "<image>"
OUTPUT = "llava.json"


def conversation_id(sample: Sample) -> str:
    entry = sample.caption
    if entry.caption_index is not None:
        return f"{sample.video.video_id}#g{entry.caption_index}"
    position = [e for e in sample.video.captions if e.caption_index is None].index(entry)
    return f"{sample.video.video_id}#o{position}"


class LlavaFormat:
    name = "llava"
    units = ("pair",)
    summary = "LLaVA instruction JSON (<image> + prompt -> caption), grids in images/"

    def write_shard(self, ctx: ShardContext, samples: Sequence[Sample]) -> ShardResult:
        result = ShardResult()
        lines = []
        placed: set[str] = set()
        for sample in samples:
            video, entry = sample.video, sample.caption
            try:
                if not video.grid_path:
                    raise ItemError("missing_image", "no grid recorded")
                if ctx.config.images:
                    image = f"images/{safe_relative_path(video.video_id)}.jpg"
                    if image not in placed:
                        source = picture_path(ctx.work_folder, video.grid_path, "grid")
                        place_picture(source, os.path.join(ctx.out, image))
                        placed.add(image)
                        result.pictures.append(image)
                else:
                    image = pointed_path(ctx.work_folder, video.grid_path, "grid")
            except ItemError as exc:
                result.fail(sample, exc)
                continue
            record = {
                "id": conversation_id(sample),
                "image": image,
                "conversations": [
                    {"from": "human", "value": f"{IMAGE_TOKEN}\n{ctx.instruction(entry, video)}"},
                    {"from": "gpt", "value": entry.text},
                ],
                "metadata": {"video_id": video.video_id, "split": video.split, **entry.provenance()},
            }
            del record["metadata"]["caption"]
            lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
            result.written += 1
        write_part(ctx.parts, ctx.index, lines)
        return result

    def finish(self, out, parts, shards: list[dict]) -> list[str]:
        assemble(out / OUTPUT, part_lines(parts, shards), head="[\n", separator=",\n", tail="\n]\n")
        return [OUTPUT]
