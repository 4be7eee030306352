"""Placing objects on the table and giving them motion paths, from per-object specifications.

A specification says what an object is and, where language needs it, where it must stand or how it must
move; everything left open is drawn at random. Layouts are validated on a canonical render, so whether a
layout is accepted does not depend on the output resolution.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .language import MOTION_MIN_X, MOTION_MIN_Y, ObjectFacts
from .scene import MotionPath, SceneLook, SceneObject, SyntheticScene
from .shapes import object_bounds
from .vocabulary import CLASS_SCALES, COLOURS, SIZE_FACTOR_RANGE

_MAX_SPEED = 0.05  # layout units per frame, for paths that leave and re-enter the view
_WANDER_SPEED = (0.006, 0.03)
_EDGE = 0.01
_OUT_OF_VIEW = 0.1  # gap between an object that left the view and the image border, layout units
_TABLE_DEPTH_MARGIN = 0.1  # objects stand at least this far below the table's back edge


@dataclass
class ObjectSpec:
    """What to place. Positions are base centres in layout units; ``motion`` is one of
    "static", "auto" (video: static or wandering, may leave the view), "inside" (never leaves the view),
    "linear" (straight by ``displacement`` over the clip) or "leave_return" (leaves the view and comes back)."""

    cls: str
    colour: str
    size_factor: float | None = None
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None
    motion: str = "auto"
    displacement: tuple[float, float] = (0.0, 0.0)
    min_visible: float = 0.4
    filler: bool = False  # a random distractor that may be dropped when the table is too crowded


def table_range(look: SceneLook, extent: tuple[float, float]) -> tuple[float, float]:
    """(min, max) base y, layout units, of an object standing on the table."""
    return look.horizon * extent[1] + _TABLE_DEPTH_MARGIN, extent[1] - 0.03


def leave_window(num_frames: int) -> tuple[int, int]:
    """Frames [a, b) during which a "leave_return" object is entirely out of view."""
    start = max(1, round(0.3 * (num_frames - 1)))
    return start, max(start + 1, round(0.7 * (num_frames - 1)))


def _path(times: Sequence[float], xs: Sequence[float], ys: Sequence[float], kind: str) -> MotionPath:
    """A path from waypoints, dropping any whose time does not increase (np.interp needs increasing times)."""
    keep = [0] + [i for i in range(1, len(times)) if times[i] > times[i - 1]]
    return MotionPath(np.asarray(times, float)[keep], np.asarray(xs, float)[keep], np.asarray(ys, float)[keep], kind)


def _wander(rng: np.random.Generator, start: tuple[float, float], num_frames: int, x_range: tuple[float, float],
            y_range: tuple[float, float], out_x: tuple[float, float] | None) -> MotionPath:
    """Random walk between waypoints with pauses; with ``out_x``, now and then it leaves the view and returns."""
    times, xs, ys = [0.0], [start[0]], [start[1]]
    while times[-1] < num_frames - 1:
        if rng.random() < 0.25:
            times.append(times[-1] + float(rng.integers(3, 25)))
            xs.append(xs[-1])
            ys.append(ys[-1])
            continue
        if out_x is not None and rng.random() < 0.15:
            x, y = float(out_x[int(rng.integers(2))]), ys[-1]
        else:
            x, y = float(rng.uniform(*x_range)), float(rng.uniform(*y_range))
        distance = math.hypot(x - xs[-1], y - ys[-1])
        times.append(times[-1] + max(1.0, distance / rng.uniform(*_WANDER_SPEED)))
        xs.append(x)
        ys.append(y)
    return _path(times, xs, ys, "wander")


def _leave_return(x: float, y: float, num_frames: int, out_left: float, out_right: float,
                  width: float) -> MotionPath:
    """Stand still, leave through the nearer side edge, stay out during ``leave_window``, come back to x."""
    start, stop = leave_window(num_frames)
    out = out_left if x < width / 2 else out_right
    steps = min(start, math.ceil(abs(out - x) / _MAX_SPEED))
    back = min(num_frames - stop, math.ceil(abs(out - x) / _MAX_SPEED))
    times = [0, start - steps, start, stop - 1, stop - 1 + back, num_frames - 1]
    return _path(times, [x, x, out, out, x, x], [y] * 6, "leave_return")


def motion_label(path: MotionPath, num_frames: int) -> str:
    """How language sees an object's motion over a clip; only static and straight paths are describable."""
    if path.kind == "static" or num_frames < 2:
        return "still"
    if path.kind != "linear":
        return "unclear"
    (x0, y0), (x1, y1) = path.position(0), path.position(num_frames - 1)
    dx, dy = x1 - x0, y1 - y0
    if abs(dx) >= MOTION_MIN_X and abs(dx) >= 2 * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) >= MOTION_MIN_Y and abs(dy) >= 2 * abs(dx):
        return "away" if dy < 0 else "towards"
    return "unclear"


def _intersect(a: tuple[float, float], b: tuple[float, float] | None) -> tuple[float, float]:
    return a if b is None else (max(a[0], b[0]), min(a[1], b[1]))


def place_object(rng: np.random.Generator, spec: ObjectSpec, look: SceneLook, extent: tuple[float, float],
                 num_frames: int) -> SceneObject | None:
    """Draw one object's appearance and path from its spec; None when its constraints leave no room."""
    width, height = extent
    size_factor = spec.size_factor if spec.size_factor is not None else float(rng.uniform(*SIZE_FACTOR_RANGE))
    scale = CLASS_SCALES[spec.cls] * size_factor
    max_angle = {"book": 0.3, "banana": 0.7}.get(spec.cls, 0.0)
    angle = float(rng.uniform(-max_angle, max_angle)) if max_angle else 0.0
    side = 1 if rng.random() < 0.5 else -1
    stretch = float(rng.uniform(0.9, 1.1))
    variant = int(rng.integers(2))
    x_min, y_min, x_max, y_max = object_bounds(spec.cls, scale=scale, angle=angle, side=side, stretch=stretch,
                                               variant=variant)
    y_lo, y_hi = table_range(look, extent)
    x_range = (-x_min + _EDGE, width - x_max - _EDGE)
    y_range = (max(y_lo, -y_min + _EDGE), min(y_hi, height - y_max - _EDGE))
    dx, dy = spec.displacement if spec.motion == "linear" else (0.0, 0.0)
    x_range = _intersect(_intersect(x_range, (x_range[0] - dx, x_range[1] - dx)), spec.x_range)
    y_range = _intersect(_intersect(y_range, (y_range[0] - dy, y_range[1] - dy)), spec.y_range)
    if x_range[0] > x_range[1] or y_range[0] > y_range[1]:
        return None
    x, y = float(rng.uniform(*x_range)), float(rng.uniform(*y_range))
    motion = spec.motion
    if motion in ("auto", "inside") and (num_frames < 2 or rng.random() < 0.35):
        motion = "static"
    if num_frames < 2 or motion == "static":
        path = MotionPath.static(x, y)
    elif motion == "linear":
        path = _path([0, num_frames - 1], [x, x + dx], [y, y + dy], "linear")
    elif motion == "leave_return":
        path = _leave_return(x, y, num_frames, -x_max - _OUT_OF_VIEW, width - x_min + _OUT_OF_VIEW, width)
    else:
        free_x = (-x_min + _EDGE, width - x_max - _EDGE)
        free_y = (max(y_lo, -y_min + _EDGE), min(y_hi, height - y_max - _EDGE))
        out_x = (-x_max - _OUT_OF_VIEW, width - x_min + _OUT_OF_VIEW) if motion == "auto" else None
        path = _wander(rng, (x, y), num_frames, free_x, free_y, out_x)
    jitter = 1.0 + rng.uniform(-0.06, 0.06, 3)
    rgb = tuple(min(255.0, c * float(j)) for c, j in zip(COLOURS[spec.colour], jitter, strict=True))
    return SceneObject(spec.cls, spec.colour, rgb, scale, size_factor, angle, side, stretch, variant, path)


def _twins_overlap(objects: Sequence[SceneObject]) -> bool:
    """Whether two objects of the same colour and class overlap at frame 0: their common edge would be
    invisible, so they would read as one object (and be miscounted)."""
    boxes = []
    for obj in objects:
        x, y = obj.path.position(0)
        x_min, y_min, x_max, y_max = object_bounds(obj.cls, scale=obj.scale, angle=obj.angle, side=obj.side,
                                                   stretch=obj.stretch, variant=obj.variant)
        boxes.append((x + x_min, y + y_min, x + x_max, y + y_max))
    for i, j in itertools.combinations(range(len(objects)), 2):
        a, b = boxes[i], boxes[j]
        same = (objects[i].cls, objects[i].colour) == (objects[j].cls, objects[j].colour)
        if same and a[0] < b[2] + _EDGE and b[0] < a[2] + _EDGE and a[1] < b[3] + _EDGE and b[1] < a[3] + _EDGE:
            return True
    return False


def build_scene(rng: np.random.Generator, specs: Sequence[ObjectSpec], look: SceneLook, size: tuple[int, int],
                num_frames: int, noise_seed: Sequence[int]) -> SyntheticScene | None:
    """Place every spec; None when one does not fit, two identical objects overlap, or an object is less
    visible than its spec requires at frame 0 (occlusion and image borders, measured on the canonical render)."""
    unit = min(size)
    extent = (size[1] / unit, size[0] / unit)
    objects = []
    for spec in specs:
        obj = place_object(rng, spec, look, extent, num_frames)
        if obj is None:
            return None
        objects.append(obj)
    if _twins_overlap(objects):
        return None
    scene = SyntheticScene(objects, look, size, num_frames, noise_seed)
    visible = scene.visible_fractions(0)
    if any(v < spec.min_visible for v, spec in zip(visible, specs, strict=True)):
        return None
    return scene


def scene_facts(scene: SyntheticScene) -> list[ObjectFacts]:
    """Language-level facts of every object: positions at frame 0, motion over the whole scene."""
    facts = []
    for obj in scene.objects:
        x, y = obj.path.position(0)
        facts.append(ObjectFacts(obj.cls, obj.colour, x, y, obj.scale * math.sqrt(obj.stretch),
                                 motion_label(obj.path, scene.num_frames)))
    return facts
