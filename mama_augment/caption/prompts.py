"""Caption prompts: plain text files with ``{rows}``, ``{cols}``, ``{num_frames}``.

``--prompt NAME`` loads ``NAME.txt`` from the shipped prompts folder; anything that
looks like a path (has a slash or ends in ``.txt``) is read as a file. The folder is
found in a source checkout (``<repo>/prompts``), in an installed wheel
(``mama_augment/_prompts`` or ``<prefix>/share/mama-augment/prompts``), or wherever
``MAMA_AUGMENT_PROMPTS`` points.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mama_augment.errors import UsageError

DEFAULT_PROMPT = "default"
PLACEHOLDERS = ("rows", "cols", "num_frames")


@dataclass(frozen=True)
class Prompt:
    name: str
    template: str
    sha256: str  # of the template text as used (recorded in every caption row)

    def render(self, rows: int, cols: int, num_frames: int | None = None) -> str:
        """Fill the placeholders; other braces in the text are left alone."""
        values = {"rows": rows, "cols": cols, "num_frames": num_frames if num_frames else rows * cols}
        text = self.template
        for key in PLACEHOLDERS:
            text = text.replace("{" + key + "}", str(values[key]))
        return text


def prompt_dirs() -> list[Path]:
    """Where shipped prompts may live, first match wins."""
    candidates = []
    if os.environ.get("MAMA_AUGMENT_PROMPTS"):
        candidates.append(Path(os.environ["MAMA_AUGMENT_PROMPTS"]))
    package = Path(__file__).resolve().parent.parent  # mama_augment/
    candidates += [
        package / "_prompts",  # wheel, via package-dir mapping
        package.parent / "prompts",  # source checkout / editable install
        Path(sys.prefix) / "share" / "mama-augment" / "prompts",  # wheel, via data-files
    ]
    return [path for path in candidates if path.is_dir()]


def available_prompts() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in reversed(prompt_dirs()):
        for path in sorted(directory.glob("*.txt")):
            found[path.stem] = path
    return dict(sorted(found.items()))


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.endswith(".txt")


def load_prompt(name_or_path: str = DEFAULT_PROMPT) -> Prompt:
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UsageError(f"prompt file {path} does not exist")
        name = path.stem
    else:
        shipped = available_prompts()
        if name_or_path not in shipped:
            if not shipped:
                raise UsageError(
                    "no prompts folder found (looked in "
                    + ", ".join(str(p) for p in prompt_dirs() or ["<none>"])
                    + "); set MAMA_AUGMENT_PROMPTS or pass --prompt PATH"
                )
            raise UsageError(
                f"unknown prompt {name_or_path!r}; shipped prompts: {', '.join(shipped)} "
                "(or pass a path to a .txt file)"
            )
        path = shipped[name_or_path]
        name = name_or_path
    template = path.read_text(encoding="utf-8").strip()
    if not template:
        raise UsageError(f"prompt file {path} is empty")
    return Prompt(name=name, template=template, sha256=hashlib.sha256(template.encode()).hexdigest())
