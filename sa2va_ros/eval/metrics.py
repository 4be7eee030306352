"""Segmentation metrics as the public benchmarks define them.

* Images (RefCOCO / RefCOCO+ / RefCOCOg, the LISA / Sa2VA protocol): cIoU = sum of intersections over
  sum of unions across the dataset; gIoU = mean of per-sample IoU, a sample whose prediction and ground
  truth are both empty counting 1.
* Videos (DAVIS 2017 toolkit, reused by MeViS, ReVOS, Ref-DAVIS17 and Ref-SAV): J = region IoU per frame
  (both empty -> 1); F = boundary F-measure per frame with ``bound_th = 0.008``; each expression (object)
  gets the mean over its frames, the dataset J and F are the means over expressions, and J&F is (J + F) / 2.

Differences from the reference code, all outside the cases the benchmarks exercise: the LISA/Sa2VA image
code divides by ``union + 1e-5`` (per sample) and ``union + 1e-10`` (dataset); here the division is exact,
and a dataset whose every union is empty has cIoU 1. Void pixels (DAVIS) are not supported, and
``seg2bmap`` takes no target size (the toolkit never resizes during evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import cv2
import numpy as np

DAVIS_BOUND_TH = 0.008


def _binary_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of one shape; a clear error when the shapes differ."""
    pred_b = np.asarray(pred).astype(bool)
    gt_b = np.asarray(gt).astype(bool)
    if pred_b.shape != gt_b.shape:
        raise ValueError(f"prediction shape {pred_b.shape} differs from ground-truth shape {gt_b.shape}")
    return pred_b, gt_b


def intersection_and_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel counts of pred AND gt and of pred OR gt (any non-zero value is foreground)."""
    pred_b, gt_b = _binary_pair(pred, gt)
    return int(np.count_nonzero(pred_b & gt_b)), int(np.count_nonzero(pred_b | gt_b))


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two masks [H, W], 1.0 when both are empty: a RefCOCO gIoU sample, or DAVIS J of one frame."""
    intersection, union = intersection_and_union(pred, gt)
    return 1.0 if union == 0 else intersection / union


def ciou(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray]) -> float:
    """Cumulative IoU over a dataset: sum of intersections / sum of unions."""
    meter = RefCocoMeter()
    for pred, gt in zip(preds, gts, strict=True):
        meter.update(pred, gt)
    return meter.ciou


def giou(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray]) -> float:
    """Generalised IoU over a dataset: the mean of per-sample IoU (empty/empty counts 1)."""
    meter = RefCocoMeter()
    for pred, gt in zip(preds, gts, strict=True):
        meter.update(pred, gt)
    return meter.giou


class RefCocoMeter:
    """Accumulates cIoU and gIoU over referring-segmentation samples, one (pred, gt) pair per sentence."""

    def __init__(self) -> None:
        self.total_intersection = 0
        self.total_union = 0
        self.iou_sum = 0.0
        self.count = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Adds one sample (masks [H, W]) and returns its IoU."""
        intersection, union = intersection_and_union(pred, gt)
        sample_iou = 1.0 if union == 0 else intersection / union
        self.total_intersection += intersection
        self.total_union += union
        self.iou_sum += sample_iou
        self.count += 1
        return sample_iou

    @property
    def ciou(self) -> float:
        """Sum of intersections / sum of unions; NaN before any sample, 1.0 when every union is empty."""
        if self.count == 0:
            return math.nan
        return 1.0 if self.total_union == 0 else self.total_intersection / self.total_union

    @property
    def giou(self) -> float:
        """Mean per-sample IoU; NaN before any sample."""
        return math.nan if self.count == 0 else self.iou_sum / self.count

    def summary(self) -> dict[str, float]:
        """The dataset numbers as a plain dict (ciou, giou, count)."""
        return {"ciou": self.ciou, "giou": self.giou, "count": self.count}


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask [H, W], as the DAVIS toolkit's ``seg2bmap`` builds it.

    A pixel is on the boundary when it differs from its right, bottom or bottom-right neighbour (pixels
    outside the image count as background), so boundaries sit half a pixel towards the origin. On the last
    row only the right neighbour counts, on the last column only the bottom one, and the bottom-right
    corner pixel is never a boundary.
    """
    seg = np.asarray(mask).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap needs a 2-D mask, got shape {seg.shape}")
    right = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    below = np.zeros_like(seg)
    below[:-1, :] = seg[1:, :]
    below_right = np.zeros_like(seg)
    below_right[:-1, :-1] = seg[1:, 1:]
    boundary = (seg != right) | (seg != below) | (seg != below_right)
    boundary[-1, :] = seg[-1, :] != right[-1, :]
    boundary[:, -1] = seg[:, -1] != below[:, -1]
    boundary[-1, -1] = False
    return boundary


def boundary_tolerance_pixels(shape: tuple[int, int], bound_th: float = DAVIS_BOUND_TH) -> int:
    """Matching radius in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th * image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(shape[0], shape[1]))


def _disk_kernel(radius: int) -> np.ndarray:
    """Disk structuring element x^2 + y^2 <= r^2, size (2r+1)^2 (what skimage's ``disk`` gives)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = DAVIS_BOUND_TH) -> float:
    """DAVIS F for one frame: F-measure of boundary precision and recall within a disk tolerance.

    Precision is the share of predicted boundary pixels within ``bound_pix`` of the ground-truth boundary,
    recall the converse. Empty boundaries follow the toolkit: none predicted (ground truth has some) ->
    P 1, R 0; predicted but none in ground truth -> P 0, R 1; both empty -> P = R = 1.
    """
    pred_b, gt_b = _binary_pair(pred, gt)
    if pred_b.ndim != 2:
        raise ValueError(f"boundary_f_measure needs 2-D masks, got shape {pred_b.shape}")
    kernel = _disk_kernel(boundary_tolerance_pixels(pred_b.shape, bound_th))
    pred_boundary = seg2bmap(pred_b)
    gt_boundary = seg2bmap(gt_b)
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), kernel).astype(bool)
        gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
        precision = np.count_nonzero(pred_boundary & gt_dilated) / n_pred
        recall = np.count_nonzero(gt_boundary & pred_dilated) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _video_pair(pred_masks: np.ndarray, gt_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and ground truth as bool [T, H, W] arrays of one shape."""
    pred_b, gt_b = _binary_pair(pred_masks, gt_masks)
    if pred_b.ndim != 3:
        raise ValueError(f"video masks must be [T, H, W], got shape {pred_b.shape}")
    return pred_b, gt_b


def video_region_similarity(pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """Per-frame J of a [T, H, W] prediction against [T, H, W] ground truth -> [T] floats."""
    pred_b, gt_b = _video_pair(pred_masks, gt_masks)
    intersection = np.count_nonzero(pred_b & gt_b, axis=(1, 2))  # [T]
    union = np.count_nonzero(pred_b | gt_b, axis=(1, 2))  # [T]
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1))


def video_boundary_f_measure(
    pred_masks: np.ndarray, gt_masks: np.ndarray, bound_th: float = DAVIS_BOUND_TH
) -> np.ndarray:
    """Per-frame F of a [T, H, W] prediction against [T, H, W] ground truth -> [T] floats."""
    pred_b, gt_b = _video_pair(pred_masks, gt_masks)
    return np.array([boundary_f_measure(p, g, bound_th) for p, g in zip(pred_b, gt_b, strict=True)])


@dataclass(frozen=True)
class VideoScore:
    """J and F of one expression (object), each the mean over its frames."""

    j: float
    f: float

    @property
    def j_and_f(self) -> float:
        """(J + F) / 2."""
        return (self.j + self.f) / 2


def video_j_and_f(pred_masks: np.ndarray, gt_masks: np.ndarray, bound_th: float = DAVIS_BOUND_TH) -> VideoScore:
    """Frame-mean J and F of one expression's [T, H, W] prediction against its [T, H, W] ground truth."""
    j_per_frame = video_region_similarity(pred_masks, gt_masks)
    f_per_frame = video_boundary_f_measure(pred_masks, gt_masks, bound_th)
    return VideoScore(j=float(j_per_frame.mean()), f=float(f_per_frame.mean()))


class VideoMeter:
    """Accumulates J, F and J&F over expressions as the DAVIS / MeViS toolkits aggregate them.

    Each expression is scored once (mean over its frames); J and F are the means over expressions and
    J&F = (J + F) / 2 of those means. Every frame given is scored: the DAVIS semi-supervised protocol's
    dropping of the first and last frame is the caller's choice (slice before ``update``).
    """

    def __init__(self, bound_th: float = DAVIS_BOUND_TH) -> None:
        self.bound_th = bound_th
        self.per_expression: dict[str, VideoScore] = {}

    def update(self, expression_id: str, pred_masks: np.ndarray, gt_masks: np.ndarray) -> VideoScore:
        """Scores one expression (masks [T, H, W]); an id may be given only once."""
        if expression_id in self.per_expression:
            raise ValueError(f"expression {expression_id!r} was already scored")
        score = video_j_and_f(pred_masks, gt_masks, self.bound_th)
        self.per_expression[expression_id] = score
        return score

    @property
    def count(self) -> int:
        """Number of expressions scored."""
        return len(self.per_expression)

    def summary(self) -> dict[str, float]:
        """Dataset J, F, J&F (NaN before any expression) and the expression count."""
        return summarize_video_scores(self.per_expression)


def summarize_video_scores(scores: Mapping[str, VideoScore]) -> dict[str, float]:
    """Mean J and F over expressions and J&F = (J + F) / 2, as a dict (j, f, j_and_f, count)."""
    if not scores:
        return {"j": math.nan, "f": math.nan, "j_and_f": math.nan, "count": 0}
    j = float(np.mean([s.j for s in scores.values()]))
    f = float(np.mean([s.f for s in scores.values()]))
    return {"j": j, "f": f, "j_and_f": (j + f) / 2, "count": len(scores)}
