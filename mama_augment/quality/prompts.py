"""The prompt text behind a caption's ``prompt_sha256``.

``captions.parquet`` records the prompt's name and the hash of its template. The text
is found among the shipped prompts, the prompt files recorded by the work folder's
caption runs (``configs/caption*.json``), and any file or name given on the command
line; a template is used only when its hash matches.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

from mama_augment.caption.prompts import Prompt, available_prompts, load_prompt
from mama_augment.configfile import CONFIGS_DIR
from mama_augment.errors import UsageError

log = logging.getLogger(__name__)


class PromptBook:
    def __init__(self, workdir: Path | None = None, extra: Iterable[str] = ()):
        self.by_sha: dict[str, Prompt] = {}
        for name in available_prompts():
            self._add(name, quiet=True)
        if workdir is not None:
            for value in _recorded_prompts(Path(workdir)):
                self._add(value, quiet=True)
        for value in extra:  # given by the user: a bad name or path is an error
            self._add(value, quiet=False)

    def _add(self, name_or_path: str, quiet: bool) -> None:
        try:
            prompt = load_prompt(name_or_path)
        except UsageError as exc:
            if not quiet:
                raise
            log.debug("prompt %s not available: %s", name_or_path, exc)
            return
        self.by_sha.setdefault(prompt.sha256, prompt)

    def get(self, sha256: str | None) -> Prompt | None:
        return self.by_sha.get(sha256) if sha256 else None

    def all(self) -> list[Prompt]:
        return list(self.by_sha.values())


def _recorded_prompts(workdir: Path) -> list[str]:
    """``prompt`` values of the recorded caption configurations, newest first."""
    directory = workdir / CONFIGS_DIR
    if not directory.is_dir():
        return []
    values = []
    for path in sorted(directory.glob("caption*.json"), reverse=True):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        value = (record.get("config") or {}).get("prompt") if isinstance(record, dict) else None
        if isinstance(value, str) and value and value not in values:
            values.append(value)
    return values
