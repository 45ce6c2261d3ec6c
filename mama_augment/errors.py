"""Error types shared by every stage.

Two kinds of failure exist and must not be confused:

* ``ItemError`` - one input (a video, a grid, a pair) is bad. It becomes a
  ``failed`` row with ``error_kind`` and a message; the run goes on.
* ``MamaError`` - the run itself cannot go on (bad option, unwritable work folder,
  missing model, missing optional dependency). The CLI prints the message and exits
  with code 2 (usage) or 1.
"""

from __future__ import annotations


class MamaError(Exception):
    """A run-level error with a message a user can act on."""

    exit_code = 1


class UsageError(MamaError):
    """Bad options or inputs given by the user (exit code 2)."""

    exit_code = 2


class MissingDependency(MamaError):
    """An optional dependency is not installed; the message says how to install it."""

    exit_code = 2

    def __init__(self, package: str, extra: str | None = None, purpose: str = ""):
        how = f"pip install 'mama-augment[{extra}]'" if extra else f"pip install {package}"
        what = f" for {purpose}" if purpose else ""
        super().__init__(f"{package} is required{what} but is not installed; install it with: {how}")
        self.package = package
        self.extra = extra
        self.purpose = purpose

    def __reduce__(self):
        # Rebuilt from its arguments, not its message, when it crosses a process
        # boundary (a worker process or a Ray actor raised it).
        return type(self), (self.package, self.extra, self.purpose)


class ItemError(Exception):
    """One input failed; ``kind`` is a short stable identifier used in summaries."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:  # pragma: no cover - trivial
        return f"{self.kind}: {self.message}"
