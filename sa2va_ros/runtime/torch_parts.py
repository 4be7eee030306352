"""The PyTorch backend: SAM-2's own modules, called exactly as ``SAM2VideoPredictor`` calls them (the reference)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from sam2.modeling.sam2_base import SAM2Base

from sa2va_ros.model.sam2_grounding import language_forward_sam_heads
from sa2va_ros.runtime.base import DecodedMasks, FrameFeatures, SamParts, suppresses_absent_masks


def as_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[h·w, B, C]``, SAM-2's sequence-first layout (a view)."""
    return feature_map.flatten(2).permute(2, 0, 1)


LOGGER = logging.getLogger(__name__)


class TorchParts(SamParts):
    """SAM-2's modules in PyTorch; bit-identical to ``SAM2VideoPredictor`` on the same inputs.

    With ``cuda_graphs``, an image encoder on CUDA is captured once per input shape and precision and replayed
    (same kernels, none of the Python launch cost that bounds a 1024² frame's encoder); elsewhere it runs eagerly.
    """

    name = "torch"

    def __init__(self, sam: SAM2Base, *, cuda_graphs: bool = False) -> None:
        self.sam = sam
        self.suppress_absent_masks = suppresses_absent_masks(sam)
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, FrameFeatures]] = {}

    def encode_image(self, image: torch.Tensor) -> FrameFeatures:
        if self.cuda_graphs and image.is_cuda:
            return self._replay_image_encoder(image)
        return self._encode_image(image)

    def _encode_image(self, image: torch.Tensor) -> FrameFeatures:
        out = self.sam.forward_image(image)
        levels = self.sam.num_feature_levels
        maps, pos = out["backbone_fpn"][-levels:], out["vision_pos_enc"][-levels:]
        return FrameFeatures(high_res=tuple(maps[:-1]), image_embed=maps[-1], image_pos=pos[-1])

    def _replay_image_encoder(self, image: torch.Tensor) -> FrameFeatures:
        """The encoder as a CUDA graph; outputs are copied out of the graph's buffers (the tracker keeps them)."""
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        key = (tuple(image.shape), image.dtype, image.device, autocast)
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture_image_encoder(image, autocast)
            except RuntimeError as error:  # a capture the driver or an op refuses: eager from now on
                LOGGER.warning("CUDA graph capture of the image encoder failed (%s); running it eagerly", error)
                self.cuda_graphs = False
                return self._encode_image(image)
        graph, static_input, static_output = self._graphs[key]
        static_input.copy_(image)
        graph.replay()
        return FrameFeatures(
            high_res=tuple(level.clone() for level in static_output.high_res),
            image_embed=static_output.image_embed.clone(),
            image_pos=static_output.image_pos.clone(),
        )

    def _capture_image_encoder(
        self, image: torch.Tensor, autocast: torch.dtype | None
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, FrameFeatures]:
        static_input = image.clone()
        side = torch.cuda.Stream(image.device)  # warm-up off the capture (lazy init, cuDNN / cuBLAS plans)
        side.wait_stream(torch.cuda.current_stream(image.device))
        with torch.cuda.stream(side), _uncached_autocast(autocast):
            for _ in range(2):
                self._encode_image(static_input)
        torch.cuda.current_stream(image.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with _uncached_autocast(autocast), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_output = self._encode_image(static_input)
        return graph, static_input, static_output

    def attend_memory(
        self,
        image_embed: torch.Tensor,
        image_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int,
    ) -> torch.Tensor:
        batch = memory.size(1)
        _, channels, height, width = image_embed.shape
        fused = self.sam.memory_attention(
            curr=[as_tokens(image_embed).expand(-1, batch, -1)],
            curr_pos=[as_tokens(image_pos).expand(-1, batch, -1)],
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_pointer_tokens,
        )  # [hw, B, C]
        return fused.permute(1, 2, 0).reshape(batch, channels, height, width)

    def encode_memory(
        self,
        image_embed: torch.Tensor,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        high_res = high_res_masks
        if binarize:  # ±inf logits make the encoder's sigmoid exactly 0/1 (binarize_mask_from_pts_for_mem_enc)
            high_res = torch.where(high_res > 0, torch.inf, -torch.inf)
        memory, memory_pos = self.sam._encode_new_memory(
            current_vision_feats=[as_tokens(image_embed)],  # batch 1: projected once, broadcast over targets
            feat_sizes=[tuple(image_embed.shape[-2:])],
            pred_masks_high_res=high_res,
            object_score_logits=object_score_logits,
            is_mask_from_pts=False,
        )
        return memory, memory_pos[-1]

    def decode_masks(
        self,
        image_embed: torch.Tensor,
        features: FrameFeatures,
        *,
        multimask: bool,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        language_embd: torch.Tensor | None = None,
    ) -> DecodedMasks:
        batch = image_embed.size(0)
        points = None
        if point_coords is not None:
            points = {"point_coords": point_coords, "point_labels": point_labels}
        high_res = [level.expand(batch, -1, -1, -1) for level in features.high_res]
        outputs = language_forward_sam_heads(
            self.sam,
            image_embed,
            points,
            mask_input,
            high_res or None,
            multimask,
            language_embd,
            suppress_absent_masks=self.suppress_absent_masks,
        )
        return DecodedMasks(
            low_res_masks=outputs[3],
            high_res_masks=outputs[4],
            object_pointers=outputs[5],
            object_score_logits=outputs[6],
        )


@contextlib.contextmanager
def _uncached_autocast(dtype: torch.dtype | None) -> Iterator[None]:
    """The caller's autocast without its weight-cast cache, whose tensors a captured graph must not read."""
    with torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext():
        yield
