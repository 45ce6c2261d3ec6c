"""Command-line interface: ``mama-augment`` (also ``python -m mama_augment``)."""

from __future__ import annotations

from mama_augment.cli._app import app

# Each module registers its commands on ``app``.
from mama_augment.cli import keyframes as _keyframes  # noqa: F401,E402
from mama_augment.cli import caption as _caption  # noqa: F401,E402
from mama_augment.cli import train as _train  # noqa: F401,E402
from mama_augment.cli import audit as _audit  # noqa: F401,E402
from mama_augment.cli import filter as _filter  # noqa: F401,E402
from mama_augment.cli import export as _export  # noqa: F401,E402
from mama_augment.cli import status as _status  # noqa: F401,E402
from mama_augment.cli import report as _report  # noqa: F401,E402
from mama_augment.cli import config as _config  # noqa: F401,E402
from mama_augment.cli import datasets as _datasets  # noqa: F401,E402
from mama_augment.cli import qa as _qa  # noqa: F401,E402


def main() -> None:
    app()


__all__ = ["app", "main"]
