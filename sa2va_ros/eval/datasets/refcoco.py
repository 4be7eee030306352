"""RefCOCO / RefCOCO+ / RefCOCOg reader for the ``refer`` annotation layout.

Layout (github lichengunc/refer, as Sa2VA's ``RESDataset`` reads it)::

    DATA/refcoco/instances.json   COCO-style {"images": [...], "annotations": [...], "categories": [...]}
    DATA/refcoco/refs(unc).p      pickled list of refs (refcoco+: unc; refcocog: umd or google)
    DATA/images/mscoco/images/train2014/COCO_train2014_*.jpg   (default image root; pass image_root
                                                                for another, e.g. Sa2VA's glamm_data)

Each ref is {"ref_id", "ann_id", "image_id", "split", "category_id", "sentences": [{"sent", "sent_id",
...}, ...]}; its mask is the COCO annotation ``ann_id`` (polygons or RLE). Every sentence is one sample,
as in the Sa2VA evaluation. ``refs(*).json`` written by ``convert_pickle_to_json`` is read in preference
to the pickle; a pickle is read through a restricted unpickler that refuses anything but plain data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sa2va_ros.eval.datasets.coco_masks import decode_segmentation
from sa2va_ros.eval.datasets.files import json_or_pickle, read_annotation_file, read_json, read_rgb_image

# When a folder holds several refs files, the first of these wins: Sa2VA evaluates RefCOCO and RefCOCO+
# with the UNC split and RefCOCOg with the UMD split (refcocog ships umd and google, refcoco unc and google).
SPLIT_BY_PREFERENCE = ("umd", "unc", "google")


def refs_file(data_dir: Path, split_by: str) -> Path:
    """The refs annotation file of ``split_by`` in ``data_dir`` (JSON twin preferred over the pickle)."""
    return json_or_pickle(data_dir / f"refs({split_by}).p")


def available_split_bys(data_dir: Path) -> list[str]:
    """The ``split_by`` names whose refs file (pickle or JSON) exists in ``data_dir``."""
    return [
        split_by
        for split_by in SPLIT_BY_PREFERENCE
        if (data_dir / f"refs({split_by}).p").is_file() or (data_dir / f"refs({split_by}).json").is_file()
    ]


def split_matches(ref_split: str, wanted: str) -> bool:
    """refer's split filter: testA/testB/testC also take testAB-style refs, test takes every test split."""
    if wanted in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and wanted[-1] in ref_split[len("test") :]
    if wanted == "test":
        return ref_split.startswith("test")
    return ref_split == wanted


@dataclass(frozen=True)
class RefCocoSample:
    """One referring sentence on one image, with a lazy loader for its ground-truth mask."""

    image_path: Path
    expression: str
    image_id: int
    ref_id: int
    ann_id: int
    sent_id: int
    split: str
    height: int
    width: int
    segmentation: Any = field(repr=False, compare=False)

    @property
    def key(self) -> str:
        """Unique id of this sample: ``<ref_id>_<sent_id>``."""
        return f"{self.ref_id}_{self.sent_id}"

    def load_image(self) -> np.ndarray:
        """The image as RGB uint8 [H, W, 3]."""
        return read_rgb_image(self.image_path)

    def load_mask(self) -> np.ndarray:
        """The referred object's ground-truth mask, bool [H, W]."""
        return decode_segmentation(self.segmentation, self.height, self.width)


class RefCocoDataset:
    """The sentences of one refer-layout split, in refs-file order; images and masks load lazily."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str = "val",
        split_by: str | None = None,
        image_root: str | Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.name = self.data_dir.name
        self.format_name = "refcoco"
        found = available_split_bys(self.data_dir)
        if split_by is None:
            if not found:
                raise FileNotFoundError(f"no refs(<split_by>).p or .json in {self.data_dir}")
            split_by = found[0]
        self.split_by = split_by
        self.split = split
        self.image_root = (
            Path(image_root) if image_root is not None else self.data_dir.parent / "images/mscoco/images/train2014"
        )
        refs = read_annotation_file(refs_file(self.data_dir, split_by))
        instances = read_json(self.data_dir / "instances.json")
        images = {image["id"]: image for image in instances["images"]}
        annotations = {annotation["id"]: annotation for annotation in instances["annotations"]}
        self.samples = [
            sample
            for ref in refs
            if split_matches(ref["split"], split)
            for sample in self._ref_samples(ref, images, annotations)
        ]
        if not self.samples:
            splits = sorted({ref["split"] for ref in refs})
            raise ValueError(f"no refs of split {split!r} in {self.data_dir} (split_by {split_by}); splits: {splits}")

    def _ref_samples(
        self, ref: dict[str, Any], images: dict[int, dict[str, Any]], annotations: dict[int, dict[str, Any]]
    ) -> Iterator[RefCocoSample]:
        """One sample per sentence of ``ref``."""
        image = images[ref["image_id"]]
        annotation = annotations[ref["ann_id"]]
        for sentence in ref["sentences"]:
            yield RefCocoSample(
                image_path=self.image_root / image["file_name"],
                expression=sentence["sent"],
                image_id=ref["image_id"],
                ref_id=ref["ref_id"],
                ann_id=ref["ann_id"],
                sent_id=sentence["sent_id"],
                split=ref["split"],
                height=image["height"],
                width=image["width"],
                segmentation=annotation["segmentation"],
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> RefCocoSample:
        return self.samples[index]

    def __iter__(self) -> Iterator[RefCocoSample]:
        return iter(self.samples)
