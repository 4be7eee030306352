"""Streaming multi-target tracker on SAM-2 memory.

Frames arrive one at a time; nothing is preloaded. Per frame:

1. one image-encoder pass, shared by every target; its features go into a ring buffer of the last
   ``feature_buffer`` frames (for catch-up);
2. every target's memory (conditioning frames, recent frames, object pointers) is read the way
   ``SAM2Base._prepare_memory_conditioned_features`` reads it, and targets whose memories have the same
   shape (number of memory tokens, number of pointer tokens) go through memory attention as one batch.
   Targets added on the same frame always share that shape, and after ``max_obj_ptrs_in_encoder`` frames
   every target with the same number of conditioning frames does: in steady state there is one batch;
3. all targets then go through the mask decoder and the memory encoder as one batch.

These four SAM-2 parts run on a backend (``sa2va_ros.runtime``: PyTorch, ONNX Runtime or TensorRT, chosen by
``TrackerConfig.backend``); the memory bookkeeping (which frames and pointers each target reads, their temporal
encodings) stays here, in PyTorch, whatever the backend.

Faithfulness: on the same weights, frames and mask prompt, logits match Meta's ``SAM2VideoPredictor``
(``tests/test_tracking_parity.py``). The predictor's post-processing overrides are reproduced by the tracker
itself (``binarize_prompt_masks_for_memory``); its hole filling needs sam2's CUDA extension and is not done.

Catch-up: ``add_target(..., at=k)`` conditions a target on buffered frame ``k`` and propagates it through the
buffered frames up to the present one, so a grounding result computed on an old keyframe becomes a mask
for *now* (no image-encoder pass is repeated).

States: a target is ``"lost"`` once its object score logit has stayed below ``lost_score_threshold`` for
``lost_after_frames`` frames in a row, and ``"tracking"`` again as soon as one frame scores above it (SAM-2's
memory found it again) or it is re-conditioned with ``add_target`` (same id). Stock SAM-2 forces an absent
object's logits to -1024 (empty mask); Sa2VA's model does not, so consumers should read ``states``/``scores``.

Frames: see ``frames.py`` (uint8 RGB or mono, any size within ``[min_frame_side, max_frame_side]``; masks
follow each frame's own size; a bad frame is one ``ValueError`` and changes nothing).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from sam2.modeling.sam2_utils import get_1d_sine_pe, select_closest_cond_frames

from sa2va_ros.model.preprocess import sam2_pixels
from sa2va_ros.runtime import BACKENDS, FrameFeatures, SamParts, as_tokens, load_parts
from sa2va_ros.tracking.frames import as_rgb_frame
from sa2va_ros.tracking.memory import MemoryEntry, TargetMemory, spatial_memory_frames

TRACKING = "tracking"
LOST = "lost"


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker settings; every field is validated on construction."""

    feature_buffer: int = 16  # frames whose encoder features are kept for catch-up (~16 MB/frame at 1024²)
    max_conditioning_frames: int = 4  # per target; the first is always kept, then the newest ones
    lost_score_threshold: float = 0.0  # object score logit below which a frame counts as "absent"
    lost_after_frames: int = 5  # consecutive absent frames before a target is reported "lost"
    # As SAM2VideoPredictor, a frame prompted by clicks, a box or a mask enters memory as a 0/1 mask; a frame
    # prompted by a [SEG] embedding enters it as sigmoid probabilities, as Sa2VA's video inference does.
    binarize_prompt_masks_for_memory: bool = True
    clear_memory_on_reprompt: bool = True  # a new prompt for a known id drops its tracked (non-prompted) memory
    min_frame_side: int = 8
    max_frame_side: int = 8192
    cuda_bf16_autocast: bool = True  # on CUDA, run under bfloat16 autocast (CPU always runs float32)
    cuda_graphs: bool = True  # on CUDA, the torch backend replays its four parts as CUDA graphs (see TorchParts)
    backend: str = "torch"  # runtime of the four SAM-2 parts: torch | onnxruntime | tensorrt
    engines_dir: str = ""  # where exported ONNX files and TensorRT engines are cached ("": the default cache)

    def __post_init__(self) -> None:
        checks = {
            "backend": self.backend in BACKENDS,
            "feature_buffer": self.feature_buffer >= 1,
            "max_conditioning_frames": self.max_conditioning_frames >= 2,
            "lost_after_frames": self.lost_after_frames >= 1,
            "min_frame_side": self.min_frame_side >= 1,
            "max_frame_side": self.max_frame_side >= self.min_frame_side,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "invalid TrackerConfig: " + ", ".join(bad) + " (feature_buffer >= 1, max_conditioning_frames >= 2, "
                f"lost_after_frames >= 1, 1 <= min_frame_side <= max_frame_side, backend in {BACKENDS})"
            )


@dataclass
class TrackResult:
    """Every target's output on one frame; masks, logits and boxes are in that frame's pixels.

    ``logits`` is read-only and lazy (``LazyLogits``): a target's float map is made only when read.
    """

    frame_index: int  # 0-based: the number of frames the tracker had seen before this one
    frame_size: tuple[int, int]  # (height, width)
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # bool H×W
    logits: Mapping[int, np.ndarray] = field(default_factory=dict)  # float32 H×W mask logits (read lazily)
    scores: dict[int, float] = field(default_factory=dict)  # object score logit (> 0: object present)
    states: dict[int, str] = field(default_factory=dict)  # "tracking" or "lost"
    boxes: dict[int, tuple[int, int, int, int] | None] = field(default_factory=dict)  # x0, y0, x1, y1 (exclusive)


class FrameNotBufferedError(ValueError):
    """``at=k`` names a frame whose features are not (or no longer, or not yet) in the buffer."""


@dataclass
class _BufferedFrame:
    index: int
    size: tuple[int, int]  # (height, width) of the camera frame
    features: FrameFeatures  # the image encoder's output (batch 1)


@dataclass
class _MemoryRead:
    """What one target reads on a frame, in SAM-2's order: spatial memories, then object pointers."""

    slots: tuple[int, ...]  # temporal slot of each spatial memory (num_maskmem - 1: a conditioning frame)
    maskmems: list[torch.Tensor]  # [1, Cm, h, w] bfloat16 each
    distances: tuple[int, ...]  # frames between each object pointer and the present frame
    pointers: list[torch.Tensor]  # [1, C] each


@dataclass
class _Prompt:
    point_inputs: dict[str, torch.Tensor] | None = None  # point_coords [1, P, 2] model pixels, point_labels [1, P]
    mask: torch.Tensor | None = None  # [1, 1, S, S] float 0/1
    embedding: torch.Tensor | None = None  # [1, 1, C] projected [SEG] vector


@dataclass
class _Target:
    memory: TargetMemory
    low_res_logits: torch.Tensor | None = None  # [1, 1, S/4, S/4] on the present frame
    score: float = 0.0
    absent_run: int = 0
    state: str = TRACKING


class StreamingTracker:
    """Online multi-target SAM-2 tracking with bounded memory, catch-up and lost / re-acquired states.

    ``sam2_model`` is a ``SAM2Base`` (as ``sam2.build_sam.build_sam2`` returns it) or Sa2VA's ``Sa2VASam2``,
    in eval mode. Its four parts run on ``config.backend`` (or on ``parts``, an already loaded backend for this
    model). Methods are serialised by a lock, so a grounding worker may call ``add_target`` while the camera
    thread calls ``step``.
    """

    def __init__(
        self, sam2_model: SAM2Base, config: TrackerConfig | None = None, *, parts: SamParts | None = None
    ) -> None:
        if sam2_model.training:
            raise ValueError("the SAM-2 model must be in eval mode (call .eval() first)")
        self.sam = sam2_model
        self.config = config or TrackerConfig()
        self.parts = parts or load_parts(
            sam2_model, self.config.backend, self.config.engines_dir or None, cuda_graphs=self.config.cuda_graphs
        )
        self._device = next(sam2_model.parameters()).device
        self._lock = threading.RLock()
        self.reset()

    # ------------------------------------------------------------------ public API

    @property
    def target_ids(self) -> list[int]:
        """Ids of the current targets, in the order they were added."""
        return list(self._targets)

    @property
    def frames_seen(self) -> int:
        """How many frames the tracker has seen (the next frame gets this index)."""
        return self._frames_seen

    def reset(self) -> None:
        """Forget every target and every buffered frame; frame indices start again at 0."""
        with self._lock:
            self._targets: dict[int, _Target] = {}
            self._buffer: deque[_BufferedFrame] = deque(maxlen=self.config.feature_buffer)
            self._frames_seen = 0
            self._frame_size: tuple[int, int] | None = None
            # memory positional encodings per temporal slot [num_maskmem, hw, 1, Cm], the same for every frame
            self._slot_positions: torch.Tensor | None = None

    def remove_target(self, target_id: int) -> None:
        """Stop tracking ``target_id`` and free its memory."""
        with self._lock:
            if target_id not in self._targets:
                raise KeyError(f"unknown target id {target_id!r}; current ids: {self.target_ids}")
            del self._targets[target_id]

    def step(self, frame: np.ndarray) -> TrackResult:
        """Track every target on the next frame of the stream."""
        with self._lock, self._compute():
            rgb = as_rgb_frame(frame, min_side=self.config.min_frame_side, max_side=self.config.max_frame_side)
            self._advance(rgb, skip=())
            return self._result()

    def add_target(
        self,
        target_id: int,
        frame: np.ndarray | None = None,
        *,
        mask: np.ndarray | None = None,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        embedding: torch.Tensor | np.ndarray | None = None,
        at: int | None = None,
    ) -> TrackResult:
        """Condition ``target_id`` on a frame with one prompt and return the present frame's result.

        ``frame`` (if given) is the next frame of the stream: every other target is tracked on it too.
        Without ``at`` the target is conditioned on that frame; with ``at=k`` it is conditioned on buffered
        frame ``k`` (prompt coordinates in frame ``k``'s pixels) and propagated to the present frame.
        Prompts: ``mask`` (H×W bool), ``box`` (x0, y0, x1, y1), ``points`` (N×2 xy) with ``labels``
        (1 positive / 0 negative; may be combined with ``box``), or ``embedding`` (a ``[256]`` projected
        ``[SEG]`` vector). A known ``target_id`` is re-conditioned: same id, one more conditioning frame; what
        it remembered after frame ``k`` is replaced (the latest call wins), and with
        ``clear_memory_on_reprompt`` its tracked frames before ``k`` are dropped too (the prompt is trusted
        over the memory that lost the target).
        """
        with self._lock, self._compute():
            rgb = None
            if frame is not None:
                rgb = as_rgb_frame(frame, min_side=self.config.min_frame_side, max_side=self.config.max_frame_side)
            elif at is None:
                raise ValueError("add_target needs a frame, or at=k to condition on a buffered frame")
            cond_index = self._frames_seen if at is None else int(at)
            if at is not None:
                self._check_buffered(cond_index, pushing=rgb is not None)
            cond_size = rgb.shape[:2] if cond_index == self._frames_seen else self._buffered(cond_index).size
            prompt = self._prepare_prompt(cond_size, mask, box, points, labels, embedding)

            if rgb is not None:
                self._advance(rgb, skip=(target_id,))
            target = self._targets.get(target_id)
            if target is None:
                target = self._targets[target_id] = _Target(self._new_memory())
            else:  # re-conditioning: the history after the keyframe is rewritten by the catch-up below
                target.memory.forget_after(cond_index)
                if self.config.clear_memory_on_reprompt:
                    target.memory.clear_recent()
            target.absent_run = 0
            self._condition(target, self._buffered(cond_index), prompt)
            for index in range(cond_index + 1, self._frames_seen):  # catch-up to the present frame
                self._track([target_id], self._buffered(index))
            return self._result()

    def memory_stats(self) -> dict[str, Any]:
        """Stored entries: buffered frames and, per target, its memory bank (all bounded)."""
        with self._lock:
            return {
                "buffered_frames": len(self._buffer),
                "targets": {target_id: t.memory.stats() for target_id, t in self._targets.items()},
            }

    # ------------------------------------------------------------------ frames and prompts

    @contextlib.contextmanager
    def _compute(self) -> Iterator[None]:
        """inference_mode, plus bfloat16 autocast on CUDA when configured."""
        autocast = contextlib.nullcontext()
        if self._device.type == "cuda" and self.config.cuda_bf16_autocast:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        with torch.inference_mode(), autocast:
            yield

    def _new_memory(self) -> TargetMemory:
        return TargetMemory(
            num_maskmem=self.sam.num_maskmem,
            max_obj_ptrs=self.sam.max_obj_ptrs_in_encoder,
            memory_stride=self.sam.memory_temporal_stride_for_eval,
            max_conditioning=self.config.max_conditioning_frames,
        )

    def _check_buffered(self, index: int, *, pushing: bool) -> None:
        """Raise unless frame ``index`` will be in the buffer (after the frame being pushed, if any)."""
        newest = self._frames_seen if pushing else self._frames_seen - 1
        oldest = max(0, newest - self.config.feature_buffer + 1)
        if not oldest <= index <= newest:
            span = f"frames {oldest}..{newest}" if newest >= 0 else "no frames"
            raise FrameNotBufferedError(
                f"frame {index} is not buffered (the buffer holds {span}; "
                f"TrackerConfig.feature_buffer={self.config.feature_buffer})"
            )

    def _buffered(self, index: int) -> _BufferedFrame:
        return self._buffer[index - self._buffer[0].index]

    def _prepare_prompt(
        self,
        size: tuple[int, int],
        mask: np.ndarray | None,
        box: Sequence[float] | None,
        points: Any,
        labels: Any,
        embedding: Any,
    ) -> _Prompt:
        """Validate a prompt given in the pixels of a ``size`` frame and move it to the model's resolution."""
        given = [
            name
            for name, value in (("mask", mask), ("box", box), ("points", points), ("embedding", embedding))
            if value is not None
        ]
        if not given:
            raise ValueError("add_target needs a prompt: mask, box, points with labels, or embedding")
        if ("mask" in given or "embedding" in given) and len(given) > 1:
            raise ValueError(f"a mask or an embedding prompt cannot be combined with others; got {given}")
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        height, width = size
        image_size = self.sam.image_size
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (height, width):
                raise ValueError(f"mask shape {mask.shape} does not match the frame size {(height, width)}")
            mask_t = torch.from_numpy(mask.astype(bool)).to(self._device)[None, None].float()  # [1, 1, H, W]
            if (height, width) != (image_size, image_size):  # as SAM2VideoPredictor.add_new_mask
                mask_t = F.interpolate(
                    mask_t, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
                )
                mask_t = (mask_t >= 0.5).float()
            return _Prompt(mask=mask_t)
        if embedding is not None:
            embedding_t = torch.as_tensor(embedding).to(self._device, torch.float32)
            if embedding_t.numel() != self.sam.hidden_dim:
                raise ValueError(f"embedding must have {self.sam.hidden_dim} values, got {tuple(embedding_t.shape)}")
            return _Prompt(embedding=embedding_t.reshape(1, 1, -1))
        coords, point_labels = [], []
        if box is not None:  # a box is two points labelled 2 and 3, before any clicks (as SAM-2 is trained)
            box_xy = torch.as_tensor(np.asarray(box, dtype=np.float32))
            if box_xy.numel() != 4:
                raise ValueError(f"box must be (x0, y0, x1, y1), got {tuple(box_xy.shape)}")
            coords.append(box_xy.reshape(2, 2))
            point_labels.append(torch.tensor([2, 3], dtype=torch.int32))
        if points is not None:
            points_xy = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(-1, 2)
            labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int32)).reshape(-1)
            if len(labels_t) != len(points_xy) or not bool(((labels_t == 0) | (labels_t == 1)).all()):
                raise ValueError("labels must hold one 0 (negative) or 1 (positive) per point")
            coords.append(points_xy)
            point_labels.append(labels_t)
        xy = torch.cat(coords) / torch.tensor([width, height]) * image_size  # as SAM2VideoPredictor
        return _Prompt(
            point_inputs={
                "point_coords": xy[None].to(self._device),
                "point_labels": torch.cat(point_labels)[None].to(self._device),
            }
        )

    # ------------------------------------------------------------------ SAM-2 steps

    def _advance(self, rgb: np.ndarray, skip: Sequence[int]) -> None:
        """Encode the next frame once, buffer its features and track every target not in ``skip``."""
        image = sam2_pixels(rgb, self.sam.image_size, self._device)[None]  # [1, 3, S, S]
        frame = _BufferedFrame(index=self._frames_seen, size=rgb.shape[:2], features=self.parts.encode_image(image))
        self._buffer.append(frame)
        self._frames_seen += 1
        self._frame_size = frame.size
        tracked = [target_id for target_id in self._targets if target_id not in skip]
        if tracked:
            self._track(tracked, frame)

    def _condition(self, target: _Target, frame: _BufferedFrame, prompt: _Prompt) -> None:
        """Decode a prompted frame without memory (as SAM-2's initial conditioning frames) and store it."""
        sam, features = self.sam, frame.features
        if prompt.mask is not None and sam.use_mask_input_as_output_without_sam:
            low_res, obj_ptr, score = self._mask_as_output(features, prompt.mask)
        else:
            pix_feat = sam._prepare_memory_conditioned_features(
                frame_idx=frame.index,
                is_init_cond_frame=True,
                current_vision_feats=[as_tokens(features.image_embed)],
                current_vision_pos_embeds=[as_tokens(features.image_pos)],
                feat_sizes=[tuple(features.image_embed.shape[-2:])],
                output_dict={},
                num_frames=1,
            )
            point_inputs = prompt.point_inputs or {}
            decoded = self.parts.decode_masks(
                pix_feat,
                features,
                multimask=sam._use_multimask(True, prompt.point_inputs),
                point_coords=point_inputs.get("point_coords"),
                point_labels=point_inputs.get("point_labels"),
                mask_input=prompt.mask,
                language_embd=prompt.embedding,
            )
            low_res, obj_ptr, score = decoded.low_res_masks, decoded.object_pointers, decoded.object_score_logits
        # [1, 1, S/4, S/4], [1, C], [1, 1]. As SAM2VideoPredictor: a prompted frame's memory is encoded from its
        # low-res logits, upsampled.
        mask_for_memory = F.interpolate(
            low_res, size=(sam.image_size, sam.image_size), mode="bilinear", align_corners=False
        )
        binarize = self.config.binarize_prompt_masks_for_memory and prompt.embedding is None
        maskmem = self._encode_memory(frame, mask_for_memory, score, binarize)
        target.memory.add_conditioning(frame.index, MemoryEntry(maskmem=maskmem, obj_ptr=obj_ptr))
        self._update_state(target, low_res, float(score))

    def _mask_as_output(
        self, features: FrameFeatures, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``SAM2Base._use_mask_as_output`` with its decoder call on the backend: a 0/1 mask ``[1, 1, S, S]``
        becomes ±10 logits, and the decoder, prompted by the mask, gives the object pointer."""
        sam = self.sam
        out_scale, out_bias = 20.0, -10.0
        low_res = F.interpolate(
            mask * out_scale + out_bias,
            size=(mask.size(-2) // 4, mask.size(-1) // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        if sam.use_obj_ptrs_in_encoder:
            decoded = self.parts.decode_masks(
                features.image_embed, features, multimask=False, mask_input=sam.mask_downsample(mask)
            )
            obj_ptr = decoded.object_pointers
        else:
            obj_ptr = torch.zeros(1, sam.hidden_dim, device=mask.device)
        appearing = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()  # [1, 1]
        if sam.pred_obj_scores:
            if sam.fixed_no_obj_ptr:
                obj_ptr = appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - appearing) * sam.no_obj_ptr
        return low_res, obj_ptr, out_scale * appearing + out_bias

    def _track(self, target_ids: Sequence[int], frame: _BufferedFrame) -> None:
        """Track ``target_ids`` on ``frame`` from their memories, batched, and store the new memories."""
        pix_feat = self._memory_conditioned_features([self._targets[i].memory for i in target_ids], frame)
        decoded = self.parts.decode_masks(pix_feat, frame.features, multimask=self.sam._use_multimask(False, None))
        low_res, obj_ptr, score = decoded.low_res_masks, decoded.object_pointers, decoded.object_score_logits
        maskmem = self._encode_memory(frame, decoded.high_res_masks, score, binarize=False)  # [N, Cm, h, w]
        scores = score[:, 0].float().cpu().tolist()
        for n, target_id in enumerate(target_ids):
            target = self._targets[target_id]
            target.memory.add_recent(frame.index, MemoryEntry(maskmem=maskmem[n : n + 1], obj_ptr=obj_ptr[n : n + 1]))
            self._update_state(target, low_res[n : n + 1], scores[n])

    def _memory_conditioned_features(self, memories: Sequence[TargetMemory], frame: _BufferedFrame) -> torch.Tensor:
        """Memory attention for every target, batched by memory shape: ``[N, C, H, W]``."""
        features = frame.features
        if self.sam.num_maskmem == 0:  # memory disabled (SAM on single images)
            return features.image_embed.expand(len(memories), -1, -1, -1)
        reads = [self._memory_read(memory, frame.index) for memory in memories]
        groups: dict[tuple[int, int], list[int]] = {}
        for n, read in enumerate(reads):
            groups.setdefault((len(read.slots), len(read.distances)), []).append(n)
        pointer_positions: dict[tuple[int, ...], torch.Tensor] = {}  # this frame's encodings, per distance set
        order, outputs = [], []
        for members in groups.values():
            memory, memory_pos, num_ptr_tokens = self._batched_memory([reads[n] for n in members], pointer_positions)
            outputs.append(
                self.parts.attend_memory(features.image_embed, features.image_pos, memory, memory_pos, num_ptr_tokens)
            )  # [B, C, H, W]
            order.extend(members)
        pix_feat = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if order != sorted(order):
            pix_feat = pix_feat[torch.as_tensor(np.argsort(order), device=pix_feat.device)]
        return pix_feat

    def _memory_read(self, memory: TargetMemory, frame_idx: int) -> _MemoryRead:
        """Which memories one target reads on ``frame_idx``, chosen as ``SAM2Base`` chooses them (forward
        tracking); bookkeeping only, no tensor is touched."""
        sam = self.sam
        selected, unselected = select_closest_cond_frames(frame_idx, memory.conditioning, sam.max_cond_frames_in_attn)
        # Spatial memories: conditioning frames (temporal slot num_maskmem - 1), then previous frames, oldest first.
        slots = [sam.num_maskmem - 1] * len(selected)
        maskmems = [entry.maskmem for entry in selected.values()]
        for t_pos, prev in spatial_memory_frames(frame_idx, sam.num_maskmem, sam.memory_temporal_stride_for_eval):
            entry = memory.recent.get(prev, unselected.get(prev))
            # (a spatial memory is only missing after a rewind to an older keyframe: it was already forgotten)
            if entry is not None and entry.maskmem is not None:
                slots.append(sam.num_maskmem - t_pos - 1)
                maskmems.append(entry.maskmem)
        distances, pointers = [], []
        if sam.use_obj_ptrs_in_encoder:
            cond_for_ptrs = selected
            if sam.only_obj_ptrs_in_the_past_for_eval:
                cond_for_ptrs = {t: entry for t, entry in selected.items() if t <= frame_idx}
            for t, entry in cond_for_ptrs.items():
                distances.append(frame_idx - t if sam.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t))
                pointers.append(entry.obj_ptr)
            for t_diff in range(1, sam.max_obj_ptrs_in_encoder):
                t = frame_idx - t_diff
                if t < 0:
                    break
                entry = memory.recent.get(t, unselected.get(t))
                if entry is not None:
                    distances.append(t_diff)
                    pointers.append(entry.obj_ptr)
        return _MemoryRead(tuple(slots), maskmems, tuple(distances), pointers)

    def _batched_memory(
        self, reads: Sequence[_MemoryRead], pointer_positions: dict[tuple[int, ...], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """B targets' memories of one shape as SAM-2 lays them out, built with a few batched ops.

        Returns memory ``[M, B, Cm]``, its positional encoding ``[M, B, Cm]`` and the number of object-pointer
        tokens at its end. ``pointer_positions`` caches the pointer encodings per distance set for the frame.
        """
        sam, batch = self.sam, len(reads)
        num_spatial, num_pointers = len(reads[0].slots), len(reads[0].distances)
        assert self._slot_positions is not None  # set by the first memory encoding, before any memory is read
        _, hw, _, mem_dim = self._slot_positions.shape
        split = sam.hidden_dim // mem_dim if mem_dim < sam.hidden_dim else 1  # a pointer becomes C / Cm tokens
        num_spatial_tokens, num_ptr_tokens = num_spatial * hw, num_pointers * split
        # Each part is gathered with one cat and written into place (float32, SAM-2's layout) by one copy.
        memory = torch.empty(num_spatial_tokens + num_ptr_tokens, batch, mem_dim, device=self._device)
        if num_spatial:
            maskmem = torch.cat([m for read in reads for m in read.maskmems])  # [B·F, Cm, h, w] bfloat16
            spatial = maskmem.view(batch, num_spatial, mem_dim, hw).permute(1, 3, 0, 2)  # [F, hw, B, Cm]
            memory[:num_spatial_tokens].view(num_spatial, hw, batch, mem_dim).copy_(spatial)
        if num_pointers:
            ptrs = torch.cat([p for read in reads for p in read.pointers])  # [B·P, C]
            ptrs = ptrs.view(batch, num_pointers, split, mem_dim).permute(1, 2, 0, 3)  # [P, split, B, Cm]
            memory[num_spatial_tokens:].view(num_pointers, split, batch, mem_dim).copy_(ptrs)
        positions = {}  # per (slots, distances): [M, 1, Cm]; targets of one age share one
        for read in reads:
            key = (read.slots, read.distances)
            if key not in positions:
                parts = [self._slot_positions[slot] for slot in read.slots]  # [hw, 1, Cm] each
                if read.distances:
                    if read.distances not in pointer_positions:
                        pointer_positions[read.distances] = self._pointer_positions(read.distances)
                    parts.append(pointer_positions[read.distances])
                positions[key] = torch.cat(parts)
        memory_pos = torch.cat([positions[(read.slots, read.distances)] for read in reads], dim=1)  # [M, B, Cm]
        return memory, memory_pos, num_ptr_tokens

    def _pointer_positions(self, distances: tuple[int, ...]) -> torch.Tensor:
        """Temporal encodings of object pointers ``distances`` frames away -> ``[P·C/Cm, 1, Cm]`` (each
        pointer's encoding repeated for its C/Cm tokens), computed as ``SAM2Base`` does for one object."""
        sam = self.sam
        mem_dim, hidden = sam.mem_dim, sam.hidden_dim
        if sam.add_tpos_enc_to_obj_ptrs:
            tpos_dim = hidden if sam.proj_tpos_enc_in_obj_ptrs else mem_dim
            rel = torch.tensor(distances, device=self._device) / (sam.max_obj_ptrs_in_encoder - 1)
            obj_pos = sam.obj_ptr_tpos_proj(get_1d_sine_pe(rel, dim=tpos_dim)).unsqueeze(1)  # [P, 1, Cm]
        else:
            obj_pos = torch.zeros(len(distances), 1, mem_dim, device=self._device)
        if mem_dim < hidden:
            obj_pos = obj_pos.repeat_interleave(hidden // mem_dim, dim=0)
        return obj_pos.float()

    def _encode_memory(
        self, frame: _BufferedFrame, mask_logits: torch.Tensor, score: torch.Tensor, binarize: bool
    ) -> torch.Tensor:
        """SAM-2's memory encoder on ``[N, 1, S, S]`` mask logits -> ``[N, Cm, h, w]`` (stored in bfloat16).

        ``binarize`` reproduces ``binarize_mask_from_pts_for_mem_enc`` whatever the model's own setting.
        """
        maskmem, maskmem_pos = self.parts.encode_memory(frame.features.image_embed, mask_logits, score, binarize)
        if self._slot_positions is None:  # [num_maskmem, hw, 1, Cm]: the frame's encoding plus each temporal slot's
            self._slot_positions = as_tokens(maskmem_pos[:1]).float()[None] + self.sam.maskmem_tpos_enc
        return maskmem.to(torch.bfloat16)  # as SAM2VideoPredictor stores memories

    def _update_state(self, target: _Target, low_res: torch.Tensor, score: float) -> None:
        """Keep the frame's logits; "lost" after ``lost_after_frames`` absent frames in a row."""
        target.low_res_logits = low_res
        target.score = score
        target.absent_run = target.absent_run + 1 if score < self.config.lost_score_threshold else 0
        target.state = LOST if target.absent_run >= self.config.lost_after_frames else TRACKING

    def _result(self) -> TrackResult:
        """Every target on the present frame, upsampled to its size (bilinear, as SAM2VideoPredictor).

        Masks and boxes of all targets are computed at once on the device and copied to the host together;
        the float logit maps stay on the device at low resolution until read (``LazyLogits``).
        """
        assert self._frame_size is not None
        result = TrackResult(frame_index=self._frames_seen - 1, frame_size=self._frame_size)
        target_ids = self.target_ids
        if not target_ids:
            return result
        low_res = torch.cat([self._targets[i].low_res_logits for i in target_ids]).float()  # [N, 1, h, w]
        masks = upsample_logits(low_res, self._frame_size)[:, 0] > 0  # [N, H, W] bool
        boxes = mask_boxes(masks)
        masks_host = masks.cpu().numpy()
        result.logits = LazyLogits(low_res, target_ids, self._frame_size)
        for n, target_id in enumerate(target_ids):
            target = self._targets[target_id]
            result.masks[target_id] = masks_host[n]
            result.scores[target_id] = target.score
            result.states[target_id] = target.state
            result.boxes[target_id] = boxes[n]
        return result


def upsample_logits(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mask logits ``[N, 1, h, w]`` -> ``[N, 1, H, W]``, bilinear as ``SAM2VideoPredictor`` resizes its output."""
    return F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)


def mask_boxes(masks: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """Tight boxes ``(x0, y0, x1, y1)`` of bool masks ``[N, H, W]``, x1/y1 exclusive (pixel edges); None if
    empty. Reduced on the masks' device; one ``[N, 5]`` transfer."""
    pixels = masks.view(torch.uint8)  # (bool.any along a dimension is ~20x slower than uint8 amax on a CPU)
    rows, cols = pixels.amax(dim=2) > 0, pixels.amax(dim=1) > 0  # [N, H], [N, W]

    def span(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # first occupied, last occupied + 1
        index = torch.arange(occupied.size(1), device=occupied.device)
        first = torch.where(occupied, index, occupied.size(1)).amin(dim=1)
        return first, torch.where(occupied, index + 1, 0).amax(dim=1)

    (y0, y1), (x0, x1) = span(rows), span(cols)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).cpu().tolist()  # [N, 4]
    return [tuple(box) if box[2] > 0 else None for box in boxes]  # x1 = 0: no occupied column


class LazyLogits(Mapping[int, np.ndarray]):
    """Read-only ``target id -> float32 H×W`` logit map of one result, upsampled and copied to the host on first
    read (then kept). Until then a result holds only the low-resolution logits, on the tracker's device."""

    def __init__(self, low_res: torch.Tensor, target_ids: Sequence[int], size: tuple[int, int]) -> None:
        self._low_res = low_res  # [N, 1, h, w] float32
        self._rows = {target_id: n for n, target_id in enumerate(target_ids)}
        self._size = size
        self._read: dict[int, np.ndarray] = {}

    def __getitem__(self, target_id: int) -> np.ndarray:
        if target_id not in self._read:
            n = self._rows[target_id]
            with torch.inference_mode():
                logits = upsample_logits(self._low_res[n : n + 1], self._size)  # [1, 1, H, W]
            self._read[target_id] = logits[0, 0].cpu().numpy()
        return self._read[target_id]

    def __contains__(self, target_id: object) -> bool:  # without reading the map (Mapping's default would)
        return target_id in self._rows

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)
