"""Evaluation: benchmark metrics (cIoU, gIoU, J, F, J&F) and readers for the public dataset formats."""

from sa2va_ros.eval.datasets import load_dataset
from sa2va_ros.eval.metrics import RefCocoMeter, VideoMeter

__all__ = ["RefCocoMeter", "VideoMeter", "load_dataset"]
