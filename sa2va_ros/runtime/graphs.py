"""The four SAM-2 parts as tensor-in / tensor-out modules, the form ONNX export and TensorRT need.

Each module reuses the SAM-2 model's own submodules and weights; only what ONNX cannot express is rewritten:

* Python branches on prompt kind become tensor selects (``multimask_output``, ``has_mask_input`` and
  ``binarize`` are boolean inputs), mirroring ``language_forward_sam_heads`` and ``SAM2Base._encode_new_memory``;
* SAM-2's rotary encoding multiplies complex tensors (ONNX has none): ``RealRoPEAttention`` does the same
  rotation with cos/sin tables;
* the number of object-pointer tokens, a Python int in ``MemoryAttention``, is the length of its own input.

The Python memory bookkeeping (which frames, which pointers, their temporal encodings) stays in the tracker.
Layouts follow SAM-2: image maps ``[B, C, H, W]``, memory tokens sequence-first ``[M, B, Cm]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sam2.modeling.sam.transformer import RoPEAttention
from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base
from torch import nn

from sa2va_ros.runtime.base import suppresses_absent_masks


class UnsupportedModelError(ValueError):
    """A SAM-2 configuration the exported graphs do not cover (the PyTorch backend runs it)."""


def check_exportable(sam: SAM2Base) -> None:
    """Raise ``UnsupportedModelError`` naming every setting outside what the graphs implement."""
    required = {
        "num_feature_levels == 3": sam.num_feature_levels == 3,
        "use_high_res_features_in_sam": bool(sam.use_high_res_features_in_sam),
        "use_obj_ptrs_in_encoder": bool(sam.use_obj_ptrs_in_encoder),
        "directly_add_no_mem_embed": bool(sam.directly_add_no_mem_embed),
        "num_maskmem > 0": sam.num_maskmem > 0,
        "not non_overlap_masks_for_mem_enc": not sam.non_overlap_masks_for_mem_enc,
        "hidden_dim divisible by mem_dim": sam.hidden_dim % sam.mem_dim == 0,
    }
    missing = [name for name, ok in required.items() if not ok]
    if missing:
        raise UnsupportedModelError(
            "this SAM-2 configuration cannot be exported (use backend 'torch'); it needs: " + ", ".join(missing)
        )


class ImageEncoderGraph(nn.Module):
    """``image [B, 3, S, S]`` -> the three feature levels (high-res ones already projected for the decoder) and
    the positional encoding of the last level."""

    def __init__(self, sam: SAM2Base) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.sam.forward_image(image)
        # [B, C/8, 4h, 4w], [B, C/4, 2h, 2w], [B, C, h, w]
        high_res_0, high_res_1, image_embed = out["backbone_fpn"][-3:]
        return high_res_0, high_res_1, image_embed, out["vision_pos_enc"][-1]  # pos [B, C, h, w]


class RealRoPEAttention(RoPEAttention):
    """``RoPEAttention`` with the rotary encoding in real arithmetic (cos/sin tables instead of complex numbers).

    Used only on the export copy of memory attention (``as_real_rope``); the pointer tokens at the end of the
    keys are left unrotated, as in SAM-2.
    """

    rope_cos: torch.Tensor  # [HW, D/2]
    rope_sin: torch.Tensor

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)  # [B, heads, Nq, D]
        k = self._separate_heads(self.k_proj(k), self.num_heads)  # [B, heads, Nk, D]
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        num_k_rope = k.size(-2) - num_k_exclude_rope
        q = _rotate(q, self.rope_cos, self.rope_sin)
        repeats = num_k_rope // q.size(-2) if self.rope_k_repeat else 1  # spatial memories: one table per frame
        rotated = _rotate(k[:, :, :num_k_rope], self.rope_cos.repeat(repeats, 1), self.rope_sin.repeat(repeats, 1))
        k = torch.cat([rotated, k[:, :, num_k_rope:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(self._recombine_heads(out))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive (even, odd) channel pairs of ``x [B, heads, N, D]`` by the angles of ``cos/sin [N, D/2]``."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


def as_real_rope(memory_attention: nn.Module, feat_size: tuple[int, int]) -> nn.Module:
    """A copy of SAM-2's memory attention whose rotary attentions are ``RealRoPEAttention``."""
    clone = copy.deepcopy(memory_attention)
    height, width = feat_size
    for attention in clone.modules():
        if isinstance(attention, RoPEAttention):
            freqs = attention.compute_cis(end_x=width, end_y=height)  # complex [HW, D/2]
            attention.__class__ = RealRoPEAttention
            attention.register_buffer("rope_cos", freqs.real.contiguous(), persistent=False)
            attention.register_buffer("rope_sin", freqs.imag.contiguous(), persistent=False)
    return clone


class MemoryAttentionGraph(nn.Module):
    """Memory attention for B targets on one frame's features.

    Inputs: ``image_embed``/``image_pos [1, C, h, w]`` (shared by every target), spatial memories
    ``memory``/``memory_pos [F, h·w, B, Cm]`` (F frames) and object-pointer tokens ``pointers``/``pointers_pos
    [P, B, Cm]``. Output: the memory-conditioned features ``[B, C, h, w]``.
    """

    def __init__(self, sam: SAM2Base, feat_size: tuple[int, int]) -> None:
        super().__init__()
        self.attention = as_real_rope(sam.memory_attention, feat_size)
        self.hidden_dim = sam.hidden_dim

    def forward(
        self,
        image_embed: torch.Tensor,
        image_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        pointers: torch.Tensor,
        pointers_pos: torch.Tensor,
    ) -> torch.Tensor:
        batch = memory.size(2)
        height, width = image_embed.shape[-2:]
        curr = image_embed.flatten(2).permute(2, 0, 1).expand(-1, batch, -1)  # [hw, B, C]
        curr_pos = image_pos.flatten(2).permute(2, 0, 1).expand(-1, batch, -1)
        tokens = torch.cat([memory.flatten(0, 1), pointers])  # [F·hw + P, B, Cm]
        tokens_pos = torch.cat([memory_pos.flatten(0, 1), pointers_pos])
        fused = self.attention(
            curr=curr, curr_pos=curr_pos, memory=tokens, memory_pos=tokens_pos, num_obj_ptr_tokens=pointers.size(0)
        )  # [hw, B, C]
        return fused.permute(1, 2, 0).reshape(batch, self.hidden_dim, height, width)


class MemoryEncoderGraph(nn.Module):
    """``SAM2Base._encode_new_memory``.

    Inputs: ``image_embed [1, C, h, w]`` (the frame's features, shared), mask logits ``high_res_masks [B, 1, S, S]``,
    ``object_score_logits [B, 1]`` and ``binarize`` (bool ``[1]``: 0/1 masks instead of sigmoid, as SAM-2 does for
    prompted frames). Outputs: ``memory [B, Cm, h, w]`` and its positional encoding ``memory_pos [B, Cm, h, w]``.
    """

    def __init__(self, sam: SAM2Base) -> None:
        super().__init__()
        self.sam = sam

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        binary = torch.where(high_res_masks > 0, torch.inf, -torch.inf)  # sigmoid(±inf) is exactly 1 / 0
        high_res = torch.where(binarize, binary, high_res_masks)
        memory, memory_pos = self.sam._encode_new_memory(
            current_vision_feats=[image_embed.flatten(2).permute(2, 0, 1)],  # [hw, 1, C], broadcast over targets
            feat_sizes=[tuple(image_embed.shape[-2:])],
            pred_masks_high_res=high_res,
            object_score_logits=object_score_logits,
            is_mask_from_pts=False,
        )
        return memory, memory_pos[-1]


class MaskDecoderGraph(nn.Module):
    """SAM-2's prompt encoder + mask decoder + object pointer, as ``language_forward_sam_heads`` with its Python
    branches turned into selects, returning the chosen mask only.

    Inputs: ``image_embed [B, C, h, w]`` (memory-conditioned), ``high_res_0 [1, C/8, 4h, 4w]`` and
    ``high_res_1 [1, C/4, 2h, 2w]`` (shared), ``point_coords [B, P, 2]`` (model pixels) with
    ``point_labels [B, P]`` (int32; -1 = no point), ``mask_input [B, 1, 4h, 4w]`` with ``has_mask_input`` (bool
    ``[1]``), ``multimask_output`` (bool ``[1]``) and ``language_embd [B, L, C]`` (the projected ``[SEG]``
    vectors appended to the sparse prompt; L = 0 for none). Outputs: ``low_res_masks [B, 1, 4h, 4w]``, the same
    upsampled ``high_res_masks [B, 1, S, S]``, ``object_pointers [B, C]``, ``object_score_logits [B, 1]``.
    """

    def __init__(self, sam: SAM2Base) -> None:
        super().__init__()
        self.sam = sam
        self.suppress_absent_masks = suppresses_absent_masks(sam)

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_0: torch.Tensor,
        high_res_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: torch.Tensor,
        language_embd: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sam, decoder, prompts = self.sam, self.sam.sam_mask_decoder, self.sam.sam_prompt_encoder
        sparse, no_mask_dense = prompts(points=(point_coords, point_labels), boxes=None, masks=None)
        dense = torch.where(has_mask_input, prompts.mask_downscaling(mask_input), no_mask_dense)  # [B, C, h, w]
        sparse = torch.cat([sparse, language_embd], dim=1)  # [B, P + 1 + L, C]: the padding point, then [SEG]
        masks, ious, tokens, object_score_logits = decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=prompts.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[high_res_0, high_res_1],
        )  # masks [B, 1 + M, 4h, 4w], ious [B, 1 + M], tokens [B, 1 + M, C], scores [B, 1]
        rows = torch.arange(masks.size(0), device=masks.device)
        best = torch.argmax(ious[:, 1:], dim=-1) + 1  # the best multimask candidate
        multi_mask, multi_token = masks[rows, best].unsqueeze(1), tokens[:, 0]
        if decoder.use_multimask_token_for_obj_ptr:
            multi_token = tokens[rows, best]
        single_mask = masks[:, 0:1]
        if decoder.dynamic_multimask_via_stability:
            single_mask, _ = decoder._dynamic_multimask_via_stability(masks, ious)
        low_res = torch.where(multimask_output, multi_mask, single_mask)
        token = torch.where(multimask_output, multi_token, tokens[:, 0])
        is_obj_appearing = object_score_logits > 0
        if sam.pred_obj_scores and self.suppress_absent_masks:
            low_res = torch.where(is_obj_appearing[:, :, None, None], low_res, NO_OBJ_SCORE)
        obj_ptr = sam.obj_ptr_proj(token)  # [B, C]
        if sam.pred_obj_scores:
            appearing = object_score_logits.sigmoid() if sam.soft_no_obj_ptr else is_obj_appearing.float()
            if sam.fixed_no_obj_ptr:
                obj_ptr = appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - appearing) * sam.no_obj_ptr
        low_res = low_res.float()
        size = sam.image_size
        high_res = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        return low_res, high_res, obj_ptr, object_score_logits


@dataclass(frozen=True)
class GraphSpec:
    """One exported part: its module, names of inputs and outputs, example inputs and dynamic axes."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    examples: tuple[torch.Tensor, ...]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: dimension name}


def graph_specs(sam: SAM2Base) -> list[GraphSpec]:
    """The four graphs of one SAM-2 model with example inputs (batch 2 and every dynamic axis ≥ 2, so no axis
    is specialised to 0 or 1 when traced)."""
    check_exportable(sam)
    size, hidden, mem_dim = sam.image_size, sam.hidden_dim, sam.mem_dim
    feat = size // sam.backbone_stride
    hw = feat * feat
    device = next(sam.parameters()).device
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    with torch.no_grad():
        image_out = ImageEncoderGraph(sam)(randn(1, 3, size, size))
    high_res_0, high_res_1, image_embed, image_pos = (t.detach() for t in image_out)
    batch, frames, pointer_tokens, points = 2, 2, 2 * (hidden // mem_dim), 3

    def flag(value: bool) -> torch.Tensor:  # a new tensor each time: inputs given the same tensor are merged
        return torch.tensor([value], device=device)

    decoder_inputs = (
        randn(batch, hidden, feat, feat),
        high_res_0,
        high_res_1,
        torch.rand(batch, points, 2, generator=generator).to(device) * size,
        torch.tensor([[1, 0, 1], [2, 3, -1]], dtype=torch.int32, device=device),
        randn(batch, 1, 4 * feat, 4 * feat),
        flag(True),
        flag(False),
        randn(batch, 2, hidden),
    )
    decoder_names = (
        "image_embed",
        "high_res_0",
        "high_res_1",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "multimask_output",
        "language_embd",
    )
    return [
        GraphSpec(
            "image_encoder",
            ImageEncoderGraph(sam),
            ("image",),
            ("high_res_0", "high_res_1", "image_embed", "image_pos"),
            (randn(batch, 3, size, size),),
            {"image": {0: "batch"}},
        ),
        GraphSpec(
            "memory_attention",
            MemoryAttentionGraph(sam, (feat, feat)),
            ("image_embed", "image_pos", "memory", "memory_pos", "pointers", "pointers_pos"),
            ("conditioned_embed",),
            (
                image_embed,
                image_pos,
                randn(frames, hw, batch, mem_dim),
                randn(frames, hw, batch, mem_dim),
                randn(pointer_tokens, batch, mem_dim),
                randn(pointer_tokens, batch, mem_dim),
            ),
            {
                "memory": {0: "memory_frames", 2: "batch"},
                "memory_pos": {0: "memory_frames", 2: "batch"},
                "pointers": {0: "pointer_tokens", 1: "batch"},
                "pointers_pos": {0: "pointer_tokens", 1: "batch"},
            },
        ),
        GraphSpec(
            "memory_encoder",
            MemoryEncoderGraph(sam),
            ("image_embed", "high_res_masks", "object_score_logits", "binarize"),
            ("memory", "memory_pos"),
            (image_embed, randn(batch, 1, size, size), randn(batch, 1), flag(True)),
            {"high_res_masks": {0: "batch"}, "object_score_logits": {0: "batch"}},
        ),
        GraphSpec(
            "mask_decoder",
            MaskDecoderGraph(sam),
            decoder_names,
            ("low_res_masks", "high_res_masks", "object_pointers", "object_score_logits"),
            decoder_inputs,
            {
                "image_embed": {0: "batch"},
                "point_coords": {0: "batch", 1: "num_points"},
                "point_labels": {0: "batch", 1: "num_points"},
                "mask_input": {0: "batch"},
                "language_embd": {0: "batch", 1: "language_tokens"},
            },
        ),
    ]
