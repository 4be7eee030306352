"""Referring descriptions of the synthetic world: what they say, which objects they pick, and their wording.

A description is judged with three-valued logic (yes / no / unclear, e.g. two balls almost side by side for
"the leftmost ball"); an expression is only used when exactly one object is "yes" and none is "unclear".
"""

from __future__ import annotations

from dataclasses import dataclass

from .vocabulary import PLURALS, SEG_TOKEN

# Margins in layout units (1 = the image's shorter side).
RELATION_MARGIN_X = 0.1
RELATION_MARGIN_Y = 0.08
RELATION_NEAR_X = 0.45  # "behind" / "in front of" need the objects roughly in line
RELATION_FAR_X = 0.6
ORDINAL_GAP_X = 0.1
ORDINAL_SIZE_RATIO = 1.15
MOTION_MIN_X = 0.12
MOTION_MIN_Y = 0.08
DIRECTIONS: tuple[str, ...] = ("left", "right", "towards", "away")

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class ObjectFacts:
    """What language can say about one object: class, colour, base position and size at frame 0, motion."""

    cls: str
    colour: str
    x: float  # base centre, layout units
    y: float
    size: float  # linear visual size, comparable within a class
    motion: str  # "left" | "right" | "towards" | "away" | "still" | "unclear"


@dataclass(frozen=True)
class Description:
    """A referring description: class, optional colour, and at most one of relation / ordinal / motion."""

    cls: str
    colour: str | None = None
    relation: tuple[str, Description] | None = None  # (relation word, anchor)
    ordinal: str | None = None
    motion: str | None = None

    @property
    def noun(self) -> str:
        return f"{self.colour} {self.cls}" if self.colour else self.cls

    def phrase(self) -> str:
        """English noun phrase, e.g. "the mug left of the red box", "the second ball from the left"."""
        if self.relation is not None:
            word, anchor = self.relation
            return f"the {self.noun} {word} {anchor.phrase()}"
        if self.ordinal is not None:
            if self.ordinal.startswith(("second ", "third ")):
                rank, _, rest = self.ordinal.partition(" ")
                return f"the {rank} {self.noun} {rest}"
            return f"the {self.ordinal} {self.noun}"
        if self.motion is not None:
            if self.motion == "moving":
                return f"the moving {self.noun}"
            if self.motion == "still":
                return f"the {self.noun} that is not moving"
            return f"the {self.noun} {motion_words(self.cls, self.motion)}"
        return f"the {self.noun}"


def motion_words(cls: str, direction: str) -> str:
    """"rolling left", "moving towards the camera", ..."""
    verb = "rolling" if cls == "ball" else "moving"
    where = {"left": "left", "right": "right", "towards": "towards the camera", "away": "away from the camera"}
    return f"{verb} {where[direction]}"


def matches_noun(desc: Description, fact: ObjectFacts) -> bool:
    return fact.cls == desc.cls and (desc.colour is None or fact.colour == desc.colour)


def _relation_truth(word: str, target: ObjectFacts, anchor: ObjectFacts) -> bool | None:
    dx, dy = target.x - anchor.x, target.y - anchor.y
    if word in ("left of", "right of"):
        signed = dx if word == "right of" else -dx
        return True if signed >= RELATION_MARGIN_X else False if signed <= 0 else None
    signed = -dy if word == "behind" else dy
    if signed <= 0 or abs(dx) >= RELATION_FAR_X:
        return False
    return True if signed >= RELATION_MARGIN_Y and abs(dx) <= RELATION_NEAR_X else None


def _ordinal_pick(ordinal: str, candidates: list[int], facts: list[ObjectFacts]) -> int | None:
    """Index picked by an ordinal among candidates, or None when the ordering is not clear enough."""
    if ordinal in ("biggest", "smallest"):
        if len(candidates) < 2:
            return None
        ranked = sorted(candidates, key=lambda i: facts[i].size, reverse=ordinal == "biggest")
        big, small = sorted((facts[ranked[0]].size, facts[ranked[1]].size), reverse=True)
        return ranked[0] if big >= ORDINAL_SIZE_RATIO * small else None
    rank = {"leftmost": 0, "rightmost": -1, "second from the left": 1, "second from the right": -2,
            "third from the left": 2}[ordinal]
    needed = {0: 2, -1: 2, 1: 3, -2: 3, 2: 4}[rank]
    if len(candidates) < needed:
        return None
    ranked = sorted(candidates, key=lambda i: facts[i].x)
    position = rank % len(ranked)
    neighbours = [ranked[j] for j in (position - 1, position + 1) if 0 <= j < len(ranked)]
    if any(abs(facts[j].x - facts[ranked[position]].x) < ORDINAL_GAP_X for j in neighbours):
        return None
    return ranked[position]


def _motion_truth(wanted: str, actual: str) -> bool | None:
    if actual == "unclear":
        return None
    if wanted == "moving":
        return actual != "still"
    return actual == wanted


def resolve(desc: Description, facts: list[ObjectFacts]) -> tuple[list[int], list[int]]:
    """Objects the description clearly fits ("yes") and objects it might fit ("unclear")."""
    candidates = [i for i, f in enumerate(facts) if matches_noun(desc, f)]
    if desc.relation is not None:
        word, anchor_desc = desc.relation
        anchors, unclear_anchors = resolve(anchor_desc, facts)
        if len(anchors) != 1 or unclear_anchors:
            return [], candidates
        anchor = anchors[0]
        truth = {i: _relation_truth(word, facts[i], facts[anchor]) for i in candidates if i != anchor}
    elif desc.ordinal is not None:
        picked = _ordinal_pick(desc.ordinal, candidates, facts)
        if picked is None:
            return [], candidates
        truth = {i: i == picked for i in candidates}
    elif desc.motion is not None:
        truth = {i: _motion_truth(desc.motion, facts[i].motion) for i in candidates}
    else:
        truth = dict.fromkeys(candidates, True)
    return [i for i, v in truth.items() if v], [i for i, v in truth.items() if v is None]


def refers_uniquely(desc: Description, facts: list[ObjectFacts], target: int) -> bool:
    """True when ``target`` is the one and only object the description clearly fits."""
    yes, unclear = resolve(desc, facts)
    return yes == [target] and not unclear


def article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def plural_noun(desc: Description) -> str:
    return f"{desc.colour} {PLURALS[desc.cls]}" if desc.colour else PLURALS[desc.cls]


def join_phrases(phrases: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def segmentation_answer(phrases: list[str], bare: bool) -> str:
    """One [SEG] per target: "Sure, [SEG]." (or "It is [SEG]." for a bare noun phrase);
    several targets: "Sure, the blue mug [SEG] and the red ball [SEG]."."""
    if len(phrases) == 1:
        return f"It is {SEG_TOKEN}." if bare else f"Sure, {SEG_TOKEN}."
    return f"Sure, {join_phrases([f'{p} {SEG_TOKEN}' for p in phrases])}."


def absent_answer(desc: Description) -> str:
    return f"There is no {desc.noun}."


def count_answer(desc: Description, count: int) -> str:
    number = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)
    if count == 1:
        return f"There is one {desc.noun}."
    return f"There are {number} {plural_noun(desc)}."


def exists_answer(desc: Description, present: bool) -> str:
    return f"Yes, there is {article(desc.noun)} {desc.noun}." if present else f"No, there is no {desc.noun}."


def direction_answer(cls: str, motion: str) -> str:
    return f"The {cls} is not moving." if motion == "still" else f"The {cls} is {motion_words(cls, motion)}."
