"""Meta's offline ``SAM2VideoPredictor`` as the reference the tracker is checked and benchmarked against."""

from __future__ import annotations

import json
from typing import Any

from sam2.build_sam import build_sam2_video_predictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from sa2va_ros.model.sam2_grounding import SAM2_VARIANTS, bundled_sam2_config


def hydra_overrides(base: dict[str, Any], target: dict[str, Any], prefix: str = "model") -> list[str]:
    """``++path=value`` hydra overrides that turn the ``base`` model node into ``target``."""
    overrides = []
    for key, value in target.items():
        if isinstance(value, dict):
            overrides += hydra_overrides(base.get(key, {}), value, f"{prefix}.{key}")
        elif base.get(key) != value:
            overrides.append(f"++{prefix}.{key}={json.dumps(value, separators=(',', ':'))}")
    return overrides


def build_reference_predictor(variant: str, model_cfg: dict[str, Any] | None = None) -> SAM2VideoPredictor:
    """``build_sam2_video_predictor`` on a bundled config (random weights, CPU), optionally reshaped into
    ``model_cfg`` (e.g. ``tiny_sam2_config()``) by hydra overrides.

    The builder's own post-processing overrides stay on (dynamic multimask, binarised prompt masks in
    memory). Its hole filling (``fill_hole_area=8``) is switched off: the tracker does not fill holes, and
    without sam2's CUDA extension (not built here) the predictor only warns and skips it anyway.
    """
    overrides = hydra_overrides(bundled_sam2_config(variant), model_cfg) if model_cfg is not None else []
    predictor = build_sam2_video_predictor(
        SAM2_VARIANTS[variant], ckpt_path=None, device="cpu", hydra_overrides_extra=overrides
    )
    predictor.fill_hole_area = 0
    return predictor
