"""The augmented dataset out: exports that other trainers read (``mama-augment export``).

``FORMATS`` is the registry the CLI lists: name -> factory of an
:class:`~mama_augment.export.base.ExportFormat`. Adding a format is adding a module
with one ``write_shard`` method (and optionally ``finish``) and one entry here.
"""

from __future__ import annotations

from typing import Callable

from mama_augment.errors import UsageError


def _webdataset():
    from mama_augment.export.webdataset import WebDatasetFormat

    return WebDatasetFormat()


def _hf():
    from mama_augment.export.hf import HfFormat

    return HfFormat()


def _llava():
    from mama_augment.export.llava import LlavaFormat

    return LlavaFormat()


def _clip_vip():
    from mama_augment.export.clipvip import ClipVipFormat

    return ClipVipFormat()


def _csv():
    from mama_augment.export.tables import CsvFormat

    return CsvFormat()


def _jsonl():
    from mama_augment.export.tables import JsonlFormat

    return JsonlFormat()


FORMATS: dict[str, Callable[[], object]] = {
    "webdataset": _webdataset,
    "hf": _hf,
    "llava": _llava,
    "clip-vip": _clip_vip,
    "csv": _csv,
    "jsonl": _jsonl,
}


def get_format(name: str):
    factory = FORMATS.get(name)
    if factory is None:
        raise UsageError(f"unknown export format {name!r}; choose one of: {', '.join(FORMATS)}")
    return factory()


def run_export(config, workdir, progress: bool = False):
    """Export the work folder (see :func:`mama_augment.export.run.run_export`)."""
    from mama_augment.export.run import run_export as _run

    return _run(config, workdir, progress=progress)


__all__ = ["FORMATS", "get_format", "run_export"]
