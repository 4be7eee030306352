"""JSON payload of the ``targets`` topic (``std_msgs/String``): build, validate, parse. ROS-free.

Schema, version 1 — one message per processed camera frame, published beside the ``masks`` label image
of the same frame (same stamp and frame_id)::

    {
      "version": 1,
      "stamp": {"sec": 1700000000, "nanosec": 250000000},  # header.stamp of the camera frame
      "frame_id": "camera_color_optical_frame",             # header.frame_id of the camera frame
      "targets": [                                          # sorted by id; [] when nothing is tracked
        {
          "id": 1,                      # int >= 1: this target's pixel value in the masks label image
          "phrase": "the blue mug",     # the referring expression the target was grounded from
          "state": "tracking",          # "tracking", or "lost" (occluded / out of view, kept to re-acquire)
          "score": 0.9731,              # finite float (object score), rounded to 4 decimals
          "bbox": [120, 64, 181, 130],  # [x_min, y_min, x_max, y_max] pixels, min inclusive, max exclusive
                                        # (width = x_max - x_min); null when the mask is empty
          "centroid": [150.37, 97.02],  # [x, y] mean column and row index of the mask pixels (pixel (c, r)
                                        # has its centre at (c, r)), rounded to 2 decimals; null when empty
          "area": 3221                  # number of mask pixels; 0 when the mask is empty
        }
      ]
    }

Keys appear in exactly this order, the text is compact (no spaces) and UTF-8 (phrases are not escaped to
ASCII), so equal content gives byte-equal messages. Readers must ignore keys they do not know: new keys
may be added within version 1; removing a key or changing its meaning increments ``version``.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

TARGETS_SCHEMA_VERSION = 1
TARGET_STATES = ("tracking", "lost")
NANOSECONDS_PER_SECOND = 1_000_000_000
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_SCORE_DECIMALS = 4
_CENTROID_DECIMALS = 2


class TargetsSchemaError(ValueError):
    """A targets payload that does not follow the schema; the message names the offending field."""


@dataclass(frozen=True)
class MaskGeometry:
    """Box, centroid and pixel count of one mask; bbox and centroid are None for an empty mask."""

    bbox: tuple[int, int, int, int] | None  # x_min, y_min, x_max (exclusive), y_max (exclusive)
    centroid: tuple[float, float] | None  # x, y
    area: int


@dataclass(frozen=True)
class TargetEntry:
    """One target of one frame, as written into the payload."""

    id: int
    phrase: str
    state: str
    score: float
    geometry: MaskGeometry

    @classmethod
    def from_mask(
        cls, target_id: int, phrase: str, state: str, score: float, mask: np.ndarray
    ) -> TargetEntry:
        """Build an entry whose geometry is measured on the target's H×W bool mask."""
        return cls(target_id, phrase, state, score, mask_geometry(mask))


def mask_geometry(mask: np.ndarray) -> MaskGeometry:
    """Measure bbox (min inclusive, max exclusive), centroid (mean x, y) and area of an H×W bool mask."""
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(f"mask must be a 2-D bool array, got {mask.dtype} {mask.shape}")
    row_counts = np.count_nonzero(mask, axis=1)  # H
    col_counts = np.count_nonzero(mask, axis=0)  # W
    area = int(row_counts.sum())
    if area == 0:
        return MaskGeometry(bbox=None, centroid=None, area=0)
    rows = np.flatnonzero(row_counts)
    cols = np.flatnonzero(col_counts)
    centroid_x = float(col_counts @ np.arange(mask.shape[1])) / area
    centroid_y = float(row_counts @ np.arange(mask.shape[0])) / area
    bbox = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return MaskGeometry(bbox=bbox, centroid=(centroid_x, centroid_y), area=area)


def split_stamp_ns(stamp_ns: int) -> tuple[int, int]:
    """Split integer nanoseconds into ROS (sec, nanosec), nanosec in [0, 1e9); sec must fit int32."""
    sec, nanosec = divmod(int(stamp_ns), NANOSECONDS_PER_SECOND)
    if not _INT32_MIN <= sec <= _INT32_MAX:
        raise ValueError(f"stamp {stamp_ns} ns is outside the int32 seconds range of builtin_interfaces/Time")
    return sec, nanosec


def targets_payload(stamp_ns: int, frame_id: str, targets: Iterable[TargetEntry]) -> str:
    """Serialise one frame's targets as compact, deterministic JSON (schema in the module docstring)."""
    sec, nanosec = split_stamp_ns(stamp_ns)
    payload = {
        "version": TARGETS_SCHEMA_VERSION,
        "stamp": {"sec": sec, "nanosec": nanosec},
        "frame_id": frame_id,
        "targets": [_target_json(entry) for entry in sorted(targets, key=lambda entry: entry.id)],
    }
    validate_targets(payload)  # the writer never emits what the reader would refuse
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _target_json(entry: TargetEntry) -> dict[str, Any]:
    geometry = entry.geometry
    centroid = (
        None
        if geometry.centroid is None
        else [round(value, _CENTROID_DECIMALS) for value in geometry.centroid]
    )
    score = float(entry.score)
    return {
        "id": operator.index(entry.id),  # numpy integers welcome, floats refused
        "phrase": entry.phrase,
        "state": entry.state,
        "score": round(score, _SCORE_DECIMALS) if math.isfinite(score) else score,
        "bbox": None if geometry.bbox is None else list(geometry.bbox),
        "centroid": centroid,
        "area": geometry.area,
    }


def parse_targets(text: str) -> dict[str, Any]:
    """Parse and validate a targets payload; raises TargetsSchemaError naming the first bad field."""
    try:
        payload = json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError) as error:
        raise TargetsSchemaError(f"targets payload is not valid JSON: {error}") from error
    validate_targets(payload)
    return payload


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def validate_targets(payload: Any) -> None:
    """Check a decoded payload against schema version 1; raises TargetsSchemaError."""
    if not isinstance(payload, dict):
        raise TargetsSchemaError(f"targets payload must be a JSON object, got {type(payload).__name__}")
    version = _require(payload, "version", "payload")
    if version != TARGETS_SCHEMA_VERSION:
        raise TargetsSchemaError(
            f"version: {version!r} is not supported (this reader understands {TARGETS_SCHEMA_VERSION})"
        )
    stamp = _require(payload, "stamp", "payload")
    if not isinstance(stamp, dict):
        raise TargetsSchemaError(f"stamp: expected an object with sec and nanosec, got {stamp!r}")
    _require_int(stamp, "sec", "stamp", _INT32_MIN, _INT32_MAX)
    _require_int(stamp, "nanosec", "stamp", 0, NANOSECONDS_PER_SECOND - 1)
    if not isinstance(_require(payload, "frame_id", "payload"), str):
        raise TargetsSchemaError(f"frame_id: expected a string, got {payload['frame_id']!r}")
    targets = _require(payload, "targets", "payload")
    if not isinstance(targets, list):
        raise TargetsSchemaError(f"targets: expected a list, got {type(targets).__name__}")
    seen_ids: set[int] = set()
    for index, target in enumerate(targets):
        where = f"targets[{index}]"
        if not isinstance(target, dict):
            raise TargetsSchemaError(f"{where}: expected an object, got {target!r}")
        target_id = _require_int(target, "id", where, 1, None)
        if target_id in seen_ids:
            raise TargetsSchemaError(f"{where}.id: {target_id} appears twice")
        seen_ids.add(target_id)
        _validate_target_fields(target, where)


def _validate_target_fields(target: dict[str, Any], where: str) -> None:
    if not isinstance(_require(target, "phrase", where), str):
        raise TargetsSchemaError(f"{where}.phrase: expected a string, got {target['phrase']!r}")
    if _require(target, "state", where) not in TARGET_STATES:
        raise TargetsSchemaError(
            f"{where}.state: {target['state']!r} is not one of {', '.join(TARGET_STATES)}"
        )
    score = _require(target, "score", where)
    if not _is_number(score) or not math.isfinite(score):
        raise TargetsSchemaError(f"{where}.score: expected a finite number, got {score!r}")
    area = _require_int(target, "area", where, 0, None)
    bbox = _require(target, "bbox", where)
    centroid = _require(target, "centroid", where)
    if bbox is None or centroid is None or area == 0:
        if not (bbox is None and centroid is None and area == 0):
            raise TargetsSchemaError(
                f"{where}: bbox, centroid and area must be null, null and 0 together (empty mask), "
                f"got {bbox!r}, {centroid!r}, {area!r}"
            )
        return
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_int(value) for value in bbox)):
        raise TargetsSchemaError(
            f"{where}.bbox: expected [x_min, y_min, x_max, y_max] integers, got {bbox!r}"
        )
    x_min, y_min, x_max, y_max = bbox
    if not (0 <= x_min < x_max and 0 <= y_min < y_max):
        raise TargetsSchemaError(
            f"{where}.bbox: expected 0 <= x_min < x_max and 0 <= y_min < y_max, got {bbox}"
        )
    if area > (x_max - x_min) * (y_max - y_min):
        raise TargetsSchemaError(f"{where}.area: {area} pixels do not fit in bbox {bbox}")
    if not (
        isinstance(centroid, list) and len(centroid) == 2 and all(_is_number(value) for value in centroid)
    ):
        raise TargetsSchemaError(f"{where}.centroid: expected [x, y] numbers, got {centroid!r}")
    if not (x_min <= centroid[0] <= x_max - 1 and y_min <= centroid[1] <= y_max - 1):
        raise TargetsSchemaError(f"{where}.centroid: {centroid} lies outside bbox {bbox}")


def _require(container: dict[str, Any], key: str, where: str) -> Any:
    if key not in container:
        raise TargetsSchemaError(f"{where}: missing key {key!r}")
    return container[key]


def _require_int(container: dict[str, Any], key: str, where: str, low: int, high: int | None) -> int:
    value = _require(container, key, where)
    if not _is_int(value) or value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise TargetsSchemaError(f"{where}.{key}: expected an integer {bounds}, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
