"""Caption backends: name -> factory(spec, config) -> ``CaptionBackend``.

Heavy imports (vllm, transformers, torch) happen inside the factories.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Callable

from mama_augment.caption.backends.base import CaptionBackend, CaptionRequest, Generation, Sampling
from mama_augment.caption.config import CaptionConfig
from mama_augment.caption.presets import ModelSpec
from mama_augment.errors import UsageError

log = logging.getLogger(__name__)


def sampling_from(config: CaptionConfig) -> Sampling:
    return Sampling(
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_tokens,
        ignore_eos=config.ignore_eos,
    )


def _offline(spec: ModelSpec, config: CaptionConfig) -> CaptionBackend:
    from mama_augment.caption.backends.offline import OfflineBackend, engine_arguments

    args = engine_arguments(
        spec,
        max_model_len=config.max_model_len,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_num_seqs=config.max_num_seqs,
        tensor_parallel_size=config.tensor_parallel_size,
        kv_cache_memory_bytes=config.kv_cache_memory_bytes,
        dtype=config.dtype,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
        extra=config.engine_args,
    )
    return OfflineBackend(spec, sampling_from(config), args, batch_size=config.batch_size)


def _server(spec: ModelSpec, config: CaptionConfig) -> CaptionBackend:
    from mama_augment.caption.backends.server import ServerBackend, api_key_from_env

    if not config.endpoint:
        raise UsageError("the server backend needs --endpoint http://HOST:PORT/v1")
    return ServerBackend(
        spec,
        config.endpoint,
        sampling_from(config),
        served_model_name=config.served_model_name,
        api_key=api_key_from_env(config.api_key_env),
        concurrency=config.concurrency,
        timeout_s=config.request_timeout_s,
        max_retries=config.max_retries,
        backoff_s=config.retry_backoff_s,
        jpeg_quality=config.jpeg_quality,
    )


def _transformers(spec: ModelSpec, config: CaptionConfig) -> CaptionBackend:
    from mama_augment.caption.backends.hf import TransformersBackend

    return TransformersBackend(spec, sampling_from(config), device=config.device, dtype=config.dtype)


BACKENDS: dict[str, Callable[[ModelSpec, CaptionConfig], CaptionBackend]] = {
    "offline": _offline,
    "server": _server,
    "transformers": _transformers,
}


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_backend(config: CaptionConfig) -> str:
    """``auto``: an endpoint means server; else vLLM in-process if installed; else transformers."""
    if config.backend != "auto":
        if config.backend not in BACKENDS:
            raise UsageError(f"unknown backend {config.backend!r}; choose from auto, {', '.join(BACKENDS)}")
        return config.backend
    if config.endpoint:
        return "server"
    if vllm_available():
        return "offline"
    log.warning("vLLM is not installed: captioning with transformers (slow); pip install 'mama-augment[vllm]'")
    return "transformers"


def make_backend(name: str, spec: ModelSpec, config: CaptionConfig) -> CaptionBackend:
    return BACKENDS[name](spec, config)


__all__ = [
    "BACKENDS",
    "CaptionBackend",
    "CaptionRequest",
    "Generation",
    "Sampling",
    "choose_backend",
    "make_backend",
    "sampling_from",
]
