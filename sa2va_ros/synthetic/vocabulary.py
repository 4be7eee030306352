"""Vocabulary of the synthetic tabletop world: classes, colours, held-out pairs, expression kinds and words.

Everything a model trained on this world can be asked about is listed here, so tests, training and demos
share one definition of the language.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("mug", "ball", "box", "bottle", "can", "book", "banana")
PLURALS: dict[str, str] = {
    "mug": "mugs",
    "ball": "balls",
    "box": "boxes",
    "bottle": "bottles",
    "can": "cans",
    "book": "books",
    "banana": "bananas",
}

# Nominal RGB of each colour name; objects jitter around it and scene lighting tints it.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 40),
    "orange": (240, 125, 20),
    "yellow": (240, 210, 35),
    "green": (40, 160, 65),
    "blue": (35, 85, 215),
    "purple": (135, 55, 175),
    "white": (236, 236, 232),
    "black": (38, 38, 42),
}

# Object height (book and banana: length) as a fraction of the image's shorter side, before the size factor.
CLASS_SCALES: dict[str, float] = {
    "mug": 0.2,
    "ball": 0.16,
    "box": 0.2,
    "bottle": 0.3,
    "can": 0.2,
    "book": 0.32,
    "banana": 0.3,
}
SIZE_FACTOR_RANGE: tuple[float, float] = (0.75, 1.35)

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((colour, cls) for cls in CLASSES for colour in COLOURS)

# (colour, class) pairs never shown in the "train" and "test" splits, neither as targets nor as
# distractors nor in any expression; every target of the "compositional" split is one of them.
# 8 of the 56 pairs (~14%), every class held out at least once, no demo phrase ("blue mug",
# "red can", "red ball", "red box") among them.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("green", "mug"),
        ("yellow", "ball"),
        ("purple", "box"),
        ("orange", "bottle"),
        ("blue", "can"),
        ("red", "book"),
        ("white", "banana"),
        ("black", "bottle"),
    }
)
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)
HELD_OUT_PAIR_LIST: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p in HELD_OUT_PAIRS)

SPLITS: tuple[str, ...] = ("train", "test", "compositional")

EXPRESSION_KINDS: tuple[str, ...] = (
    "attribute",  # "the blue mug"
    "command",  # "pick the blue mug"
    "relation",  # "the mug left of the red box"
    "ordinal",  # "the biggest ball", "the second ball from the left"
    "motion",  # videos only: "the ball rolling left"
    "multi",  # "the blue mug and the red ball"
    "question",  # "what colour is the mug?" -> "The mug is blue."
    "absent",  # "the purple banana" -> "There is no purple banana."
)
IMAGE_KIND_WEIGHTS: dict[str, float] = {
    "attribute": 0.24,
    "command": 0.24,
    "relation": 0.12,
    "ordinal": 0.12,
    "multi": 0.1,
    "question": 0.1,
    "absent": 0.08,
}
VIDEO_KIND_WEIGHTS: dict[str, float] = {
    "attribute": 0.2,
    "command": 0.2,
    "motion": 0.15,
    "relation": 0.06,
    "ordinal": 0.06,
    "multi": 0.1,
    "question": 0.13,
    "absent": 0.1,
}

RELATIONS: tuple[str, ...] = ("left of", "right of", "behind", "in front of")
ORDINALS: tuple[str, ...] = (
    "biggest",
    "smallest",
    "leftmost",
    "rightmost",
    "second from the left",
    "second from the right",
    "third from the left",
)
# Motion labels of an object over a clip; "unclear" objects cannot be described by motion.
MOTIONS: tuple[str, ...] = ("left", "right", "towards", "away", "moving", "still")
COMMAND_VERBS: tuple[str, ...] = (
    "pick",
    "pick up",
    "grab",
    "take",
    "hand me",
    "bring me",
    "give me",
    "push",
    "find",
)
QUESTION_TYPES: tuple[str, ...] = ("colour", "count", "exists", "direction")

SEG_TOKEN = "[SEG]"
