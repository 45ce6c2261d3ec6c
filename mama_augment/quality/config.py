"""Every option of ``mama-augment filter``, with its default, in one place.

The defaults were chosen on the planted-problems benchmark (benchmarks/filter.py,
results in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass
class FilterConfig:
    # too_short
    min_words: int = 3
    # generic
    common_word_df: float = 0.25  # words in at least this share of distinct captions tell nothing
    phrase_df: float = 0.005  # filler phrases: in at least this share of distinct captions ...
    phrase_min_count: int = 5  # ... and at least this many
    # prompt_echo
    echo_threshold: float = 0.5  # share of the caption's words in 4-grams of the prompt
    prompts: tuple[str, ...] = ()  # extra prompt names or files to compare with
    # near_duplicate
    duplicate_threshold: float = 0.95  # cosine similarity of the caption embeddings
    neighbours: int = 10
    nn_index: str = "auto"  # auto | exact | ivf | hnsw
    text_model: str = "all-MiniLM-L6-v2"  # a train --text-model: all-MiniLM-L6-v2, hashing, or a folder
    # clip_mismatch (only with a model)
    clip_model: str | None = None
    clip_frames: int = 4  # keyframes per video embedded (evenly spread), averaged
    clip_others: int = 64  # other videos each caption is compared with
    clip_min_z: float = 1.0  # flag when the own video is less than this many std above the others
    clip_batch_size: int = 32
    device: str = "auto"
    seed: int = 0

    def config_hash(self) -> str:
        identity = {k: v for k, v in asdict(self).items() if k not in ("device", "clip_batch_size")}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return asdict(self)
