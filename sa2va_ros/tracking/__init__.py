"""Streaming multi-target tracking on SAM-2 memory (ROS-free): shared encoder pass, batched targets,
bounded memory, catch-up from buffered keyframes, lost / re-acquired states."""

from sa2va_ros.tracking.tracker import (
    LOST,
    TRACKING,
    FrameNotBufferedError,
    StreamingTracker,
    TrackerConfig,
    TrackResult,
)

__all__ = ["LOST", "TRACKING", "FrameNotBufferedError", "StreamingTracker", "TrackResult", "TrackerConfig"]
