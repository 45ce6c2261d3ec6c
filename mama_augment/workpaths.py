"""Paths that data names: the one rule for a file a manifest or a run folder points at.

A work folder, its manifests and its run folders are data that people share, so a
path read from them is not trusted to stay where the tool put it. Every reader of
such a path (export, report, caption, filter, training on keyframe JPEGs) asks
:class:`WorkFolder` for the file, and gets it only when

* the path is relative and has no ``..`` part (the tool never writes either),
* it leads inside the work folder once every symbolic link is followed, and
* it is a regular file (not a folder, a device or a pipe).

Anything else is the item error ``path_outside_workdir``: the row fails with that
kind and the run goes on. The path returned is the resolved one, so what is opened
or hard-linked is the very file that was checked, not whatever a link points at.

Writers use :func:`writable_folder`: a folder the tool writes into (and deletes its
own old files from) must not be reached through a symbolic link.
"""

from __future__ import annotations

import os
import stat as _stat
from pathlib import Path

from mama_augment.errors import ItemError, UsageError

PATH_OUTSIDE_WORKDIR = "path_outside_workdir"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


class WorkFolder:
    """Checks paths recorded relative to one work folder.

    The resolved folders are remembered: a report or an export touches a hundred
    thousand files in a few thousand folders, and resolving each folder once keeps
    the check to about one ``lstat`` per file.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.root = os.path.realpath(workdir)
        self._folders: dict[str, str] = {}

    def inside(self, relative: str | None, what: str = "file") -> str:
        """The resolved absolute path of ``relative``; ``ItemError`` (``path_outside_workdir``)
        unless it is relative, has no ``..`` and leads inside the work folder. The file
        need not exist (a path only written into an export)."""
        return self._resolve(relative, what)[0]

    def file(self, relative: str | None, what: str = "file", missing_kind: str = "missing_image") -> str:
        """:meth:`inside`, and the path must name a regular file: a missing file is
        ``ItemError(missing_kind)``, anything but a regular file ``path_outside_workdir``."""
        path, mode = self._resolve(relative, what)
        if mode is None:
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                raise ItemError(missing_kind, f"the {what} {relative} does not exist") from None
            except OSError as exc:
                raise ItemError(missing_kind, f"cannot read the {what} {relative}: {exc.strerror or exc}") from None
        if not _stat.S_ISREG(mode):
            raise ItemError(PATH_OUTSIDE_WORKDIR, f"the {what} path {relative!r} is not a regular file")
        return path

    def _folder(self, head: str) -> str:
        """The resolved folder ``head`` (relative): its parent's, plus one ``lstat``."""
        if not head:
            return self.root
        folder = self._folders.get(head)
        if folder is None:
            parent, name = os.path.split(head)
            folder = os.path.join(self._folder(parent), name)
            try:
                linked = os.path.islink(folder)
            except OSError:
                linked = False
            if linked or name in ("", "."):
                folder = os.path.realpath(folder)
            self._folders[head] = folder
        return folder

    def _resolve(self, relative: str | None, what: str) -> tuple[str, int | None]:
        """(resolved path, its mode when one ``lstat`` already told it, else None)."""
        if not isinstance(relative, str) or not relative:
            raise ItemError(PATH_OUTSIDE_WORKDIR, f"no {what} path recorded")
        if os.path.isabs(relative) or ".." in relative.split(os.sep) or "\0" in relative:
            raise ItemError(PATH_OUTSIDE_WORKDIR, f"the {what} path {relative!r} is not inside the work folder")
        head, name = os.path.split(relative)
        folder = self._folder(head)
        path, mode = (os.path.join(folder, name) if name else folder), None
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            pass  # absent (or unreadable): the folder decides, and file() says what is wrong
        if mode is not None and _stat.S_ISLNK(mode):
            path, mode = os.path.realpath(path), None
        if not _inside(path, self.root) or path == self.root:
            raise ItemError(PATH_OUTSIDE_WORKDIR,
                            f"the {what} path {relative!r} leads outside the work folder (through a link)")
        return path, mode


def writable_folder(workdir: str | os.PathLike, relative: str) -> Path:
    """``workdir / relative`` for the tool to write into; ``ItemError`` (``path_outside_workdir``)
    when any existing part of it below the work folder is a symbolic link or not a
    folder: writing (or deleting old keyframes) there would touch whatever it points at."""
    path = Path(workdir)
    for part in Path(relative).parts:
        if part in ("", ".", "..") or os.path.isabs(part):
            raise ItemError(PATH_OUTSIDE_WORKDIR, f"the folder {relative!r} is not inside the work folder")
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            break  # nothing further down exists yet: it is created as real folders
        if not _stat.S_ISDIR(mode):
            raise ItemError(PATH_OUTSIDE_WORKDIR,
                            f"{path.relative_to(workdir)} in the work folder is a link or a file, not a folder")
    return Path(workdir) / relative


def check_recorded_files(recorded, workdir: str | os.PathLike) -> None:
    """Files a run's config.json names (its captions files and split lists, as a path or a
    list of paths, relative to where ``train`` ran): one that lies in the work folder
    (by its name) must pass the rule there, or the run stops with a ``UsageError``.

    Files elsewhere are the user's own annotation files and are read as named; what is
    shown of them is capped where it is shown.
    """
    values = [recorded] if isinstance(recorded, (str, os.PathLike)) else list(recorded or [])
    root = os.path.abspath(workdir)
    work = None
    for value in values:
        path = os.path.abspath(os.fspath(value))
        if not _inside(path, root) or path == root:
            continue
        work = work or WorkFolder(workdir)
        try:
            work.file(os.path.relpath(path, root), "captions file", missing_kind="missing_file")
        except ItemError as exc:
            if exc.kind == PATH_OUTSIDE_WORKDIR:
                raise UsageError(f"{value} named by the run's config: {exc.message} ({exc.kind})") from None
