"""Every option of ``mama-augment export``, with its default, in one place."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mama_augment.checks import check_number, check_numbers
from mama_augment.errors import UsageError
from mama_augment.quality import FLAG_NAMES

SOURCE_ORIGINAL = "original"
SOURCE_GENERATED = "generated"
SOURCES = (SOURCE_ORIGINAL, SOURCE_GENERATED)
UNITS = ("video", "pair")
# How --split places a video: as train does (its split column, train/val/test and their
# spellings, else the hash of the id with the run's fractions), or by the captions
# file's split value as written (what --split meant before it meant train's split).
SPLIT_BY = {
    "train": "the split train puts the video in: the captions' split column (train/val/test), "
             "else the hash of its id with the --run's --val-fraction/--test-fraction",
    "column": "the captions' split value as written; videos without one are in no split",
}
# ``--drop-flags all`` drops a generated caption with any raised flag.
ALL_FLAGS = "all"
# Samples per shard: a shard's samples are held in memory until it is written.
MAX_SHARD_SIZE = 1_000_000


def check_drop_flags(drop_flags) -> None:
    """``--drop-flags`` names quality flags of ``mama-augment filter`` (or ``all``)."""
    unknown = [f for f in drop_flags if f != ALL_FLAGS and f not in FLAG_NAMES]
    if unknown:
        raise UsageError(
            f"unknown flag(s) {', '.join(unknown)} in --drop-flags; choose from {ALL_FLAGS}, {', '.join(FLAG_NAMES)}"
        )


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
    # Original captions: one file or several in any format of mama_augment.datasets (as
    # train --captions); default: the run's own.
    captions: str | list[str] | None = None
    captions_format: str | None = None  # None: recognised from each file; a name, or one per file
    sources: tuple[str, ...] = SOURCES
    min_weight: float | None = None
    drop_least_trusted: float | None = None  # percent of the run's weighted pairs, lowest weights first
    drop_flags: tuple[str, ...] = ()  # quality flags of caption_flags.parquet, or ("all",)
    dedupe: bool = False  # keep one caption of every near-duplicate group
    split: str | None = None  # only videos of this split, placed as split_by says
    split_by: str = "train"  # see SPLIT_BY
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

    def validate(self) -> None:
        """Every check of the options, before any work (UsageError names the option).

        The format and the unit are checked against the format registry by the stage.
        """
        check_numbers(self)
        check_number(self.shard_size, "--shard-size", minimum=1, maximum=MAX_SHARD_SIZE)
        check_number(self.min_weight, "--min-weight", minimum=0)
        check_number(self.drop_least_trusted, "--drop-least-trusted", minimum=0, maximum=100)
        if self.drop_least_trusted == 100:
            raise UsageError("--drop-least-trusted is a percentage below 100 (100 would drop every pair of the run)")
        check_number(self.batch_rows, "batch_rows", minimum=1)
        check_number(self.sort_memory_rows, "sort_memory_rows", minimum=1)
        if not str(self.out).strip():
            raise UsageError("--out must not be empty")
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources:
            raise UsageError(
                f"--sources takes a comma-separated list of {', '.join(SOURCES)}, not {','.join(self.sources)!r}"
            )
        check_drop_flags(self.drop_flags)
        if self.split_by not in SPLIT_BY:
            raise UsageError(f"--split-by must be one of {', '.join(SPLIT_BY)}, not {self.split_by!r}")
        if (self.min_weight is not None or self.drop_least_trusted) and self.run is None:
            raise UsageError("--min-weight and --drop-least-trusted need --run (a training run with pair_weights.parquet)")
        if self.captions_format:
            if not self.captions:
                raise UsageError("--captions-format names the format of --captions files: give them too")
            from mama_augment.datasets import parse_formats

            parse_formats(self.captions_format, len(self.captions) if isinstance(self.captions, list) else 1)

    def identity(self, unit: str, inputs: dict, split_fractions: dict | None = None) -> dict:
        """What the export is: ``split_fractions`` are the hash split's fractions
        ``--split`` uses (the run's), which change the videos selected."""
        identity = {
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
        if self.split is not None:  # exports without --split keep the identity they had
            identity.update({"split_by": self.split_by, "split_fractions": split_fractions})
        return identity

    def identity_hash(self, unit: str, inputs: dict, split_fractions: dict | None = None) -> str:
        blob = json.dumps(self.identity(unit, inputs, split_fractions), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def as_dict(self) -> dict:
        return asdict(self)
