"""Part-by-part comparison of a backend with the PyTorch reference on seeded random inputs.

Used before exported files are written (``sa2va-export``) and after engines are built (``sa2va-build-engines``).
Every part is fed the same inputs on both sides, in two shape settings (1 and 3 targets, 1 and 3 memory frames),
and the decoder with each prompt kind (none, box, click, mask, ``[SEG]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sam2.modeling.sam2_base import SAM2Base

from sa2va_ros.runtime.base import SamParts


def relative_error(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]) -> float:
    """Largest ``|reference - candidate|`` over the tensors, relative to each reference's scale (at least 1)."""
    errors = [
        float((ref.float() - cand.float()).abs().max()) / max(1.0, float(ref.float().abs().max()))
        for ref, cand in zip(reference, candidate, strict=True)
    ]
    return max(errors)


def compare_parts(candidate: SamParts, reference: SamParts, sam: SAM2Base, seed: int = 0) -> dict[str, float]:
    """The relative error of ``candidate`` against ``reference`` per part (``relative_error``)."""
    generator = torch.Generator().manual_seed(seed)
    device = next(sam.parameters()).device
    size, hidden, mem_dim = sam.image_size, sam.hidden_dim, sam.mem_dim

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device)

    errors: dict[str, float] = {}
    with torch.inference_mode():
        image = randn(1, 3, size, size)
        features, candidate_features = reference.encode_image(image), candidate.encode_image(image)
        errors["image_encoder"] = relative_error(
            [*features.high_res, features.image_embed, features.image_pos],
            [*candidate_features.high_res, candidate_features.image_embed, candidate_features.image_pos],
        )
        embed, pos = features.image_embed, features.image_pos
        height, width = embed.shape[-2:]
        split = hidden // mem_dim  # tokens per object pointer
        attention, encoder = [], []
        for batch, frames, pointers in ((1, 1, split), (3, 3, 5 * split)):
            tokens = frames * height * width + pointers
            memory, memory_pos = randn(tokens, batch, mem_dim), randn(tokens, batch, mem_dim)
            attention.append(
                relative_error(
                    [reference.attend_memory(embed, pos, memory, memory_pos, pointers)],
                    [candidate.attend_memory(embed, pos, memory, memory_pos, pointers)],
                )
            )
            masks, scores = randn(batch, 1, size, size, scale=5.0), randn(batch, 1, scale=5.0)
            for binarize in (False, True):
                encoder.append(
                    relative_error(
                        reference.encode_memory(embed, masks, scores, binarize),
                        candidate.encode_memory(embed, masks, scores, binarize),
                    )
                )
        errors["memory_attention"], errors["memory_encoder"] = max(attention), max(encoder)
        box = torch.tensor([[[0.2, 0.3], [0.7, 0.8]]], device=device) * size
        corners, click = torch.tensor([[2, 3]], device=device), torch.ones(1, 1, dtype=torch.int32, device=device)
        prompts = (
            {"multimask": True},  # tracking
            {"multimask": False, "point_coords": box, "point_labels": corners},
            {"multimask": True, "point_coords": box[:, :1], "point_labels": click},
            {"multimask": False, "mask_input": randn(1, 1, 4 * height, 4 * width, scale=5.0)},
            {"multimask": True, "language_embd": randn(2, 1, hidden)},  # [SEG]
        )
        decoder = []
        for prompt in prompts:
            batch = 2 if prompt.get("point_coords") is None and prompt.get("mask_input") is None else 1
            conditioned = randn(batch, hidden, height, width)
            ref, cand = (parts.decode_masks(conditioned, features, **prompt) for parts in (reference, candidate))
            decoder.append(
                relative_error(
                    [ref.low_res_masks, ref.high_res_masks, ref.object_pointers, ref.object_score_logits],
                    [cand.low_res_masks, cand.high_res_masks, cand.object_pointers, cand.object_score_logits],
                )
            )
        errors["mask_decoder"] = max(decoder)
    return errors
