"""Scenes of the synthetic tabletop world: a textured table, lighting, objects on motion paths, exact rendering.

Geometry lives in *layout units*: 1 unit = the image's shorter side, so one scene renders at any (H, W) of
the same aspect ratio, and frames are rendered lazily, one at a time, for streams of any length.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .shapes import ObjectRaster, draw_object

TABLE_KINDS: tuple[str, ...] = ("wood", "laminate", "cloth", "tiles", "stone")
# Short side, in pixels, of the resolution-independent render used to validate layouts.
CANONICAL_SHORT_SIDE = 96


@dataclass(frozen=True)
class MotionPath:
    """Piecewise-linear path of an object's base centre: waypoints (time in frames, x, y in layout units).

    ``kind`` is "static", "linear", "wander" or "leave_return"; only static and linear paths have a motion
    that language may describe.
    """

    times: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    kind: str = "static"

    @staticmethod
    def static(x: float, y: float) -> MotionPath:
        return MotionPath(np.zeros(1), np.array([x]), np.array([y]), "static")

    def position(self, t: float) -> tuple[float, float]:
        if len(self.times) == 1:
            return float(self.xs[0]), float(self.ys[0])
        return float(np.interp(t, self.times, self.xs)), float(np.interp(t, self.times, self.ys))


@dataclass(frozen=True)
class SceneObject:
    """One object: appearance (class, colour, size, pose) and its motion path."""

    cls: str
    colour: str
    rgb: tuple[float, float, float]
    scale: float  # layout units per object unit (the object's nominal height)
    size_factor: float  # scale relative to the class's nominal scale, for size comparisons
    angle: float  # in-plane rotation, radians
    side: int  # +1 / -1: which side the handle / box side / book skew / banana curve faces
    stretch: float  # width jitter
    variant: int  # 0 / 1: small appearance variant (bottle cap, can band, box tape)
    path: MotionPath

    def phase(self, t: float) -> float:
        """Rotation of a rolling ball's seam: rolled distance / radius."""
        if self.cls != "ball":
            return 0.0
        return (self.path.position(t)[0] - self.path.position(0)[0]) / (0.5 * self.scale)


@dataclass(frozen=True)
class SceneLook:
    """Resolution-independent appearance of a scene: table, wall, lighting and sensor parameters."""

    horizon: float  # fraction of the image height where the wall meets the table
    wall_rgb: tuple[float, float, float]
    table_rgb: tuple[float, float, float]
    table_rgb2: tuple[float, float, float]
    table_kind: str
    pattern: float  # plank height / check size / tile size, layout units
    tones: np.ndarray  # (64,) per-plank / per-tile brightness offsets
    coarse_noise: np.ndarray  # (12, 12) smooth texture noise, upsampled at render time
    fine_noise: np.ndarray  # (48, 48)
    light: float  # -1 (from the left) .. +1 (from the right)
    gain: float
    tint: tuple[float, float, float]
    gradient: float
    vignette: float
    flicker: float  # relative amplitude of slow brightness change over time
    flicker_period: float  # frames
    flicker_phase: float
    switch_frame: int  # frame from which the light level jumps by switch_factor (-1: never)
    switch_factor: float
    shadow: float  # strength of contact shadows
    noise_sigma: float  # gaussian sensor noise, intensity levels
    blur: float  # defocus blur sigma, pixels at a 256-pixel short side


@dataclass(frozen=True)
class RenderedFrame:
    """One rendered frame: RGB image and the label map of visible instances (0 = table, i + 1 = object i)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) uint8

    def instance_mask(self, index: int) -> np.ndarray:
        """Visible pixels of object ``index`` (after occlusion and image borders), (H, W) bool."""
        return self.labels == index + 1


def sample_look(rng: np.random.Generator, num_frames: int) -> SceneLook:
    """Draw a random table, wall, lighting and sensor setup (low saturation surfaces, so colours stay nameable)."""

    def muted(lo: float, hi: float, saturation: float) -> tuple[float, float, float]:
        grey = rng.uniform(lo, hi)
        rgb = grey * (1.0 + rng.uniform(-saturation, saturation, 3))
        return float(rgb[0]), float(rgb[1]), float(rgb[2])

    kind = TABLE_KINDS[int(rng.integers(len(TABLE_KINDS)))]
    if kind == "wood":
        table = tuple(float(v) for v in np.array([150.0, 108.0, 70.0]) * rng.uniform(0.7, 1.15))
    else:
        table = muted(95, 195, 0.08)
    table2 = tuple(float(v) for v in np.array(table) * rng.uniform(0.72, 0.88))
    switch = int(rng.integers(1, num_frames)) if num_frames > 2 and rng.random() < 0.2 else -1
    return SceneLook(
        horizon=float(rng.uniform(0.12, 0.32)),
        wall_rgb=muted(170, 235, 0.06),
        table_rgb=table,
        table_rgb2=table2,
        table_kind=kind,
        pattern=float(rng.uniform(0.07, 0.16)),
        tones=rng.uniform(-0.07, 0.07, 64).astype(np.float32),
        coarse_noise=rng.uniform(-1.0, 1.0, (12, 12)).astype(np.float32),
        fine_noise=rng.uniform(-1.0, 1.0, (48, 48)).astype(np.float32),
        light=float(rng.uniform(-1.0, 1.0)),
        gain=float(rng.uniform(0.78, 1.18)),
        tint=(float(rng.uniform(0.94, 1.06)), 1.0, float(rng.uniform(0.94, 1.06))),
        gradient=float(rng.uniform(0.0, 0.3)),
        vignette=float(rng.uniform(0.0, 0.35)),
        flicker=float(rng.uniform(0.0, 0.1)),
        flicker_period=float(rng.uniform(20.0, 200.0)),
        flicker_phase=float(rng.uniform(0.0, 2 * math.pi)),
        switch_frame=switch,
        switch_factor=0.8 if rng.random() < 0.5 else 1.2,
        shadow=float(rng.uniform(0.25, 0.5)),
        noise_sigma=float(rng.uniform(1.0, 7.0)),
        blur=float(rng.uniform(0.0, 0.9)),
    )


def _smooth(noise: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upsample a small noise grid smoothly: cubic to 4x its size, then linear (cubic from a tiny grid is slow)."""
    middle = (min(width, 4 * noise.shape[1]), min(height, 4 * noise.shape[0]))
    smooth = cv2.resize(noise, middle, interpolation=cv2.INTER_CUBIC)
    return cv2.resize(smooth, (width, height), interpolation=cv2.INTER_LINEAR)


def _paint(field: np.ndarray, rgb: Sequence[float]) -> np.ndarray:
    """(H, W) brightness field times an RGB colour -> (H, W, 3) float32 (cv2.merge beats numpy broadcasting)."""
    return cv2.merge([field * np.float32(c) for c in rgb])


def _table(look: SceneLook, xs: np.ndarray, depth: np.ndarray, coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Table texture for rows at ``depth`` (layout units below the table's back edge): (h, W, 3) float32."""
    pattern = np.float32(look.pattern)
    if look.table_kind == "wood":
        plank = np.floor(depth / pattern).astype(np.int64)  # (h,)
        offset = (1.7 * plank).astype(np.float32)[:, None]
        grain = np.float32(0.05) * np.sin(np.float32(2 * np.pi) * (xs[None, :] * 3.0 + 0.8 * coarse) + offset)
        gap = np.where((depth / pattern) % 1.0 < 0.04, 0.72, 1.0).astype(np.float32)
        return _paint((1.0 + look.tones[plank % 64][:, None] + grain + 0.03 * fine) * gap[:, None], look.table_rgb)
    if look.table_kind == "cloth":
        parity_x, parity_y = np.floor(xs / pattern) % 2 == 1, np.floor(depth / pattern) % 2 == 1
        check = np.logical_xor.outer(parity_y, parity_x).astype(np.float32)
        field = 1.0 + 0.03 * np.outer(np.cos(2 * np.pi * 70 * depth), np.cos(2 * np.pi * 70 * xs)) + 0.03 * coarse
        return cv2.merge([field * (np.float32(a) + np.float32(b - a) * check)
                          for a, b in zip(look.table_rgb, look.table_rgb2, strict=True)])
    if look.table_kind == "tiles":
        tile_x, tile_y = np.floor(xs / pattern).astype(np.int64), np.floor(depth / pattern).astype(np.int64)
        field = 1.0 + look.tones[(tile_x[None, :] * 7 + tile_y[:, None] * 13) % 64] + 0.02 * fine
        grout = ((xs / pattern) % 1.0 < 0.05)[None, :] | ((depth / pattern) % 1.0 < 0.05)[:, None]
        return cv2.merge([np.where(grout, np.float32(0.85 * b), field * np.float32(a))
                          for a, b in zip(look.table_rgb, look.table_rgb2, strict=True)])
    if look.table_kind == "stone":
        veins = np.sin(2 * np.pi * (xs[None, :] * 1.3 + (depth * 0.7)[:, None] + 1.5 * coarse))
        dark = np.where(np.abs(veins) > 0.97, np.float32(0.12), np.float32(0.0))
        return _paint(1.0 + 0.08 * coarse + 0.05 * fine - dark, look.table_rgb)
    return _paint(1.0 + 0.05 * coarse + 0.025 * fine, look.table_rgb)  # laminate


def render_background(look: SceneLook, height: int, width: int) -> np.ndarray:
    """Wall and textured table at (height, width), float32 (H, W, 3) RGB, before lighting."""
    unit = min(height, width)
    xs = (np.arange(width, dtype=np.float32) + 0.5) / unit  # (W,)
    ys = (np.arange(height, dtype=np.float32) + 0.5) / unit  # (H,)
    horizon = np.float32(look.horizon * height / unit)
    wall_rows = int(np.count_nonzero(ys < horizon))
    coarse = _smooth(look.coarse_noise, height, width)  # (H, W)
    fine = _smooth(look.fine_noise, height, width)
    image = np.empty((height, width, 3), np.float32)
    if wall_rows:
        wall = (0.9 + 0.1 * ys[:wall_rows] / horizon)[:, None] * (1.0 + 0.02 * coarse[:wall_rows])
        image[:wall_rows] = _paint(wall, look.wall_rgb)
    if wall_rows < height:
        depth = ys[wall_rows:] - horizon
        image[wall_rows:] = _table(look, xs, depth, coarse[wall_rows:], fine[wall_rows:])
        image[wall_rows:][depth < 0.015] *= 0.75  # the table's back edge
    return image


def render_light(look: SceneLook, height: int, width: int) -> np.ndarray:
    """Static lighting field (directional gradient, vignette, colour tint), float32 (H, W, 3)."""
    xn = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5  # (W,)
    yn = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5  # (H,)
    field = 1.0 + look.gradient * look.light * xn[None, :] + 0.5 * look.gradient * yn[:, None]
    field = (field - look.vignette * (xn[None, :] ** 2 + yn[:, None] ** 2)).astype(np.float32)
    return _paint(field, look.tint)


@functools.lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """A fixed bank of standard normal samples; frames take random windows of it (much faster than sampling)."""
    return np.random.default_rng(0x5A2FA).standard_normal(1 << 21, dtype=np.float32)


def sensor_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise of ``shape`` (float32), deterministic in ``rng``."""
    table = _noise_table()
    count = math.prod(shape)
    if count > table.size:
        return rng.standard_normal(shape, dtype=np.float32)
    offset = int(rng.integers(0, table.size - count + 1))
    return table[offset:offset + count].reshape(shape)


class SyntheticScene:
    """A tabletop scene that renders any frame on demand, at its own resolution.

    Frames are never cached, so a 5,000-frame stream costs the memory of one frame. Rendering is exact:
    with ``noise=False`` every pixel of a visible instance mask comes from that object alone.
    """

    def __init__(self, objects: Sequence[SceneObject], look: SceneLook, size: tuple[int, int],
                 num_frames: int, noise_seed: Sequence[int]) -> None:
        self.objects: tuple[SceneObject, ...] = tuple(objects)
        self.look = look
        self.size = (int(size[0]), int(size[1]))
        self.num_frames = int(num_frames)
        self._noise_seed = tuple(int(s) for s in noise_seed)
        self._background: np.ndarray | None = None
        self._light: np.ndarray | None = None

    @property
    def unit(self) -> int:
        """Pixels per layout unit (the shorter image side)."""
        return min(self.size)

    @property
    def extent(self) -> tuple[float, float]:
        """(width, height) of the image in layout units."""
        return self.size[1] / self.unit, self.size[0] / self.unit

    def with_size(self, size: tuple[int, int]) -> SyntheticScene:
        """The same scene at another resolution (same layout when the aspect ratio is the same)."""
        return SyntheticScene(self.objects, self.look, size, self.num_frames, self._noise_seed)

    def gain(self, t: int) -> float:
        """Global light level at frame ``t`` (slow flicker and an optional light switch)."""
        look = self.look
        value = look.gain * (1.0 + look.flicker * math.sin(2 * math.pi * t / look.flicker_period + look.flicker_phase))
        if 0 <= look.switch_frame <= t:
            value *= look.switch_factor
        return value

    def _raster(self, index: int, t: int, unit: int, colour: bool) -> ObjectRaster:
        obj = self.objects[index]
        x, y = obj.path.position(t)
        return draw_object(obj.cls, scale=obj.scale * unit, origin=(x * unit, y * unit), angle=obj.angle,
                           side=obj.side, stretch=obj.stretch, phase=obj.phase(t), variant=obj.variant,
                           rgb=np.array(obj.rgb) if colour else None, light=self.look.light)

    def _depth_order(self, t: int, indices: Sequence[int]) -> list[int]:
        """Back to front: objects whose base is lower in the image are nearer the camera."""
        return sorted(indices, key=lambda i: (self.objects[i].path.position(t)[1], i))

    def label_map(self, t: int = 0, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Visible-instance label map at ``size`` (default: the scene's) and each object's full silhouette
        area in pixels, counted even outside the image: ((H, W) uint8, (N,) int64)."""
        height, width = size or self.size
        unit = min(height, width)
        labels = np.zeros((height, width), np.uint8)
        areas = np.zeros(len(self.objects), np.int64)
        for i in self._depth_order(t, range(len(self.objects))):
            raster = self._raster(i, t, unit, colour=False)
            areas[i] = int(raster.mask.sum())
            window = _clip_window(raster, height, width)
            if window is not None:
                image_slice, crop_slice = window
                labels[image_slice][raster.mask[crop_slice]] = i + 1
        return labels, areas

    def visible_fractions(self, t: int = 0) -> np.ndarray:
        """Fraction of each object's full silhouette that is visible at frame ``t`` (occlusion and borders),
        measured on a resolution-independent canonical render. (N,) float."""
        width, height = self.extent
        size = (round(height * CANONICAL_SHORT_SIDE), round(width * CANONICAL_SHORT_SIDE))
        labels, areas = self.label_map(t, size)
        counts = np.bincount(labels.ravel(), minlength=len(self.objects) + 1)[1:]
        return counts / np.maximum(areas, 1)

    def amodal_mask(self, index: int, t: int = 0) -> np.ndarray:
        """Full silhouette of object ``index`` inside the image at frame ``t``, ignoring occluders. (H, W) bool."""
        height, width = self.size
        mask = np.zeros((height, width), bool)
        raster = self._raster(index, t, self.unit, colour=False)
        window = _clip_window(raster, height, width)
        if window is not None:
            mask[window[0]] = raster.mask[window[1]]
        return mask

    def render(self, t: int = 0, *, objects: Sequence[int] | None = None, noise: bool = True,
               shadows: bool = True) -> RenderedFrame:
        """Render frame ``t``. ``objects`` limits drawing to a subset (e.g. one object alone, to check masks);
        ``noise`` adds defocus blur and sensor noise; ``shadows`` darkens the table under objects."""
        height, width = self.size
        unit = self.unit
        if self._background is None:
            self._light = render_light(self.look, height, width)
            self._background = cv2.multiply(render_background(self.look, height, width), self._light)
        indices = self._depth_order(t, range(len(self.objects)) if objects is None else objects)
        if shadows and indices:
            image = cv2.multiply(self._background, cv2.cvtColor(self._shadow_map(t, indices), cv2.COLOR_GRAY2RGB))
        else:
            image = self._background.copy()
        labels = np.zeros((height, width), np.uint8)
        for i in indices:
            raster = self._raster(i, t, unit, colour=True)
            window = _clip_window(raster, height, width)
            if window is None:
                continue
            image_slice, crop_slice = window
            visible = raster.mask[crop_slice]
            lit = raster.colour[crop_slice] * self._light[image_slice]
            np.copyto(image[image_slice], lit, where=visible[..., None])
            np.copyto(labels[image_slice], np.uint8(i + 1), where=visible)
        gain = self.gain(t)
        if noise:
            sigma = self.look.blur * unit / 256
            if sigma > 0.3:
                image = cv2.GaussianBlur(image, (5, 5), sigma)
            rng = np.random.default_rng((*self._noise_seed, t))
            # Noise is added before the gain, so it is pre-divided by it: gain * (x + n / gain) = gain * x + n.
            cv2.scaleAdd(sensor_noise(rng, image.shape), self.look.noise_sigma / gain, image, dst=image)
        np.maximum(image, 0.0, out=image)
        return RenderedFrame(cv2.convertScaleAbs(image, alpha=gain), labels)

    def _shadow_map(self, t: int, indices: Sequence[int]) -> np.ndarray:
        """Soft contact shadows, cast away from the light: (H, W) float32 multiplier in (0, 1].
        Drawn and blurred at reduced resolution, then upsampled (they are smooth anyway)."""
        height, width = self.size
        reduce = max(1, min(4, self.unit // 48))
        small_h, small_w = -(-height // reduce), -(-width // reduce)
        unit = self.unit / reduce
        shadow = np.zeros((small_h, small_w), np.float32)
        for i in indices:
            obj = self.objects[i]
            x, y = obj.path.position(t)
            half = 0.45 * obj.scale * (1.4 if obj.cls in ("book", "banana", "box") else 1.0)
            centre = ((x - 0.12 * self.look.light * obj.scale) * unit, (y - 0.02 * obj.scale) * unit)
            axes = (max(1.0, 2 * half * unit), max(1.0, 0.6 * half * unit))
            cv2.ellipse(shadow, (centre, axes, 0.0), 1.0, -1, cv2.LINE_AA)
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.5, 0.015 * unit))
        if reduce > 1:
            shadow = cv2.resize(shadow, (width, height), interpolation=cv2.INTER_LINEAR)
        return 1.0 - np.float32(self.look.shadow) * np.minimum(shadow, 1.0)

    def iter_frames(self, num_frames: int | None = None, start: int = 0, **render_options) -> Iterator[RenderedFrame]:
        """Render frames ``start`` .. ``start + num_frames - 1`` lazily (default: to the end of the scene)."""
        stop = self.num_frames if num_frames is None else start + num_frames
        for t in range(start, stop):
            yield self.render(t, **render_options)


Window = tuple[tuple[slice, slice], tuple[slice, slice]]


def _clip_window(raster: ObjectRaster, height: int, width: int) -> Window | None:
    """Overlap of an object crop with the image: (image slices, crop slices), or None when fully outside."""
    crop_h, crop_w = raster.mask.shape
    ix0, iy0 = max(raster.x0, 0), max(raster.y0, 0)
    ix1, iy1 = min(raster.x0 + crop_w, width), min(raster.y0 + crop_h, height)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    image_slice = (slice(iy0, iy1), slice(ix0, ix1))
    crop_slice = (slice(iy0 - raster.y0, iy1 - raster.y0), slice(ix0 - raster.x0, ix1 - raster.x0))
    return image_slice, crop_slice

