"""Atomic file writing: every output a user or a later stage reads goes through here.

A file is written under a temporary name beside its target and renamed into place, so
a reader (or a run resumed after ``kill -9``) never sees half a file; a failed write
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from pathlib import Path
from typing import Iterator

_NAME_MAX = 255  # bytes in one file name on common file systems


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Parent folders are created. With ``fsync`` the data reaches the disk before the
    rename, for files whose loss on a power cut would cost more than a rerun.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / _temporary_name(path.name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _temporary_name(name: str) -> str:
    """A hidden name beside ``name``, never longer than the longest name allowed: a
    long (valid) file name gets a short temporary name instead of a too long one."""
    tag = uuid.uuid4().hex
    candidate = f".{name}.tmp-{tag}"
    return candidate if len(os.fsencode(candidate)) <= _NAME_MAX else f".tmp-{tag}"


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_safe(value):
    """``value`` with every NaN or infinity made ``None``: strict JSON, which readers other
    than Python's accept (a metric of an empty split is NaN)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
