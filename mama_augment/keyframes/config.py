"""Options of the ``keyframes`` stage; every default lives here once."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields

from mama_augment.checks import MAX_TIMEOUT_S, check_device, check_model_available, check_number, check_numbers
from mama_augment.errors import UsageError

# Fields that change what the stage writes. A row made with other values is redone.
OUTPUT_FIELDS = (
    "fps",
    "max_frames",
    "num_keyframes",
    "min_keyframes",
    "max_keyframes",
    "knn",
    "selection",
    "embedder",
    "embed_model",
    "grid",
    "tile_size",
    "thumb_size",
    "jpeg_quality",
    "decoder",
)

SELECTIONS = ("cover", "gamma")
# Options whose name is not the field's.
RENAMED = {"timeout_s": "--timeout"}


@dataclass(frozen=True)
class KeyframesConfig:
    fps: float = 2.0
    max_frames: int = 256
    num_keyframes: int | None = 12  # None means "auto"
    min_keyframes: int = 4
    max_keyframes: int = 12
    knn: int = 5
    selection: str = "cover"  # cover | gamma (plain top-K of DPC scores)
    embedder: str = "cnn"
    embed_model: str | None = None
    device: str = "auto"
    batch_size: int = 32
    grid: str = "3x4"
    tile_size: str = "320x240"
    thumb_size: int = 320
    jpeg_quality: int = 90
    decoder: str = "auto"  # auto | pyav | opencv
    workers: int = 0  # 0 = one per CPU core; the pool always runs in worker processes
    timeout_s: float = 600.0
    retry_failed: bool = True  # a rerun tries failed inputs again; False keeps them failed
    overwrite: bool = False
    # Where the work runs. None of these change what is written, so they are not in
    # OUTPUT_FIELDS: a run can switch engines and resume without redoing anything.
    engine: str = "local"  # local (a process pool here) | ray (Ray Data actors)
    ray_address: str | None = None  # None: start a local Ray; "auto" or an address: join it
    num_cpus: float = 1.0  # CPUs reserved per Ray actor
    num_gpus: float = 0.0  # GPUs reserved per Ray actor (the embedder's device)

    def resolved_workers(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)

    def config_hash(self) -> str:
        values = {name: getattr(self, name) for name in OUTPUT_FIELDS}
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "KeyframesConfig":
        """The config of the fields named in ``data`` (other keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        """Every check of the options, before any work (UsageError names the option)."""
        from mama_augment.embed import EMBEDDERS, EmbedderOptions, check_embedder
        from mama_augment.engines import ENGINES
        from mama_augment.keyframes.grid import check_grid_size, parse_grid, parse_size
        from mama_augment.video import BACKEND_CHOICES

        check_numbers(self, RENAMED)
        try:
            rows, cols = parse_grid(self.grid)
        except (ValueError, UsageError) as exc:
            raise UsageError(f"--grid: {exc}") from None
        try:
            tile_w, tile_h = parse_size(self.tile_size)
        except (ValueError, UsageError) as exc:
            raise UsageError(f"--tile-size: {exc}") from None
        check_grid_size(rows, cols, tile_w, tile_h)
        cells = rows * cols
        check_number(self.fps, "--fps", above=0)
        if self.max_frames < 1:
            raise UsageError("--max-frames must be at least 1")
        if self.selection not in SELECTIONS:
            raise UsageError(f"--selection must be one of: {', '.join(SELECTIONS)}")
        if self.knn < 1:
            raise UsageError("--knn must be at least 1")
        if self.num_keyframes is not None:
            if self.num_keyframes < 1:
                raise UsageError("--num-keyframes must be at least 1 (or 'auto')")
            if self.num_keyframes > cells:
                raise UsageError(
                    f"--num-keyframes {self.num_keyframes} does not fit a {self.grid} grid "
                    f"({cells} cells); raise --grid or lower --num-keyframes"
                )
        if not 1 <= self.min_keyframes <= self.max_keyframes:
            raise UsageError("need 1 <= --min-keyframes <= --max-keyframes")
        if self.num_keyframes is None:
            if self.max_keyframes > cells:
                raise UsageError(
                    f"--max-keyframes {self.max_keyframes} does not fit a {self.grid} grid ({cells} cells)"
                )
        if self.thumb_size < 16:
            raise UsageError("--thumb-size must be at least 16 pixels")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError("--jpeg-quality must be within 1..100")
        check_number(self.timeout_s, "--timeout", above=0, maximum=MAX_TIMEOUT_S)
        check_number(self.batch_size, "--batch-size", minimum=1)
        check_number(self.workers, "--workers", minimum=0)
        if self.decoder not in BACKEND_CHOICES:
            raise UsageError(f"--decoder must be {', '.join(BACKEND_CHOICES[:-1])} or {BACKEND_CHOICES[-1]}")
        if self.engine not in ENGINES:
            raise UsageError(f"--engine must be one of: {', '.join(ENGINES)}")
        check_number(self.num_cpus, "--num-cpus", above=0)
        check_number(self.num_gpus, "--num-gpus", minimum=0)
        check_embedder(self.embedder, EmbedderOptions(model=self.embed_model))
        check_device(self.device)
        # On a Ray cluster the actors load the model where they run; here it is loaded here.
        if self.engine == "local" and EMBEDDERS[self.embedder].needs_model:
            check_model_available(self.embed_model, "--embed-model")
