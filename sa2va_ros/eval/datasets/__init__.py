"""Readers for the public referring-segmentation benchmarks, and ``load_dataset`` that picks one by layout.

Formats: RefCOCO / RefCOCO+ / RefCOCOg (``refer`` layout, see ``refcoco``), and MeViS, ReVOS, Ref-DAVIS17,
Ref-SAV (Sa2VA's meta_expressions + mask_dict layout, see ``video``). Readers only parse annotation
metadata up front; images, frames and masks load when a sample is asked for them.
"""

from __future__ import annotations

from pathlib import Path

from sa2va_ros.eval.datasets.coco_masks import decode_rle, decode_segmentation
from sa2va_ros.eval.datasets.refcoco import RefCocoDataset, RefCocoSample, available_split_bys
from sa2va_ros.eval.datasets.safe_pickle import PlainDataUnpickler, convert_pickle_to_json, load_plain_pickle
from sa2va_ros.eval.datasets.video import (
    ReferringVideoDataset,
    VideoExpressionSample,
    expected_video_layouts,
    find_video_layout,
)

Dataset = RefCocoDataset | ReferringVideoDataset

__all__ = [
    "Dataset",
    "PlainDataUnpickler",
    "RefCocoDataset",
    "RefCocoSample",
    "ReferringVideoDataset",
    "VideoExpressionSample",
    "convert_pickle_to_json",
    "decode_rle",
    "decode_segmentation",
    "load_dataset",
    "load_plain_pickle",
]


def load_dataset(
    path: str | Path,
    *,
    split: str = "val",
    split_by: str | None = None,
    image_root: str | Path | None = None,
) -> Dataset:
    """Opens the benchmark folder at ``path``, recognising its format from the files it holds.

    ``split``, ``split_by`` and ``image_root`` apply to the refer (RefCOCO*) layout only; a video
    benchmark folder holds one split.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if (root / "instances.json").is_file() and available_split_bys(root):
        return RefCocoDataset(root, split=split, split_by=split_by, image_root=image_root)
    if find_video_layout(root) is not None:
        return ReferringVideoDataset.from_directory(root)
    expected = [
        "instances.json + refs(unc|umd|google).p or .json (refcoco, refcoco+, refcocog)",
        *expected_video_layouts(),
    ]
    raise FileNotFoundError(f"{root} holds no known dataset layout; expected one of: " + "; ".join(expected))
