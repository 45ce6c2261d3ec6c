"""Pictures of the work folder, read or placed into an export."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

from mama_augment.checks import MAX_NAME_BYTES
from mama_augment.errors import ItemError
from mama_augment.workpaths import WorkFolder

_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]+")


def picture_path(work: WorkFolder, relative: str | None, what: str) -> str:
    """The checked absolute path of a picture a manifest row names (see ``workpaths``);
    ``ItemError`` when none is recorded, it is missing, or it is not the work folder's."""
    if not relative:
        raise ItemError("missing_image", f"no {what} recorded")
    return work.file(relative, what)


def pointed_path(work: WorkFolder, relative: str | None, what: str) -> str:
    """The checked absolute path an export writes for its reader to open (it is not
    opened here, so it need not exist); ``ItemError`` when it leaves the work folder."""
    if not relative:
        raise ItemError("missing_image", f"no {what} recorded")
    return work.inside(relative, what)


def read_picture(work: WorkFolder, relative: str | None, what: str) -> bytes:
    """The bytes of a picture of the work folder; ``ItemError`` when it is missing or
    not the work folder's own."""
    path = picture_path(work, relative, what)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ItemError("missing_image", f"cannot read the {what} {relative}: {exc.strerror or exc}") from None


def safe_relative_path(video_id: str) -> str:
    """A relative path for files named after ``video_id``: never absolute, no ``..``,
    no component longer than ``MAX_NAME_BYTES``.

    Ids are usually relative paths already (``sub/clip``) and stay as they are; any
    other character becomes ``_`` and a short hash keeps changed ids distinct. A
    component too long for common file systems (255 bytes, with room left for the
    suffixes and temporary names of the files named after it) keeps a readable
    prefix and ends in a hash of the whole component, so names stay distinct.
    """
    parts = [p for p in video_id.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    cleaned = [_UNSAFE.sub("_", p).lstrip(".") or "_" for p in parts] or ["_"]
    safe = "/".join(cleaned)
    if safe != video_id:
        safe += "-" + hashlib.sha256(video_id.encode("utf-8")).hexdigest()[:8]
    return "/".join(_fit_name(part) for part in safe.split("/"))


def _fit_name(part: str) -> str:
    if len(part) <= MAX_NAME_BYTES:  # ASCII only here: characters are bytes
        return part
    digest = hashlib.sha256(part.encode("utf-8")).hexdigest()[:16]
    return f"{part[: MAX_NAME_BYTES - len(digest) - 1]}-{digest}"


def place_picture(source: Path | str, target: Path | str, make_parent: bool = True) -> None:
    """Put ``source`` at ``target`` atomically: a hard link when possible, else a copy.

    A new hard link appears whole or not at all, so the first placement links straight
    to ``target``; replacing an existing file, or copying, goes through a temporary name.
    """
    source, target = os.fspath(source), os.fspath(target)
    if make_parent:
        os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
        return
    except FileNotFoundError:
        raise ItemError("missing_image", f"cannot read {source}: no such file") from None
    except OSError:
        pass  # exists already (a shard written again), or another filesystem: below
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            try:
                shutil.copyfile(source, tmp)
            except OSError as exc:
                raise ItemError("missing_image", f"cannot copy {source}: {exc.strerror or exc}") from None
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
