"""Offline benchmark evaluation with the official Sa2VA prompts, sharded over processes with accelerate.

RefCOCO / RefCOCO+ / RefCOCOg give cIoU and gIoU; MeViS, ReVOS, Ref-DAVIS17 and Ref-SAV give J, F and J&F,
aggregated as their toolkits do (mean over expressions; ReVOS and Ref-SAV also per expression type, the
headline being the mean of the type means, so an expression of another type is in no headline). Each process
takes every N-th sample; the main process gathers the per-sample records, writes ``samples.jsonl`` (one line per
sample, dataset order) and ``summary.json``::

    dataset, format_name = open_benchmark("data/mevis/valid_u")
    evaluate_benchmark(model, dataset, "out")                                         # one process
    accelerate launch --num_processes 8 -m sa2va_ros.cli.eval data/refcoco --model ckpt --split testA

What the official scripts (``projects/sa2va/evaluation/sa2va_eval_{refcoco,ref_vos}.py``) do, and this does:

* prompts, character for character: images ``"<image>\\n Please segment {} in this image."`` (note the space
  after the newline); videos ``"<image>\\nPlease segment {}."``, or ``"<image>\\n {} Please respond with a
  segmentation mask."`` when the expression holds a ``?``;
* images: the prediction is the union of every ``[SEG]``'s mask, and empty when the answer holds no ``[SEG]``;
* videos: the first ``[SEG]``'s masks on every frame (``predict_forward``: the first frames condition, the rest
  are propagated), empty masks when there is none;
* splits released without ground truth (MeViS valid, Ref-YouTube-VOS) are scored by a server: ``save_masks``
  writes ``Annotations/<video>/<expression>/<frame>.png`` (0 / 255) for submission.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm.auto import tqdm

from sa2va_ros.eval.datasets import (
    Dataset,
    RefCocoDataset,
    RefCocoSample,
    ReferringVideoDataset,
    VideoExpressionSample,
    load_dataset,
)
from sa2va_ros.eval.metrics import VideoScore, intersection_and_union, summarize_video_scores, video_j_and_f

IMAGE_PROMPT = "<image>\n Please segment {} in this image."
VIDEO_PROMPT = "<image>\nPlease segment {}."
VIDEO_QUESTION_PROMPT = "<image>\n {} Please respond with a segmentation mask."
SEG_TOKEN = "[SEG]"
DEFAULT_MAX_NEW_TOKENS = 2048  # the official predict_forward's limit; answers stop at eos long before it

IMAGE_FORMATS = ("refcoco", "refcoco+", "refcocog")
VIDEO_FORMATS = ("mevis", "revos", "ref-davis17", "ref-sav")
FORMATS = IMAGE_FORMATS + VIDEO_FORMATS
# ReVOS and Ref-SAV toolkits: J, F, J&F per expression type (``type_id``); "overall" is the mean of the type means.
EXPRESSION_TYPES: dict[str, dict[int, str]] = {
    "revos": {0: "referring", 1: "reason"},
    "ref-sav": {0: "long", 1: "short"},
}
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
MASKS_DIR = "Annotations"


class Segmenter(Protocol):
    """What the evaluation needs from a model: the official offline inference (``Sa2VA.predict_forward``)."""

    def predict_forward(
        self, image: Any = None, video: Any = None, text: str = "", max_new_tokens: int = ...
    ) -> dict[str, Any]:
        """``{"prediction": answer text, "prediction_masks": [bool (T, H, W) per [SEG]]}``."""
        ...


def image_prompt(expression: str) -> str:
    """The official RefCOCO prompt of one referring expression."""
    return IMAGE_PROMPT.format(expression)


def video_prompt(expression: str) -> str:
    """The official referring-video prompt: a question asks for a mask, anything else is to be segmented."""
    return (VIDEO_QUESTION_PROMPT if "?" in expression else VIDEO_PROMPT).format(expression)


def video_instruction(expression: str) -> str:
    """The video prompt without its ``<image>`` line: what a command to the node says for this expression."""
    return video_prompt(expression).removeprefix("<image>\n").strip()


# ---------------------------------------------------------------------------------------------- datasets


def open_benchmark(
    path: str | Path,
    format_name: str | None = None,
    split: str | None = None,
    image_root: str | Path | None = None,
) -> tuple[Dataset, str]:
    """Open a benchmark folder and name its format (``FORMATS``).

    ``split``: the RefCOCO split (val, testA, testB, test; default val), or for a video benchmark the split
    sub-folder of ``path`` to open (e.g. ``valid_u`` of MeViS). ``format_name`` checks the folder's layout
    (refcoco, refcoco+ and refcocog share one) and, for video layouts, picks the toolkit's aggregation.
    """
    if format_name is not None and format_name not in FORMATS:
        raise ValueError(f"unknown format {format_name!r}; known: {', '.join(FORMATS)}")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    descended = split is not None and (root / split).is_dir()
    dataset = load_dataset(root / split if descended else root, split=split or "val", image_root=image_root)
    detected = detected_format(dataset)
    if isinstance(dataset, RefCocoDataset):
        wanted_kind, found_kind = IMAGE_FORMATS, "an image (refcoco)"
    else:
        if split is not None and not descended:
            raise ValueError(f"{root} holds one {detected} split and no sub-folder {split!r}")
        wanted_kind, found_kind = VIDEO_FORMATS, f"a video ({detected})"
    if format_name is None:
        return dataset, detected
    if format_name not in wanted_kind:
        raise ValueError(f"{root} holds {found_kind} benchmark layout, not {format_name}")
    return dataset, format_name


def detected_format(dataset: Dataset) -> str:
    """The format a reader recognised: the refer folder's name (refcoco, refcoco+, refcocog) or the video layout."""
    if isinstance(dataset, RefCocoDataset):
        return dataset.name if dataset.name in IMAGE_FORMATS else "refcoco"
    return dataset.format_name


# ---------------------------------------------------------------------------------------------- one sample


def evaluate_image_sample(model: Segmenter, sample: RefCocoSample, max_new_tokens: int) -> dict[str, Any]:
    """Ground one referring sentence; its record holds the answer, intersection, union and IoU."""
    image = sample.load_image()  # H×W×3 RGB
    output = model.predict_forward(image=image, text=image_prompt(sample.expression), max_new_tokens=max_new_tokens)
    answer, masks = output["prediction"], output["prediction_masks"]  # masks: [bool (1, H, W)] per [SEG]
    gt = sample.load_mask()  # H×W bool
    prediction = np.zeros_like(gt)
    if SEG_TOKEN in answer:
        for mask in masks:
            prediction |= np.asarray(mask, dtype=bool).reshape(gt.shape)
    intersection, union = intersection_and_union(prediction, gt)
    return {
        "key": sample.key,
        "expression": sample.expression,
        "prediction": answer,
        "masks": len(masks),
        "intersection": intersection,
        "union": union,
        "iou": 1.0 if union == 0 else intersection / union,
    }


def evaluate_video_sample(
    model: Segmenter, sample: VideoExpressionSample, max_new_tokens: int, masks_dir: Path | None = None
) -> dict[str, Any]:
    """Segment one expression over its video; its record holds the answer and, with ground truth, J, F, J&F."""
    frames = list(sample.iter_frames())  # T × [H, W, 3] RGB
    output = model.predict_forward(video=frames, text=video_prompt(sample.expression), max_new_tokens=max_new_tokens)
    answer, masks = output["prediction"], output["prediction_masks"]
    height, width = frames[0].shape[:2]
    if masks:
        prediction = np.asarray(masks[0], dtype=bool)  # [T, H, W]: the first [SEG] only, as the official code
    else:
        prediction = np.zeros((len(frames), height, width), dtype=bool)
    record: dict[str, Any] = {
        "key": sample.key,
        "video_id": sample.video_id,
        "expression_id": sample.expression_id,
        "expression": sample.expression,
        "prediction": answer,
        "masks": len(masks),
        "frames": len(frames),
        "j": None,
        "f": None,
        "j_and_f": None,
    }
    if "type_id" in sample.metadata:
        record["type_id"] = sample.metadata["type_id"]
    if sample.has_ground_truth:
        score = video_j_and_f(prediction, sample.load_masks())
        record.update(j=score.j, f=score.f, j_and_f=score.j_and_f)
    if masks_dir is not None:
        folder = masks_dir / sample.video_id / sample.expression_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, mask in zip(sample.frame_names, prediction, strict=True):
            if not cv2.imwrite(str(folder / f"{name}.png"), mask.astype(np.uint8) * 255):
                raise OSError(f"cannot write {folder / name}.png")
    return record


# ---------------------------------------------------------------------------------------------- a benchmark


def process_state(device: str = "auto") -> Any:
    """This process's accelerate ``PartialState`` (rank, world size, device) under accelerate launch / torchrun.

    On CPUs (``device`` cpu, or auto without CUDA) the processes join over gloo, so sharding works there too.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available()))


def evaluate_benchmark(
    model: Segmenter,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    format_name: str | None = None,
    limit: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    save_masks: bool = False,
    state: Any = None,
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Evaluate the first ``limit`` samples (all by default) on this process's share: every N-th sample.

    ``state`` is an accelerate ``PartialState`` (made here when None; a plain single process is one shard).
    The main process gathers every record, writes ``samples.jsonl`` and ``summary.json`` in ``out_dir`` and
    returns the summary (``info`` entries are added to it); the other processes return None.
    """
    from accelerate.utils import gather_object

    state = state if state is not None else process_state()
    video = isinstance(dataset, ReferringVideoDataset)
    if save_masks and not video:
        raise ValueError("saving masks for submission applies to video benchmarks only")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    format_name = format_name or detected_format(dataset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    masks_dir = out / MASKS_DIR if save_masks else None
    count = len(dataset) if limit is None else min(limit, len(dataset))
    mine = range(state.process_index, count, state.num_processes)
    started = time.monotonic()
    records = []
    for index in tqdm(mine, desc=f"{format_name} ({state.num_processes} process(es))", unit="sample",
                      disable=not (progress and state.is_main_process)):
        sample = dataset[index]
        if video:
            record = evaluate_video_sample(model, sample, max_new_tokens, masks_dir)
        else:
            record = evaluate_image_sample(model, sample, max_new_tokens)
        records.append({"index": index, **record})
    if state.num_processes > 1:
        records = gather_object(records)
    if not state.is_main_process:
        return None
    records.sort(key=lambda record: record["index"])
    with open(out / SAMPLES_FILE, "w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary = {
        "format": format_name,
        **(info or {}),
        "samples": len(records),
        "processes": state.num_processes,
        **_without_nan(summarize_records(records, format_name)),
        "wall_s": round(time.monotonic() - started, 3),
        "samples_file": SAMPLES_FILE,
    }
    if masks_dir is not None:
        summary["masks_dir"] = MASKS_DIR
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def summarize_records(records: Sequence[Mapping[str, Any]], format_name: str) -> dict[str, Any]:
    """The dataset scores from per-sample records: cIoU / gIoU for images, J / F / J&F (and per type) for videos.

    Records of a split without ground truth carry no scores; the summary then says ``scored: 0``.
    """
    if format_name in IMAGE_FORMATS:
        total_union = sum(record["union"] for record in records)
        total_intersection = sum(record["intersection"] for record in records)
        empty = not records
        return {
            "ciou": math.nan if empty else 1.0 if total_union == 0 else total_intersection / total_union,
            "giou": math.nan if empty else sum(record["iou"] for record in records) / len(records),
            "scored": len(records),
        }
    scored = [record for record in records if record["j"] is not None]
    scores = {record["key"]: VideoScore(record["j"], record["f"]) for record in scored}
    overall = summarize_video_scores(scores)
    summary: dict[str, Any] = {"j": overall["j"], "f": overall["f"], "j_and_f": overall["j_and_f"],
                               "scored": len(scored)}
    types = EXPRESSION_TYPES.get(format_name)
    if types is None or not any("type_id" in record for record in scored):
        return summary
    groups = {
        name: summarize_video_scores({r["key"]: scores[r["key"]] for r in scored if r.get("type_id") == type_id})
        for type_id, name in types.items()
    }
    present = [group for group in groups.values() if group["count"]]
    j = float(np.mean([group["j"] for group in present]))
    f = float(np.mean([group["f"] for group in present]))
    summary.update(j=j, f=f, j_and_f=(j + f) / 2, types=groups)
    return summary


def _without_nan(value: Any) -> Any:
    """NaN (no sample to average) as None, so that summary.json is strict JSON."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def format_summary(summary: Mapping[str, Any]) -> str:
    """A small text table of the scores in percent, as the toolkits print them."""
    if "ciou" in summary:
        rows = [("", "cIoU", "gIoU", "n"), ("all", summary["ciou"], summary["giou"], summary["scored"])]
    else:
        rows = [("", "J&F", "J", "F", "n")]
        for name, group in summary.get("types", {}).items():
            rows.append((name, group["j_and_f"], group["j"], group["f"], group["count"]))
        rows.append(("overall", summary["j_and_f"], summary["j"], summary["f"], summary["scored"]))
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    title = f"{summary['format']}: {summary['samples']} samples, {summary['wall_s']:.1f} s"
    return "\n".join([title, *("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells)])


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.2f}"
    return str(value)
