"""Procedural drawing of the world's object classes: polygons in object units, rasterised with OpenCV.

Silhouettes are filled without anti-aliasing (sub-pixel vertex precision, hard edges), so the instance mask
is exactly the set of pixels painted with the object's colours. Details (rims, labels, seams) are painted
inside the silhouette and never change the mask.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

_SUBPIXEL_BITS = 4
_SUBPIXEL = 1 << _SUBPIXEL_BITS

# How each class is shaded: upright cylinders, a sphere, or flat faces with a gentle gradient.
_SHADING: dict[str, str] = {
    "mug": "cylinder",
    "ball": "sphere",
    "box": "flat",
    "bottle": "cylinder",
    "can": "cylinder",
    "book": "flat",
    "banana": "flat",
}
# Half width of the cylinder that shades an upright class, in object units (before stretch).
_CYLINDER_HALF_WIDTH: dict[str, float] = {"mug": 0.37, "bottle": 0.18, "can": 0.28}


@dataclass(frozen=True)
class Part:
    """One painted piece of an object: closed contours filled together (even-odd, so rings have holes),
    or an open polyline when ``thickness`` > 0. Coordinates in object units, origin at the base centre, y down."""

    contours: tuple[np.ndarray, ...]
    tone: str
    silhouette: bool = True
    thickness: float = 0.0


@dataclass(frozen=True)
class ObjectRaster:
    """An object drawn into its own bounding-box crop at (x0, y0) of the image (crop may exceed the image)."""

    x0: int
    y0: int
    mask: np.ndarray  # (h, w) bool, full silhouette (amodal)
    colour: np.ndarray | None  # (h, w, 3) float32 RGB before scene lighting, or None when only the mask is needed


def _ellipse(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi,
             n: int = 36) -> np.ndarray:
    """Points of an elliptical arc from angle a0 to a1 (radians, image convention: y down)."""
    closed = math.isclose(a1 - a0, 2 * math.pi)
    t = np.linspace(a0, a1, n, endpoint=not closed)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _upright_body(half_width: float, height: float, bottom_ry: float) -> np.ndarray:
    """A cylinder's side silhouette: straight sides, flat top at -height, rounded (elliptic) bottom at 0."""
    bottom = _ellipse(0.0, -bottom_ry, half_width, bottom_ry, math.pi, 0.0, n=18)
    return np.concatenate([[[-half_width, -height]], bottom, [[half_width, -height]]])


def _mug(stretch: float, side: int) -> list[Part]:
    half_width, height, rim_ry = 0.37 * stretch, 0.78, 0.09
    handle_x, handle_y = side * (half_width + 0.02), -0.5 * height
    handle = Part((_ellipse(handle_x, handle_y, 0.22, 0.25), _ellipse(handle_x, handle_y, 0.12, 0.15)), "body")
    return [
        handle,
        Part((_upright_body(half_width, height, 0.06),), "body"),
        Part((_ellipse(0.0, -height, half_width, rim_ry),), "light"),
        Part((_ellipse(0.0, -height + 0.01, half_width - 0.05, rim_ry - 0.03),), "interior", silhouette=False),
    ]


def _ball(phase: float) -> list[Part]:
    # A seam band that turns with the ball when it rolls.
    seam = _ellipse(0.0, 0.0, 0.46, 0.17, n=40)
    rot = np.array([[math.cos(phase), -math.sin(phase)], [math.sin(phase), math.cos(phase)]])
    seam = seam @ rot.T + np.array([0.0, -0.5])
    return [
        Part((_ellipse(0.0, -0.5, 0.5, 0.5, n=48),), "body"),
        Part((seam,), "light", silhouette=False, thickness=0.07),
    ]


def _box(stretch: float, side: int, variant: int) -> list[Part]:
    half_width, height, dx, dy = 0.45 * stretch, 0.62, 0.22 * side, -0.2
    edge = side * half_width
    parts = [
        Part((_rect(-half_width, -height, half_width, 0.0),), "body"),
        Part((np.array([[-half_width, -height], [half_width, -height], [half_width + dx, -height + dy],
                        [-half_width + dx, -height + dy]]),), "light"),
        Part((np.array([[edge, 0.0], [edge, -height], [edge + dx, -height + dy], [edge + dx, dy]]),), "dark"),
    ]
    if variant:
        parts.append(Part((_rect(-0.06, -height, 0.06, 0.0),), "label", silhouette=False))
    return parts


def _bottle(stretch: float, variant: int) -> list[Part]:
    half_width, body_top, neck = 0.18 * stretch, 0.6, 0.075
    shoulder = _ellipse(0.0, -body_top, half_width, 0.16, math.pi, 2 * math.pi, n=16)
    body = np.concatenate([_upright_body(half_width, body_top, 0.04)[::-1], shoulder[1:-1]])
    return [
        Part((body,), "body"),
        Part((_rect(-neck, -0.9, neck, -body_top - 0.1),), "body"),
        Part((_rect(-neck - 0.02, -1.0, neck + 0.02, -0.9),), "black" if variant else "white"),
        Part((_rect(-half_width, -0.42, half_width, -0.2),), "label", silhouette=False),
    ]


def _can(stretch: float, variant: int) -> list[Part]:
    half_width, height = 0.28 * stretch, 0.72
    return [
        Part((_upright_body(half_width, height, 0.06),), "body"),
        Part((_ellipse(0.0, -height, half_width, 0.07),), "grey"),
        Part((_ellipse(0.0, -height, half_width - 0.04, 0.045),), "metal", silhouette=False),
        Part((_rect(-half_width, -0.48, half_width, -0.3),), "light" if variant else "dark", silhouette=False),
    ]


def _book(stretch: float, side: int) -> list[Part]:
    half_width, pages, depth, skew = 0.5 * stretch, 0.13, 0.32, 0.1 * side
    cover = np.array([[-half_width, -pages], [half_width, -pages], [half_width + skew, -pages - depth],
                      [-half_width + skew, -pages - depth]])
    return [
        Part((cover,), "body"),
        Part((_rect(-half_width, -pages, half_width, 0.0),), "white"),
        Part((_rect(-half_width, -pages, -half_width + 0.08, 0.0),), "body", silhouette=False),
        Part((np.array([[-half_width + 0.1, -pages / 2], [half_width - 0.02, -pages / 2]]),), "grey",
             silhouette=False, thickness=0.015),
        Part((np.array([[-0.2, -pages - 0.08], [0.25, -pages - 0.08], [0.25 + skew * 0.5, -pages - 0.22],
                        [-0.2 + skew * 0.5, -pages - 0.22]]),), "label", silhouette=False),
    ]


def _banana() -> list[Part]:
    radius, half_thickness = 0.58, 0.1
    t = np.linspace(math.radians(38), math.radians(142), 24)
    centre_y = -(radius + half_thickness)
    centre_line = np.stack([radius * np.cos(t), centre_y + radius * np.sin(t)], axis=1)
    normal = np.stack([np.cos(t), np.sin(t)], axis=1)
    taper = 0.025 + half_thickness * np.sin(np.linspace(0.0, math.pi, t.size)) ** 0.6
    outline = np.concatenate([centre_line + normal * taper[:, None], (centre_line - normal * taper[:, None])[::-1]])
    tangent = centre_line[0] - centre_line[1]
    tangent /= np.linalg.norm(tangent)
    stem_normal = np.array([-tangent[1], tangent[0]])
    stem = np.array([centre_line[0] + stem_normal * 0.03, centre_line[0] + stem_normal * 0.03 + tangent * 0.09,
                     centre_line[0] - stem_normal * 0.03 + tangent * 0.09, centre_line[0] - stem_normal * 0.03])
    return [
        Part((outline,), "body"),
        Part((stem,), "brown"),
        Part((_ellipse(*centre_line[-1], 0.035, 0.035, n=12),), "brown"),
        Part((centre_line[3:-3] - normal[3:-3] * 0.03,), "light", silhouette=False, thickness=0.03),
    ]


def _class_parts(cls: str, stretch: float, side: int, phase: float, variant: int) -> list[Part]:
    if cls == "mug":
        return _mug(stretch, side)
    if cls == "ball":
        return _ball(phase)
    if cls == "box":
        return _box(stretch, side, variant)
    if cls == "bottle":
        return _bottle(stretch, variant)
    if cls == "can":
        return _can(stretch, variant)
    if cls == "book":
        return _book(stretch, side)
    if cls == "banana":
        return _banana()
    raise ValueError(f"unknown object class {cls!r}")


@dataclass(frozen=True)
class Geometry:
    """An object's parts, with all their vertices packed in one array so they are transformed in one go."""

    parts: tuple[Part, ...]
    points: np.ndarray  # (N, 2) every contour of every part, in order
    spans: tuple[tuple[int, int], ...]  # (start, stop) rows of ``points`` of each contour
    silhouette_points: np.ndarray  # (M, 2) vertices of the silhouette parts only


@functools.lru_cache(maxsize=4096)
def object_geometry(cls: str, stretch: float = 1.0, side: int = 1, phase: float = 0.0, variant: int = 0) -> Geometry:
    """The parts of one object of class ``cls`` in object units (1 unit = the class's nominal size), cached:
    an object keeps its geometry from frame to frame (a rolling ball's seam excepted)."""
    parts = tuple(_class_parts(cls, stretch, side, phase, variant))
    contours = [c for p in parts for c in p.contours]
    points = np.concatenate(contours)
    points.setflags(write=False)
    silhouette = np.concatenate([c for p in parts if p.silhouette for c in p.contours])
    silhouette.setflags(write=False)
    stops = np.cumsum([len(c) for c in contours]).tolist()
    spans = tuple(zip([0, *stops[:-1]], stops, strict=True))
    return Geometry(parts, points, spans, silhouette)


def _transform(points: np.ndarray, scale: float, origin: tuple[float, float], angle: float, side: int,
               mirror: bool) -> np.ndarray:
    """Object units -> pixels: optional mirror (x *= side), rotation by ``angle``, scale, translation."""
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    flip = side if mirror else 1
    matrix = np.array([[cos * flip, sin * flip], [-sin, cos]])  # row-vector form of [[cos, -sin], [sin, cos]]
    return points @ matrix + np.asarray(origin)


@functools.lru_cache(maxsize=8192)
def object_bounds(cls: str, *, scale: float, angle: float = 0.0, side: int = 1, stretch: float = 1.0,
                  variant: int = 0) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of an object's silhouette relative to its base centre, in the units of ``scale``."""
    geometry = object_geometry(cls, stretch, side, 0.0, variant)
    pts = _transform(geometry.silhouette_points, scale, (0.0, 0.0), angle, side, mirror=cls == "banana")
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


_FIXED_TONES: dict[str, tuple[float, float, float]] = {
    "white": (238.0, 236.0, 228.0),
    "grey": (168.0, 170.0, 175.0),
    "metal": (120.0, 122.0, 128.0),
    "black": (30.0, 30.0, 32.0),
    "brown": (92.0, 62.0, 32.0),
}
# Tones derived from the object colour: rgb * factor + offset.
_DERIVED_TONES: dict[str, tuple[float, float]] = {
    "body": (1.0, 0.0),
    "light": (0.6, 98.0),
    "label": (0.3, 168.0),
    "dark": (0.58, 0.0),
    "interior": (0.38, 8.0),
}


def tone_rgb(tone: str, rgb: np.ndarray) -> tuple[float, float, float]:
    """The paint of a part: the object colour, a shade of it, or a fixed material colour."""
    if tone in _FIXED_TONES:
        return _FIXED_TONES[tone]
    factor, offset = _DERIVED_TONES[tone]
    return (float(rgb[0]) * factor + offset, float(rgb[1]) * factor + offset, float(rgb[2]) * factor + offset)


def _shading(cls: str, local_x: np.ndarray, local_y: np.ndarray, stretch: float,
             light: float) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicative shade and additive specular highlight from object-local coordinates (arrays that
    broadcast to the crop: a (1, w) row when only x matters)."""
    mode = _SHADING[cls]
    if mode == "cylinder":
        u = np.clip(local_x / (_CYLINDER_HALF_WIDTH[cls] * stretch), -1.0, 1.0)
        shade = 0.6 + 0.5 * np.cos(np.clip((u - 0.35 * light) * 1.35, -math.pi / 2, math.pi / 2))
        specular = 60.0 * np.exp(-(((u - 0.55 * light) / 0.12) ** 2))
    elif mode == "sphere":
        dist2 = (local_x ** 2 + (local_y + 0.5) ** 2) / 0.25
        shade = 1.1 - 0.5 * np.clip(dist2, 0.0, 1.0)
        spot2 = ((local_x - 0.2 * light) ** 2 + (local_y + 0.66) ** 2) / 0.25
        specular = 80.0 * np.exp(-spot2 / 0.03)
    else:
        shade = 1.0 + 0.12 * np.clip(local_x, -1.0, 1.0) * light
        specular = np.zeros_like(shade)
    return shade.astype(np.float32), specular.astype(np.float32)


def draw_object(cls: str, *, scale: float, origin: tuple[float, float], angle: float = 0.0, side: int = 1,
                stretch: float = 1.0, phase: float = 0.0, variant: int = 0, rgb: np.ndarray | None = None,
                light: float = 0.0) -> ObjectRaster:
    """Rasterise one object: ``scale`` pixels per object unit, base centre at ``origin`` (pixels).

    Returns its full silhouette mask in a tight crop and, when ``rgb`` is given, its shaded colours.
    """
    geometry = object_geometry(cls, stretch, side, phase, variant)
    pixels = _transform(geometry.points, scale, origin, angle, side, mirror=cls == "banana")  # (N, 2)
    x0, y0 = (np.floor(pixels.min(axis=0)) - 1).astype(int)
    x1, y1 = (np.ceil(pixels.max(axis=0)) + 2).astype(int)
    height, width = y1 - y0, x1 - x0
    # OpenCV puts integer coordinates at pixel centres; ours put pixel centres at +0.5.
    packed = np.round((pixels - (x0 + 0.5, y0 + 0.5)) * _SUBPIXEL).astype(np.int32)
    fixed = [packed[start:stop] for start, stop in geometry.spans]
    mask = np.zeros((height, width), np.uint8)
    colour = np.zeros((height, width, 3), np.float32) if rgb is not None else None
    start = 0
    for part in geometry.parts:
        contours = fixed[start:start + len(part.contours)]
        start += len(part.contours)
        if part.thickness > 0:
            if colour is not None:
                thickness = max(1, round(part.thickness * scale))
                cv2.polylines(colour, contours, False, tone_rgb(part.tone, rgb), thickness, cv2.LINE_8, _SUBPIXEL_BITS)
            continue
        if part.silhouette:
            cv2.fillPoly(mask, contours, 1, cv2.LINE_8, _SUBPIXEL_BITS)
        if colour is not None:
            cv2.fillPoly(colour, contours, tone_rgb(part.tone, rgb), cv2.LINE_8, _SUBPIXEL_BITS)
    if colour is not None:
        # Pixel centres back to object-local units for shading (inverse of _transform, without mirroring).
        grid_x = (np.arange(x0, x1, dtype=np.float32) + 0.5 - origin[0])[None, :] / scale  # (1, w)
        grid_y = (np.arange(y0, y1, dtype=np.float32) + 0.5 - origin[1])[:, None] / scale  # (h, 1)
        if angle == 0.0:
            local_x, local_y = grid_x, grid_y
        else:
            cos, sin = math.cos(angle), math.sin(angle)
            local_x, local_y = cos * grid_x + sin * grid_y, -sin * grid_x + cos * grid_y  # (h, w)
        shade, specular = _shading(cls, local_x, local_y, stretch, light)
        colour *= shade[..., None]
        colour += specular[..., None]
    return ObjectRaster(int(x0), int(y0), mask.view(bool), colour)
