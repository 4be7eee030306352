"""Training samples from the synthetic tabletop world: referring images, referring clips, questions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sa2va_ros.synthetic import sample_referring_image, sample_referring_video
from sa2va_ros.synthetic.vocabulary import IMAGE_KIND_WEIGHTS, VIDEO_KIND_WEIGHTS


@dataclass(frozen=True)
class TrainSample:
    """One conversation turn grounded on frames; ``masks[i][t]`` is the mask of the i-th ``[SEG]`` on frame t."""

    frames: list[np.ndarray]  # T x (H, W, 3) uint8 RGB; T = 1 for images
    prompt: str  # the user turn, with "<image>"
    answer: str  # the assistant turn, without the stop word
    masks: list[list[np.ndarray]]  # per [SEG]: T x (H, W) bool
    kind: str
    labels: np.ndarray  # (H, W) uint8 visible-instance label map of frame 0 (0 = background, i = object i - 1)
    names: tuple[tuple[str, str], ...] = ()  # (colour, class) of object i - 1, for the object-prompt aid


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = sorted(weights)
    p = np.array([weights[k] for k in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def synthetic_sample(
    index: int, seed: int, mix: dict[str, float], size: tuple[int, int], video_frames: int,
    kind_weights: dict[str, float] | None = None,
) -> TrainSample:
    """The ``index``-th training sample of a run: deterministic, so a resumed run sees the same data.
    ``kind_weights`` override the world's expression-kind weights (kinds a modality lacks are ignored)."""
    rng = np.random.default_rng([seed, index])
    modality = _choose(rng, mix)
    sample_seed = int(rng.integers(0, 2**31 - 1))
    defaults = IMAGE_KIND_WEIGHTS if modality == "image" else VIDEO_KIND_WEIGHTS
    overrides = {k: v for k, v in (kind_weights or {}).items() if k in defaults}
    forced = _choose(rng, {**defaults, **overrides}) if overrides else None
    if modality == "image":
        item = sample_referring_image(sample_seed, split="train", size=size, kind=forced)
        frames, masks, labels = [item.image], [[mask] for mask in item.target_masks], item.labels
        prompt, answer, kind, objects = item.prompt, item.answer, item.kind, item.objects
    else:
        video = sample_referring_video(sample_seed, split="train", num_frames=video_frames, size=size, kind=forced)
        frames, masks, labels = video.frames, video.target_masks, video.labels[0]
        prompt, answer, kind, objects = video.prompt, video.answer, video.kind, video.objects
    names = tuple((o.colour, o.cls) for o in objects)
    return TrainSample(frames, "<image>\n" + prompt, answer, masks, kind, labels, names)


def sample_stream(start: int, seed: int, mix: dict[str, float], size: tuple[int, int], video_frames: int,
                  stride: int = 1, offset: int = 0,
                  kind_weights: dict[str, float] | None = None) -> Iterator[TrainSample]:
    """Samples ``start + offset``, ``start + offset + stride``, ...: one disjoint stream per data-parallel rank."""
    index = start * stride + offset
    while True:
        yield synthetic_sample(index, seed, mix, size, video_frames, kind_weights)
        index += stride
