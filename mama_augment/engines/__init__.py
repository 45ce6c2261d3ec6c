"""Engines: where a stage's per-item work runs (``--engine``).

``ENGINES`` is the registry, name -> :class:`EngineEntry`; the stages' options and
the CLI's ``--engine`` choices and help read it, so adding an engine is adding one
entry here (a module with ``map_items``, ``map_model_items`` and ``batch_workers``, see
``engines/base.py``).

* ``local``: worker processes on this machine (``engines/local.py``), and for work
  around a model one model process per device (``engines/device.py``);
* ``ray``: Ray Data actors on a local or remote Ray cluster (``engines/ray.py``).

An engine is infrastructure: the stage hands it the per-item callable and gets result
rows back; it never imports a stage, writes a manifest or counts rows. Engine modules
are imported only when used, so ``import ray`` happens only with ``--engine ray``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from mama_augment.engines.base import Engine
from mama_augment.errors import UsageError


@dataclass(frozen=True)
class EngineEntry:
    module: str  # imported on first use; it provides map_items and batch_workers
    help: str  # one line for --help

    def load(self) -> Engine:
        return importlib.import_module(self.module)  # type: ignore[return-value]


ENGINES: dict[str, EngineEntry] = {
    "local": EngineEntry("mama_augment.engines.local", "worker processes here"),
    "ray": EngineEntry("mama_augment.engines.ray", "Ray Data actors; needs the ray install extra"),
}


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``; UsageError lists the choices."""
    entry = ENGINES.get(name)
    if entry is None:
        raise UsageError(f"--engine must be one of: {', '.join(ENGINES)}")
    return entry.load()


def engine_help() -> str:
    """``local (worker processes here) or ray (...)`` for the CLI's --help."""
    parts = [f"{name} ({entry.help})" for name, entry in ENGINES.items()]
    return ", ".join(parts[:-1]) + (" or " if len(parts) > 1 else "") + parts[-1]
