"""Camera frames: the tracker's frame policy (the SAM-2 input itself is ``model.preprocess.sam2_pixels``).

Policy (one place, so every driver behaves the same):

* ``uint8`` only; ``H×W×3`` is RGB, a mono frame (``H×W`` or ``H×W×1``) is replicated to RGB.
* Any size between ``min_side`` and ``max_side`` pixels per side; anything else is one ``ValueError``
  raised before the tracker's state changes, so the stream goes on with the next good frame.
* The model input is always ``image_size²`` (plain resize, aspect not kept, as SAM-2 and Sa2VA do), so a
  size change mid-stream needs nothing special: masks simply follow the size of the frame they belong to.
"""

from __future__ import annotations

import numpy as np


def as_rgb_frame(frame: np.ndarray, *, min_side: int, max_side: int) -> np.ndarray:
    """Validate one camera frame and return it as a contiguous ``H×W×3`` uint8 RGB array."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"a frame must be uint8, got {frame.dtype}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:  # mono -> RGB by replication
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a frame must be H×W×3 RGB, H×W or H×W×1 mono; got shape {frame.shape}")
    height, width = frame.shape[:2]
    if min(height, width) < min_side or max(height, width) > max_side:
        raise ValueError(
            f"frame size {width}×{height} is outside the accepted range: each side must be within "
            f"[{min_side}, {max_side}] pixels (TrackerConfig.min_frame_side / max_frame_side)"
        )
    return np.require(frame, requirements=("C", "W"))  # contiguous and writable (torch.from_numpy needs it)
