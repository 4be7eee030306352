"""One target's bounded SAM-2 memory bank.

What SAM-2 reads when it tracks frame ``t`` (``SAM2Base._prepare_memory_conditioned_features``):

* the spatial memories of the conditioning frames (temporal slot ``num_maskmem - 1``),
* the spatial memories of the ``num_maskmem - 1`` previous frames (with the model's eval stride),
* the object pointers of the conditioning frames and of up to ``max_obj_ptrs_in_encoder - 1`` previous frames.

The bank stores exactly that and nothing more: conditioning frames are capped (the first one is always
kept), recent frames lose their spatial memory once outside the spatial window and are dropped once outside
the pointer window. Its size is therefore independent of the stream length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class MemoryEntry:
    """What one frame leaves in a target's memory."""

    maskmem: torch.Tensor | None  # [1, Cm, h, w] bfloat16 spatial memory; None once outside the window
    obj_ptr: torch.Tensor  # [1, C] object pointer


def spatial_memory_frames(frame_idx: int, num_maskmem: int, stride: int) -> list[tuple[int, int]]:
    """``(t_pos, frame index)`` of the previous frames SAM-2 reads on ``frame_idx`` (forward tracking).

    ``t_pos`` runs 1..num_maskmem-1 (oldest first); the last frame is always ``frame_idx - 1``, the others
    are taken every ``stride`` frames, as in ``SAM2Base`` with ``memory_temporal_stride_for_eval``.
    """
    frames = []
    for t_pos in range(1, num_maskmem):
        t_rel = num_maskmem - t_pos
        if t_rel == 1:
            prev = frame_idx - 1
        else:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        frames.append((t_pos, prev))
    return frames


class TargetMemory:
    """Conditioning frames (capped, first kept) + a sliding window of recent frames."""

    def __init__(self, num_maskmem: int, max_obj_ptrs: int, memory_stride: int, max_conditioning: int) -> None:
        self.num_maskmem = num_maskmem
        self.max_obj_ptrs = max_obj_ptrs
        self.memory_stride = memory_stride
        self.max_conditioning = max_conditioning
        self.conditioning: dict[int, MemoryEntry] = {}  # frame index -> entry, in insertion order
        self.recent: dict[int, MemoryEntry] = {}  # frame index -> entry, ascending

    def add_conditioning(self, frame_idx: int, entry: MemoryEntry) -> None:
        """Make ``frame_idx`` a conditioning frame; past the cap, the oldest one after the first is dropped."""
        self.recent.pop(frame_idx, None)  # as SAM-2: a conditioning frame replaces a tracked output
        self.conditioning.pop(frame_idx, None)
        self.conditioning[frame_idx] = entry
        while len(self.conditioning) > self.max_conditioning:
            del self.conditioning[sorted(self.conditioning)[1]]

    def add_recent(self, frame_idx: int, entry: MemoryEntry) -> None:
        """Store a tracked frame, then forget what the next frame (``frame_idx + 1``) can no longer read."""
        self.recent[frame_idx] = entry
        next_idx = frame_idx + 1
        spatial_needed = {prev for _, prev in spatial_memory_frames(next_idx, self.num_maskmem, self.memory_stride)}
        oldest_pointer = next_idx - (self.max_obj_ptrs - 1)
        for idx in list(self.recent):
            if idx in spatial_needed:
                continue
            if idx < oldest_pointer:
                del self.recent[idx]
            elif self.recent[idx].maskmem is not None:
                self.recent[idx] = MemoryEntry(maskmem=None, obj_ptr=self.recent[idx].obj_ptr)

    def forget_after(self, frame_idx: int) -> None:
        """Forget everything after ``frame_idx`` (a catch-up from there rewrites that part of the history)."""
        for frames in (self.recent, self.conditioning):
            for idx in [idx for idx in frames if idx > frame_idx]:
                del frames[idx]

    def clear_recent(self) -> None:
        """Forget every tracked frame, keeping only the conditioning frames."""
        self.recent.clear()

    def stats(self) -> dict[str, Any]:
        """What the bank holds (bounded whatever the stream length)."""
        return {
            "conditioning_frames": sorted(self.conditioning),
            "spatial_memories": sum(entry.maskmem is not None for entry in self.recent.values()),
            "recent_pointers": len(self.recent),
        }
