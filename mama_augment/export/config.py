"""Every option of ``mama-augment export``, with its default, in one place."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

SOURCE_ORIGINAL = "original"
SOURCE_GENERATED = "generated"
SOURCES = (SOURCE_ORIGINAL, SOURCE_GENERATED)
UNITS = ("video", "pair")
# ``--drop-flags all`` drops a generated caption with any raised flag.
ALL_FLAGS = "all"


@dataclass
class ExportConfig:
    """Options of ``run_export``; the CLI builds one of these and nothing else.

    The fields that decide *what* is exported (format, unit, filters, inputs) enter
    :meth:`identity_hash`; an export folder is resumed only by a run with the same
    identity, so a killed export never mixes shards made with other settings.
    """

    format: str
    out: Path
    run: Path | None = None  # a training run folder: its pair_weights.parquet gives weights
    captions: Path | None = None  # original captions (.csv, .jsonl, .parquet); default: the run's
    sources: tuple[str, ...] = SOURCES
    min_weight: float | None = None
    drop_least_trusted: float | None = None  # percent of the run's weighted pairs, lowest weights first
    drop_flags: tuple[str, ...] = ()  # quality flags of caption_flags.parquet, or ("all",)
    dedupe: bool = False  # keep one caption of every near-duplicate group
    split: str | None = None  # only videos of this split (from the captions file's split column)
    unit: str | None = None  # video | pair; None: the format's default
    shard_size: int = 1000  # samples per shard
    images: bool = True  # copy the grid (and keyframe) pictures into the export
    keyframes: bool = True  # formats that can carry the keyframe JPEGs carry them
    prompt: str | None = None  # instruction for captions without a known prompt (originals)
    overwrite: bool = False
    # Rows read from Parquet at a time, and rows an unsorted input may hold in memory
    # before it is sorted on disk (the original captions file, the run's weights).
    batch_rows: int = 4096
    sort_memory_rows: int = 100_000

    def identity(self, unit: str, inputs: dict) -> dict:
        return {
            "format": self.format,
            "unit": unit,
            "sources": sorted(self.sources),
            "min_weight": self.min_weight,
            "drop_least_trusted": self.drop_least_trusted,
            "drop_flags": sorted(self.drop_flags),
            "dedupe": self.dedupe,
            "split": self.split,
            "shard_size": self.shard_size,
            "images": self.images,
            "keyframes": self.keyframes,
            "prompt": self.prompt,
            "inputs": inputs,
        }

    def identity_hash(self, unit: str, inputs: dict) -> str:
        blob = json.dumps(self.identity(unit, inputs), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def as_dict(self) -> dict:
        return asdict(self)
