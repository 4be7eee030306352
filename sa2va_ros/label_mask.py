"""Label images: per-target boolean masks <-> one H×W image where 0 = background and k = target id; and
drawing them (masks blended, boxes and "id phrase" labels, one stable colour per target id).

ROS-free, so the pipeline, the replay evaluation, the demo and the node build, read and draw label images the
same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import cv2
import numpy as np

BACKGROUND_ID = 0


def label_image_from_masks(
    masks: Mapping[int, np.ndarray],
    shape: tuple[int, int],
    scores: Mapping[int, float] | None = None,
    dtype: type[np.unsignedinteger] = np.uint16,
) -> np.ndarray:
    """Paint boolean masks (H×W each) into one H×W label image of target ids.

    A pixel covered by several targets goes to the one with the higher score; on equal scores (or without
    ``scores``) the lower id wins, so the older target keeps its pixels. Ids must be >= 1 and fit ``dtype``.
    """
    height, width = shape
    id_limit = int(np.iinfo(dtype).max)
    for target_id, mask in masks.items():
        if not 1 <= target_id <= id_limit:
            raise ValueError(
                f"target id {target_id} is outside 1..{id_limit} (0 is background, dtype {dtype})"
            )
        if mask.dtype != np.bool_ or mask.shape != (height, width):
            raise ValueError(
                f"mask of target {target_id} must be a bool array of shape {(height, width)}, "
                f"got {mask.dtype} {mask.shape}"
            )
    if scores is not None and (missing := sorted(set(masks) - set(scores))):
        raise ValueError(f"scores given but missing for target ids {missing}")

    def paint_priority(target_id: int) -> tuple[float, int]:
        # painted in ascending priority, the last painter wins: higher score, then lower id
        return (scores[target_id] if scores is not None else 0.0, -target_id)

    labels = np.zeros((height, width), dtype=dtype)  # H×W
    for target_id in sorted(masks, key=paint_priority):
        labels[masks[target_id]] = target_id
    return labels


def masks_from_label_image(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Split an H×W label image into {target id: H×W bool mask}, background (0) left out."""
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label image must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    return {
        int(target_id): labels == target_id for target_id in np.unique(labels) if target_id != BACKGROUND_ID
    }


OVERLAY_COLOURS = np.array([[255, 64, 64], [64, 200, 255], [255, 220, 0], [120, 255, 120]], dtype=np.float32)


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend each ``[N, H, W]`` mask onto the RGB image in its own colour."""
    out = image.astype(np.float32)
    for index, mask in enumerate(masks):
        colour = OVERLAY_COLOURS[index % len(OVERLAY_COLOURS)]
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


class DrawableTarget(Protocol):
    """What ``draw_target_boxes`` reads of a target (the pipeline's ``TargetState`` has it)."""

    id: int
    phrase: str
    box: tuple[int, int, int, int] | None


def target_colour(target_id: int) -> tuple[int, int, int]:
    """The RGB colour of a target id: stable for the target's life, whatever other targets come and go."""
    return tuple(int(c) for c in OVERLAY_COLOURS[(target_id - 1) % len(OVERLAY_COLOURS)])


def blend_targets(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The frame (H×W×3 RGB) with each target of the H×W label image blended in its id's colour."""
    ids = labels.astype(np.int64)  # H×W, 0 = background
    palette = np.arange(len(OVERLAY_COLOURS))[:, None, None]  # [C, 1, 1]
    colour_slots = (ids > 0) & ((ids - 1) % len(OVERLAY_COLOURS) == palette)  # [C, H, W]: ids of colour c
    return overlay(frame, colour_slots)


def text_style(shape: tuple[int, ...]) -> tuple[float, int]:
    """Font scale and line thickness for a frame: readable from thumbnails up to HD frames."""
    short_side = min(shape[:2])
    return max(0.3, short_side / 480), max(1, round(short_side / 400))


def ascii_text(text: str) -> str:
    """``text`` with non-ASCII characters replaced: OpenCV's Hershey fonts draw ASCII only."""
    return text.encode("ascii", "replace").decode("ascii")


def draw_target_boxes(image: np.ndarray, targets: Sequence[DrawableTarget], top: int = 0) -> np.ndarray:
    """Draw each target's box and "id phrase" in its id's colour, in place (labels stay below row ``top``)."""
    scale, thickness = text_style(image.shape)
    (_, text_height), _ = cv2.getTextSize("0", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    for target in targets:
        if target.box is None:
            continue
        colour = target_colour(target.id)
        x0, y0, x1, y1 = target.box
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), colour, thickness)
        cv2.putText(image, ascii_text(f"{target.id} {target.phrase}"), (x0 + 1, max(y0 - 3, top + text_height + 2)),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return image
