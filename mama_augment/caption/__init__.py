"""Caption keyframe grids with a vision-language model (vLLM offline, server, transformers).

``stage.run_caption`` is the stage; ``generate`` the per-request logic; ``backends``,
``presets`` and ``prompts`` the registries it draws on.
"""

from mama_augment.caption.config import CaptionConfig
from mama_augment.caption.presets import PRESETS, resolve_model

__all__ = ["CaptionConfig", "PRESETS", "resolve_model"]
