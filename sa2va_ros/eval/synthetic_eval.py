"""Scores of a model on the synthetic tabletop world's held-out splits (what the bundled model card reports).

Referring images: gIoU / cIoU of the union of predicted masks vs the union of target masks. Referring videos:
ground on the first frame (the keyframe), then track with the streaming tracker; J, F and J&F. Absent
targets: the share of answers with no ``[SEG]``. A diagnostic of the model's SAM-2 alone: one random point
inside each visible object, the IoU of the candidate mask SAM-2 selects and of its best candidate (a gap means
the IoU head picks badly; both low means SAM-2 does not delineate objects yet). A diagnostic of identification:
single-target attribute expressions split by whether an object of the target's colour but another class is in
view (only class tells them apart), with the IoU and how often the mask sits mostly on the target.

    python -m sa2va_ros.eval.synthetic_eval --model sa2va_ros/assets/sa2va_tiny --images 200 --videos 50
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sa2va_ros.synthetic import sample_referring_image, sample_referring_video

from .metrics import RefCocoMeter, VideoMeter

SEGMENT_KINDS = ("attribute", "command", "relation", "ordinal", "multi")
VIDEO_KINDS = ("attribute", "command", "motion", "multi")


def _union(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return masks.any(axis=0) if len(masks) else np.zeros(shape, dtype=bool)


def evaluate_images(model: Any, split: str, count: int, size: tuple[int, int], seed0: int = 0) -> dict[str, float]:
    """gIoU / cIoU on ``count`` referring images (every kind that names targets)."""
    meter = RefCocoMeter()
    for i in tqdm(range(count), desc=f"images/{split}", leave=False):
        sample = sample_referring_image(seed0 + i, split=split, size=size, kind=SEGMENT_KINDS[i % len(SEGMENT_KINDS)])
        result = model.ground([sample.image], "<image>\n" + sample.prompt)
        meter.update(_union(result.masks[:, 0], sample.mask.shape), sample.mask)
    return {"giou": meter.giou, "ciou": meter.ciou, "count": meter.count}


def evaluate_absent(model: Any, split: str, count: int, size: tuple[int, int], seed0: int = 0) -> dict[str, float]:
    """Share of absent-target expressions answered without any ``[SEG]``."""
    clean = 0
    for i in tqdm(range(count), desc=f"absent/{split}", leave=False):
        sample = sample_referring_image(seed0 + i, split=split, size=size, kind="absent")
        clean += "[SEG]" not in model.ground([sample.image], "<image>\n" + sample.prompt).text
    return {"no_seg_rate": clean / max(count, 1), "count": count}


def evaluate_point_prompts(
    model: Any, split: str, count: int, size: tuple[int, int], seed0: int = 0
) -> dict[str, float]:
    """SAM-2 prompted by one random point inside each visible object of ``count`` images: mean IoU of the selected
    mask and of the best of the candidate masks, per object."""
    from sa2va_ros.model.sam2_grounding import upsample_logits

    sam = model.grounding_encoder
    device = next(sam.parameters()).device
    selected, best = [], []
    for i in tqdm(range(count), desc=f"points/{split}", leave=False):
        sample = sample_referring_image(seed0 + i, split=split, size=size)
        height, width = sample.labels.shape
        ids = [k for k in np.unique(sample.labels) if k > 0]
        rng = np.random.default_rng(seed0 + i)
        coords = []
        for k in ids:
            ys, xs = np.nonzero(sample.labels == k)
            j = rng.integers(ys.size)
            coords.append([(xs[j] + 0.5) / width * sam.image_size, (ys[j] + 0.5) / height * sam.image_size])
        points = {
            "point_coords": torch.tensor(coords, dtype=torch.float32, device=device)[:, None],  # [K, 1, 2]
            "point_labels": torch.ones(len(ids), 1, dtype=torch.int32, device=device),  # [K, 1]
        }
        with torch.inference_mode():
            feats, pos, sizes = sam.encode_frame(sam.preprocess([sample.image]).to(device))
            out = sam.decode_point_prompts(feats, pos, sizes, points)
            chosen = upsample_logits(out["pred_masks"].float(), sam.image_size, height, width)[:, 0] > 0  # [K, H, W]
            candidates = upsample_logits(out["multimask_logits"].float(), sam.image_size, height, width) > 0
        for n, k in enumerate(ids):
            truth = sample.labels == k
            selected.append(_iou(chosen[n].cpu().numpy(), truth))
            best.append(max(_iou(mask.cpu().numpy(), truth) for mask in candidates[n]))
    return {"selected_iou": float(np.mean(selected)), "best_candidate_iou": float(np.mean(best)), "objects": len(best)}


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / max((pred | truth).sum(), 1))


def evaluate_same_colour_distractors(
    model: Any, split: str, count: int, size: tuple[int, int], seed0: int = 0
) -> dict[str, dict[str, float | None]]:
    """Per group of ``count`` attribute expressions ("with" / "without" a visible object of the target's colour
    and another class): mean IoU, and the share of masks that overlap the target more than any other object."""
    groups: dict[str, list[tuple[float, bool]]] = {"with_same_colour": [], "without_same_colour": []}
    for i in tqdm(range(count), desc=f"distractors/{split}", leave=False):
        sample = sample_referring_image(seed0 + i, split=split, size=size, kind="attribute")
        target = sample.objects[sample.target_ids[0]]
        in_view = set(np.unique(sample.labels).tolist())
        visible = [o for o in sample.objects if o.index + 1 in in_view]
        confusable = any(o.colour == target.colour and o.cls != target.cls for o in visible)
        predicted = _union(model.ground([sample.image], "<image>\n" + sample.prompt).masks[:, 0], sample.mask.shape)
        overlaps = {o.index: int((predicted & (sample.labels == o.index + 1)).sum()) for o in visible}
        on_target = overlaps.get(target.index, 0) > 0 and overlaps[target.index] == max(overlaps.values())
        groups["with_same_colour" if confusable else "without_same_colour"].append(
            (_iou(predicted, sample.mask), on_target)
        )
    summary: dict[str, dict[str, float | None]] = {}
    for name, rows in groups.items():
        ious, hits = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        summary[name] = {"count": len(rows), "iou": float(ious.mean()) if rows else None,
                         "on_target": float(hits.mean()) if rows else None}  # None: no such expression drawn
    return summary


def evaluate_videos(
    model: Any, split: str, count: int, size: tuple[int, int], frames: int, seed0: int = 0
) -> dict[str, float]:
    """J&F of keyframe grounding + streaming tracking on ``count`` referring clips."""
    from sa2va_ros.tracking import StreamingTracker

    meter = VideoMeter()
    for i in tqdm(range(count), desc=f"videos/{split}", leave=False):
        clip = sample_referring_video(seed0 + i, split=split, num_frames=frames, size=size,
                                      kind=VIDEO_KINDS[i % len(VIDEO_KINDS)])
        result = model.ground([clip.frames[0]], "<image>\n" + clip.prompt)
        tracker = StreamingTracker(model.grounding_encoder)
        predictions = np.zeros((frames, *size), dtype=bool)
        with torch.inference_mode():
            for target_id, embedding in enumerate(result.seg_embeddings, start=1):
                first = tracker.add_target(target_id, clip.frames[0], embedding=embedding)
            if len(result.seg_embeddings):
                predictions[0] = _union(np.stack(list(first.masks.values())), size)
                for t in range(1, frames):
                    step = tracker.step(clip.frames[t])
                    predictions[t] = _union(np.stack(list(step.masks.values())), size)
        meter.update(f"{split}-{i}", predictions, np.stack(clip.masks))
    return meter.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--absent", type=int, default=100)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--point-images", type=int, default=30, help="images for the SAM-2 point-prompt diagnostic")
    parser.add_argument("--distractor-images", type=int, default=60,
                        help="attribute expressions for the same-colour distractor diagnostic")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the scores here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sa2va_ros.model import Sa2VA

    model = Sa2VA.from_pretrained(args.model)
    size = tuple(args.size)
    started = time.monotonic()
    scores = {
        "test_images": evaluate_images(model, "test", args.images, size),
        "compositional_images": evaluate_images(model, "compositional", args.images, size),
        "test_absent": evaluate_absent(model, "test", args.absent, size),
        "test_videos": evaluate_videos(model, "test", args.videos, size, args.frames),
        "sam2_point_prompts": evaluate_point_prompts(model, "test", args.point_images, size),
        "test_same_colour_distractors": evaluate_same_colour_distractors(model, "test", args.distractor_images, size),
    }
    scores["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(scores, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
