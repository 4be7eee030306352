"""Camera frames -> SAM-2 input: the tracker's frame policy and preprocessing.

Policy (one place, so every driver behaves the same):

* ``uint8`` only; ``H×W×3`` is RGB, a mono frame (``H×W`` or ``H×W×1``) is replicated to RGB.
* Any size between ``min_side`` and ``max_side`` pixels per side; anything else is one ``ValueError``
  raised before the tracker's state changes, so the stream goes on with the next good frame.
* The model input is always ``image_size²`` (plain resize, aspect not kept, as SAM-2 and Sa2VA do), so a
  size change mid-stream needs nothing special: masks simply follow the size of the frame they belong to.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# ImageNet statistics, as SAM-2's video loader and Sa2VA's SAM branch normalise.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


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


def frame_to_model_input(frame: np.ndarray, image_size: int, device: torch.device) -> torch.Tensor:
    """RGB uint8 ``H×W×3`` -> ``[1, 3, S, S]`` float32: PIL bicubic resize to S, /255, ImageNet mean/std.

    PIL's default (bicubic) resize is what both Meta's JPEG loader and Sa2VA's ``DirectResize`` use; a frame
    already at ``S×S`` is used as is.
    """
    if frame.shape[:2] != (image_size, image_size):
        frame = np.array(Image.fromarray(frame).resize((image_size, image_size), Image.Resampling.BICUBIC))
    pixels = torch.from_numpy(frame).to(device).permute(2, 0, 1).float().div_(255.0)  # [3, S, S]
    mean = torch.tensor(IMAGE_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGE_STD, device=device)[:, None, None]
    return ((pixels - mean) / std).unsqueeze(0)
