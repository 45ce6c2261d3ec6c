"""Formats that end as one text file (LLaVA JSON, CLIP-ViP jsonl, csv, jsonl).

Each shard writes its lines to a part file (atomically); at the end the parts are
concatenated, in shard order, into the one file trainers read, written under a
temporary name and renamed. Memory holds one shard's lines at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mama_augment.fileio import atomic_path


def part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:06d}.txt"


def write_part(parts: Path, index: int, lines: Iterable[str]) -> None:
    """One shard's lines (each without a newline) as a part file."""
    with atomic_path(part_path(parts, index)) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            for line in lines:
                handle.write(line)
                handle.write("\n")


def part_lines(parts: Path, shards: list[dict]) -> Iterable[str]:
    for shard in shards:
        # Lines end only at "\n": a caption may hold a "\r" (inside a quoted csv field).
        with open(part_path(parts, shard["index"]), encoding="utf-8", newline="\n") as handle:
            for line in handle:
                yield line[:-1] if line.endswith("\n") else line


def assemble(target: Path, lines: Iterable[str], head: str = "", separator: str = "\n", tail: str = "") -> None:
    """Write ``head``, the lines joined by ``separator``, and ``tail`` to ``target`` atomically."""
    with atomic_path(target, fsync=True) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(head)
            first = True
            for line in lines:
                if not first:
                    handle.write(separator)
                handle.write(line)
                first = False
            handle.write(tail)
