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
from collections.abc import Iterator, Sequence
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
    """Every target's output on one frame; masks, logits and boxes are in that frame's pixels."""

    frame_index: int  # 0-based: the number of frames the tracker had seen before this one
    frame_size: tuple[int, int]  # (height, width)
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # bool H×W
    logits: dict[int, np.ndarray] = field(default_factory=dict)  # float32 H×W mask logits
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
        self.parts = parts or load_parts(sam2_model, self.config.backend, self.config.engines_dir or None)
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
            self._maskmem_pos: torch.Tensor | None = None  # [hw, 1, Cm], the same for every frame

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
        built = [self._read_memory(memory, frame.index) for memory in memories]
        groups: dict[tuple[int, int], list[int]] = {}
        for n, (tokens, _, num_ptr_tokens) in enumerate(built):
            groups.setdefault((tokens.size(0), num_ptr_tokens), []).append(n)
        order, outputs = [], []
        for (_, num_ptr_tokens), members in groups.items():
            memory = torch.cat([built[n][0] for n in members], dim=1)  # [M, B, Cm]
            memory_pos = torch.cat([built[n][1] for n in members], dim=1)  # [M, B, Cm]
            outputs.append(
                self.parts.attend_memory(features.image_embed, features.image_pos, memory, memory_pos, num_ptr_tokens)
            )  # [B, C, H, W]
            order.extend(members)
        pix_feat = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if order != sorted(order):
            pix_feat = pix_feat[torch.as_tensor(np.argsort(order), device=pix_feat.device)]
        return pix_feat

    def _read_memory(self, memory: TargetMemory, frame_idx: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One target's memory tokens for ``frame_idx``, as ``SAM2Base`` assembles them (forward tracking).

        Returns memory ``[M, 1, Cm]``, its positional encoding ``[M, 1, Cm]`` and the number of object-pointer
        tokens at its end.
        """
        sam = self.sam
        selected, unselected = select_closest_cond_frames(frame_idx, memory.conditioning, sam.max_cond_frames_in_attn)
        # Spatial memories: conditioning frames (temporal slot num_maskmem - 1), then previous frames, oldest first.
        slots_and_entries = [(sam.num_maskmem - 1, entry) for entry in selected.values()]
        for t_pos, prev in spatial_memory_frames(frame_idx, sam.num_maskmem, sam.memory_temporal_stride_for_eval):
            entry = memory.recent.get(prev, unselected.get(prev))
            # (a spatial memory is only missing after a rewind to an older keyframe: it was already forgotten)
            if entry is not None and entry.maskmem is not None:
                slots_and_entries.append((sam.num_maskmem - t_pos - 1, entry))
        tokens = [entry.maskmem.float().flatten(2).permute(2, 0, 1) for _, entry in slots_and_entries]  # [hw, 1, Cm]
        positions = [self._maskmem_pos + sam.maskmem_tpos_enc[slot] for slot, _ in slots_and_entries]
        num_ptr_tokens = 0
        if sam.use_obj_ptrs_in_encoder:
            max_ptrs = sam.max_obj_ptrs_in_encoder
            cond_for_ptrs = selected
            if sam.only_obj_ptrs_in_the_past_for_eval:
                cond_for_ptrs = {t: entry for t, entry in selected.items() if t <= frame_idx}
            distances = [
                frame_idx - t if sam.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t) for t in cond_for_ptrs
            ]
            ptrs = [entry.obj_ptr for entry in cond_for_ptrs.values()]
            for t_diff in range(1, max_ptrs):
                t = frame_idx - t_diff
                if t < 0:
                    break
                entry = memory.recent.get(t, unselected.get(t))
                if entry is not None:
                    distances.append(t_diff)
                    ptrs.append(entry.obj_ptr)
            if ptrs:
                tokens_ptr, positions_ptr = self._pointer_tokens(ptrs, distances, max_ptrs)
                tokens.append(tokens_ptr)
                positions.append(positions_ptr)
                num_ptr_tokens = tokens_ptr.size(0)
        return torch.cat(tokens), torch.cat(positions), num_ptr_tokens

    def _pointer_tokens(
        self, ptrs: list[torch.Tensor], distances: list[int], max_ptrs: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Object pointers ``[P, 1, C]`` -> tokens ``[P·C/Cm, 1, Cm]`` with their temporal encodings."""
        sam = self.sam
        obj_ptrs = torch.stack(ptrs, dim=0).float()  # [P, 1, C]
        mem_dim, hidden = sam.mem_dim, sam.hidden_dim
        if sam.add_tpos_enc_to_obj_ptrs:
            tpos_dim = hidden if sam.proj_tpos_enc_in_obj_ptrs else mem_dim
            rel = torch.tensor(distances, device=obj_ptrs.device) / (max_ptrs - 1)
            obj_pos = sam.obj_ptr_tpos_proj(get_1d_sine_pe(rel, dim=tpos_dim)).unsqueeze(1)  # [P, 1, Cm]
        else:
            obj_pos = obj_ptrs.new_zeros(len(ptrs), 1, mem_dim)
        if mem_dim < hidden:  # split each pointer into C / Cm tokens
            obj_ptrs = obj_ptrs.reshape(-1, 1, hidden // mem_dim, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
            obj_pos = obj_pos.repeat_interleave(hidden // mem_dim, dim=0)
        return obj_ptrs, obj_pos.float()

    def _encode_memory(
        self, frame: _BufferedFrame, mask_logits: torch.Tensor, score: torch.Tensor, binarize: bool
    ) -> torch.Tensor:
        """SAM-2's memory encoder on ``[N, 1, S, S]`` mask logits -> ``[N, Cm, h, w]`` (stored in bfloat16).

        ``binarize`` reproduces ``binarize_mask_from_pts_for_mem_enc`` whatever the model's own setting.
        """
        maskmem, maskmem_pos = self.parts.encode_memory(frame.features.image_embed, mask_logits, score, binarize)
        if self._maskmem_pos is None:
            self._maskmem_pos = as_tokens(maskmem_pos[:1]).float()  # [hw, 1, Cm]
        return maskmem.to(torch.bfloat16)  # as SAM2VideoPredictor stores memories

    def _update_state(self, target: _Target, low_res: torch.Tensor, score: float) -> None:
        """Keep the frame's logits; "lost" after ``lost_after_frames`` absent frames in a row."""
        target.low_res_logits = low_res
        target.score = score
        target.absent_run = target.absent_run + 1 if score < self.config.lost_score_threshold else 0
        target.state = LOST if target.absent_run >= self.config.lost_after_frames else TRACKING

    def _result(self) -> TrackResult:
        """Every target on the present frame, upsampled to its size (bilinear, as SAM2VideoPredictor)."""
        assert self._frame_size is not None
        result = TrackResult(frame_index=self._frames_seen - 1, frame_size=self._frame_size)
        target_ids = self.target_ids
        if not target_ids:
            return result
        low_res = torch.cat([self._targets[i].low_res_logits for i in target_ids]).float()  # [N, 1, h, w]
        logits = F.interpolate(low_res, size=self._frame_size, mode="bilinear", align_corners=False)
        logits_np = logits[:, 0].cpu().numpy()  # [N, H, W] float32
        for n, target_id in enumerate(target_ids):
            target = self._targets[target_id]
            mask = logits_np[n] > 0
            result.logits[target_id] = logits_np[n]
            result.masks[target_id] = mask
            result.scores[target_id] = target.score
            result.states[target_id] = target.state
            result.boxes[target_id] = mask_box(mask)
        return result


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` of a bool mask, x1/y1 exclusive (pixel edges); None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
