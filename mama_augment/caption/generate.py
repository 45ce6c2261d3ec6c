"""What one caption request is and how it becomes an outcome: the per-request logic
of the caption stage, run by whichever engine the stage uses.

* :func:`build_requests` - one request per pending (grid, caption index), with a seed
  stable across runs and batch orders (:func:`caption_seed`);
* :func:`caption_requests` - generate, clean and (for a too-long caption) regenerate:
  one :class:`Outcome` per request;
* :class:`CaptionWorker` - the batch worker an engine runs (``engines/base.py``): it
  builds the backend once and turns requests into outcome rows
  (:data:`OUTCOME_SCHEMA`), which the stage turns back into outcomes on its side.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from mama_augment.caption.backends import CaptionBackend, CaptionRequest, Generation, make_backend
from mama_augment.caption.config import CaptionConfig
from mama_augment.caption.postprocess import CleanCaption, clean_caption
from mama_augment.caption.presets import ModelSpec
from mama_augment.caption.prompts import Prompt
from mama_augment.errors import ItemError
from mama_augment.manifest import STATUS_FAILED, STATUS_OK


@dataclass(frozen=True)
class Grid:
    video_id: str
    grid_path: str  # as in keyframes.parquet (relative to the work folder)
    rows: int
    cols: int
    num_frames: int


@dataclass
class Outcome:
    """What became of one request: the generation kept (first sample or a
    regeneration), the cleaned caption or why it failed. Rows are built from this."""

    request: CaptionRequest  # the request whose generation is kept (its seed is recorded)
    generation: Generation
    caption: str | None
    status: str
    error_kind: str | None = None
    error: str | None = None
    truncated: bool = False  # still too long after the regenerations: cut at a sentence end
    regenerated: bool = False  # the kept generation is a regeneration


def caption_seed(base_seed: int, video_id: str, caption_index: int, attempt: int = 0) -> int:
    """Distinct per caption of a video, stable across runs and batch orders."""
    digest = hashlib.sha256(f"{base_seed}:{video_id}".encode()).digest()
    per_video = int.from_bytes(digest[:4], "little") & 0x3FFFFFFF
    return (per_video + caption_index * 1_000_003 + attempt * 7_919) % (2**31 - 1)


def build_requests(prompt: Prompt, config: CaptionConfig, pending: Sequence[tuple[Grid, int]],
                   workdir: Path) -> list[CaptionRequest]:
    """One request (attempt 0) per pending (grid, caption index), in ``pending`` order."""
    requests = []
    for grid, index in pending:
        grid_path = Path(grid.grid_path)
        requests.append(CaptionRequest(
            video_id=grid.video_id,
            caption_index=index,
            grid_path=grid_path if grid_path.is_absolute() else workdir / grid_path,
            prompt=prompt.render(grid.rows, grid.cols, grid.num_frames),
            seed=caption_seed(config.seed, grid.video_id, index),
        ))
    return requests


def caption_requests(backend: CaptionBackend, requests: Sequence[CaptionRequest],
                     config: CaptionConfig) -> Iterator[Outcome]:
    """Generate, clean and (for a too-long caption) regenerate: one ``Outcome`` per
    request, yielded as soon as it is final.

    Too-long answers wait for up to ``config.regenerate`` more samples (distinct
    seeds); if none fits, the first answer is cut at a sentence end. This is the whole
    per-request logic of the stage; every engine worker runs it (:class:`CaptionWorker`).
    """
    # Too-long answers wait here for a regeneration; their first, truncated, version
    # is the fallback.
    too_long: dict[tuple[str, int], tuple[CaptionRequest, Generation, CleanCaption]] = {}

    def fallback(key) -> Outcome:
        request, generation, cleaned = too_long.pop(key)
        return Outcome(request, generation, cleaned.text, STATUS_OK, truncated=True)

    def finish(request: CaptionRequest, generation: Generation, last_round: bool) -> Outcome | None:
        key = (request.video_id, request.caption_index)
        if not generation.ok:
            if key in too_long:  # a failed regeneration keeps the truncated first answer
                return fallback(key)
            return Outcome(request, generation, None, STATUS_FAILED, generation.error_kind, generation.error)
        try:
            cleaned = clean_caption(generation.text, config.max_words)
        except ItemError as exc:
            if key in too_long:
                return fallback(key)
            return Outcome(request, generation, None, STATUS_FAILED, exc.kind, exc.message)
        if cleaned.too_long and not last_round:
            too_long.setdefault(key, (request, generation, cleaned))
            return None
        truncated = cleaned.too_long
        if truncated:
            first = too_long.pop(key, None)
            if first is not None:
                request, generation, cleaned = first
        else:
            too_long.pop(key, None)
        return Outcome(request, generation, cleaned.text, STATUS_OK, truncated=truncated,
                       regenerated=bool(request.attempt))

    for request, generation in backend.generate(requests):
        outcome = finish(request, generation, last_round=config.regenerate == 0)
        if outcome is not None:
            yield outcome
    for attempt in range(1, config.regenerate + 1):
        if not too_long:
            break
        retry = [
            replace(r, seed=caption_seed(config.seed, r.video_id, r.caption_index, attempt), attempt=attempt)
            for r, _, _ in too_long.values()
        ]
        for request, generation in backend.generate(retry):
            outcome = finish(request, generation, last_round=attempt == config.regenerate)
            if outcome is not None:
                yield outcome


# --------------------------------------------------------------------------- for an engine

# What comes back: the kept generation (its seed and attempt) and what the stage made of it.
OUTCOME_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("caption_index", pa.int64()),
    ("seed", pa.int64()),
    ("attempt", pa.int64()),
    ("raw_output", pa.string()),
    ("generation_error_kind", pa.string()),
    ("generation_error", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()),
    ("caption", pa.string()),
    ("status", pa.string()),
    ("error_kind", pa.string()),
    ("error", pa.string()),
    ("truncated", pa.bool_()),
    ("regenerated", pa.bool_()),
])




def request_item(request: CaptionRequest) -> dict:
    """A first-attempt request as an engine item (plain values; the grid path absolute,
    so a worker elsewhere finds it on the shared filesystem)."""
    return {"video_id": request.video_id, "caption_index": request.caption_index,
            "grid_path": str(Path(request.grid_path).absolute()), "prompt": request.prompt, "seed": request.seed}


def outcome_row(o: Outcome) -> dict:
    """An outcome as a row of :data:`OUTCOME_SCHEMA`."""
    return {
        "video_id": o.request.video_id,
        "caption_index": o.request.caption_index,
        "seed": o.request.seed,
        "attempt": o.request.attempt,
        "raw_output": o.generation.text,
        "generation_error_kind": o.generation.error_kind,
        "generation_error": o.generation.error,
        "prompt_tokens": o.generation.prompt_tokens,
        "completion_tokens": o.generation.completion_tokens,
        "latency_s": o.generation.latency_s,
        "caption": o.caption,
        "status": o.status,
        "error_kind": o.error_kind,
        "error": o.error,
        "truncated": o.truncated,
        "regenerated": o.regenerated,
    }


def outcomes_from_table(table: pa.Table, request_of: dict[tuple[str, int], CaptionRequest]) -> Iterator[Outcome]:
    """Rebuild the outcomes on the stage's side, around the stage's own requests."""
    for row in table.to_pylist():
        request = request_of[(row["video_id"], row["caption_index"])]
        yield Outcome(
            request=replace(request, seed=row["seed"], attempt=row["attempt"]),
            generation=Generation(
                text=row["raw_output"],
                error_kind=row["generation_error_kind"],
                error=row["generation_error"],
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
                latency_s=row["latency_s"],
            ),
            caption=row["caption"],
            status=row["status"],
            error_kind=row["error_kind"],
            error=row["error"],
            truncated=row["truncated"],
            regenerated=row["regenerated"],
        )


class CaptionWorker:
    """The caption stage's batch worker: builds the backend once (or wraps one the
    stage made), then request items in, outcome rows out, through
    :func:`caption_requests` - post-processing and regenerations happen next to the
    engine that made the caption."""

    def __init__(self, spec: ModelSpec, config: CaptionConfig, backend_name: str, in_actor: bool,
                 backend: CaptionBackend | None = None):
        if backend is None:
            if in_actor and config.tensor_parallel_size > 1 and "distributed_executor_backend" not in config.engine_args:
                # The actor holds its tensor_parallel_size GPUs itself (Ray set
                # CUDA_VISIBLE_DEVICES): vLLM's own worker processes use them, rather than
                # vLLM asking Ray for a placement group inside an actor.
                config = replace(config, engine_args={**config.engine_args, "distributed_executor_backend": "mp"})
            backend = make_backend(backend_name, spec, config)
        self.config = config
        self.backend = backend

    def __call__(self, items: list[dict]) -> Iterator[dict]:
        requests = [
            CaptionRequest(item["video_id"], item["caption_index"], Path(item["grid_path"]), item["prompt"], item["seed"])
            for item in items
        ]
        for outcome in caption_requests(self.backend, requests, self.config):
            yield outcome_row(outcome)

    def close(self) -> None:
        self.backend.close()
