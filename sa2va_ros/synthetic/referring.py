"""Referring samples of the synthetic world: a scene, an expression, the answer and exact target masks.

The kind of expression is chosen first and the scene is built for it (e.g. two balls of different sizes
for "the biggest ball"); the expression is then checked against the placed scene and the sample is drawn
again until the described object is the only one that fits. Everything is deterministic in (seed, split).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from .language import (
    DIRECTIONS,
    Description,
    ObjectFacts,
    absent_answer,
    article,
    count_answer,
    direction_answer,
    exists_answer,
    join_phrases,
    plural_noun,
    refers_uniquely,
    resolve,
    segmentation_answer,
)
from .layout import ObjectSpec, build_scene, leave_window, scene_facts, table_range
from .scene import SyntheticScene, sample_look
from .vocabulary import (
    ALL_PAIRS,
    CLASSES,
    COLOURS,
    COMMAND_VERBS,
    HELD_OUT_PAIR_LIST,
    HELD_OUT_PAIRS,
    IMAGE_KIND_WEIGHTS,
    ORDINALS,
    RELATIONS,
    SEEN_PAIRS,
    SPLITS,
    VIDEO_KIND_WEIGHTS,
)

Pair = tuple[str, str]  # (colour, class)
T = TypeVar("T")

_SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}
_IMAGE_TAG, _VIDEO_TAG = 0, 1
_MAX_ATTEMPTS = 200
_PLACEMENT_TRIES = 6
_LEAVE_RETURN_KINDS = ("attribute", "command", "multi")
_SEGMENT_PROMPT_SHARE = 0.7  # referring phrases: "Please segment ..." vs the bare phrase


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a sample: identity, size, base-centre position at frame 0 as fractions of (W, H), motion."""

    index: int
    cls: str
    colour: str
    size_factor: float
    position: tuple[float, float]
    motion: str


@dataclass(frozen=True)
class StreamFrame:
    """One lazily rendered frame of a referring stream."""

    index: int
    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) uint8: 0 = table, i + 1 = object i (visible part)
    mask: np.ndarray  # (H, W) bool, union of the targets
    target_masks: list[np.ndarray]  # one (H, W) bool per [SEG], answer order


@dataclass(frozen=True)
class ReferringImage:
    """An image with one expression. ``target_masks`` has one mask per [SEG] in ``answer`` (empty for
    questions and absent targets); ``mask`` is their union (all False when there is no target)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    expression: str
    answer: str
    kind: str
    prompt: str  # the text the model is given after the image token
    prompt_style: str  # "segment" | "bare" | "command" | "question"
    mask: np.ndarray  # (H, W) bool
    target_masks: list[np.ndarray]
    labels: np.ndarray  # (H, W) uint8 visible-instance label map, 0 = table
    objects: tuple[ObjectInfo, ...]
    target_ids: tuple[int, ...]  # object index of each [SEG]
    queried: Pair | tuple[None, str] | None  # what a question / absent expression asks about
    scene: SyntheticScene
    seed: int
    split: str

    @property
    def instance_masks(self) -> list[np.ndarray]:
        """Visible mask of every object, (H, W) bool each."""
        return [self.labels == i + 1 for i in range(len(self.objects))]


@dataclass(frozen=True)
class ReferringVideo:
    """A clip with one expression; per-frame masks are the visible parts (empty while occluded or out of view)."""

    frames: list[np.ndarray]  # T x (H, W, 3) uint8 RGB
    expression: str
    answer: str
    kind: str
    prompt: str
    prompt_style: str
    masks: list[np.ndarray]  # T x (H, W) bool, union of the targets
    target_masks: list[list[np.ndarray]]  # per [SEG]: T x (H, W) bool
    labels: list[np.ndarray]  # T x (H, W) uint8
    objects: tuple[ObjectInfo, ...]
    target_ids: tuple[int, ...]
    queried: Pair | tuple[None, str] | None
    # leave_and_return: frames [a, b) in which the first target is certainly out of view (it leaves a few
    # frames before a, comes back after b, and is visible in the first and the last frame)
    absence_window: tuple[int, int] | None
    scene: SyntheticScene
    seed: int
    split: str


@dataclass(frozen=True)
class ReferringStream:
    """A referring sample whose frames are rendered on demand, for streams of thousands of frames."""

    scene: SyntheticScene
    expression: str
    answer: str
    kind: str
    prompt: str
    prompt_style: str
    objects: tuple[ObjectInfo, ...]
    target_ids: tuple[int, ...]
    queried: Pair | tuple[None, str] | None
    absence_window: tuple[int, int] | None
    seed: int
    split: str

    @property
    def num_frames(self) -> int:
        return self.scene.num_frames

    def frame(self, t: int, *, noise: bool = True, shadows: bool = True) -> StreamFrame:
        """Render frame ``t`` with its target masks."""
        rendered = self.scene.render(t, noise=noise, shadows=shadows)
        target_masks = [rendered.labels == i + 1 for i in self.target_ids]
        mask = np.zeros(rendered.labels.shape, bool)
        for m in target_masks:
            mask |= m
        return StreamFrame(t, rendered.image, rendered.labels, mask, target_masks)

    def iter_frames(self, num_frames: int | None = None, start: int = 0, *, noise: bool = True,
                    shadows: bool = True) -> Iterator[StreamFrame]:
        """Frames ``start`` .. ``start + num_frames - 1`` (default: to the end), one at a time."""
        stop = self.num_frames if num_frames is None else start + num_frames
        for t in range(start, stop):
            yield self.frame(t, noise=noise, shadows=shadows)

    def to_video(self, *, noise: bool = True, shadows: bool = True) -> ReferringVideo:
        """Render every frame into memory."""
        frames = list(self.iter_frames(noise=noise, shadows=shadows))
        per_target = [[f.target_masks[k] for f in frames] for k in range(len(self.target_ids))]
        return ReferringVideo([f.image for f in frames], self.expression, self.answer, self.kind, self.prompt,
                              self.prompt_style, [f.mask for f in frames], per_target, [f.labels for f in frames],
                              self.objects, self.target_ids, self.queried, self.absence_window, self.scene,
                              self.seed, self.split)


def _pick(rng: np.random.Generator, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
    """One of ``options``, uniformly or in proportion to ``weights`` (faster than Generator.choice)."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    index = int(np.searchsorted(np.cumsum(weights), rng.random() * sum(weights), side="right"))
    return options[min(index, len(options) - 1)]


@dataclass(frozen=True)
class _Forbid:
    """Pairs / classes that random distractors must avoid, so they cannot also fit a description."""

    pairs: frozenset[Pair] = frozenset()
    classes: frozenset[str] = frozenset()

    def __call__(self, pair: Pair) -> bool:
        return pair in self.pairs or pair[1] in self.classes

    def __or__(self, other: _Forbid) -> _Forbid:
        return _Forbid(self.pairs | other.pairs, self.classes | other.classes)


@dataclass
class _Plan:
    """A scene recipe for one expression: object specs, which of them are targets and how they are described."""

    kind: str
    specs: list[ObjectSpec]
    targets: list[tuple[int, Description]] = field(default_factory=list)
    forbid: _Forbid = field(default_factory=_Forbid)
    style: str = "segment"
    verb: str | None = None
    question: str | None = None
    subject: Description | None = None  # of questions and absent expressions
    subject_index: int | None = None  # the object a colour / direction question is about


class _Planner:
    """Builds a plan for an expression kind, honouring the split's allowed (colour, class) pairs."""

    def __init__(self, rng: np.random.Generator, split: str, video: bool, extent: tuple[float, float],
                 table_y: tuple[float, float], forced: tuple[str | None, str] | None, leave_and_return: bool):
        self.rng = rng
        self.video = video
        self.compositional = split == "compositional"
        self.target_pool = HELD_OUT_PAIR_LIST if self.compositional else SEEN_PAIRS
        self.scene_pool = ALL_PAIRS if self.compositional else SEEN_PAIRS
        self.extent = extent
        self.table_y = table_y
        self.forced = forced
        self.leave_and_return = leave_and_return

    # ----- small random helpers -----
    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def choose(self, options, p=None):
        return _pick(self.rng, options, p)

    def pair(self, pool: tuple[Pair, ...], *, cls: str | None = None, colour: str | None = None,
             forbid: _Forbid | None = None) -> Pair | None:
        forbid = forbid or _Forbid()
        options = [p for p in pool if (cls is None or p[1] == cls) and (colour is None or p[0] == colour)
                   and not forbid(p)]
        return self.choose(options) if options else None

    def primary(self) -> Pair:
        if self.forced is None:
            return self.choose(self.target_pool)
        colour, cls = self.forced
        if colour is not None:
            return colour, cls
        found = self.pair(self.target_pool, cls=cls)
        if found is None:
            raise ValueError(f"no colour of {cls!r} is allowed in this split")
        return found

    def mention_colour(self, p: float) -> bool:
        return self.compositional or (self.forced is not None and self.forced[0] is not None) or self.chance(p)

    def confusers(self, primary: Pair, forbid: _Forbid, p: float = 0.7) -> list[ObjectSpec]:
        """Same-class and same-colour distractors that make the colour and the class both matter."""
        colour, cls = primary
        specs = []
        for same_class in (True, False):
            if not self.chance(p):
                continue
            for _ in range(int(self.rng.integers(1, 3))):
                exclude = forbid | (_Forbid(pairs=frozenset({primary})) if same_class else
                                    _Forbid(classes=frozenset({cls})))
                found = self.pair(self.scene_pool, cls=cls if same_class else None,
                                  colour=None if same_class else colour, forbid=exclude)
                if found is not None:
                    specs.append(ObjectSpec(found[1], found[0]))
        return specs

    def displacement(self, direction: str) -> tuple[float, float]:
        along, across = float(self.rng.uniform(0.2, 0.45)), float(self.rng.uniform(-0.03, 0.03))
        depth = float(self.rng.uniform(0.12, 0.25))
        return {"left": (-along, across), "right": (along, across), "towards": (across, depth),
                "away": (across, -depth)}[direction]

    # ----- plans per kind -----
    def attribute(self, primary: Pair) -> _Plan:
        colour, cls = primary
        class_only = not self.mention_colour(0.8)
        forbid = _Forbid(classes=frozenset({cls})) if class_only else _Forbid(pairs=frozenset({primary}))
        specs = [ObjectSpec(cls, colour, motion="inside", min_visible=0.55)]
        if not class_only:
            specs += self.confusers(primary, forbid)
        return _Plan("attribute", specs, [(0, Description(cls, None if class_only else colour))], forbid)

    def relation(self, primary: Pair) -> _Plan:
        """Target, anchor and same-class distractors stand still, so the relation holds for the whole clip."""
        colour, cls = primary
        word = self.choose(RELATIONS)
        mention = self.mention_colour(0.35)
        anchor = self.pair(self.scene_pool, forbid=_Forbid(classes=frozenset({cls})))
        anchor_class_only = self.chance(0.3)
        width = self.extent[0]
        y_lo, y_hi = self.table_y
        span = y_hi - y_lo
        if word in ("left of", "right of"):
            ax = float(self.rng.uniform(0.35 * width, 0.65 * width))
            anchor_spec = ObjectSpec(anchor[1], anchor[0], x_range=(ax, ax), motion="static", min_visible=0.5)
            near, far = (0.0, ax - 0.13), (ax + 0.02, width)
            if word == "right of":
                near, far = (ax + 0.13, width), (0.0, ax - 0.02)
            target = ObjectSpec(cls, colour, x_range=near, motion="static", min_visible=0.5)
            distractor_ranges = {"x_range": far}
        else:
            ax = float(self.rng.uniform(0.25 * width, 0.75 * width))
            behind = word == "behind"
            low, high = (0.45, 0.8) if behind else (0.2, 0.55)
            ay = float(self.rng.uniform(y_lo + low * span, y_lo + high * span))
            anchor_spec = ObjectSpec(anchor[1], anchor[0], x_range=(ax, ax), y_range=(ay, ay), motion="static",
                                     min_visible=0.5)
            near_y, far_y = ((y_lo, ay - 0.11), (ay + 0.02, y_hi)) if behind else ((ay + 0.11, y_hi), (y_lo, ay - 0.02))
            target = ObjectSpec(cls, colour, x_range=(ax - 0.35, ax + 0.35), y_range=near_y, motion="static",
                                min_visible=0.5)
            distractor_ranges = {"y_range": far_y}
        distractors = []
        for _ in range(int(self.rng.integers(1, 3))):
            other = colour if mention else self.pair(self.scene_pool, cls=cls)[0]
            distractors.append(ObjectSpec(cls, other, motion="static", **distractor_ranges))
        anchor_desc = Description(anchor[1], None if anchor_class_only else anchor[0])
        forbid = _Forbid(classes=frozenset({cls} | ({anchor[1]} if anchor_class_only else set())),
                         pairs=frozenset({anchor}))
        desc = Description(cls, colour if mention else None, relation=(word, anchor_desc))
        return _Plan("relation", [target, anchor_spec, *distractors], [(0, desc)], forbid)

    def ordinal(self, primary: Pair) -> _Plan | None:
        """Candidates stand still, so their order holds for the whole clip."""
        colour, cls = primary
        which = self.choose(ORDINALS)
        needed = 4 if which.startswith("third") else 3 if which.startswith("second") else 2
        count = int(self.rng.integers(needed, 5))
        mention = self.mention_colour(0.3)
        colours = [colour] + [colour if mention else self.pair(self.scene_pool, cls=cls)[0] for _ in range(count - 1)]
        specs = [ObjectSpec(cls, c, motion="static", min_visible=0.5) for c in colours]
        if which in ("biggest", "smallest"):
            if which == "biggest":
                big = float(self.rng.uniform(1.2, 1.4))
                sizes = [big, *self.rng.uniform(0.72, big / 1.3, count - 1)]
            else:
                small = float(self.rng.uniform(0.72, 0.85))
                sizes = [small, *self.rng.uniform(small * 1.3, 1.4, count - 1)]
            for spec, size in zip(specs, sizes, strict=True):
                spec.size_factor = float(size)
        else:
            gap, lo, hi = 0.15, 0.1, self.extent[0] - 0.1
            room = hi - lo - (count - 1) * gap
            if room <= 0:
                return None
            xs = lo + np.sort(self.rng.uniform(0.0, room, count)) + np.arange(count) * gap
            rank = {"leftmost": 0, "rightmost": -1, "second from the left": 1, "second from the right": -2,
                    "third from the left": 2}[which] % count
            order = [rank] + [j for j in range(count) if j != rank]
            for spec, j in zip(specs, order, strict=True):
                spec.x_range = (float(xs[j]), float(xs[j]))
        forbid = _Forbid(pairs=frozenset({primary})) if mention else _Forbid(classes=frozenset({cls}))
        desc = Description(cls, colour if mention else None, ordinal=which)
        return _Plan("ordinal", specs, [(0, desc)], forbid)

    def motion(self, primary: Pair) -> _Plan:
        colour, cls = primary
        wanted = self.choose((*DIRECTIONS, "moving", "still"), p=[0.25, 0.25, 0.15, 0.15, 0.1, 0.1])
        mention = self.mention_colour(0.3)

        def moving(direction: str, **kwargs) -> ObjectSpec:
            return ObjectSpec(cls, kwargs.pop("colour"), motion="linear", displacement=self.displacement(direction),
                              **kwargs)

        if wanted == "still":
            target = ObjectSpec(cls, colour, motion="static", min_visible=0.55)
        else:
            target = moving(self.choose(DIRECTIONS) if wanted == "moving" else wanted, colour=colour, min_visible=0.55)
        specs = [target]
        for _ in range(int(self.rng.integers(1, 3))):
            other = colour if mention else self.pair(self.scene_pool, cls=cls)[0]
            if wanted == "moving":
                motion = "static"
            elif wanted == "still":
                motion = self.choose(DIRECTIONS)
            else:
                motion = self.choose(tuple(d for d in (*DIRECTIONS, "static") if d != wanted))
            static = motion == "static"
            specs.append(ObjectSpec(cls, other, motion="static") if static else moving(motion, colour=other))
        forbid = _Forbid(pairs=frozenset({primary})) if mention else _Forbid(classes=frozenset({cls}))
        return _Plan("motion", specs, [(0, Description(cls, colour if mention else None, motion=wanted))], forbid)

    def multi(self, primary: Pair) -> _Plan:
        pairs = [primary]
        for _ in range(1 if self.chance(0.8) else 2):
            found = self.pair(self.target_pool, forbid=_Forbid(pairs=frozenset(pairs)))
            if found is not None:
                pairs.append(found)
        classes = [p[1] for p in pairs]
        class_only = [not self.mention_colour(0.85) and classes.count(p[1]) == 1 for p in pairs]
        bare_classes = frozenset(p[1] for p, only in zip(pairs, class_only, strict=True) if only)
        forbid = _Forbid(pairs=frozenset(pairs), classes=bare_classes)
        specs = [ObjectSpec(p[1], p[0], motion="inside", min_visible=0.55) for p in pairs]
        for p, only in zip(pairs, class_only, strict=True):
            if not only:
                specs += self.confusers(p, forbid, p=0.4)
        targets = [(i, Description(p[1], None if only else p[0]))
                   for i, (p, only) in enumerate(zip(pairs, class_only, strict=True))]
        plan = _Plan("multi", specs, targets, forbid)
        if self.chance(0.4):
            plan.style, plan.verb = "command", self.choose(COMMAND_VERBS)
        return plan

    def question(self, primary: Pair) -> _Plan:
        colour, cls = primary
        types = ("colour", "exists", "direction") if self.video else ("colour", "count", "exists")
        question = self.choose(types, p=[0.35, 0.35, 0.3] if self.video else [0.4, 0.3, 0.3])
        if question in ("colour", "direction"):
            forbid = _Forbid(classes=frozenset({cls}))
            if question == "colour":
                target = ObjectSpec(cls, colour, motion="inside", min_visible=0.55)
            elif self.chance(0.2):
                target = ObjectSpec(cls, colour, motion="static", min_visible=0.55)
            else:
                displacement = self.displacement(self.choose(DIRECTIONS))
                target = ObjectSpec(cls, colour, motion="linear", displacement=displacement, min_visible=0.55)
            specs = [target, *self.confusers(primary, forbid, p=0.6)]
            return _Plan("question", specs, forbid=forbid, style="question", question=question,
                         subject=Description(cls), subject_index=0)
        if question == "count":
            mention = self.mention_colour(0.25)
            number = int(self.rng.choice(5, p=[0.1, 0.3, 0.3, 0.2, 0.1]))
            colours = [colour if mention else self.pair(self.scene_pool, cls=cls)[0] for _ in range(number)]
            forbid = _Forbid(pairs=frozenset({primary})) if mention else _Forbid(classes=frozenset({cls}))
            specs = [ObjectSpec(cls, c, min_visible=0.5) for c in colours]
            if mention:
                specs += self.confusers(primary, forbid, p=0.5)
            return _Plan("question", specs, forbid=forbid, style="question", question=question,
                         subject=Description(cls, colour if mention else None))
        forbid = _Forbid(pairs=frozenset({primary}))
        specs = [ObjectSpec(cls, colour, min_visible=0.5)] if self.chance(0.5) else []
        specs += self.confusers(primary, forbid)
        return _Plan("question", specs, forbid=forbid, style="question", question=question,
                     subject=Description(cls, colour))

    def absent(self, primary: Pair) -> _Plan:
        colour, cls = primary
        class_only = not self.mention_colour(0.75)
        forbid = _Forbid(classes=frozenset({cls})) if class_only else _Forbid(pairs=frozenset({primary}))
        specs = [] if class_only else self.confusers(primary, forbid)
        plan = _Plan("absent", specs, forbid=forbid, subject=Description(cls, None if class_only else colour))
        if self.chance(0.4):
            plan.style, plan.verb = "command", self.choose(COMMAND_VERBS)
        return plan

    def command(self, primary: Pair) -> _Plan | None:
        if self.leave_and_return or self.forced is not None:
            sub = "attribute"  # a forced target is commanded by name: "pick the blue mug"
        elif self.video:
            sub = self.choose(("attribute", "relation", "ordinal", "motion"), p=[0.6, 0.1, 0.1, 0.2])
        else:
            sub = self.choose(("attribute", "relation", "ordinal"), p=[0.7, 0.15, 0.15])
        plan = getattr(self, sub)(primary)
        if plan is not None:
            plan.kind, plan.style, plan.verb = "command", "command", self.choose(COMMAND_VERBS)
        return plan

    def build(self, kind: str) -> _Plan | None:
        """A full plan: the kind's core objects plus random distractors that cannot fit its descriptions."""
        plan = getattr(self, kind)(self.primary())
        if plan is None:
            return None
        if plan.style == "segment" and not self.chance(_SEGMENT_PROMPT_SHARE):
            plan.style = "bare"
        if self.leave_and_return:
            first = plan.specs[plan.targets[0][0]]
            first.motion = "leave_return"
            width = self.extent[0]
            first.x_range = (0.0, 0.3) if self.chance(0.5) else (width - 0.3, width)
        fillers = [p for p in self.scene_pool if not plan.forbid(p)]
        for _ in range(int(self.rng.integers(3, 8)) - len(plan.specs)):
            colour, cls = self.choose(fillers)
            plan.specs.append(ObjectSpec(cls, colour, filler=True))
        return plan


def _wording(plan: _Plan, facts: list[ObjectFacts], video: bool) -> tuple[str, str, str] | None:
    """(expression, prompt, answer) when every description holds uniquely in the placed scene, else None."""
    indices = [i for i, _ in plan.targets]
    if len(set(indices)) != len(indices) or not all(refers_uniquely(d, facts, i) for i, d in plan.targets):
        return None
    subject = plan.subject
    if plan.kind == "question":
        if plan.question in ("colour", "direction"):
            if not refers_uniquely(subject, facts, plan.subject_index):
                return None
            fact = facts[plan.subject_index]
            if plan.question == "colour":
                expression, answer = f"what colour is the {fact.cls}?", f"The {fact.cls} is {fact.colour}."
            else:
                if fact.motion == "unclear":
                    return None
                expression, answer = f"which way is the {fact.cls} moving?", direction_answer(fact.cls, fact.motion)
        else:
            found, unclear = resolve(subject, facts)
            if unclear:
                return None
            if plan.question == "count":
                expression, answer = f"how many {plural_noun(subject)} are there?", count_answer(subject, len(found))
            else:
                expression = f"is there {article(subject.noun)} {subject.noun}?"
                answer = exists_answer(subject, bool(found))
        return expression, expression, answer
    if plan.kind == "absent":
        if resolve(subject, facts) != ([], []):
            return None
        phrases = [subject.phrase()]
        answer = absent_answer(subject)
    else:
        phrases = [d.phrase() for _, d in plan.targets]
        answer = segmentation_answer(phrases, bare=plan.style == "bare")
    expression = join_phrases(phrases)
    if plan.verb is not None:
        expression = f"{plan.verb} {expression}"
    if plan.style == "segment":
        prompt = f"Please segment {expression}." if video else f"Please segment {expression} in this image."
    else:
        prompt = expression
    return expression, prompt, answer


def _check_request(seed: int, split: str, size: tuple[int, int], kind: str | None,
                   target: tuple[str | None, str] | None, video: bool, leave_and_return: bool) -> None:
    if split not in _SPLIT_INDEX:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size must be (H, W) with both sides >= 16, got {size!r}")
    kinds = VIDEO_KIND_WEIGHTS if video else IMAGE_KIND_WEIGHTS
    if kind is not None and kind not in kinds:
        raise ValueError(f"kind must be one of {tuple(kinds)}, got {kind!r}")
    if leave_and_return and kind is not None and kind not in _LEAVE_RETURN_KINDS:
        raise ValueError(f"leave_and_return needs a kind in {_LEAVE_RETURN_KINDS}, got {kind!r}")
    if target is not None:
        colour, cls = target
        if cls not in CLASSES or (colour is not None and colour not in COLOURS):
            raise ValueError(f"unknown target {target!r}; classes {CLASSES}, colours {tuple(COLOURS)}")
        if colour is not None and ((colour, cls) in HELD_OUT_PAIRS) != (split == "compositional"):
            raise ValueError(f"target {target!r} is {'not ' if split == 'compositional' else ''}a held-out pair, "
                             f"which the {split!r} split does not allow")


def sample_referring_stream(seed: int, split: str = "test", num_frames: int = 300, size: tuple[int, int] = (256, 256),
                            *, kind: str | None = None, target: tuple[str | None, str] | None = None,
                            leave_and_return: bool = False) -> ReferringStream:
    """A referring stream of ``num_frames`` lazily rendered frames (``num_frames`` = 1: a still image).

    ``kind`` forces the expression kind, ``target`` = (colour or None, class) the (first) target or, for
    questions and absent expressions, what is asked about; ``leave_and_return`` makes the first target leave
    the view during ``absence_window`` and come back (kinds attribute, command, multi).
    """
    video = num_frames > 1
    _check_request(seed, split, size, kind, target, video, leave_and_return)
    if leave_and_return and num_frames < 5:
        raise ValueError("leave_and_return needs num_frames >= 5")
    rng = np.random.default_rng([seed, _SPLIT_INDEX[split], _VIDEO_TAG if video else _IMAGE_TAG])
    noise_seed = (seed, _SPLIT_INDEX[split], _VIDEO_TAG if video else _IMAGE_TAG, 1)
    weights = VIDEO_KIND_WEIGHTS if video else IMAGE_KIND_WEIGHTS
    if leave_and_return:
        weights = {k: v for k, v in weights.items() if k in _LEAVE_RETURN_KINDS}
    kinds = tuple(weights)
    probabilities = [weights[k] for k in kinds]
    unit = min(size)
    extent = (size[1] / unit, size[0] / unit)
    for _ in range(_MAX_ATTEMPTS):
        chosen = kind or _pick(rng, kinds, probabilities)
        look = sample_look(rng, num_frames)
        planner = _Planner(rng, split, video, extent, table_range(look, extent), target, leave_and_return)
        plan = planner.build(chosen)
        if plan is None:
            continue
        scene = None
        for _ in range(_PLACEMENT_TRIES):
            scene = build_scene(rng, plan.specs, look, size, num_frames, noise_seed)
            if scene is not None:
                break
            fillers = [i for i, s in enumerate(plan.specs) if s.filler]
            if fillers and planner.chance(0.5):
                del plan.specs[fillers[-1]]
        if scene is None:
            continue
        if leave_and_return and scene.visible_fractions(num_frames - 1)[plan.targets[0][0]] < 0.3:
            continue
        facts = scene_facts(scene)
        wording = _wording(plan, facts, video)
        if wording is None:
            continue
        expression, prompt, answer = wording
        width, height = extent
        objects = tuple(ObjectInfo(i, f.cls, f.colour, obj.size_factor, (f.x / width, f.y / height), f.motion)
                        for i, (f, obj) in enumerate(zip(facts, scene.objects, strict=True)))
        queried = None
        if plan.kind in ("question", "absent"):
            queried = (plan.subject.colour, plan.subject.cls)
            if plan.subject_index is not None:
                queried = (facts[plan.subject_index].colour, plan.subject.cls)
        return ReferringStream(scene, expression, answer, plan.kind, prompt, plan.style, objects,
                               tuple(i for i, _ in plan.targets), queried,
                               leave_window(num_frames) if leave_and_return else None, seed, split)
    raise RuntimeError(f"could not build a {kind or 'referring'} sample for seed {seed} in {_MAX_ATTEMPTS} attempts")


def sample_referring_image(seed: int, split: str = "test", size: tuple[int, int] = (256, 256), *,
                           kind: str | None = None, target: tuple[str | None, str] | None = None,
                           noise: bool = True, shadows: bool = True) -> ReferringImage:
    """A tabletop image with one referring expression (or command, question, absent target) and exact masks.

    Deterministic in (seed, split, aspect ratio of ``size``); ``noise=False`` / ``shadows=False`` render
    without sensor noise / contact shadows (the scene is the same).
    """
    stream = sample_referring_stream(seed, split, 1, size, kind=kind, target=target)
    frame = stream.frame(0, noise=noise, shadows=shadows)
    return ReferringImage(frame.image, stream.expression, stream.answer, stream.kind, stream.prompt,
                          stream.prompt_style, frame.mask, frame.target_masks, frame.labels, stream.objects,
                          stream.target_ids, stream.queried, stream.scene, seed, split)


def sample_referring_video(seed: int, split: str = "test", num_frames: int = 8, size: tuple[int, int] = (256, 256),
                           *, kind: str | None = None, target: tuple[str | None, str] | None = None,
                           leave_and_return: bool = False, noise: bool = True,
                           shadows: bool = True) -> ReferringVideo:
    """A clip of ``num_frames`` frames with one expression; objects move, cross, occlude each other and may
    leave and re-enter the view. See ``sample_referring_stream`` for the options; this renders all frames."""
    if num_frames < 2:
        raise ValueError("a video needs num_frames >= 2")
    stream = sample_referring_stream(seed, split, num_frames, size, kind=kind, target=target,
                                     leave_and_return=leave_and_return)
    return stream.to_video(noise=noise, shadows=shadows)
