"""The quality flags beside the captions in ``mama-augment report``.

Kept apart from the report's own code: one call adds the raised flags to the caption
rows the report already read.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable

from mama_augment.errors import MamaError
from mama_augment.manifest import CAPTION_FLAGS, manifest_path, parts_dir, read_manifest


def flags_table(workdir: Path):
    """The flags manifest's ``video_id``, ``caption_index``, ``caption_sha256`` and ``flags``
    as an Arrow table, or None when there is none or it cannot be read."""
    workdir = Path(workdir)
    if not manifest_path(workdir, CAPTION_FLAGS).exists() and not parts_dir(workdir, CAPTION_FLAGS).is_dir():
        return None
    with contextlib.suppress(MamaError):  # a damaged flags file hides the flags, not the report
        return read_manifest(workdir, CAPTION_FLAGS, columns=["caption_sha256", "flags"])
    return None


def attach_flags(workdir: Path, caption_rows: Iterable[dict]) -> int:
    """Set ``row["flags"]`` (names of raised flags) on every caption row that has current
    flags (same caption text as when `filter` ran); returns how many rows got them."""
    table = flags_table(workdir)
    return 0 if table is None else attach_flag_rows(table.to_pylist(), caption_rows)


def attach_flag_rows(flag_rows: Iterable[dict], caption_rows: Iterable[dict]) -> int:
    """:func:`attach_flags` with the flags rows at hand (a report reads them a slice at a time)."""
    from mama_augment.workread import caption_sha256

    flags = {(r["video_id"], r["caption_index"]): (r["caption_sha256"], r["flags"]) for r in flag_rows}
    count = 0
    for row in caption_rows:
        found = flags.get((row["video_id"], row["caption_index"]))
        if found is not None and row.get("caption") is not None and found[0] == caption_sha256(row["caption"]):
            row["flags"] = found[1] or []
            count += 1
    return count
