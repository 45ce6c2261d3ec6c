"""Every option of ``mama-augment filter``, with its default, in one place.

The defaults were chosen on the planted-problems benchmark (benchmarks/filter.py,
results in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from mama_augment.checks import check_device, check_model_available, check_number, check_numbers
from mama_augment.errors import UsageError

# Neighbours searched per caption, and other videos each caption is compared with: the
# search holds (captions x this) similarities, and more than this many tells nothing more.
MAX_NEIGHBOURS = 1024
MAX_CLIP_OTHERS = 1024
# A z-score threshold beyond this flags every caption or none.
MAX_CLIP_MIN_Z = 100.0


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

    def validate(self) -> None:
        """Every check of the options, before any work (UsageError names the option)."""
        from mama_augment.quality.duplicates import NN_CHOICES

        check_numbers(self)
        for value, option, bounds in [
            (self.min_words, "--min-words", {"minimum": 0}),
            (self.common_word_df, "--common-word-df", {"above": 0, "maximum": 1}),
            (self.phrase_df, "--phrase-df", {"above": 0, "maximum": 1}),
            (self.phrase_min_count, "--phrase-min-count", {"minimum": 1}),
            (self.echo_threshold, "--echo-threshold", {"above": 0, "maximum": 1}),
            (self.duplicate_threshold, "--duplicate-threshold", {"minimum": -1, "maximum": 1}),
            (self.neighbours, "--neighbours", {"minimum": 1, "maximum": MAX_NEIGHBOURS}),
            (self.clip_frames, "--clip-frames", {"minimum": 1}),
            (self.clip_others, "--clip-others", {"minimum": 1, "maximum": MAX_CLIP_OTHERS}),
            (self.clip_min_z, "--clip-min-z", {"minimum": -MAX_CLIP_MIN_Z, "maximum": MAX_CLIP_MIN_Z}),
            (self.clip_batch_size, "clip_batch_size", {"minimum": 1}),
            (self.seed, "seed", {"minimum": 0}),
        ]:
            check_number(value, option, **bounds)
        if self.nn_index not in NN_CHOICES:
            raise UsageError(f"--nn-index must be one of {', '.join(NN_CHOICES)}, not {self.nn_index!r}")
        if not self.text_model.strip():
            raise UsageError("--text-model must not be empty")
        check_device(self.device)
        if self.clip_model is not None:
            check_model_available(self.clip_model, "--clip-model")

    def config_hash(self) -> str:
        identity = {k: v for k, v in asdict(self).items() if k not in ("device", "clip_batch_size")}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return asdict(self)
