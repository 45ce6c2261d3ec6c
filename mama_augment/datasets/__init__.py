"""Public video-text benchmarks as they are distributed, read without converters.

MSR-VTT, MSVD, DiDeMo, ActivityNet Captions, LSMDC, VATEX, WebVid, CLIP-ViP / MAMA
release files and this project's own captions table: one module per family of formats
(``msrvtt``, ``msvd``, ``paragraph``, ``lsmdc``, ``vatex``, ``webvid``, ``pairs``, and
``lists`` for split lists), a registry of format name -> reader (:data:`FORMATS`),
recognition from content (:func:`detect_format`), several files combined into one table
(:func:`read_annotations`) and video ids matched to ``keyframes.parquet``
(:func:`load_captions`, :mod:`~mama_augment.datasets.ids`). Multiple-choice test files
are read by :mod:`~mama_augment.datasets.choice`; video question answering releases by
:mod:`~mama_augment.datasets.qa`, scored by :mod:`~mama_augment.datasets.qa_eval`.
"""

from mama_augment.datasets.base import PICKLE_HINT, Part, Problems, Source, split_from_name
from mama_augment.datasets.choice import ChoiceItem, read_multiple_choice
from mama_augment.datasets.ids import IdMatch, match_video_ids
from mama_augment.datasets.reader import (
    CaptionSet,
    CaptionSpec,
    captions_by_video,
    combine,
    count_unmatched,
    detect_format,
    load_captions,
    locate_captions,
    no_video_matches,
    parse_formats,
    read_annotations,
    read_file,
)
from mama_augment.datasets.pairs import read_pairs_file
from mama_augment.datasets.registry import FORMATS, Format

__all__ = [
    "FORMATS", "PICKLE_HINT", "CaptionSet", "CaptionSpec", "captions_by_video", "ChoiceItem", "Format", "IdMatch", "Part", "Problems",
    "Source", "combine", "count_unmatched", "detect_format", "load_captions", "locate_captions", "match_video_ids", "no_video_matches",
    "parse_formats", "read_annotations", "read_file", "read_multiple_choice", "read_pairs_file", "split_from_name",
]  # fmt: skip
