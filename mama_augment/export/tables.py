"""``csv`` and ``jsonl``: one plain row per (video, caption) pair.

``pairs.csv`` / ``pairs.jsonl`` with ``video_id``, ``caption``, ``source``, ``weight``
first, then ``loss``, ``caption_index``, the provenance (``model``, ``preset``,
``prompt_name``, ``prompt_sha256``, ``seed``), ``split``, ``concept``, ``flags``
(``;``-separated in the csv) and ``grid_path`` (the grid's absolute path in the work
folder). The csv is a valid ``--captions`` file for ``mama-augment train``.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Sequence

from mama_augment.errors import ItemError
from mama_augment.export.base import ShardContext, ShardResult
from mama_augment.export.files import pointed_path
from mama_augment.export.lines import assemble, part_lines, write_part
from mama_augment.export.records import Sample

COLUMNS = (
    "video_id", "caption", "source", "weight", "loss", "caption_index", "model", "preset", "prompt_name",
    "prompt_sha256", "seed", "split", "concept", "flags", "grid_path",
)


def pair_row(ctx: ShardContext, sample: Sample) -> dict:
    video, entry = sample.video, sample.caption
    return {
        "video_id": video.video_id, "caption": entry.text, "source": entry.source, "weight": entry.weight,
        "loss": entry.loss, "caption_index": entry.caption_index, "model": entry.model, "preset": entry.preset,
        "prompt_name": entry.prompt_name, "prompt_sha256": entry.prompt_sha256, "seed": entry.seed,
        "split": video.split, "concept": video.concept, "flags": entry.flags,
        "grid_path": pointed_path(ctx.work_folder, video.grid_path, "grid") if video.grid_path else None,
    }


class _PairTable:
    name = ""
    units = ("pair",)
    summary = ""
    output = ""

    def encode(self, row: dict) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def write_shard(self, ctx: ShardContext, samples: Sequence[Sample]) -> ShardResult:
        result = ShardResult()
        lines = []
        for sample in samples:
            try:
                lines.append(self.encode(pair_row(ctx, sample)))
            except ItemError as exc:  # a grid path that leads out of the work folder
                result.fail(sample, exc)
        write_part(ctx.parts, ctx.index, lines)
        result.written = len(lines)
        return result

    def header(self) -> str:
        return ""

    def finish(self, out, parts, shards: list[dict]) -> list[str]:
        tail = "\n" if any(s["samples"] for s in shards) else ""
        assemble(out / self.output, part_lines(parts, shards), head=self.header(), tail=tail)
        return [self.output]


class CsvFormat(_PairTable):
    name = "csv"
    summary = "pairs.csv: video_id, caption, source, weight, provenance, flags"
    output = "pairs.csv"

    def encode(self, row: dict) -> str:
        row = dict(row, flags=";".join(row["flags"]) if row["flags"] is not None else None)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(["" if row[c] is None else row[c] for c in COLUMNS])
        return buffer.getvalue()[:-1]

    def header(self) -> str:
        return ",".join(COLUMNS) + "\n"


class JsonlFormat(_PairTable):
    name = "jsonl"
    summary = "pairs.jsonl: one JSON object per pair, same fields as csv"
    output = "pairs.jsonl"

    def encode(self, row: dict) -> str:
        return json.dumps({c: row[c] for c in COLUMNS}, ensure_ascii=False, separators=(",", ":"))
