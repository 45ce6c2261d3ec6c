"""Caption with plain Hugging Face ``generate``, one grid at a time.

For machines without vLLM; slow (no batching, no paged KV cache), but it needs only
transformers and gives the same rows.
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

from mama_augment.caption.backends.base import (
    CaptionBackend,
    CaptionRequest,
    Generation,
    Sampling,
    load_grid,
)
from mama_augment.caption.presets import ModelSpec, refine_for_config
from mama_augment.errors import MamaError


class TransformersBackend(CaptionBackend):
    name = "transformers"

    def __init__(self, spec: ModelSpec, sampling: Sampling, device: str = "auto", dtype: str = "auto"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.spec = spec
        self.sampling = sampling
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(spec.model)
            self.model = AutoModelForImageTextToText.from_pretrained(spec.model, dtype=torch_dtype).to(device).eval()
        except (OSError, ValueError) as exc:
            raise MamaError(f"transformers could not load {spec.model}: {exc}") from exc
        self.spec = refine_for_config(spec, self.model.config)

    def _one(self, request: CaptionRequest) -> Generation:
        torch = self.torch
        try:
            image = load_grid(request.grid_path, square=self.spec.pad_to_square, min_side=self.spec.image_side)
        except OSError as exc:
            return Generation(error_kind="unreadable_grid", error=f"{request.grid_path}: {exc}")
        start = time.perf_counter()
        try:
            messages = self.spec.messages(request.prompt, {"type": "image"})
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = self.processor(text=text, images=image, return_tensors="pt").to(self.device)
            if "pixel_values" in inputs and self.model.dtype != inputs["pixel_values"].dtype:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            generator_kwargs = {"max_new_tokens": self.sampling.max_tokens}
            if self.sampling.temperature > 0:
                generator_kwargs.update(do_sample=True, temperature=self.sampling.temperature, top_p=self.sampling.top_p)
            else:
                generator_kwargs.update(do_sample=False)
            if self.sampling.ignore_eos:
                generator_kwargs["min_new_tokens"] = self.sampling.max_tokens
            torch.manual_seed(request.seed)
            with torch.inference_mode():
                output = self.model.generate(**inputs, **generator_kwargs)
            prompt_length = inputs["input_ids"].shape[1]
            new_tokens = output[0, prompt_length:]
            caption = self.processor.decode(new_tokens, skip_special_tokens=True)
        except Exception as exc:  # noqa: BLE001 - one bad grid is a row, not a crash
            return Generation(error_kind="engine_error", error=f"{type(exc).__name__}: {exc}")
        return Generation(
            text=caption,
            prompt_tokens=int(prompt_length),
            completion_tokens=int(new_tokens.shape[0]),
            latency_s=time.perf_counter() - start,
        )

    def generate(self, requests: Sequence[CaptionRequest]) -> Iterator[tuple[CaptionRequest, Generation]]:
        for request in requests:
            yield request, self._one(request)

    def close(self) -> None:
        self.model = None
