"""Turn a model's raw answer into one short caption about *the video*.

The model was shown a grid image, so it tends to talk about "the image", "the
frames" or "the grid" and to open with "The image shows". Captions are training text
for a video model: they should read as a description of the video. The paper's
release replaced "image(s)" by "video" and kept captions short (<= 40 tokens,
regenerating long ones); this does the same with a few more patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mama_augment.errors import ItemError

_MEDIUM = (
    r"(?:images?|pictures?|photos?|photographs?|frames?|grid|collage|video(?:\s+clip)?|clip|"
    r"(?:series|sequence|set|grid|collage|montage|storyboard)\s+of\s+(?:\w+\s+)?(?:images|frames|pictures|photos|shots|scenes))"
)
_VERB = (
    r"(?:shows?|showing|depicts?|depicting|displays?|displaying|captures?|capturing|illustrates?|"
    r"presents?|portrays?|features?|contains?|is\s+showing|appears?\s+to\s+show)"
)

# Leading preambles, tried in order; each removal leaves the description itself.
_PREAMBLES = [
    re.compile(r"^(?:sure|certainly|here(?:'s| is)[^:]*)[.!,:]\s*", re.I),
    re.compile(r"^(?:caption|description|answer)\s*:\s*", re.I),
    re.compile(rf"^(?:the|this|these|in\s+the|in\s+this)\s+{_MEDIUM}\s+{_VERB}(?:\s+(?:that\s+|how\s+)?|\W*$)", re.I),
    re.compile(rf"^(?:in|from|across|throughout)\s+(?:the|this|these)\s+{_MEDIUM}[^,.]{{0,40}},\s*", re.I),
]

# Wording about the grid -> wording about the video (longest phrases first).
_REWRITES = [
    (re.compile(r"\b(?:the|this|these)\s+(?:series|sequence|set|grid|collage|montage|storyboard)\s+of\s+(?:\w+\s+)?(?:images|frames|pictures|photos|shots|scenes)\b", re.I), "the video"),
    (re.compile(r"\ba\s+(?:series|sequence|set|grid|collage|montage|storyboard)\s+of\s+(?:\w+\s+)?(?:images|frames|pictures|photos|shots|scenes)\b", re.I), "a video"),
    (re.compile(r"\b(?:the|this|these)\s+(?:images|pictures|photos|frames|grid|collage|image|picture|photo)\b", re.I), "the video"),
    (re.compile(r"\b(?:images|image)\b", re.I), "video"),
    (re.compile(r"\ban\s+video\b", re.I), "a video"),
    (re.compile(r"\b(the video)(?:\s+the video)+\b", re.I), r"\1"),
    (re.compile(r"\b(the video)\s+(?:are|were)\b", re.I), r"\1 is"),
]

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_TRAILING_JUNK = re.compile(r"[\s,;:\-–—]+$|\s+(?:and|or|but|with|while|as|the|a|an|of|to|in|on)$", re.I)


@dataclass(frozen=True)
class CleanCaption:
    text: str
    words: int
    too_long: bool  # the cleaned text had more than max_words words before truncation


def _match_case(source: str, target: str) -> str:
    return target[:1].upper() + target[1:] if source[:1].isupper() else target


def normalise(raw: str) -> str:
    """Trim, collapse whitespace, drop preambles, speak of the video."""
    # Control characters and replacement marks are never caption text.
    raw = "".join(ch for ch in raw if (ch.isprintable() or ch.isspace()) and ch != "\ufffd")
    text = " ".join(raw.replace("\u00a0", " ").split())
    text = text.strip(" \"'`*")
    for _ in range(3):  # "Sure! The image shows ..." needs two passes
        before = text
        for pattern in _PREAMBLES:
            text = pattern.sub("", text, count=1).lstrip()
        if text == before:
            break
    for pattern, replacement in _REWRITES:
        text = pattern.sub(lambda m, r=replacement: _match_case(m.group(0), m.expand(r)), text)
    text = text.strip(" \"'`*")
    if text:
        text = text[0].upper() + text[1:]
    return text


def truncate_words(text: str, max_words: int) -> str:
    """At most ``max_words`` words, cut at the last sentence end when there is one."""
    words = text.split()
    if len(words) <= max_words:
        return text
    head = " ".join(words[:max_words])
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    # Keep a whole sentence if it is not absurdly short; else cut at a word boundary.
    if ends and len(head[: ends[-1]].split()) >= min(5, max_words):
        return head[: ends[-1]]
    for _ in range(4):
        trimmed = _TRAILING_JUNK.sub("", head)
        if trimmed == head:
            break
        head = trimmed
    return head.rstrip(" ,;:") + "."


def clean_caption(raw: str | None, max_words: int) -> CleanCaption:
    """The finished caption; raises ``ItemError('empty_output')`` when nothing is left."""
    text = normalise(raw or "")
    if not any(ch.isalnum() for ch in text):
        raise ItemError("empty_output", f"the model returned no caption text (raw: {raw!r:.80})")
    words = len(text.split())
    too_long = words > max_words
    if too_long:
        text = truncate_words(text, max_words)
        words = len(text.split())
    if text[-1] not in ".!?":
        text += "."
    return CleanCaption(text=text, words=words, too_long=too_long)
