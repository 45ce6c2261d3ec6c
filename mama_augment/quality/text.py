"""Text checks of one caption: length, truncation, echoes of the prompt.

Pure functions over strings; dataset-wide measures live in ``generic`` and
``duplicates``.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from mama_augment.caption.postprocess import normalise

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
SENTENCE_END = ".!?…"
_CLOSERS = "\"'”’)]"

# Words no caption should end on: an answer that stops on one was cut off.
DANGLING = frozenset(
    "a an the and or but with of to in on at by for from into onto while as is are was were be been being "
    "that which who whose where when his her their its our your my this these those some very then because "
    "although whether than including such".split()
)

# Words for the picture the model was shown; an echo of the prompt may use any of them.
_MEDIUM = frozenset("video videos image images picture pictures photo photos frame frames grid collage clip footage".split())

# First words of an instruction rather than a description.
_INSTRUCTION_VERBS = frozenset(
    "describe write provide generate caption summarize summarise explain list give create produce tell".split()
)
_INSTRUCTION_OBJECTS = frozenset("video image caption sentence description grid frames frame picture".split())


def tokens(text: str | None) -> list[str]:
    """Lower-case words (letters and digits, with an apostrophe suffix such as ``'s``)."""
    return _WORD.findall((text or "").lower())


def is_truncated(caption: str, raw_output: str | None, completion_tokens: int | None, max_tokens: int | None) -> bool:
    """Whether the caption stops mid-sentence.

    Two ways it happens: the model hit its token limit (or stopped on a word no
    sentence ends with), or the caption stage cut a long answer at a word instead of
    a sentence end (the cut text then gets a full stop it never had).
    """
    body = caption.strip()
    if not body:
        return False
    if raw_output and raw_output.strip():
        raw = normalise(raw_output)
        if raw:
            raw_words, body_words = tokens(raw), tokens(body)
            if len(body_words) < len(raw_words):
                # Cut by the stage: fine only when the kept part ends where a sentence ended.
                stem = body.rstrip(SENTENCE_END + _CLOSERS)
                at = raw.find(stem)
                if at >= 0:
                    rest = raw[at + len(stem):].lstrip(_CLOSERS)
                    return not rest[:1] or rest[0] not in SENTENCE_END
                return True
            ended = raw.rstrip(_CLOSERS)[-1:] in tuple(SENTENCE_END)
            if ended:
                return False
            hit_limit = bool(max_tokens) and completion_tokens is not None and completion_tokens >= max_tokens
            return hit_limit or (bool(raw_words) and raw_words[-1] in DANGLING)
    words = tokens(body)
    return bool(words) and words[-1] in DANGLING


def _canonical(words: Iterable[str]) -> list[str]:
    return ["video" if w in _MEDIUM else w for w in words]


def shingles(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


class PromptEcho:
    """How much of a caption repeats a prompt: the share of its words inside word
    ``n``-grams (``n`` = 4) that also occur in the prompt, picture words (image, frames,
    grid...) counted as one word since the caption stage rewrites them as "video".
    """

    def __init__(self, n: int = 4):
        self.n = n
        self._cache: dict[str, set] = {}

    def prompt_shingles(self, prompt_text: str) -> set:
        cached = self._cache.get(prompt_text)
        if cached is None:
            cached = shingles(_canonical(tokens(prompt_text)), self.n)
            self._cache[prompt_text] = cached
        return cached

    def overlap(self, caption_words: Sequence[str], prompt_texts: Iterable[str]) -> float:
        words = _canonical(caption_words)
        if len(words) < self.n:
            return 0.0
        best = 0.0
        for text in prompt_texts:
            grams = self.prompt_shingles(text)
            covered = [False] * len(words)
            for i in range(len(words) - self.n + 1):
                if tuple(words[i : i + self.n]) in grams:
                    for j in range(i, i + self.n):
                        covered[j] = True
            best = max(best, sum(covered) / len(words))
        return best


def looks_like_instruction(caption_words: Sequence[str]) -> bool:
    """An answer that is itself a request ("Describe the video in one sentence.")."""
    words = list(caption_words)
    if words[:1] == ["please"]:
        words = words[1:]
    if words[:3] in (["in", "one", "sentence"], ["in", "a", "sentence"]):
        return True
    return bool(words) and words[0] in _INSTRUCTION_VERBS and any(w in _INSTRUCTION_OBJECTS for w in words[1:8])
