"""Tiny benchmark fixtures written at test time in the exact public layouts (RefCOCO refer annotations;
MeViS / ReVOS / Ref-DAVIS17 / Ref-SAV meta_expressions + JPEG frames + RLE mask_dict), shared by the reader,
evaluation and bag tests."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def write_jpeg(path: Path, height: int, width: int, value: int) -> None:
    """A flat-grey JPEG (value survives compression closely, so frame order can be checked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), value, dtype=np.uint8))


def encode_rle(mask: np.ndarray, counts_as_bytes: bool = False) -> dict:
    """Compressed COCO RLE of a bool mask; counts as str (JSON files) or bytes (pickles)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"] if counts_as_bytes else rle["counts"].decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def box_mask(shape: tuple[int, int], top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


IMAGE_SHAPE = (8, 10)  # refcoco images: height 8, width 10
RLE_MASK = box_mask(IMAGE_SHAPE, 4, 6, 3, 2)


def refs_fixture() -> list[dict]:
    """Plain refer-style refs: two val refs (3 sentences), testA, testAB and train refs."""

    def ref(ref_id: int, ann_id: int, image_id: int, split: str, sentences: list[str]) -> dict:
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": image_id,
            "split": split,
            "category_id": 1,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sentences": [
                {"sent": text, "raw": text, "sent_id": ref_id * 10 + i, "tokens": text.split()}
                for i, text in enumerate(sentences)
            ],
        }

    return [
        ref(1, 10, 1, "val", ["left box", "the box on the left"]),
        ref(2, 11, 1, "val", ["right box"]),
        ref(3, 12, 2, "testA", ["the person"]),
        ref(4, 12, 2, "testAB", ["person again"]),
        ref(5, 10, 1, "train", ["training sentence"]),
    ]


def write_refcoco(data_root: Path, name: str = "refcoco", split_by: str = "unc") -> Path:
    """DATA/<name>/instances.json + refs(<split_by>).p, images under DATA/images/mscoco/images/train2014."""
    dataset_dir = data_root / name
    dataset_dir.mkdir(parents=True)
    images = [
        {"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "height": 8, "width": 10}
        for image_id in (1, 2)
    ]
    for image in images:
        write_jpeg(data_root / "images/mscoco/images/train2014" / image["file_name"], 8, 10, 50 * image["id"])
    annotations = [
        # polygon covering x in [1, 5), y in [1, 4)
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": encode_rle(RLE_MASK)},
        # uncompressed RLE, column-major runs over 8 x 10: 0 x 9, 1 x 3 -> column 1, rows 1..3
        {
            "id": 12,
            "image_id": 2,
            "category_id": 1,
            "iscrowd": 1,
            "segmentation": {"size": [8, 10], "counts": [9, 3, 68]},
        },
    ]
    instances = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (dataset_dir / "instances.json").write_text(json.dumps(instances))
    (dataset_dir / f"refs({split_by}).p").write_bytes(pickle.dumps(refs_fixture()))
    return dataset_dir


FRAME_SHAPE = (6, 8)


def video_fixture() -> tuple[dict, dict]:
    """meta_expressions videos and mask_dict (RLE masks as arrays; None where absent).

    "vid_b" comes first in the file so that sorted-id numbering differs from file order.
    """
    frames_b = ["00000", "00005"]
    frames_a = ["00000", "00001", "00002"]
    videos = {
        "vid_b": {
            "frames": frames_b,
            "expressions": {"0": {"exp": "the cat", "obj_id": [1], "anno_id": [2]}},
        },
        "vid_a": {
            "frames": frames_a,
            "expressions": {
                "1": {"exp": "both objects", "obj_id": [0, 1], "anno_id": [0, 1]},
                "0": {"exp": "the red ball", "obj_id": [0], "anno_id": [0]},
                "2": {"exp": "nothing here", "obj_id": [3], "anno_id": [3]},
            },
        },
    }
    masks = {
        "0": [box_mask(FRAME_SHAPE, 0, 0, 2, 2), box_mask(FRAME_SHAPE, 1, 1, 2, 2), None],
        "1": [None, box_mask(FRAME_SHAPE, 3, 4, 2, 3), box_mask(FRAME_SHAPE, 4, 5, 2, 3)],
        "2": [box_mask(FRAME_SHAPE, 2, 2, 3, 3), box_mask(FRAME_SHAPE, 2, 3, 3, 3)],
        "3": [None, None, None],
    }
    return videos, masks


def union_or_none(*masks: np.ndarray | None) -> np.ndarray | None:
    present = [mask for mask in masks if mask is not None]
    return np.logical_or.reduce(present) if present else None


def write_video_benchmark(root: Path, layout: str) -> Path:
    """Writes the video fixture in one of the Sa2VA eval layouts; returns the folder to open."""
    videos, masks = video_fixture()
    expression_file, mask_file, frame_root, open_dir = {
        "mevis": ("meta_expressions.json", "mask_dict.json", "JPEGImages", "."),
        "revos": ("meta_expressions_valid_.json", "mask_dict.json", ".", "."),
        "ref-sav": ("meta_expressions_valid.json", "mask_dict.json", "videos", "."),
        "ref-davis17": (
            "meta_expressions/valid/meta_expressions.json",
            "valid/mask_dict.pkl",
            "valid/JPEGImages",
            ".",
        ),
    }[layout]
    if layout == "ref-sav":
        for video in videos.values():
            video["height"], video["width"] = FRAME_SHAPE
            for expression in video["expressions"].values():
                expression["type_id"] = 1
    if layout == "ref-davis17":
        # ReferFormer-style DAVIS expressions carry obj_id only; Sa2VA numbers them over sorted ids:
        # vid_a/0 -> 0, vid_a/1 -> 1, vid_a/2 -> 2, vid_b/0 -> 3. Re-key the masks to match.
        renumber = {("vid_a", "0"): "0", ("vid_a", "1"): "1", ("vid_a", "2"): "2", ("vid_b", "0"): "3"}
        union_of_0_and_1 = [union_or_none(a, b) for a, b in zip(masks["0"], masks["1"], strict=True)]
        masks = {
            renumber["vid_a", "0"]: masks["0"],
            renumber["vid_a", "1"]: union_of_0_and_1,
            renumber["vid_a", "2"]: masks["3"],
            renumber["vid_b", "0"]: masks["2"],
        }
        for video in videos.values():
            for expression in video["expressions"].values():
                del expression["anno_id"]
                expression["obj_id"] = str(expression["obj_id"][0])
    pickled = mask_file.endswith(".pkl")
    mask_dict = {
        key: [None if m is None else encode_rle(m, counts_as_bytes=pickled) for m in track]
        for key, track in masks.items()
    }
    (root / expression_file).parent.mkdir(parents=True, exist_ok=True)
    (root / expression_file).write_text(json.dumps({"videos": videos}))
    (root / mask_file).parent.mkdir(parents=True, exist_ok=True)
    if pickled:
        (root / mask_file).write_bytes(pickle.dumps(mask_dict))
    else:
        (root / mask_file).write_text(json.dumps(mask_dict))
    for video_id, video in videos.items():
        for index, frame in enumerate(video["frames"]):
            write_jpeg(root / frame_root / video_id / f"{frame}.jpg", *FRAME_SHAPE, value=40 * (index + 1))
    return root / open_dir


