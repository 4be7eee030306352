"""SAM-2 as Sa2VA uses it: Meta's ``SAM2Base`` with the projected ``[SEG]`` vector as an extra sparse prompt.

Two differences from stock SAM-2 are reproduced (see ``SA2VA_REFERENCE.md``): the language vector is
appended to the sparse prompt embeddings, and the "object absent -> mask forced to -1024" override is
disabled (the object score still gates the object pointer).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base

from .preprocess import sam2_pixels

# Sa2VA's SAM-2 always predicts three masks and keeps the best-IoU one, with SAM-2's stability fallback.
DECODER_EXTRA_ARGS = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}

# Variant name -> config file bundled with Meta's ``sam2`` package.
SAM2_VARIANTS = {
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "configs/sam2/sam2_hiera_l.yaml",
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
# The official Sa2VA checkpoints hard-code SAM 2.0 Hiera-L.
OFFICIAL_SAM2_VARIANT = "sam2_hiera_l"

_SA2VA_SAM2_TARGET = f"{__name__}.Sa2VASam2"


def bundled_sam2_config(variant: str) -> dict[str, Any]:
    """The hydra ``model`` node of one of ``sam2``'s bundled configs, as a plain dict."""
    if variant not in SAM2_VARIANTS:
        raise ValueError(f"unknown SAM-2 variant {variant!r}; known: {', '.join(SAM2_VARIANTS)}")
    path = resources.files("sam2").joinpath(SAM2_VARIANTS[variant])
    model_cfg = OmegaConf.to_container(OmegaConf.load(str(path)).model, resolve=True)
    model_cfg["sam_mask_decoder_extra_args"] = dict(DECODER_EXTRA_ARGS)
    return model_cfg


def tiny_sam2_config(image_size: int = 128, trunk_dim: int = 16) -> dict[str, Any]:
    """A SAM 2.0-style config small enough for CPU tests (hidden size stays 256, as ``[SEG]`` needs)."""
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
    cfg = bundled_sam2_config("sam2_hiera_t")
    feat = image_size // 16
    channels = [trunk_dim * 2**i for i in range(4)]  # one per Hiera stage
    cfg["image_encoder"]["trunk"].update(
        embed_dim=trunk_dim,
        num_heads=1,
        stages=[1, 1, 2, 1],
        global_att_blocks=[3],
        window_pos_embed_bkg_spatial_size=[4, 4],
        window_spec=[4, 4, 4, 4],
    )
    cfg["image_encoder"]["neck"]["backbone_channel_list"] = channels[::-1]
    layer = cfg["memory_attention"]["layer"]
    layer["dim_feedforward"] = 256
    for attn in ("self_attention", "cross_attention"):
        layer[attn]["feat_sizes"] = [feat, feat]
    cfg["memory_attention"]["num_layers"] = 1
    cfg["memory_encoder"]["fuser"]["num_layers"] = 1
    cfg["image_size"] = image_size
    return cfg


def build_sam2(model_cfg: dict[str, Any], *, sa2va: bool = True) -> SAM2Base:
    """Instantiate SAM-2 from a hydra ``model`` dict: Sa2VA's subclass, or stock ``SAM2Base``."""
    cfg = copy.deepcopy(model_cfg)
    cfg["_target_"] = _SA2VA_SAM2_TARGET if sa2va else "sam2.modeling.sam2_base.SAM2Base"
    model = instantiate(OmegaConf.create(cfg), _recursive_=True)
    return model.eval()


def language_forward_sam_heads(
    sam: SAM2Base,
    backbone_features: torch.Tensor,
    point_inputs: dict[str, torch.Tensor] | None = None,
    mask_inputs: torch.Tensor | None = None,
    high_res_features: list[torch.Tensor] | None = None,
    multimask_output: bool = False,
    language_embd: torch.Tensor | None = None,
    suppress_absent_masks: bool = False,
) -> tuple[torch.Tensor, ...]:
    """SAM-2's prompt encoder + mask decoder with an optional language prompt.

    Same inputs and 7-tuple output as ``SAM2Base._forward_sam_heads``; ``language_embd`` is ``[B, N, C]``
    appended to the sparse prompt (Sa2VA: N = 1, the projected ``[SEG]`` vector). With
    ``suppress_absent_masks`` the stock override (mask logits -> -1024 when the object score is negative)
    is applied; Sa2VA disables it.
    """
    batch = backbone_features.size(0)
    device = backbone_features.device
    if point_inputs is not None:
        coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
    else:  # an empty point (label -1): the "dummy point" Sa2VA's language prompt rides on
        coords = torch.zeros(batch, 1, 2, device=device)
        labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
    mask_prompt = None
    if mask_inputs is not None:
        mask_prompt = mask_inputs
        if mask_inputs.shape[-2:] != sam.sam_prompt_encoder.mask_input_size:
            mask_prompt = F.interpolate(
                mask_inputs.float(),
                size=sam.sam_prompt_encoder.mask_input_size,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
    sparse, dense = sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
    if language_embd is not None:  # [B, P, C] + [B, N, C] -> [B, P + N, C]
        sparse = torch.cat([sparse, language_embd.to(sparse.dtype)], dim=1)
    low_res_multi, ious, output_tokens, object_score_logits = sam.sam_mask_decoder(
        image_embeddings=backbone_features,
        image_pe=sam.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
        repeat_image=False,
        high_res_features=high_res_features,
    )
    is_obj_appearing = object_score_logits > 0
    if sam.pred_obj_scores and suppress_absent_masks:
        low_res_multi = torch.where(is_obj_appearing[:, None, None], low_res_multi, NO_OBJ_SCORE)
    low_res_multi = low_res_multi.float()  # [B, M, 4h, 4w]
    high_res_multi = F.interpolate(
        low_res_multi, size=(sam.image_size, sam.image_size), mode="bilinear", align_corners=False
    )
    output_token = output_tokens[:, 0]
    if multimask_output:
        best = torch.argmax(ious, dim=-1)
        rows = torch.arange(batch, device=device)
        low_res, high_res = low_res_multi[rows, best].unsqueeze(1), high_res_multi[rows, best].unsqueeze(1)
        if output_tokens.size(1) > 1:
            output_token = output_tokens[rows, best]
    else:
        low_res, high_res = low_res_multi, high_res_multi
    obj_ptr = sam.obj_ptr_proj(output_token)  # [B, C]
    if sam.pred_obj_scores:
        appearing = object_score_logits.sigmoid() if sam.soft_no_obj_ptr else is_obj_appearing.float()
        if sam.fixed_no_obj_ptr:
            obj_ptr = appearing * obj_ptr
        obj_ptr = obj_ptr + (1 - appearing) * sam.no_obj_ptr
    return low_res_multi, high_res_multi, ious, low_res, high_res, obj_ptr, object_score_logits


class Sa2VASam2(SAM2Base):
    """Sa2VA's grounding module: ``SAM2Base`` whose SAM heads accept the ``[SEG]`` language prompt."""

    def _forward_sam_heads(
        self,
        backbone_features: torch.Tensor,
        point_inputs: dict[str, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        high_res_features: list[torch.Tensor] | None = None,
        multimask_output: bool = False,
        language_embd: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        return language_forward_sam_heads(
            self,
            backbone_features,
            point_inputs,
            mask_inputs,
            high_res_features,
            multimask_output,
            language_embd,
            suppress_absent_masks=False,
        )

    def preprocess(self, frames: Sequence[Any]) -> torch.Tensor:
        """RGB uint8 frames (H×W×3) -> ``[T, 3, S, S]``: plain resize to S (aspect not kept), /255, ImageNet norm."""
        return torch.stack([sam2_pixels(frame, self.image_size) for frame in frames])

    def encode_frame(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
        """``[1, 3, S, S]`` -> (vision feats ``[(HW), 1, C]`` per level, their pos encodings, feat sizes)."""
        backbone_out = self.forward_image(image)
        _, feats, pos, sizes = self._prepare_backbone_features(backbone_out)
        return feats, pos, sizes

    def decode_conditioning_frame(
        self,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        sizes: list,
        language_embd: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """An initial conditioning frame prompted only by language: ``no_mem_embed`` added, no memory read.

        ``language_embd`` is ``[B, 1, C]``; features are expanded to batch B. Returns the frame output
        (``pred_masks`` ``[B, 1, S/4, S/4]``, ``pred_masks_high_res``, ``obj_ptr``, ``object_score_logits``).
        """
        batch = language_embd.size(0)
        feats = [f.expand(-1, batch, -1) for f in feats]
        pos = [p.expand(-1, batch, -1) for p in pos]
        return self._language_track_step(0, True, feats, pos, sizes, {}, 1, language_embd)

    def decode_point_prompts(
        self, feats: list[torch.Tensor], pos: list[torch.Tensor], sizes: list, point_inputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """An initial conditioning frame prompted by points (SAM-2's own task; the training recipe uses it to
        teach a from-scratch SAM-2 objects and boundaries). ``point_coords`` ``[B, P, 2]`` in input pixels,
        ``point_labels`` ``[B, P]``; features are expanded to batch B. Same output as the language path."""
        batch = point_inputs["point_coords"].size(0)
        feats = [f.expand(-1, batch, -1) for f in feats]
        pos = [p.expand(-1, batch, -1) for p in pos]
        return self._language_track_step(0, True, feats, pos, sizes, {}, 1, None, point_inputs)

    def _language_track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        sizes: list,
        output_dict: dict,
        num_frames: int,
        language_embd: torch.Tensor | None,
        point_inputs: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One step of SAM-2's video tracking (no mask prompts), with an optional language or point prompt."""
        batch = feats[-1].size(1)
        high_res = [
            x.permute(1, 2, 0).reshape(batch, x.size(2), *s)
            for x, s in zip(feats[:-1], sizes[:-1], strict=True)
        ]
        memory_dict = output_dict or {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        pix_feat = self._prepare_memory_conditioned_features(
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=feats[-1:],
            current_vision_pos_embeds=pos[-1:],
            feat_sizes=sizes[-1:],
            output_dict=memory_dict,
            num_frames=num_frames,
            track_in_reverse=False,
        )
        multi, _, ious, low_res, high_res_mask, obj_ptr, score = self._forward_sam_heads(
            backbone_features=pix_feat,
            point_inputs=point_inputs,
            high_res_features=high_res or None,
            multimask_output=self._use_multimask(is_init_cond_frame, point_inputs),
            language_embd=language_embd,
        )
        return {
            "pred_masks": low_res,  # [B, 1, S/4, S/4] the best-IoU candidate
            "pred_masks_high_res": high_res_mask,
            "multimask_logits": multi,  # [B, M, S/4, S/4] every candidate
            "iou_predictions": ious,  # [B, M]
            "obj_ptr": obj_ptr,
            "object_score_logits": score,  # [B, 1]
            "pix_feat": pix_feat,  # [B, C, h, w] the image embedding the decoder read (memory-conditioned)
        }

    def _store_memory(self, out: dict, feats: list[torch.Tensor], sizes: list) -> dict[str, Any]:
        """Encode a frame's mask into memory; stored in bfloat16 as SAM-2's video predictors do."""
        high_res = F.interpolate(
            out["pred_masks"], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        features, pos_enc = self._encode_new_memory(
            current_vision_feats=feats,
            feat_sizes=sizes,
            pred_masks_high_res=high_res,
            object_score_logits=out["object_score_logits"],
            is_mask_from_pts=True,
        )
        return {
            "maskmem_features": features.to(torch.bfloat16),
            "maskmem_pos_enc": pos_enc,
            "pred_masks": out["pred_masks"],
            "obj_ptr": out["obj_ptr"],
        }

    def language_video_inference(
        self,
        images: Sequence[torch.Tensor],
        language_embd: torch.Tensor,
        num_cond_frames: int,
        encoded: Mapping[int, tuple] | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Official Sa2VA video inference, streamed: yields each frame's output (``pred_masks`` are the low-res
        logits ``[N, 1, S/4, S/4]``). Differentiable: callers choose ``torch.inference_mode`` or training.

        Frames ``0..K-1`` are initial conditioning frames prompted by the same language vector (no memory);
        their memories are encoded once all K are decoded; every later frame is tracked from memory alone.
        ``language_embd`` is ``[N, C]``: N ``[SEG]`` prompts tracked side by side (each independent, as N
        separate official runs). ``images`` are preprocessed ``[3, S, S]`` tensors (a lazy sequence is fine);
        frames in ``encoded`` (index -> ``encode_frame`` output of the same pixels) are not encoded again.
        """
        encoded = encoded or {}
        num_frames = len(images)
        num_cond = max(1, min(num_cond_frames, num_frames))
        memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        pending: list[tuple[int, dict, list, list]] = []
        embd = language_embd.reshape(-1, 1, language_embd.size(-1))  # [N, 1, C]: N prompts batched
        for t in range(num_frames):
            feats, pos, sizes = encoded[t] if t in encoded else self.encode_frame(images[t][None])
            feats = [f.expand(-1, embd.size(0), -1) for f in feats]  # [(HW), N, C]
            pos = [p.expand(-1, embd.size(0), -1) for p in pos]
            if t < num_cond:
                out = self._language_track_step(t, True, feats, pos, sizes, {}, num_frames, embd)
                pending.append((t, out, feats, sizes))
                if t == num_cond - 1:
                    for idx, cond_out, cond_feats, cond_sizes in pending:
                        memory["cond_frame_outputs"][idx] = self._store_memory(
                            cond_out, cond_feats, cond_sizes
                        )
                    pending.clear()
            else:
                out = self._language_track_step(t, False, feats, pos, sizes, memory, num_frames, None)
                memory["non_cond_frame_outputs"][t] = self._store_memory(out, feats, sizes)
                self._forget_old_memories(memory["non_cond_frame_outputs"], t)
            yield out

    def _forget_old_memories(self, non_cond: dict, frame_idx: int) -> None:
        """Drop memories no later frame can read (older than ``num_maskmem`` and ``max_obj_ptrs`` frames)."""
        horizon = max(self.num_maskmem, self.max_obj_ptrs_in_encoder)
        for old in [k for k in non_cond if k < frame_idx - horizon]:
            del non_cond[old]


def upsample_logits(low_res: torch.Tensor, image_size: int, height: int, width: int) -> torch.Tensor:
    """Official output path: low-res logits -> ``image_size``² -> ``(height, width)``, both bilinear."""
    square = F.interpolate(low_res, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return F.interpolate(square, size=(height, width), mode="bilinear", align_corners=False)
