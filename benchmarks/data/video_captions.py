"""Realistic video captions, and the problems ``mama-augment filter`` must find planted among them.

No captioned video set can be downloaded here, so captions are composed the way a
vision-language model describes a keyframe grid: a specific subject, an action with
its object, a place and often a second clause, in a dozen sentence shapes ("The video
shows ...", "In the video, ..."). 60 subjects x 60 actions x 40 places x 24 clauses x
12 shapes: captions of one dataset share words, phrases and sentence shapes the way
real ones do, while telling their videos apart.

Planted problems (``plant``), each a share of the videos:

* ``empty``: "", whitespace or punctuation only;
* ``generic``: vague filler composed from parts ("The clip captures someone engaged
  in an activity, creating a lively atmosphere.");
* ``echo``: the prompt (as rendered for a 3x4 grid, after the caption stage's
  rewording of "image" as "video"), one of its sentences, or its instruction;
* ``exact``: another video's caption copied;
* ``near``: another video's caption with a small edit: case, punctuation, an article,
  a synonym, a tense, a prefix.
"""

from __future__ import annotations

import random
import re

SUBJECTS = """a young man in a blue hoodie|an elderly woman with grey hair|two small children|a golden retriever|
a chef in a white apron|a group of cyclists|a street musician|a black cat|a toddler in a yellow raincoat|
a construction worker in an orange vest|a surfer in a wetsuit|a ballet dancer|a mechanic|a farmer in overalls|
a teenage girl|a police officer|a barista|a pair of hikers|a skateboarder|a fisherman|a news anchor|a gymnast|
a beekeeper|a potter|a tattoo artist|a crowd of football fans|a brown horse|a flock of seagulls|a delivery driver|
a yoga instructor|a violinist|a youth soccer team|a scientist in a lab coat|a grandmother|a bride and groom|
a firefighter|a gardener|a baby|a tabby kitten|a pair of tango dancers|a boxer|a rock climber|a tour guide|
a street painter|a carpenter|a nurse in scrubs|a university student|a magician|a travel vlogger|a lifeguard|
a baker|a dog walker with three dogs|a tailor|a welder|an astronaut in training|a jazz drummer|a ski instructor|
a street vendor|a marathon runner|a photographer""".replace("\n", "").split("|")

ACTIONS = """chops carrots on a wooden cutting board|rides a bicycle down a steep hill|plays an acoustic guitar|
throws a frisbee across the lawn|kneads dough for fresh bread|paints a mural on a brick wall|
repairs the engine of an old truck|feeds ducks at the edge of the water|practices a handstand|
pours latte art into a ceramic cup|carves a large pumpkin|ties a fishing lure|reads a picture book aloud|
assembles a wooden bookshelf|washes a muddy dog|jumps over hurdles|folds a pile of laundry|
decorates a birthday cake with icing|shovels snow from a driveway|rides a large wave|shapes clay on a pottery wheel|
juggles three red balls|applies makeup in front of a mirror|builds a sandcastle|waters rows of tomato plants|
lifts a heavy barbell|serves a tennis ball|climbs a rock face with a rope|plants tulip bulbs|walks along a slackline|
skates across a frozen pond|grills sausages on a barbecue|sews a button onto a shirt|welds two steel beams|
flies a red kite|sweeps fallen leaves|changes a flat tyre|rolls sushi|sharpens a kitchen knife|
stacks firewood|brushes a horse's mane|kicks a ball into a goal|dives into a swimming pool|
plays chess with an old friend|tunes a piano|hangs laundry on a line|loads boxes into a van|
films a sunset with a phone|pets a sleeping dog|cleans a large window|does push-ups|sprays water on a fire|
draws a portrait with charcoal|mixes paint on a palette|harvests ripe apples|opens a present|
blows out candles on a cake|packs a suitcase|fixes a leaking pipe|braids a child's hair""".replace("\n", "").split("|")

PLACES = """in a sunlit kitchen|on a busy city street|on a beach at sunset|in a crowded gym|in a quiet library|
on a snowy mountain trail|inside a small workshop|at an outdoor market|in a backyard garden|on a theater stage|
beside a calm lake|in a dimly lit garage|in a hospital corridor|on a rooftop terrace|in a school classroom|
at a train station|in a wheat field|inside a cosy living room|at a skate park|on a fishing pier|
in a recording studio|on a football pitch|in a pine forest|at a busy airport|in a laundromat|on a farm|
in a narrow alley|beside a highway|in a bakery|at a wedding reception|in a boxing ring|on a sailboat|
in a greenhouse|at a night market|in a museum hall|on a frozen lake|in a barn|on a balcony|in a subway car|
at a campsite""".replace("\n", "").split("|")

CLAUSES = """while talking to the camera|as the sun sets behind them|while a dog watches nearby|before waving goodbye|
and then takes a short break|while rain falls outside|as people walk past|while wearing headphones|
and smiles at the end|while a friend films|as music plays|before packing up the tools|while laughing|
and then checks the result|as snow begins to fall|while explaining each step|as the crowd cheers|
while a child helps|and then bows|as steam rises|while birds fly overhead|before turning off the lights|
while counting out loud|as cars pass by""".replace("\n", "").split("|")

SHAPES = [
    "{S} {a} {p}.",
    "{S} {a} {p} {c}.",
    "The video shows {s} who {a} {p}.",
    "The video shows {s} who {a} {p} {c}.",
    "In the video, {s} {a} {p}.",
    "In the video, {s} {a} {p} {c}.",
    "{P}, {s} {a}.",
    "{P}, {s} {a} {c}.",
    "A close-up of {s} who {a} {p}.",
    "The clip shows {s} who {a} {p}, {c}.",
    "{S} {a}, {p}.",
    "Footage of {s} who {a} {p}.",
]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def realistic_caption(rng: random.Random) -> str:
    s, a, p, c = (rng.choice(SUBJECTS).strip(), rng.choice(ACTIONS).strip(), rng.choice(PLACES).strip(),
                  rng.choice(CLAUSES).strip())
    return rng.choice(SHAPES).format(S=_cap(s), s=s, a=a, p=p, P=_cap(p), c=c)


GENERIC_OPENERS = ["The video shows", "This video features", "The clip captures", "In this video, we see",
                   "The footage depicts", "The video captures", "We can see", "This clip shows"]
GENERIC_CORES = ["a person doing something", "someone engaged in an activity", "various activities taking place",
                 "a scene with different elements", "people doing various things", "a moment of everyday life",
                 "an interesting event happening", "a series of actions", "something happening",
                 "a variety of scenes", "an individual performing some actions", "several things going on",
                 "a beautiful scene", "a dynamic sequence of events", "different moments"]
GENERIC_TAILS = [" in a dynamic and engaging manner.", ".", ", creating a lively atmosphere.",
                 ", capturing the essence of the moment.", " in a visually appealing way.",
                 ", which is quite interesting to watch.", " with a vibrant mood.", ", offering a glimpse into life.",
                 " throughout the video.", ", showcasing the overall atmosphere."]

EMPTY = ["", " ", ".", "...", "-", "  .  "]

# Written apart from the lists above and never used to tune the filter: how well the
# generic check carries over to filler it was not shaped on.
HELD_OUT_GENERIC = [
    "A person is seen in the video.", "There is a lot going on in this video.", "The video is about a daily routine.",
    "Someone does something interesting.", "An ordinary day unfolds on screen.",
    "Different people appear at different times.", "The scene changes several times.",
    "A short video with some movement.", "This is a video of an event.", "Various objects and people can be seen.",
    "The camera shows what is happening.", "Things happen one after another.", "A typical scene from everyday life.",
    "It looks like a fun time.", "The video contains a number of frames showing an activity.",
    "People are doing their thing.", "A video showing a place and some people.",
    "The video presents a situation that develops over time.", "Nothing much happens in the video.",
    "A nice video to watch.", "The moment is captured beautifully.", "An event takes place somewhere.",
    "Someone is busy with a task.", "The video shows an activity from start to finish.",
    "A sequence of shots shows a story.", "The images show a progression of events.",
    "Someone moves around the area.", "The atmosphere is calm and pleasant.",
    "Here we see an example of a common activity.", "A clip of someone doing an activity outdoors.",
]
# A second set, written after the vague-word list was revised on the first one, and
# never looked at while tuning: the honest measure of how the check carries over.
HELD_OUT_GENERIC_2 = [
    "The video offers an overview of the situation.", "A group of individuals interact with each other.",
    "It is a very engaging piece of content.", "The footage appears to be from a vlog.",
    "The person in the video is doing some work.", "We observe a series of events in this clip.",
    "The video features a setting with a lot of detail.", "A slice of life captured on camera.",
    "This clip showcases an activity in progress.", "Someone performs a simple action several times.",
    "The video gives a sense of the environment.", "An individual is engaged in a task.",
    "The visuals are bright and colourful.", "The video depicts an everyday situation.",
    "Several people are present in the scene.", "It appears to be a normal day.",
    "The clip is short and shows a few moments.", "The video highlights a particular moment.",
    "There are some things happening here.", "A video that tells a short story.",
    "The scene is set in a certain location.", "The subject performs a series of movements.",
    "This video shows the process from beginning to end.", "An interesting clip with a lot of action.",
    "The video captures the mood of the day.", "Someone is doing something in a room.",
    "A montage of various clips.", "The video records a specific event.",
    "The frames show the same place over time.", "The content of the video is hard to describe.",
]


def generic_caption(rng: random.Random) -> str:
    return f"{rng.choice(GENERIC_OPENERS)} {rng.choice(GENERIC_CORES)}{rng.choice(GENERIC_TAILS)}"


def echo_caption(rng: random.Random, prompt_text: str) -> str:
    from mama_augment.caption.postprocess import normalise

    sentences = [s.strip() for s in re.split(r"(?<=[.:])\s+", prompt_text) if s.strip()]
    choice = rng.random()
    if choice < 0.4:
        text = prompt_text
    elif choice < 0.7:
        text = sentences[-1]
    else:
        text = sentences[0]
    return normalise(text)  # what the caption stage would have kept


_SYNONYMS = {"shows": "depicts", "small": "little", "large": "big", "quiet": "silent", "busy": "crowded",
             "young": "youthful", "old": "aged", "fresh": "new", "calm": "still", "walks": "strolls"}
_TENSES = {"chops": "is chopping", "rides": "is riding", "plays": "is playing", "throws": "is throwing",
           "paints": "is painting", "repairs": "is repairing", "feeds": "is feeding", "reads": "is reading",
           "washes": "is washing", "builds": "is building", "plants": "is planting", "grills": "is grilling"}


def near_copy(rng: random.Random, text: str) -> str:
    """A small edit that leaves the caption saying the same thing."""
    edits = ["case", "punct", "article", "synonym", "tense", "prefix"]
    rng.shuffle(edits)
    for edit in edits:
        edited = text
        if edit == "case":
            edited = text.lower() if rng.random() < 0.5 else text.upper()
        elif edit == "punct":
            edited = text.rstrip(".") + ("!" if rng.random() < 0.5 else "") if text.endswith(".") else text + "."
            edited = edited.replace(",", "")
        elif edit == "article":
            edited = re.sub(r"\ba\b", "the", text, count=1) if " a " in text else re.sub(r"\bthe\b", "a", text, count=1)
        elif edit == "synonym":
            words = [w for w in _SYNONYMS if re.search(rf"\b{w}\b", text)]
            if words:
                w = rng.choice(words)
                edited = re.sub(rf"\b{w}\b", _SYNONYMS[w], text, count=1)
        elif edit == "tense":
            words = [w for w in _TENSES if re.search(rf"\b{w}\b", text)]
            if words:
                w = rng.choice(words)
                edited = re.sub(rf"\b{w}\b", _TENSES[w], text, count=1)
        elif edit == "prefix":
            edited = "In this clip, " + text[:1].lower() + text[1:]
        if edited != text:
            return edited
    return text + " "


def plant(num_videos: int, prompt_text: str, share: float = 0.02, seed: int = 0):
    """Captions of ``num_videos`` videos with ``share`` of each planted problem.

    Returns ``(captions, truth)``: ``truth[kind]`` is the set of video positions of
    that kind; ``duplicate`` holds the copies *and* the videos they copy (a
    near-duplicate is a relation between videos), ``copies`` the copies alone.
    """
    rng = random.Random(seed)
    captions, seen = [], set()
    while len(captions) < num_videos:
        text = realistic_caption(rng)
        if text not in seen:
            seen.add(text)
            captions.append(text)
    count = max(1, int(round(share * num_videos)))
    order = list(range(num_videos))
    rng.shuffle(order)
    chunks = {kind: order[i * count:(i + 1) * count] for i, kind in enumerate(["empty", "generic", "echo", "exact", "near"])}
    sources = order[5 * count: 7 * count]  # captions that get copied (kept unchanged)
    truth = {kind: set(chunks[kind]) for kind in ("empty", "generic", "echo")}
    generic_seen: set = set()
    for i in chunks["empty"]:
        captions[i] = rng.choice(EMPTY)
    for i in chunks["generic"]:
        text = generic_caption(rng)
        while text in generic_seen:
            text = generic_caption(rng)
        generic_seen.add(text)
        captions[i] = text
    for i in chunks["echo"]:
        captions[i] = echo_caption(rng, prompt_text)
    duplicate, copies = set(), set()
    for kind in ("exact", "near"):
        for i, source in zip(chunks[kind], sources[: count] if kind == "exact" else sources[count:]):
            captions[i] = captions[source] if kind == "exact" else near_copy(rng, captions[source])
            duplicate.update((i, source))
            copies.add(i)
    truth["duplicate"] = duplicate
    truth["copies"] = copies
    return captions, truth
