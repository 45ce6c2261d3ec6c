"""``mama-augment caption``: caption every keyframe grid with a vision-language model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mama_augment.caption.backends import BACKENDS
from mama_augment.caption.config import ENGINE_ARGS_EXAMPLE, CaptionConfig, parse_engine_args
from mama_augment.checks import gib_to_bytes
from mama_augment.cli._app import DEFAULT_WORKDIR, WORKDIR_HELP, app, call_library, finish, parse_workdir
from mama_augment.engines import engine_help

_D = CaptionConfig()  # defaults live in CaptionConfig; the CLI only shows them
_ENGINE = "Offline engine (vLLM)"
_SERVER = "Server backend"
_SAMPLING = "Sampling and post-processing"
_RAY = "Ray (--engine ray)"
_WRITING = "Writing"


def _print_models() -> None:
    from mama_augment.caption.presets import list_presets
    from mama_augment.caption.prompts import available_prompts

    typer.echo("presets (or pass any Hugging Face id / local folder with a chat template):")
    rows = list_presets()
    width = max(len(name) for name, _, _ in rows)
    for name, model, description in rows:
        typer.echo(f"  {name.ljust(width)}  {model}  - {description}")
    typer.echo("prompts (--prompt NAME, or a path to a .txt file):")
    for name, path in available_prompts().items():
        typer.echo(f"  {name}  ({path})")


@app.command()
def caption(
    ctx: typer.Context,
    workdir: Annotated[Path, typer.Option("--workdir", "-w", parser=parse_workdir, metavar="PATH", help=WORKDIR_HELP)] = DEFAULT_WORKDIR,
    model: Annotated[str, typer.Option(help="Preset name (see --list-models) or any Hugging Face id / local folder.")] = _D.model,
    backend: Annotated[str, typer.Option(help=f"One of: {', '.join(('auto', *BACKENDS))}. auto: server if --endpoint, else vLLM offline if installed, else transformers.")] = _D.backend,
    prompt: Annotated[str, typer.Option(help="Prompt name from prompts/ or a path to a .txt file; {rows} {cols} {num_frames} are filled in.")] = _D.prompt,
    list_models: Annotated[bool, typer.Option("--list-models", help="Show the model presets and prompts, then exit.")] = False,
    num_captions: Annotated[int, typer.Option(help="Captions per grid, each with its own seed.", rich_help_panel=_SAMPLING)] = _D.num_captions,
    temperature: Annotated[float, typer.Option(rich_help_panel=_SAMPLING)] = _D.temperature,
    top_p: Annotated[float, typer.Option(rich_help_panel=_SAMPLING)] = _D.top_p,
    max_tokens: Annotated[int, typer.Option(help="Most tokens generated per caption.", rich_help_panel=_SAMPLING)] = _D.max_tokens,
    seed: Annotated[int, typer.Option(help="Base seed; every caption's seed derives from it.", rich_help_panel=_SAMPLING)] = _D.seed,
    max_words: Annotated[int, typer.Option(help="Longer captions are regenerated, then cut at a sentence end.", rich_help_panel=_SAMPLING)] = _D.max_words,
    regenerate: Annotated[int, typer.Option(help="Extra samples asked for a too-long caption.", rich_help_panel=_SAMPLING)] = _D.regenerate,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", hidden=True, rich_help_panel=_SAMPLING)] = _D.ignore_eos,
    endpoint: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (as started by `vllm serve MODEL`).", rich_help_panel=_SERVER)] = _D.endpoint,
    served_model_name: Annotated[Optional[str], typer.Option(help="Model name the server expects (default: the model id, or the one model it serves).", rich_help_panel=_SERVER)] = _D.served_model_name,
    api_key_env: Annotated[Optional[str], typer.Option(help="Environment variable holding the API key (default: OPENAI_API_KEY, then VLLM_API_KEY).", rich_help_panel=_SERVER)] = _D.api_key_env,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.", rich_help_panel=_SERVER)] = _D.concurrency,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one answer.", rich_help_panel=_SERVER)] = _D.request_timeout_s,
    retries: Annotated[int, typer.Option(help="Retries (exponential backoff) on refused, 5xx, timeout or malformed answers.", rich_help_panel=_SERVER)] = _D.max_retries,
    retry_backoff: Annotated[float, typer.Option(help="Seconds before the first retry; doubled for each next one.", rich_help_panel=_SERVER)] = _D.retry_backoff_s,
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality (1-100) of the grids sent to the server.", rich_help_panel=_SERVER)] = _D.jpeg_quality,
    max_model_len: Annotated[Optional[int], typer.Option(rich_help_panel=_ENGINE)] = _D.max_model_len,
    gpu_memory_utilization: Annotated[float, typer.Option(rich_help_panel=_ENGINE)] = _D.gpu_memory_utilization,
    max_num_seqs: Annotated[Optional[int], typer.Option(rich_help_panel=_ENGINE)] = _D.max_num_seqs,
    tensor_parallel_size: Annotated[int, typer.Option(rich_help_panel=_ENGINE)] = _D.tensor_parallel_size,
    kv_cache_gib: Annotated[Optional[float], typer.Option(help="KV cache size in GiB (default on a CPU: 0.25).", rich_help_panel=_ENGINE)] = None,
    dtype: Annotated[str, typer.Option(help="auto, bfloat16, float16 or float32.", rich_help_panel=_ENGINE)] = _D.dtype,
    enforce_eager: Annotated[Optional[bool], typer.Option("--enforce-eager/--no-enforce-eager", help="Run the model eagerly, without CUDA graphs (faster start, slower steps). Default: eager on a CPU only.", rich_help_panel=_ENGINE, show_default=False)] = _D.enforce_eager,
    engine_args: Annotated[Optional[str], typer.Option(metavar="JSON", help=f"Further vllm.LLM arguments as a JSON object, e.g. '{ENGINE_ARGS_EXAMPLE}'; they win over the preset and the options above.", rich_help_panel=_ENGINE, show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Requests handed to the engine at once (also for how often rows are saved).", rich_help_panel=_ENGINE)] = _D.batch_size,
    engine: Annotated[str, typer.Option(help=f"Where the vision-language engines run: {engine_help()}.", rich_help_panel=_RAY)] = _D.engine,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join: 'auto' (the cluster of `ray start` on this node) or an address; default: start a local Ray.", rich_help_panel=_RAY)] = _D.ray_address,
    replicas: Annotated[int, typer.Option(help="Engines (Ray actors), each with --tensor-parallel-size GPUs.", rich_help_panel=_RAY)] = _D.replicas,
    num_cpus: Annotated[float, typer.Option(help="CPUs reserved per replica.", rich_help_panel=_RAY)] = _D.num_cpus,
    num_gpus: Annotated[Optional[float], typer.Option(help="GPUs reserved per replica (default: --tensor-parallel-size on a cluster with GPUs, else 0).", rich_help_panel=_RAY)] = _D.num_gpus,
    device: Annotated[str, typer.Option(help="Where the transformers backend runs: auto, cpu or cuda.")] = _D.device,
    flush_interval: Annotated[float, typer.Option(help="Seconds at most between writes of the captions done (a killed run loses no more).", rich_help_panel=_WRITING)] = _D.flush_interval_s,
    flush_rows: Annotated[int, typer.Option(help="Captions done that are written at once (or after --flush-interval, whichever comes first).", rich_help_panel=_WRITING)] = _D.flush_rows,
    retry_failed: Annotated[bool, typer.Option("--retry-failed/--skip-failed", help="Caption again the grids whose caption failed (the default), or keep those rows failed and count them as failures.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete captions.parquet and caption everything again.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Caption at most this many grids (a smoke run).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Caption every keyframe grid in WORKDIR/keyframes.parquet into WORKDIR/captions.parquet.

    Resumable: rerunning captions only what is missing, failed (unless
    --skip-failed) or was made with another model, prompt or sampling.

    Example:

        mama-augment caption -w mama-work --model llava --num-captions 2

        vllm serve llava-hf/llava-1.5-7b-hf &
        mama-augment caption -w mama-work --endpoint http://127.0.0.1:8000/v1

        mama-augment caption -w mama-work --engine ray --ray-address auto --replicas 8
    """
    if list_models:
        _print_models()
        raise typer.Exit(0)
    # Every option named like a CaptionConfig field is that field; the stage checks them
    # all (CaptionConfig.validate) before any work.
    config = CaptionConfig.from_dict({
        **ctx.params,
        "request_timeout_s": timeout,
        "max_retries": retries,
        "retry_backoff_s": retry_backoff,
        "flush_interval_s": flush_interval,
        "engine_args": call_library(parse_engine_args, engine_args),
        "kv_cache_memory_bytes": call_library(gib_to_bytes, kv_cache_gib, "--kv-cache-gib"),
    })
    from mama_augment.caption.stage import run_caption

    report = call_library(run_caption, config, workdir, progress=progress)
    finish(report)
