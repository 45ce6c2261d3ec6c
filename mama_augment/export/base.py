"""The one interface of an export format, and what it is handed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from mama_augment.caption.prompts import Prompt
from mama_augment.errors import ItemError
from mama_augment.export.config import ExportConfig
from mama_augment.export.records import CaptionEntry, Sample, VideoItem
from mama_augment.quality.prompts import PromptBook
from mama_augment.workpaths import WorkFolder


@dataclass
class ShardContext:
    """Where and how one shard is written."""

    workdir: Path
    out: Path
    parts: Path  # private folder for the pieces a format assembles in ``finish``
    index: int
    config: ExportConfig
    unit: str
    prompts: PromptBook
    fallback_prompt: Prompt
    prompts_unknown: int = 0

    @property
    def workdir_resolved(self) -> str:
        """The work folder as an absolute path, for exports that point at its files."""
        resolved = self.__dict__.get("_workdir_resolved")
        if resolved is None:
            resolved = self.__dict__["_workdir_resolved"] = str(Path(self.workdir).resolve())
        return resolved

    @property
    def work_folder(self) -> WorkFolder:
        """The rule every picture path of a manifest passes before it is read or pointed at."""
        work = self.__dict__.get("_work_folder")
        if work is None:
            work = self.__dict__["_work_folder"] = WorkFolder(self.workdir)
        return work

    def instruction(self, entry: CaptionEntry, video: VideoItem) -> str:
        """The prompt a caption was made with, rendered for the video's grid.

        Original captions, and generated ones whose prompt text cannot be found, get
        the fallback prompt (``--prompt``, default: the default caption prompt).
        """
        prompt = self.prompts.get(entry.prompt_sha256) if entry.source == "generated" else None
        if prompt is None:
            if entry.source == "generated":
                self.prompts_unknown += 1
            prompt = self.fallback_prompt
        rows, cols = video.grid_rows or 1, video.grid_cols or 1
        return prompt.render(rows, cols, len(video.keyframe_paths) or rows * cols)


@dataclass
class ShardResult:
    written: int = 0
    files: list[str] = field(default_factory=list)  # relative to the export folder
    # Pictures placed beside the files (relative to the export folder): recorded so that
    # --overwrite removes exactly what the export wrote, and nothing else in the folder.
    pictures: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"key", "video_id", "error_kind", "error"}

    def fail(self, sample: Sample, error: ItemError) -> None:
        self.failed.append(
            {"key": sample.key, "video_id": sample.video.video_id, "error_kind": error.kind, "error": error.message}
        )


class ExportFormat(Protocol):
    """A format writes shards; ``finish`` (optional) assembles them at the end.

    ``units`` lists the sample units it can write, the default first. ``write_shard``
    writes every file of the shard atomically (a killed export leaves temporary files,
    never half a shard); a sample it cannot write (a missing picture) is reported in
    the result and left out, never fatal.
    """

    name: str
    units: tuple[str, ...]
    summary: str

    def write_shard(self, ctx: ShardContext, samples: Sequence[Sample]) -> ShardResult:
        ...


def finish_files(fmt: ExportFormat, out: Path, parts: Path, shards: list[dict]) -> list[str]:
    """Call the format's optional ``finish``; returns the files it made (relative to ``out``)."""
    finish = getattr(fmt, "finish", None)
    return list(finish(out, parts, shards)) if finish is not None else []
