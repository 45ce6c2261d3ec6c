"""The export formats: name -> factory of an :class:`~mama_augment.export.base.ExportFormat`."""


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
