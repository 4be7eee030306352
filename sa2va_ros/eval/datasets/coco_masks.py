"""COCO segmentation (polygons, compressed or uncompressed RLE) -> boolean masks, via pycocotools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """One COCO RLE ({"size": [H, W], "counts": str | bytes | list[int]}) -> bool mask [H, W]."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE: let pycocotools compress it
        compressed = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        compressed = {
            "size": [height, width],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    return mask_utils.decode(compressed).astype(bool)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO annotation's ``segmentation`` -> bool mask [H, W] (union of all its parts).

    Accepts a list of polygons (flat [x0, y0, x1, y1, ...] lists), one RLE dict, or a list of RLE dicts;
    an empty segmentation gives an empty mask, as the Sa2VA RefCOCO evaluation does.
    """
    if not segmentation:
        return np.zeros((height, width), dtype=bool)
    if isinstance(segmentation, Mapping):
        return decode_rle(segmentation)
    if isinstance(segmentation, Sequence) and all(isinstance(part, Mapping) for part in segmentation):
        return np.logical_or.reduce([decode_rle(part) for part in segmentation])
    polygons = [list(map(float, polygon)) for polygon in segmentation]
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return mask_utils.decode(rle).astype(bool)
