"""Vision-language model presets: name -> pure builder of engine arguments + request.

Every backend talks to a model through OpenAI-style chat messages (one user turn with
an image part and a text part) and lets the model's own chat template place the image
token, so any Hugging Face id or local folder with a chat template works without a
preset. A preset only pins the checkpoint and the engine arguments that make it run
well (context length, images per prompt, processor options), as vLLM's own
``examples/offline_inference/vision_language.py`` does. To add a model, add one
builder to ``PRESETS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable


@dataclass(frozen=True)
class ModelSpec:
    """What a backend needs to know about a model."""

    model: str  # Hugging Face id or local folder
    preset: str | None = None  # registry name, None for a generic model
    engine_args: dict = field(default_factory=dict)  # vllm.LLM keyword arguments
    image_first: bool = True  # image part before the text part in the user turn
    system_prompt: str | None = None
    # LLaVA-1.5's processor centre-crops to a square, which would cut the first and
    # last columns off a wide grid; the original LLaVA pads to a square instead.
    pad_to_square: bool = False
    # The square side the model's processor resizes every image to, when fixed: JPEG
    # grids are then decoded no larger than that (DCT scaling, much cheaper).
    image_side: int | None = None
    description: str = ""

    def messages(self, prompt: str, image_part: dict) -> list[dict]:
        """Chat messages for one grid; ``image_part`` is an OpenAI content part."""
        text_part = {"type": "text", "text": prompt}
        content = [image_part, text_part] if self.image_first else [text_part, image_part]
        messages = [{"role": "user", "content": content}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages


def llava(model: str = "llava-hf/llava-1.5-7b-hf") -> ModelSpec:
    return ModelSpec(
        model=model,
        preset="llava",
        engine_args={"max_model_len": 4096, "limit_mm_per_prompt": {"image": 1}},
        pad_to_square=True,
        image_side=336,
        description="LLaVA-1.5-7B, the paper's captioner (336 px, 576 image tokens)",
    )


def llava_next(model: str = "llava-hf/llava-v1.6-mistral-7b-hf") -> ModelSpec:
    return ModelSpec(
        model=model,
        preset="llava-next",
        engine_args={"max_model_len": 8192, "limit_mm_per_prompt": {"image": 1}},
        description="LLaVA-NeXT (1.6) Mistral-7B, any-resolution tiles: sharper grids",
    )


def _qwen2_5_vl(model: str, preset: str, description: str) -> ModelSpec:
    return ModelSpec(
        model=model,
        preset=preset,
        engine_args={
            "max_model_len": 8192,
            "limit_mm_per_prompt": {"image": 1},
            # Cap the native-resolution tokens of a large grid (28 px per token).
            "mm_processor_kwargs": {"min_pixels": 28 * 28, "max_pixels": 1280 * 28 * 28},
        },
        description=description,
    )


def qwen2_5_vl(model: str = "Qwen/Qwen2.5-VL-7B-Instruct") -> ModelSpec:
    return _qwen2_5_vl(model, "qwen2.5-vl", "Qwen2.5-VL-7B-Instruct, native resolution")


def qwen2_5_vl_3b(model: str = "Qwen/Qwen2.5-VL-3B-Instruct") -> ModelSpec:
    return _qwen2_5_vl(model, "qwen2.5-vl-3b", "Qwen2.5-VL-3B-Instruct, fits a 24 GB GPU easily")


def generic(model: str) -> ModelSpec:
    """Any other checkpoint: its chat template does the work, vLLM picks the rest."""
    return ModelSpec(model=model, preset=None, engine_args={"limit_mm_per_prompt": {"image": 1}})


def refine_for_config(spec: ModelSpec, hf_config) -> ModelSpec:
    """Once a backend has loaded a generic checkpoint's config: a LLaVA-1.5-style model
    (fixed-size CLIP input, centre crop) is treated like the ``llava`` preset."""
    if spec.preset is not None or getattr(hf_config, "model_type", None) != "llava":
        return spec
    side = getattr(getattr(hf_config, "vision_config", None), "image_size", None)
    return replace(spec, pad_to_square=True, image_side=side if isinstance(side, int) else None)


PRESETS: dict[str, Callable[..., ModelSpec]] = {
    "llava": llava,
    "llava-next": llava_next,
    "qwen2.5-vl": qwen2_5_vl,
    "qwen2.5-vl-3b": qwen2_5_vl_3b,
}


def resolve_model(name: str) -> ModelSpec:
    """A preset name, or any Hugging Face id / local folder."""
    if name in PRESETS:
        return PRESETS[name]()
    return generic(name)


def list_presets() -> list[tuple[str, str, str]]:
    """(name, checkpoint, description) of every preset, for ``--list-models``."""
    rows = []
    for name, builder in PRESETS.items():
        spec = builder()
        rows.append((name, spec.model, spec.description))
    return rows
