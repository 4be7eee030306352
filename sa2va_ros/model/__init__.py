"""Sa2VA: a native transformers MLLM + Meta's SAM-2, joined by the ``[SEG]`` token (ROS-free)."""

from .checkpoint import CheckpointError
from .config import Sa2VAConfig
from .modeling import GroundingResult, Sa2VA

__all__ = ["CheckpointError", "GroundingResult", "Sa2VA", "Sa2VAConfig"]
