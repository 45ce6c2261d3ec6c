"""Which retrieval protocol a test set calls for, decided from its files alone.

Kept apart from :mod:`mama_augment.train.protocols` (which scores similarity matrices
with torch) so that ``datasets check`` and the other readers of annotation files choose
a protocol without importing torch.
"""

from __future__ import annotations

import numpy as np

PROTOCOLS = ("one-caption", "multi-sentence", "paragraph")
PROTOCOL_TITLES = {
    "one-caption": "one caption per video",
    "multi-sentence": "multi-sentence: every caption is a query; video->text hit when any own caption is within K",
    "paragraph": "paragraph-to-video: each video's sentences joined in time order",
}


def choose_protocol(caption_video, paragraph: bool) -> str:
    """``auto``: paragraph files -> paragraph; one caption per video -> one-caption;
    else multi-sentence."""
    if paragraph:
        return "paragraph"
    counts = np.bincount(np.asarray(caption_video)) if len(caption_video) else np.zeros(0)
    return "one-caption" if counts.size and counts.max() <= 1 else "multi-sentence"
