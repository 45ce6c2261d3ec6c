"""Quality flags of generated captions (``mama-augment filter``).

Each flag is a column of ``caption_flags.parquet`` and a name in its ``flags`` list;
rows are never deleted, exports drop flagged captions on request (``--drop-flags``).

* ``too_short``     fewer than ``--min-words`` words (an empty answer has 0)
* ``truncated``     the answer stopped mid-sentence (token limit, or cut at a word)
* ``generic``       too few informative words: what is left after stop words, vague
                    words and phrases frequent across the dataset (measured)
* ``prompt_echo``   repeats the prompt, or reads as an instruction itself
* ``near_duplicate`` the same or nearly the same caption as another video's
* ``clip_mismatch`` a CLIP model finds the caption no closer to its video's frames than
                    to other videos' (only with ``--clip-model``)

Importing this package is cheap; the checks live in submodules.
"""

from __future__ import annotations

FLAG_NAMES = ("too_short", "truncated", "generic", "prompt_echo", "near_duplicate", "clip_mismatch")

__all__ = ["FLAG_NAMES"]
