"""Referring video segmentation readers: MeViS, ReVOS, Ref-DAVIS17 and Ref-SAV in the Sa2VA eval layout.

All four share one format (Sa2VA's ``RefVOSDataset`` and ``tools/eval/eval_{mevis,revos,davis,ref_sav}.py``):

* an expression file ``{"videos": {vid: {"frames": [name, ...], "expressions": {eid: {"exp": str,
  "obj_id": [...], "anno_id": [...], ...}}, ("height", "width")}}}``;
* a mask file mapping ``str(anno_id)`` to a per-frame list of COCO RLE (``null`` where the object is
  absent), indexed by the frame's position in the video's ``frames`` list; an expression's ground truth on
  a frame is the union of its anno_ids' masks;
* frames as ``<frame_root>/<vid>/<frame>.jpg``.

Folder layouts that ``find_video_layout`` recognises (first match wins), as
format: expression file | mask file (optional) | frame root:

* mevis: ``meta_expressions.json`` | ``mask_dict.json`` | ``JPEGImages/``
* revos: ``meta_expressions_valid_.json`` | ``mask_dict.json`` | the folder itself
* ref-sav: ``meta_expressions_valid.json`` | ``mask_dict.json`` | ``videos/``
* ref-davis17: ``meta_expressions/valid/meta_expressions.json`` | ``valid/mask_dict.pkl`` |
  ``valid/JPEGImages/``

In every layout the frame root is ``JPEGImages/`` or ``videos/`` when the split folder has one, else the
split folder itself, and ``mask_dict.json`` wins over ``mask_dict.pkl``. Ref-DAVIS17 may be given as the
``davis17`` folder or its ``valid`` folder (Ref-YouTube-VOS, laid out the same way by ReferFormer, opens
as this layout too, without ground truth). Ref-DAVIS17 expressions carry no ``anno_id``; like Sa2VA's
``eval_davis.py`` they are numbered 0, 1, ... over sorted video ids, then sorted expression ids. Its
``mask_dict.pkl`` is read through the restricted unpickler (``convert_pickle_to_json`` makes the JSON
twin once). Ref-SAV's extra keys (``type_id``: 0 long, 1 short expression) are kept in ``metadata``.
Sa2VA's older Ref-SAV reader decoded frames from SA-V ``.mp4`` files; this reader takes the JPEG-frame
layout of its current ``sa2va_eval_ref_vos.py`` (``data/ref_sav_eval/videos``). Expression ids are
visited in sorted order per video, as Sa2VA does; frames keep the file's order so that frame i and mask i
always match.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from sa2va_ros.eval.datasets.coco_masks import decode_rle
from sa2va_ros.eval.datasets.files import (
    read_annotation_file,
    read_image_size,
    read_json,
    read_rgb_image,
)

FRAME_SUFFIX = ".jpg"
FRAME_FOLDERS = ("JPEGImages", "videos")


class MaskTable:
    """anno_id -> per-frame COCO RLE list, read from the mask file on first use and shared by all samples."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @cached_property
    def entries(self) -> dict[str, list[Any]]:
        """The whole mask file, keys as strings (Ref-DAVIS17 pickles may use integers)."""
        return {str(anno_id): frames for anno_id, frames in read_annotation_file(self.path).items()}

    def frames_of(self, anno_id: str) -> list[Any]:
        """Per-frame RLE (or None) of one annotation."""
        try:
            return self.entries[anno_id]
        except KeyError:
            raise KeyError(f"anno_id {anno_id!r} is not in {self.path}") from None


def _as_list(value: Any) -> list[Any]:
    """obj_id / anno_id may be one value or a list of them."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass(frozen=True)
class VideoExpressionSample:
    """One expression on one video: frame paths, and lazy loaders for frames and ground-truth masks."""

    video_id: str
    expression_id: str
    expression: str
    frame_names: tuple[str, ...]
    frame_dir: Path
    anno_ids: tuple[str, ...]
    obj_ids: tuple[str, ...]
    size: tuple[int, int] | None = None  # (height, width) when the expression file gives it
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    mask_table: MaskTable | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        """``<video_id>_<expression_id>``, the name the MeViS/Sa2VA evaluation scripts use."""
        return f"{self.video_id}_{self.expression_id}"

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    @property
    def frame_paths(self) -> tuple[Path, ...]:
        return tuple(self.frame_dir / f"{name}{FRAME_SUFFIX}" for name in self.frame_names)

    @property
    def has_ground_truth(self) -> bool:
        """False for splits released without masks (MeViS valid / test, Ref-YouTube-VOS valid)."""
        return self.mask_table is not None

    def load_frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as RGB uint8 [H, W, 3]."""
        return read_rgb_image(self.frame_dir / f"{self.frame_names[index]}{FRAME_SUFFIX}")

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Frames one at a time (RGB uint8 [H, W, 3]), never all in memory."""
        for index in range(self.num_frames):
            yield self.load_frame(index)

    def _annotation_frames(self) -> list[list[Any]]:
        """Per-frame RLE lists of each anno_id, checked against the frame count."""
        if self.mask_table is None:
            raise ValueError(f"{self.key}: this dataset has no mask file, so no ground truth")
        tracks = [self.mask_table.frames_of(anno_id) for anno_id in self.anno_ids]
        for anno_id, track in zip(self.anno_ids, tracks, strict=True):
            if len(track) != self.num_frames:
                raise ValueError(f"{self.key}: anno_id {anno_id} has {len(track)} masks for {self.num_frames} frames")
        return tracks

    def _mask_size(self, tracks: list[list[Any]]) -> tuple[int, int]:
        """(height, width): from the expression file, else any of this expression's RLEs, else frame 0."""
        if self.size is not None:
            return self.size
        for track in tracks:
            for rle in track:
                if rle:
                    height, width = rle["size"]
                    return int(height), int(width)
        return read_image_size(self.frame_paths[0])

    def _union(self, tracks: list[list[Any]], index: int, size: tuple[int, int]) -> np.ndarray:
        """Union of the anno_ids' masks on frame ``index`` -> bool [H, W]."""
        mask = np.zeros(size, dtype=bool)
        for track in tracks:
            if track[index]:
                mask |= decode_rle(track[index])
        return mask

    def load_mask(self, index: int) -> np.ndarray:
        """Ground truth on frame ``index``: union of the expression's objects, bool [H, W]."""
        tracks = self._annotation_frames()
        return self._union(tracks, index, self._mask_size(tracks))

    def load_masks(self) -> np.ndarray:
        """Ground truth on every frame, bool [T, H, W]."""
        tracks = self._annotation_frames()
        size = self._mask_size(tracks)
        return np.stack([self._union(tracks, index, size) for index in range(self.num_frames)])


@dataclass(frozen=True)
class VideoLayout:
    """Where one referring-video dataset keeps its files."""

    format_name: str
    expression_file: Path
    split_dir: Path  # holds the mask file and the frame folder


_FLAT_LAYOUTS = (
    ("mevis", "meta_expressions.json"),
    ("revos", "meta_expressions_valid_.json"),
    ("ref-sav", "meta_expressions_valid.json"),
)


def find_video_layout(root: str | Path) -> VideoLayout | None:
    """The referring-video layout of ``root`` (see the module docstring), or None."""
    root = Path(root)
    for format_name, file_name in _FLAT_LAYOUTS:
        if (root / file_name).is_file():
            return VideoLayout(format_name, root / file_name, root)
    davis_from_root = root / "meta_expressions" / "valid" / "meta_expressions.json"
    if davis_from_root.is_file() and (root / "valid").is_dir():
        return VideoLayout("ref-davis17", davis_from_root, root / "valid")
    davis_from_split = root.parent / "meta_expressions" / root.name / "meta_expressions.json"
    if davis_from_split.is_file():
        return VideoLayout("ref-davis17", davis_from_split, root)
    return None


def expected_video_layouts() -> list[str]:
    """Human-readable list of the expression files ``find_video_layout`` looks for."""
    return [f"{file_name} ({format_name})" for format_name, file_name in _FLAT_LAYOUTS] + [
        "meta_expressions/valid/meta_expressions.json + valid/ (ref-davis17)",
        "../meta_expressions/<this folder>/meta_expressions.json (ref-davis17 split folder)",
    ]


def _find_mask_file(split_dir: Path) -> Path | None:
    """mask_dict.json, else mask_dict.pkl, else None (a split released without ground truth)."""
    for name in ("mask_dict.json", "mask_dict.pkl"):
        if (split_dir / name).is_file():
            return split_dir / name
    return None


def _find_frame_root(split_dir: Path) -> Path:
    """JPEGImages/ or videos/ inside split_dir when one exists, else split_dir itself (Sa2VA's ReVOS)."""
    return next((split_dir / name for name in FRAME_FOLDERS if (split_dir / name).is_dir()), split_dir)


def _number_expressions(videos: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """Sa2VA's Ref-DAVIS17 anno ids: 0, 1, ... over sorted video ids, then sorted expression ids."""
    numbering: dict[tuple[str, str], list[str]] = {}
    for video_id in sorted(videos):
        for expression_id in sorted(videos[video_id]["expressions"]):
            numbering[video_id, expression_id] = [str(len(numbering))]
    return numbering


class ReferringVideoDataset:
    """One sample per (video, expression); frames and masks load only when asked for."""

    def __init__(
        self,
        expression_file: str | Path,
        frame_root: str | Path,
        mask_file: str | Path | None = None,
        format_name: str = "mevis",
    ) -> None:
        self.expression_file = Path(expression_file)
        self.frame_root = Path(frame_root)
        self.mask_file = Path(mask_file) if mask_file is not None else None
        self.format_name = format_name
        mask_table = MaskTable(self.mask_file) if self.mask_file is not None else None
        videos: dict[str, Any] = read_json(self.expression_file)["videos"]
        expressions = [exp for video in videos.values() for exp in video["expressions"].values()]
        with_ids = sum("anno_id" in exp for exp in expressions)
        if 0 < with_ids < len(expressions):
            raise ValueError(f"{self.expression_file}: only {with_ids} of {len(expressions)} expressions have anno_id")
        numbering = _number_expressions(videos) if with_ids == 0 else None
        self.samples: list[VideoExpressionSample] = []
        for video_id, video in videos.items():
            size = (int(video["height"]), int(video["width"])) if "height" in video and "width" in video else None
            for expression_id in sorted(video["expressions"]):
                entry = video["expressions"][expression_id]
                anno_ids = numbering[video_id, expression_id] if numbering else _as_list(entry["anno_id"])
                self.samples.append(
                    VideoExpressionSample(
                        video_id=video_id,
                        expression_id=expression_id,
                        expression=entry["exp"],
                        frame_names=tuple(video["frames"]),
                        frame_dir=self.frame_root / video_id,
                        anno_ids=tuple(str(anno_id) for anno_id in anno_ids),
                        obj_ids=tuple(str(obj_id) for obj_id in _as_list(entry.get("obj_id", []))),
                        size=size,
                        metadata={k: v for k, v in entry.items() if k not in ("exp", "obj_id", "anno_id")},
                        mask_table=mask_table,
                    )
                )

    @classmethod
    def from_directory(cls, root: str | Path) -> ReferringVideoDataset:
        """Reads a folder in one of the layouts of the module docstring."""
        layout = find_video_layout(root)
        if layout is None:
            raise FileNotFoundError(
                f"{root}: no referring-video expression file; expected one of {expected_video_layouts()}"
            )
        dataset = cls(
            layout.expression_file,
            _find_frame_root(layout.split_dir),
            _find_mask_file(layout.split_dir),
            layout.format_name,
        )
        if not dataset.samples:
            raise ValueError(f"{layout.expression_file} lists no expressions")
        first_frames = dataset.samples[0].frame_dir
        if not first_frames.is_dir():
            raise FileNotFoundError(
                f"no frame folder for video {dataset.samples[0].video_id!r} at {first_frames}; frames are "
                "looked for in <split>/JPEGImages/<video>/, <split>/videos/<video>/ or <split>/<video>/"
            )
        return dataset

    @property
    def video_ids(self) -> list[str]:
        """Video ids in file order."""
        return list(dict.fromkeys(sample.video_id for sample in self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> VideoExpressionSample:
        return self.samples[index]

    def __iter__(self) -> Iterator[VideoExpressionSample]:
        return iter(self.samples)
