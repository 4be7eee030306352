"""The PyTorch backend: SAM-2's own modules, called exactly as ``SAM2VideoPredictor`` calls them (the reference)."""

from __future__ import annotations

import torch
from sam2.modeling.sam2_base import SAM2Base

from sa2va_ros.model.sam2_grounding import language_forward_sam_heads
from sa2va_ros.runtime.base import DecodedMasks, FrameFeatures, SamParts, suppresses_absent_masks


def as_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[h·w, B, C]``, SAM-2's sequence-first layout (a view)."""
    return feature_map.flatten(2).permute(2, 0, 1)


class TorchParts(SamParts):
    """SAM-2's modules in PyTorch (eager); bit-identical to ``SAM2VideoPredictor`` on the same inputs."""

    name = "torch"

    def __init__(self, sam: SAM2Base) -> None:
        self.sam = sam
        self.suppress_absent_masks = suppresses_absent_masks(sam)

    def encode_image(self, image: torch.Tensor) -> FrameFeatures:
        out = self.sam.forward_image(image)
        levels = self.sam.num_feature_levels
        maps, pos = out["backbone_fpn"][-levels:], out["vision_pos_enc"][-levels:]
        return FrameFeatures(high_res=tuple(maps[:-1]), image_embed=maps[-1], image_pos=pos[-1])

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
