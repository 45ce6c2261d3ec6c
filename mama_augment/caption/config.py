"""Every option of the caption stage, with its default, in one place."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from mama_augment.checks import MAX_TIMEOUT_S, check_device, check_number, check_numbers
from mama_augment.errors import UsageError

DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICES = ("auto", "cpu", "cuda")  # of the transformers backend
# Options whose name is not the field's.
RENAMED = {
    "request_timeout_s": "--timeout",
    "max_retries": "--retries",
    "retry_backoff_s": "--retry-backoff",
    "kv_cache_memory_bytes": "--kv-cache-gib",
    "flush_interval_s": "--flush-interval",
}
# Upper bounds of counts where a larger value is a typo that would hold a run for days.
MAX_CAPTIONS_PER_GRID = 1000
MAX_CONCURRENCY = 4096
MAX_RETRIES = 100
ENGINE_ARGS_EXAMPLE = '{"enable_prefix_caching": true}'


def parse_engine_args(text: str | None) -> dict:
    """``--engine-args``: a JSON object of further ``vllm.LLM`` keyword arguments
    (a string in the config file too: TOML tables are commands, not values)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--engine-args must be a JSON object such as '{ENGINE_ARGS_EXAMPLE}': {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--engine-args must be a JSON object such as '{ENGINE_ARGS_EXAMPLE}', not {text!r}")
    return value


@dataclass
class CaptionConfig:
    """Options of ``run_caption``; the CLI builds one of these and nothing else.

    Only the fields that change what a caption *is* (model, prompt, sampling, length
    rules) enter the ``config_hash`` of a row; engine and client tuning do not, so a
    run resumed with another backend or concurrency keeps what is done.
    """

    # What to caption with.
    model: str = "llava"
    backend: str = "auto"
    prompt: str = "default"

    # Sampling (recorded in every row as JSON).
    num_captions: int = 1
    temperature: float = 0.2
    top_p: float = 1.0
    max_tokens: int = 96
    seed: int = 0
    # The random test model stops whenever; benchmarks need a fixed length.
    ignore_eos: bool = False

    # Post-processing.
    max_words: int = 40
    regenerate: int = 1  # extra samples asked for a caption longer than max_words

    # Server backend.
    endpoint: str | None = None
    served_model_name: str | None = None  # name sent in requests; default: the model id
    api_key_env: str | None = None  # default: OPENAI_API_KEY, then VLLM_API_KEY
    concurrency: int = 64
    request_timeout_s: float = 120.0
    max_retries: int = 4
    retry_backoff_s: float = 0.5
    jpeg_quality: int = 90

    # Offline (in-process vLLM) engine.
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int | None = None
    tensor_parallel_size: int = 1
    kv_cache_memory_bytes: int | None = None  # default on a CPU: 256 MiB
    dtype: str = "auto"
    enforce_eager: bool | None = None  # default: True on a CPU (fast start)
    engine_args: dict = field(default_factory=dict)  # anything else vllm.LLM accepts; wins over the above
    batch_size: int = 512  # requests handed to LLM.chat at once

    # Where the engines run (not part of config_hash: a run can switch and resume).
    engine: str = "local"  # local (this process) | ray (one engine per Ray actor)
    ray_address: str | None = None  # None: start a local Ray; "auto" or an address: join it
    replicas: int = 1  # engines (Ray actors), each with tensor_parallel_size GPUs on a GPU cluster
    num_cpus: float = 1.0  # CPUs reserved per replica
    # GPUs reserved per replica; None: tensor_parallel_size on a cluster with GPUs, else 0.
    num_gpus: float | None = None

    # Transformers backend.
    device: str = "auto"

    # Which rows.
    retry_failed: bool = True  # a rerun tries failed captions again; False keeps them failed
    overwrite: bool = False
    limit: int | None = None  # caption at most this many grids (smoke runs)

    # Writing: pending rows go to disk at least this often (a killed run loses only
    # the requests in flight plus at most this much work).
    flush_interval_s: float = 1.0
    flush_rows: int = 256

    def sampling_dict(self) -> dict:
        """What is recorded in the ``sampling`` column (the per-row seed is separate)."""
        sampling = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "max_words": self.max_words,
            "regenerate": self.regenerate,
            "base_seed": self.seed,
        }
        if self.ignore_eos:
            sampling["ignore_eos"] = True
        return sampling

    def config_hash(self, model_id: str, prompt_sha256: str) -> str:
        identity = {"model": model_id, "prompt_sha256": prompt_sha256, **self.sampling_dict()}
        blob = json.dumps(identity, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CaptionConfig":
        """The config of the fields named in ``data`` (other keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        """Every check of the options, before any work (UsageError names the option).

        The backend's name is checked against the registry by the stage, which knows it.
        """
        from mama_augment.engines import ENGINES

        check_numbers(self, RENAMED)
        for value, option, bounds in [
            (self.num_captions, "--num-captions", {"minimum": 1, "maximum": MAX_CAPTIONS_PER_GRID}),
            (self.temperature, "--temperature", {"minimum": 0}),
            (self.top_p, "--top-p", {"above": 0, "maximum": 1}),
            (self.max_tokens, "--max-tokens", {"minimum": 1}),
            (self.max_words, "--max-words", {"minimum": 1}),
            (self.regenerate, "--regenerate", {"minimum": 0, "maximum": MAX_RETRIES}),
            (self.concurrency, "--concurrency", {"minimum": 1, "maximum": MAX_CONCURRENCY}),
            (self.max_retries, "--retries", {"minimum": 0, "maximum": MAX_RETRIES}),
            (self.request_timeout_s, "--timeout", {"above": 0, "maximum": MAX_TIMEOUT_S}),
            (self.retry_backoff_s, "--retry-backoff", {"minimum": 0, "maximum": MAX_TIMEOUT_S}),
            (self.jpeg_quality, "--jpeg-quality", {"minimum": 1, "maximum": 100}),
            (self.max_model_len, "--max-model-len", {"minimum": 1}),
            (self.gpu_memory_utilization, "--gpu-memory-utilization", {"above": 0, "maximum": 1}),
            (self.max_num_seqs, "--max-num-seqs", {"minimum": 1}),
            (self.tensor_parallel_size, "--tensor-parallel-size", {"minimum": 1}),
            (self.kv_cache_memory_bytes, "--kv-cache-gib", {"above": 0}),
            (self.batch_size, "--batch-size", {"minimum": 1}),
            (self.replicas, "--replicas", {"minimum": 1}),
            (self.num_cpus, "--num-cpus", {"above": 0}),
            (self.num_gpus, "--num-gpus", {"minimum": 0}),
            (self.limit, "--limit", {"minimum": 0}),
            (self.flush_interval_s, "--flush-interval", {"above": 0, "maximum": MAX_TIMEOUT_S}),
            (self.flush_rows, "--flush-rows", {"minimum": 1}),
        ]:
            check_number(value, option, **bounds)
        checks = [
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}"),
            (isinstance(self.engine_args, dict) and all(isinstance(k, str) for k in self.engine_args),
             f"--engine-args must be a JSON object such as '{ENGINE_ARGS_EXAMPLE}'"),
            (not (self.backend == "server" and not self.endpoint), "--backend server needs --endpoint"),
            (self.engine in ENGINES, f"--engine must be one of: {', '.join(ENGINES)}"),
            (not (self.engine == "ray" and (self.backend == "server" or self.endpoint)),
             "--engine ray runs the engines on the Ray cluster; with --endpoint a server does the work "
             "(use --engine local)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.engine != "local" and self.num_gpus is not None and 0 < self.num_gpus < self.tensor_parallel_size:
            raise UsageError(
                f"--num-gpus {self.num_gpus:g} is fewer than --tensor-parallel-size {self.tensor_parallel_size}: "
                "each replica needs one GPU per tensor-parallel rank"
            )
        if self.backend in ("auto", "transformers") and not self.endpoint:
            check_device(self.device, "--device", DEVICES)  # is a GPU there? only where it is used
