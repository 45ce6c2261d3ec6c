"""Checks of user-given values shared by every command, before any work is done.

Each stage's config has one ``validate()`` that runs every check of its options; the
helpers here are the pieces they share, so a mistake that every item would hit (a
NaN, a device that is not there, a model that cannot be loaded, a name that would
leave the work folder) is one :class:`~mama_augment.errors.UsageError` naming the
option, never a failed row per item and never a traceback.

This module imports only the standard library at the top: torch and
``huggingface_hub`` are imported by the one check that needs each.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import stat
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from mama_augment.errors import UsageError

INT64_MAX = 2**63 - 1
# A file name longer than this (UTF-8 bytes) is refused or shortened: most file
# systems allow 255, and temporary names and suffixes need room beside it.
MAX_NAME_BYTES = 200
# Seconds: a longer timeout is a typo (and overflows the timers below it).
MAX_TIMEOUT_S = 1_000_000.0
# How long the check for an unreachable model hub waits before saying so.
HUB_PROBE_TIMEOUT_S = 5.0


def option_name(field: str, renamed: Mapping[str, str] | None = None) -> str:
    """``--fps`` for field ``fps``; ``renamed`` maps fields whose option has another name."""
    return (renamed or {}).get(field) or "--" + field.replace("_", "-")


def check_numbers(config: Any, renamed: Mapping[str, str] | None = None) -> None:
    """Every number of a config dataclass is finite and fits in 64 bits.

    NaN and infinities compare false with every bound, so they would slip past the
    range checks; an integer beyond int64 cannot be stored in a manifest or handed to
    numpy. Run first in every ``validate()``.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{option_name(field.name, renamed)} must be a finite number, not {value}")
        if isinstance(value, int) and not -INT64_MAX <= value <= INT64_MAX:
            raise UsageError(f"{option_name(field.name, renamed)} is out of range: {value}")


def check_number(value: float | int | None, option: str, *, minimum: float | None = None,
                 maximum: float | None = None, above: float | None = None) -> None:
    """``value`` (None passes) is finite and within the bounds: ``minimum <= value <=
    maximum``, ``value > above``."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, not {value}")
    if abs(value) > INT64_MAX:
        raise UsageError(f"{option} is out of range: {value}")
    if above is not None and not value > above:
        raise UsageError(f"{option} must be greater than {above:g}, not {value:g}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{option} must be at least {minimum:g}, not {value:g}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{option} must be at most {maximum:g}, not {value:g}")


def gib_to_bytes(gib: float | None, option: str) -> int | None:
    """A size given in GiB as a whole number of bytes (None stays None)."""
    if gib is None:
        return None
    check_number(gib, option, above=0, maximum=2**20)
    return int(gib * 2**30)


def check_device(device: str, option: str = "--device", choices: tuple[str, ...] = ("auto", "cpu", "cuda")) -> None:
    """A known device, and for ``cuda`` one that exists (torch is imported only then)."""
    if device not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}, not {device!r}")
    if device == "cuda":
        try:
            import torch
        except ImportError:
            raise UsageError(f"{option} cuda needs torch with CUDA; it is not installed") from None
        if not torch.cuda.is_available():
            raise UsageError(f"{option} cuda was asked for but no CUDA GPU is available here (use auto or cpu)")


def check_name(name: str, option: str) -> None:
    """``name`` is one safe path component: it cannot leave the folder it is put in,
    hide itself, or be too long for the file system."""
    if not name:
        raise UsageError(f"{option} must not be empty")
    bad = [c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127]
    if bad or name in (".", "..") or name.startswith("."):
        raise UsageError(
            f"{option} {name!r} must be one folder name: no '/', '\\', control characters or leading '.'"
        )
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise UsageError(f"{option} is longer than {MAX_NAME_BYTES} bytes")


def read_text_file(path: str | os.PathLike, what: str, max_bytes: int) -> str:
    """The text of a small user file: at most ``max_bytes`` read (a device or a huge
    file is refused, not read), UTF-8, no NUL bytes; UsageError otherwise."""
    path = Path(path)
    # Opening a FIFO blocks until a writer appears, and a device may never end: only a
    # regular file (or a link to one) is opened at all.
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what} {path} is not a regular file (a pipe, socket or device): give a file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise UsageError(f"{what} {path} is larger than {max_bytes // 2**20} MiB: not a file of this kind")
    return decode_text(data, what, path)


def decode_text(data: bytes, what: str, path: str | os.PathLike) -> str:
    """``data`` as UTF-8 text without NUL bytes (a binary file given by mistake)."""
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise UsageError(f"{what} {path} holds a NUL byte (line {line}): it is not a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None


# ----------------------------------------------------------------------------- models


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """Whether the Hugging Face libraries are told to stay offline."""
    return _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


def _hub_unreachable() -> str | None:
    """Why the model hub cannot be reached (a TCP connect, nothing sent), or None."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # through a proxy: only the download itself can tell
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{parts.hostname}:{port} cannot be reached ({exc.strerror or exc})"


def check_model_available(ref: str, option: str) -> None:
    """The model ``ref`` (a folder or a Hugging Face id) can be loaded from here.

    A folder must exist; an id must be in the Hugging Face cache, or, unless
    ``HF_HUB_OFFLINE`` is set, the hub must answer a connection. Found out in
    seconds, instead of after the hub client's minutes of retries.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise UsageError(f"{option} {ref}: a file, not a model folder")
    if ref.startswith((".", "/", "~")) or path.is_absolute():
        raise UsageError(f"{option} {ref}: no such folder")
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # the loader itself says what to install
        return
    try:
        cached = try_to_load_from_cache(ref, "config.json")
    except Exception:  # not a valid repository id
        raise UsageError(f"{option} {ref}: neither a folder nor a Hugging Face model id") from None
    if isinstance(cached, str):
        return
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else _hub_unreachable()
    if reason is None:
        return  # the hub answers: the model is downloaded when it loads
    raise UsageError(
        f"{option} {ref}: no folder of that name, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
        f"and {reason}. Download it where there is network (hf download {ref}) and pass its folder, "
        "or point HF_HOME at a cache that holds it"
    )
