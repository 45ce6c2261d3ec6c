"""Caption keyframe grids with a vision-language model (vLLM offline, server, transformers)."""

from mama_augment.caption.config import CaptionConfig
from mama_augment.caption.presets import PRESETS, resolve_model
from mama_augment.caption.stage import run_caption

__all__ = ["CaptionConfig", "PRESETS", "resolve_model", "run_caption"]
