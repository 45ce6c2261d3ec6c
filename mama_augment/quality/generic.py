"""Generic captions: what is left after stop words, vague words and filler phrases.

A caption is *generic* when it says almost nothing that would tell its video apart:
"The video shows a person doing something in a dynamic and engaging manner." The
check counts its *informative* words, the words that are none of

* stop words;
* words that only carry the description ("video", "shows", "depicts");
* vague words, a small seed list ("something", "various", "scene", "engaging"...);
* words of the dataset so common they tell nothing (in at least ``common_word_df`` of
  the captions, e.g. "video" and "shows" in vision-language model output);
* words inside a *filler phrase*: a seed phrase, or a word 2- to 4-gram holding a
  filler word (the tone of model padding: "engaging", "sense", "various") that is
  frequent across the dataset (in at least ``phrase_df`` of the
  captions and ``phrase_min_count`` of them). This is measured on the data, so the
  filler a given model repeats ("creating a sense of wonder") is found even when only
  one of its words is in the seed list.

Frequencies are document frequencies over *distinct* captions: every group of
near-duplicates counts once, so one caption copied across many videos does not make
its own words "frequent". A caption is generic when it has at most one informative
word ("A man is doing something.", "The video shows an activity from start to finish.").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

STOP_WORDS = frozenset(
    """a an the and or but if then than so as of at by for with without about against between into through
    during before after above below to from up down in out on off over under again further once here there
    when where why how all any both each few more most other some such no nor not only own same too very
    can will just should now is are was were be been being have has had having do does did doing it its
    it's itself they them their theirs themselves he him his himself she her hers herself we us our ours
    you your yours i me my this that these those who whom which what while also still yet one another
    appears appear seems seem likely possibly perhaps probably may might could would throughout within
    quite rather really just""".split()
)

# Words that carry a description without adding to it: the picture and the verb that
# presents it ("the video shows ..."). Never informative, never vague.
CARRIER_WORDS = frozenset(
    """video videos clip clips footage image images picture pictures frame frames show shows showing shown
    showcase showcases showcasing depict depicts depicting display displays displaying feature features
    featuring capture captures capturing captured highlight highlights highlighting present presents
    presenting illustrate illustrates see sees seen watch watches watching look looks looking observe
    observed offer offers offering provide provides providing""".split()
)

# The seed list: words that describe no particular video. Filler words carry the tone
# of vision-language model padding; only they make a frequent phrase a filler phrase
# (an abstract word such as "busy" or "changes" is too common in real descriptions:
# "at a busy airport" is not filler).
FILLER_WORDS = frozenset(
    """something someone somebody somewhere anything everything thing things stuff individual individuals
    various variety several many multiple different numerous certain some kind type sort lot lots
    activity activities action actions event events moment moments situation content elements element
    setting environment atmosphere mood vibe ambiance ambience style manner way nature overall general
    dynamic engaging interesting beautiful captivating vibrant lively visually visual visuals stunning
    amazing impressive fascinating remarkable wonderful nice good great intriguing compelling
    essence glimpse sense feeling experience story journey world life viewer viewers audience
    happening happens happen occurring occurs taking place going doing engaged involved performing
    creating creates create""".split()
)
ABSTRACT_WORDS = frozenset(
    """view views scenery scene scenes shot shots unclear unknown unidentified sequence series
    nothing much ordinary typical usual everyday daily routine common regular normal example situations
    task tasks area places time times day period movement movements motion progress progression develops
    unfolds unfold changes change start finish beginning end fun pleasant calm peaceful busy short long
    number amount contains contain includes include object objects item items appearance subject subjects
    figure figures surroundings background foreground details detail aspects aspect whatever anyone
    everyone nobody interaction interactions""".split()
)
VAGUE_WORDS = FILLER_WORDS | ABSTRACT_WORDS

# Seed filler phrases (lower-case word sequences); every word inside one is uninformative.
SEED_PHRASES = tuple(
    tuple(p.split())
    for p in (
        "dynamic and engaging", "engaging manner", "captures the essence", "a glimpse into", "a sense of",
        "it is unclear", "it is not clear", "cannot be determined", "difficult to determine",
        "hard to tell", "a series of", "taking place", "going on", "in the background",
    )
)

_UNINFORMATIVE = STOP_WORDS | CARRIER_WORDS | VAGUE_WORDS


@dataclass(frozen=True)
class GenericResult:
    informative: int
    vague: int
    phrases: tuple[str, ...]  # filler phrases found (seed or measured)

    @property
    def generic(self) -> bool:
        return self.informative <= 1


class GenericModel:
    """Word and phrase frequencies of a dataset, fitted once, then applied per caption."""

    def __init__(self, common_word_df: float = 0.25, phrase_df: float = 0.005, phrase_min_count: int = 5,
                 min_documents: int = 20):
        self.common_word_df = common_word_df
        self.phrase_df = phrase_df
        self.phrase_min_count = phrase_min_count
        self.min_documents = min_documents
        self.common_words: frozenset[str] = frozenset()
        self.phrases: set[tuple[str, ...]] = set(SEED_PHRASES)
        self.measured_phrases: dict[tuple[str, ...], int] = {}
        self.documents = 0

    def fit(self, documents: Iterable[Sequence[str]], documents_count: int | None = None) -> "GenericModel":
        """``documents``: the word lists of distinct captions (one per near-duplicate group),
        a sequence or, with ``documents_count`` (how many it yields), a stream."""
        self.documents = len(documents) if documents_count is None else documents_count
        if self.documents < self.min_documents:
            return self  # too few captions to measure anything: the seed lists alone
        word_df: Counter = Counter()
        phrase_df: Counter = Counter()
        for words in documents:
            word_df.update(set(words))
            grams = set()
            for n in (2, 3, 4):
                for i in range(len(words) - n + 1):
                    gram = tuple(words[i : i + n])
                    if any(w in FILLER_WORDS for w in gram) and not all(w in _UNINFORMATIVE for w in gram):
                        grams.add(gram)
            phrase_df.update(grams)
        word_floor = self.common_word_df * self.documents
        self.common_words = frozenset(w for w, count in word_df.items() if count >= word_floor and w not in STOP_WORDS)
        phrase_floor = max(self.phrase_min_count, self.phrase_df * self.documents)
        self.measured_phrases = {g: c for g, c in phrase_df.items() if c >= phrase_floor}
        self.phrases = set(SEED_PHRASES) | set(self.measured_phrases)
        return self

    def check(self, words: Sequence[str]) -> GenericResult:
        covered = [False] * len(words)
        found = []
        for n in (2, 3, 4):
            for i in range(len(words) - n + 1):
                gram = tuple(words[i : i + n])
                if gram in self.phrases:
                    for j in range(i, i + n):
                        covered[j] = True
                    found.append(" ".join(gram))
        informative = vague = 0
        for word, inside in zip(words, covered):
            if word in VAGUE_WORDS:
                vague += 1
            elif inside or word in _UNINFORMATIVE or word in self.common_words or len(word) < 2:
                continue
            else:
                informative += 1
        return GenericResult(informative=informative, vague=vague, phrases=tuple(dict.fromkeys(found)))
