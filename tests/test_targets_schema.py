"""The targets JSON schema (build, parse, validate), mask geometry and label images: all ROS-free."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sa2va_ros.label_mask import label_image_from_masks, masks_from_label_image
from sa2va_ros.targets_schema import (
    MaskGeometry,
    TargetEntry,
    TargetsSchemaError,
    mask_geometry,
    parse_targets,
    split_stamp_ns,
    targets_payload,
)

STAMP_NS = 1_700_000_000_250_000_001


def box_mask(shape: tuple[int, int], x_min: int, y_min: int, x_max: int, y_max: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y_min:y_max, x_min:x_max] = True
    return mask


# ---------------------------------------------------------------- mask geometry


def test_mask_geometry_of_a_rectangle_is_inclusive_exclusive() -> None:
    geometry = mask_geometry(box_mask((10, 12), x_min=3, y_min=2, x_max=7, y_max=5))
    assert geometry.bbox == (3, 2, 7, 5)
    assert geometry.area == 4 * 3
    assert geometry.centroid == pytest.approx((4.5, 3.0))


def test_mask_geometry_of_one_pixel_has_its_centroid_on_the_pixel() -> None:
    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 3] = True
    assert mask_geometry(mask) == MaskGeometry(bbox=(3, 1, 4, 2), centroid=(3.0, 1.0), area=1)


def test_mask_geometry_of_an_empty_mask_has_no_box() -> None:
    assert mask_geometry(np.zeros((3, 3), dtype=bool)) == MaskGeometry(bbox=None, centroid=None, area=0)


@pytest.mark.parametrize("bad_mask", [np.ones((3, 3), dtype=np.uint8), np.ones((2, 3, 3), dtype=bool)])
def test_mask_geometry_refuses_non_boolean_or_non_2d_masks(bad_mask: np.ndarray) -> None:
    with pytest.raises(ValueError, match="2-D bool"):
        mask_geometry(bad_mask)


@settings(max_examples=60, deadline=None)
@given(arrays(dtype=bool, shape=st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_mask_geometry_matches_the_pixel_coordinates(mask: np.ndarray) -> None:
    geometry = mask_geometry(mask)
    rows, cols = np.nonzero(mask)
    assert geometry.area == rows.size
    if rows.size == 0:
        assert geometry.bbox is None and geometry.centroid is None
        return
    assert geometry.bbox == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert geometry.centroid == pytest.approx((cols.mean(), rows.mean()))


# ---------------------------------------------------------------- payload


def sample_entries() -> list[TargetEntry]:
    shape = (20, 30)
    return [
        TargetEntry.from_mask(2, "the blue mug", "tracking", 0.912345678, box_mask(shape, 4, 5, 10, 9)),
        TargetEntry.from_mask(1, "die grüne Flasche", "lost", 0.1, np.zeros(shape, dtype=bool)),
    ]


def test_payload_round_trips_through_the_parser() -> None:
    text = targets_payload(STAMP_NS, "camera_optical", sample_entries())
    payload = parse_targets(text)
    assert payload["version"] == 1
    assert payload["stamp"] == {"sec": 1_700_000_000, "nanosec": 250_000_001}
    assert payload["frame_id"] == "camera_optical"
    assert [target["id"] for target in payload["targets"]] == [1, 2]  # sorted by id
    lost, mug = payload["targets"]
    assert lost == {
        "id": 1,
        "phrase": "die grüne Flasche",
        "state": "lost",
        "score": 0.1,
        "bbox": None,
        "centroid": None,
        "area": 0,
    }
    assert mug["bbox"] == [4, 5, 10, 9]
    assert mug["centroid"] == [6.5, 6.5]
    assert mug["area"] == 24
    assert mug["score"] == 0.9123  # rounded to 4 decimals


def test_payload_is_compact_deterministic_and_keeps_the_documented_key_order() -> None:
    entries = sample_entries()
    text = targets_payload(STAMP_NS, "camera_optical", entries)
    assert text == targets_payload(STAMP_NS, "camera_optical", list(reversed(entries)))
    assert " " not in text.replace("the blue mug", "").replace("die grüne Flasche", "")
    assert "grüne" in text  # UTF-8, not \\u escapes
    payload = json.loads(text)
    assert list(payload) == ["version", "stamp", "frame_id", "targets"]
    assert list(payload["stamp"]) == ["sec", "nanosec"]
    assert list(payload["targets"][0]) == ["id", "phrase", "state", "score", "bbox", "centroid", "area"]


def test_payload_with_no_targets_is_valid() -> None:
    assert parse_targets(targets_payload(0, "", []))["targets"] == []


def test_payload_accepts_numpy_integer_ids() -> None:
    entry = TargetEntry.from_mask(
        np.int64(7), "ball", "tracking", np.float32(0.5), box_mask((4, 4), 0, 0, 2, 2)
    )
    assert parse_targets(targets_payload(5, "f", [entry]))["targets"][0]["id"] == 7


@pytest.mark.parametrize(
    ("entry_changes", "message"),
    [
        ({"id": 0}, "id"),
        ({"state": "gone"}, "state"),
        ({"score": float("nan")}, "score"),
        ({"score": float("inf")}, "score"),
        ({"phrase": None}, "phrase"),
    ],
)
def test_payload_writer_refuses_what_the_reader_would_refuse(entry_changes: dict, message: str) -> None:
    fields = {
        "id": 1,
        "phrase": "mug",
        "state": "tracking",
        "score": 0.5,
        "geometry": MaskGeometry(None, None, 0),
    }
    with pytest.raises(TargetsSchemaError, match=message):
        targets_payload(1, "f", [TargetEntry(**(fields | entry_changes))])


def test_payload_writer_refuses_duplicate_ids() -> None:
    entry = TargetEntry(3, "mug", "tracking", 0.5, MaskGeometry(None, None, 0))
    with pytest.raises(TargetsSchemaError, match="appears twice"):
        targets_payload(1, "f", [entry, entry])


def test_stamp_split_handles_negative_times_and_refuses_overflowing_seconds() -> None:
    assert split_stamp_ns(-1) == (-1, 999_999_999)
    assert split_stamp_ns(3_000_000_007) == (3, 7)
    with pytest.raises(ValueError, match="int32"):
        split_stamp_ns(2**31 * 1_000_000_000)


def valid_payload() -> dict:
    return json.loads(targets_payload(STAMP_NS, "camera_optical", sample_entries()))


DELETE = object()


def with_change(path: tuple, value: object) -> str:
    """A valid payload's JSON text with the value at ``path`` replaced (or deleted)."""
    payload = valid_payload()
    container = payload
    for key in path[:-1]:
        container = container[key]
    if value is DELETE:
        del container[path[-1]]
    else:
        container[path[-1]] = value
    return json.dumps(payload)


@pytest.mark.parametrize(
    ("text", "message"), [("{not json", "not valid JSON"), ("[]", "must be a JSON object")]
)
def test_parser_refuses_text_that_is_not_a_json_object(text: str, message: str) -> None:
    with pytest.raises(TargetsSchemaError, match=message):
        parse_targets(text)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("version",), 2, "version: 2 is not supported"),
        (("version",), DELETE, "missing key 'version'"),
        (("stamp", "nanosec"), 1_000_000_000, r"stamp\.nanosec"),
        (("stamp", "sec"), 1.5, r"stamp\.sec"),
        (("frame_id",), 5, "frame_id"),
        (("targets",), {}, "targets: expected a list"),
        (("targets", 1, "id"), True, r"targets\[1\]\.id"),
        (("targets", 1, "id"), 1, r"targets\[1\]\.id: 1 appears twice"),
        (("targets", 0, "state"), "occluded", r"targets\[0\]\.state"),
        (("targets", 1, "phrase"), DELETE, r"targets\[1\]: missing key 'phrase'"),
        (("targets", 1, "score"), "high", r"targets\[1\]\.score"),
        (("targets", 1, "bbox"), None, r"targets\[1\]: bbox, centroid and area"),
        (("targets", 0, "area"), 5, r"targets\[0\]: bbox, centroid and area"),
        (("targets", 1, "bbox"), [4, 5, 10], r"targets\[1\]\.bbox"),
        (("targets", 1, "bbox"), [10, 5, 4, 9], r"targets\[1\]\.bbox"),
        (("targets", 1, "area"), 25, r"targets\[1\]\.area: 25 pixels do not fit"),
        (("targets", 1, "centroid"), [12.0, 6.5], r"targets\[1\]\.centroid: .* outside bbox"),
        (("targets", 1, "centroid"), ["6", 6.5], r"targets\[1\]\.centroid"),
        (("targets", 0, "score"), float("nan"), "not valid JSON: NaN is not allowed"),
    ],
)
def test_parser_names_the_offending_field(path: tuple, value: object, message: str) -> None:
    with pytest.raises(TargetsSchemaError, match=message) as caught:
        parse_targets(with_change(path, value))
    assert "\n" not in str(caught.value)


def test_parser_ignores_unknown_keys_for_forward_compatibility() -> None:
    payload = valid_payload()
    payload["camera"] = "left"
    payload["targets"][0]["velocity"] = [1.0, 2.0]
    assert parse_targets(json.dumps(payload))["camera"] == "left"


# ---------------------------------------------------------------- label images


def test_overlapping_pixels_go_to_the_higher_score() -> None:
    shape = (6, 8)
    masks = {1: box_mask(shape, 0, 0, 5, 4), 7: box_mask(shape, 3, 2, 8, 6)}
    labels = label_image_from_masks(masks, shape, scores={1: 0.4, 7: 0.9})
    assert labels.dtype == np.uint16 and labels.shape == shape
    overlap = masks[1] & masks[7]
    assert overlap.any()
    assert (labels[overlap] == 7).all()
    assert (labels[masks[1] & ~overlap] == 1).all()
    assert (labels[~(masks[1] | masks[7])] == 0).all()
    flipped = label_image_from_masks(masks, shape, scores={1: 0.9, 7: 0.4})
    assert (flipped[overlap] == 1).all()


def test_equal_scores_or_no_scores_keep_the_lower_id() -> None:
    shape = (3, 3)
    masks = {5: np.ones(shape, dtype=bool), 2: np.ones(shape, dtype=bool)}
    assert (label_image_from_masks(masks, shape) == 2).all()
    assert (label_image_from_masks(masks, shape, scores={5: 0.5, 2: 0.5}) == 2).all()


def test_no_masks_give_background_only() -> None:
    labels = label_image_from_masks({}, (2, 4), dtype=np.uint8)
    assert labels.dtype == np.uint8 and labels.shape == (2, 4) and not labels.any()


@pytest.mark.parametrize(
    ("masks", "kwargs", "message"),
    [
        ({0: np.ones((2, 2), dtype=bool)}, {}, "outside 1..65535"),
        ({256: np.ones((2, 2), dtype=bool)}, {"dtype": np.uint8}, "outside 1..255"),
        ({1: np.ones((2, 3), dtype=bool)}, {}, "shape"),
        ({1: np.ones((2, 2), dtype=np.uint8)}, {}, "bool array"),
        ({1: np.ones((2, 2), dtype=bool), 2: np.ones((2, 2), dtype=bool)}, {"scores": {1: 0.3}}, r"\[2\]"),
    ],
)
def test_label_image_refuses_bad_input(masks: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        label_image_from_masks(masks, (2, 2), **kwargs)


def test_label_image_and_masks_round_trip() -> None:
    shape = (5, 6)
    masks = {3: box_mask(shape, 0, 0, 2, 2), 300: box_mask(shape, 3, 1, 6, 5)}
    labels = label_image_from_masks(masks, shape)
    recovered = masks_from_label_image(labels)
    assert sorted(recovered) == [3, 300]
    for target_id, mask in masks.items():
        np.testing.assert_array_equal(recovered[target_id], mask)
    with pytest.raises(ValueError, match="2-D integer"):
        masks_from_label_image(labels.astype(np.float32))
