"""Metrics against hand-computed cases and properties: RefCOCO cIoU/gIoU, DAVIS J, F and J&F."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sa2va_ros.eval.metrics import (
    RefCocoMeter,
    VideoMeter,
    _disk_kernel,
    boundary_f_measure,
    boundary_tolerance_pixels,
    ciou,
    giou,
    intersection_and_union,
    mask_iou,
    seg2bmap,
    video_j_and_f,
)


def square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


# ---------------------------------------------------------------- hand-computed cases


def test_intersection_and_union_by_hand() -> None:
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    gt = np.array([[0, 1, 0], [0, 1, 1]])
    # AND: (0,1), (1,1) -> 2 pixels; OR: (0,0), (0,1), (1,1), (1,2) -> 4 pixels
    assert intersection_and_union(pred, gt) == (2, 4)
    assert mask_iou(pred, gt) == pytest.approx(0.5)


def test_seg2bmap_of_a_square_by_hand() -> None:
    mask = square((4, 4), 1, 1, 2)
    # A pixel is boundary when it differs from its right, bottom or bottom-right neighbour, so the
    # boundary of the 2x2 square at rows/cols 1..2 is the ring around (1, 1), half a pixel towards the
    # origin; the last row and column only compare along the edge, and stay background here.
    expected = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 1, 0],
            [1, 1, 1, 0],
            [0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(seg2bmap(mask), expected)


def test_seg2bmap_last_row_and_column_rules() -> None:
    mask = np.zeros((3, 3), dtype=bool)
    mask[2, 1] = True  # one pixel on the last row
    # Last row: only the right neighbour counts -> (2, 0) (its right neighbour is foreground) and (2, 1)
    # (its right neighbour is background). Rows above: (1, 0) differs from its bottom-right, (1, 1) from its
    # bottom. Last column: only the bottom neighbour -> (1, 2) and (2, 2) are background and equal.
    expected = np.array([[0, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(seg2bmap(mask), expected)


def test_boundary_f_of_one_pixel_against_a_square_by_hand() -> None:
    gt = square((4, 4), 1, 1, 2)
    pred = np.zeros((4, 4), dtype=bool)
    pred[1, 1] = True
    # bound_pix = ceil(0.008 * sqrt(32)) = 1, a cross-shaped disk.
    # pred boundary {(0,0), (0,1), (1,0), (1,1)}: (1,1) touches the GT ring through (0,1), the rest lie on
    # it -> precision 4/4. GT ring (8 pixels) within the dilated pred boundary: all but (2,2) -> recall 7/8.
    # F = 2 * 1 * 7/8 / (1 + 7/8) = 14/15. J = 1 / 4.
    assert boundary_f_measure(pred, gt) == pytest.approx(14 / 15)
    assert mask_iou(pred, gt) == pytest.approx(0.25)


def test_boundary_f_special_cases() -> None:
    gt = square((6, 6), 1, 1, 3)
    empty = np.zeros_like(gt)
    assert boundary_f_measure(empty, gt) == 0.0  # no predicted boundary: P 1, R 0
    assert boundary_f_measure(gt, empty) == 0.0  # no GT boundary: P 0, R 1
    assert boundary_f_measure(empty, empty) == 1.0  # both empty: P = R = 1
    full = np.ones_like(gt)
    # A full mask has no boundary at all under seg2bmap (it differs from nothing inside the image).
    assert not seg2bmap(full).any()
    assert boundary_f_measure(full, full) == 1.0


def test_boundary_tolerance_pixels() -> None:
    assert boundary_tolerance_pixels((4, 4)) == 1  # ceil(0.008 * 5.66)
    assert boundary_tolerance_pixels((480, 854)) == 8  # DAVIS 480p: ceil(0.008 * 979.7) = ceil(7.84)
    assert boundary_tolerance_pixels((200, 200)) == 3  # ceil(0.008 * 282.8) = ceil(2.26)
    assert boundary_tolerance_pixels((480, 854), bound_th=2) == 2  # >= 1: a pixel count


def test_disk_kernel_is_the_toolkit_disk() -> None:
    # skimage's disk(3): x^2 + y^2 <= 9, so (±2, ±2) is in (8) and (±1, ±3) is out (10). OpenCV's
    # MORPH_ELLIPSE of the same size includes (±1, ±3), so it would widen the tolerance.
    expected = np.array(
        [
            [0, 0, 0, 1, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 0, 0, 1, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(_disk_kernel(3), expected)


@pytest.mark.parametrize("shift", [(0, 1), (0, 3), (3, 0), (2, 2), (-2, 2)])
def test_boundary_f_is_one_for_a_shift_within_bound_pix(shift: tuple[int, int]) -> None:
    shape = (200, 200)  # bound_pix = 3; (2, 2) is sqrt(8) < 3 away
    gt = square(shape, 80, 80, 40)
    pred = square(shape, 80 + shift[0], 80 + shift[1], 40)
    assert boundary_f_measure(pred, gt) == pytest.approx(1.0)
    assert mask_iou(pred, gt) < 1.0


@pytest.mark.parametrize("shift", [(0, 4), (3, 3)])
def test_boundary_f_drops_just_past_bound_pix(shift: tuple[int, int]) -> None:
    shape = (200, 200)
    gt = square(shape, 80, 80, 40)
    pred = square(shape, 80 + shift[0], 80 + shift[1], 40)
    assert 0.0 < boundary_f_measure(pred, gt) < 1.0


def test_boundary_f_is_zero_far_outside_bound_pix() -> None:
    shape = (200, 200)
    gt = square(shape, 20, 20, 30)
    pred = square(shape, 120, 120, 30)
    assert boundary_f_measure(pred, gt) == 0.0


def test_ciou_and_giou_differ_on_a_crafted_case() -> None:
    # Sample A: large object, I = 90, U = 100 (IoU 0.9). Sample B: small object missed, I = 0, U = 10.
    gt_a = square((20, 20), 0, 0, 10)
    pred_a = gt_a.copy()
    pred_a[9, :] = False  # 10 pixels of 100 missed
    gt_b = np.zeros((20, 20), dtype=bool)
    gt_b[15, 5:15] = True
    pred_b = np.zeros_like(gt_b)
    preds, gts = [pred_a, pred_b], [gt_a, gt_b]
    assert ciou(preds, gts) == pytest.approx(90 / 110)  # cumulative: 90 / (100 + 10)
    assert giou(preds, gts) == pytest.approx((0.9 + 0.0) / 2)


def test_refcoco_meter_accumulates_and_handles_empty() -> None:
    meter = RefCocoMeter()
    assert math.isnan(meter.ciou) and math.isnan(meter.giou) and meter.count == 0
    empty = np.zeros((5, 5), dtype=bool)
    assert meter.update(empty, empty) == 1.0  # empty prediction on empty ground truth counts 1
    assert meter.ciou == 1.0 and meter.giou == 1.0
    gt = square((5, 5), 0, 0, 2)
    assert meter.update(empty, gt) == 0.0
    assert meter.summary() == {"ciou": 0.0, "giou": 0.5, "count": 2}


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        mask_iou(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        video_j_and_f(np.zeros((3, 4)), np.zeros((3, 4)))


def test_video_meter_aggregates_per_expression_then_over_expressions() -> None:
    gt_square = square((4, 4), 1, 1, 2)
    one_pixel = np.zeros((4, 4), dtype=bool)
    one_pixel[1, 1] = True
    empty = np.zeros((4, 4), dtype=bool)
    meter = VideoMeter()
    # Expression "a", 2 frames: frame 0 one pixel vs square (J 1/4, F 14/15), frame 1 perfect (1, 1).
    score_a = meter.update("a", np.stack([one_pixel, gt_square]), np.stack([gt_square, gt_square]))
    assert score_a.j == pytest.approx((0.25 + 1) / 2)
    assert score_a.f == pytest.approx((14 / 15 + 1) / 2)
    # Expression "b", 3 frames: a missed object (J 0, F 0) and two empty/empty frames (J 1, F 1).
    score_b = meter.update("b", np.stack([empty, empty, empty]), np.stack([gt_square, empty, empty]))
    assert score_b.j == pytest.approx(2 / 3) and score_b.f == pytest.approx(2 / 3)
    summary = meter.summary()
    # Mean over expressions, not over the 5 frames: J = (0.625 + 2/3) / 2.
    expected_j = (0.625 + 2 / 3) / 2
    expected_f = ((14 / 15 + 1) / 2 + 2 / 3) / 2
    assert summary["j"] == pytest.approx(expected_j)
    assert summary["f"] == pytest.approx(expected_f)
    assert summary["j_and_f"] == pytest.approx((expected_j + expected_f) / 2)
    assert summary["count"] == 2 == meter.count
    with pytest.raises(ValueError, match="already scored"):
        meter.update("a", np.stack([empty]), np.stack([empty]))


def test_empty_video_meter_summary_is_nan() -> None:
    summary = VideoMeter().summary()
    assert summary["count"] == 0 and math.isnan(summary["j_and_f"])


# ---------------------------------------------------------------- properties


@st.composite
def mask_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
    return draw(arrays(np.bool_, shape)), draw(arrays(np.bool_, shape))


@st.composite
def video_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 10), st.integers(1, 10)))
    return draw(arrays(np.bool_, shape)), draw(arrays(np.bool_, shape))


@settings(max_examples=60, deadline=None)
@given(mask_pairs())
def test_perfect_prediction_scores_one(pair: tuple[np.ndarray, np.ndarray]) -> None:
    gt, _ = pair
    assert mask_iou(gt, gt) == 1.0
    assert boundary_f_measure(gt, gt) == 1.0
    assert RefCocoMeter().update(gt, gt) == 1.0


@settings(max_examples=60, deadline=None)
@given(mask_pairs())
def test_iou_and_f_are_symmetric_and_bounded(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = pair
    assert mask_iou(pred, gt) == mask_iou(gt, pred)
    assert boundary_f_measure(pred, gt) == pytest.approx(boundary_f_measure(gt, pred))
    assert 0.0 <= mask_iou(pred, gt) <= 1.0
    assert 0.0 <= boundary_f_measure(pred, gt) <= 1.0


@settings(max_examples=40, deadline=None)
@given(video_pairs())
def test_j_and_f_in_unit_interval(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = pair
    score = video_j_and_f(pred, gt)
    assert 0.0 <= score.j <= 1.0 and 0.0 <= score.f <= 1.0 and 0.0 <= score.j_and_f <= 1.0
    perfect = video_j_and_f(gt, gt)
    assert perfect.j == perfect.f == perfect.j_and_f == 1.0


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.integers(1, 12), st.integers(1, 12)))
def test_empty_against_empty_is_one(shape: tuple[int, int]) -> None:
    empty = np.zeros(shape, dtype=bool)
    assert giou([empty], [empty]) == 1.0
    assert mask_iou(empty, empty) == 1.0  # DAVIS J
    assert video_j_and_f(empty[None], empty[None]).j_and_f == 1.0


@settings(max_examples=60, deadline=None)
@given(mask_pairs())
def test_empty_prediction_on_non_empty_ground_truth_scores_zero(pair: tuple[np.ndarray, np.ndarray]) -> None:
    gt, _ = pair
    gt = gt.copy()
    gt.flat[0] = True  # at least one foreground pixel
    empty = np.zeros_like(gt)
    assert mask_iou(empty, gt) == 0.0
    assert giou([empty], [gt]) == 0.0
    assert ciou([empty], [gt]) == 0.0
    if seg2bmap(gt).any():
        assert boundary_f_measure(empty, gt) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.lists(mask_pairs(), min_size=1, max_size=5))
def test_ciou_is_a_union_weighted_mean_of_sample_ious(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    preds = [pred for pred, _ in pairs]
    gts = [gt for _, gt in pairs]
    ious = [mask_iou(p, g) for p, g in pairs]
    unions = [intersection_and_union(p, g)[1] for p, g in pairs]
    if sum(unions) > 0:
        weighted = sum(iou * union for iou, union in zip(ious, unions, strict=True)) / sum(unions)
        assert ciou(preds, gts) == pytest.approx(weighted)
    assert giou(preds, gts) == pytest.approx(sum(ious) / len(ious))
