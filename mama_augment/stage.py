"""What every stage returns: one report the CLI prints and maps to an exit code."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageReport:
    """Counts of one stage run.

    ``total`` inputs were considered; ``skipped`` were already done; of those
    processed, ``done`` succeeded and ``failed`` became failed rows.
    """

    stage: str
    output: Path | None = None
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures_by_kind: Counter = field(default_factory=Counter)
    failure_examples: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def add_failure(self, kind: str, message: str, item: str = "") -> None:
        self.failed += 1
        self.failures_by_kind[kind] += 1
        if kind not in self.failure_examples:
            self.failure_examples[kind] = f"{item}: {message}" if item else message

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 else 1

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "output": str(self.output) if self.output else None,
            "total": self.total,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "failures_by_kind": dict(self.failures_by_kind),
            **self.extra,
        }
