"""Procedural synthetic tabletop world: images and videos of everyday objects with exact instance masks,
referring expressions, robot commands, questions and answers (numpy + OpenCV only).

    from sa2va_ros.synthetic import sample_referring_image, sample_referring_video
    sample = sample_referring_image(seed=3, split="train", size=(128, 160), kind="command")
    sample.image, sample.expression, sample.answer, sample.target_masks
"""

from .referring import (
    ObjectInfo,
    ReferringImage,
    ReferringStream,
    ReferringVideo,
    StreamFrame,
    sample_referring_image,
    sample_referring_stream,
    sample_referring_video,
)
from .scene import RenderedFrame, SyntheticScene
from .vocabulary import (
    ALL_PAIRS,
    CLASSES,
    COLOURS,
    COMMAND_VERBS,
    EXPRESSION_KINDS,
    HELD_OUT_PAIRS,
    IMAGE_KIND_WEIGHTS,
    ORDINALS,
    RELATIONS,
    SEG_TOKEN,
    SPLITS,
    VIDEO_KIND_WEIGHTS,
)

__all__ = [
    "ALL_PAIRS",
    "CLASSES",
    "COLOURS",
    "COMMAND_VERBS",
    "EXPRESSION_KINDS",
    "HELD_OUT_PAIRS",
    "IMAGE_KIND_WEIGHTS",
    "ORDINALS",
    "RELATIONS",
    "SEG_TOKEN",
    "SPLITS",
    "VIDEO_KIND_WEIGHTS",
    "ObjectInfo",
    "ReferringImage",
    "ReferringStream",
    "ReferringVideo",
    "RenderedFrame",
    "StreamFrame",
    "SyntheticScene",
    "sample_referring_image",
    "sample_referring_stream",
    "sample_referring_video",
]
