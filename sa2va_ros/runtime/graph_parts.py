"""The four SAM-2 parts on exported graphs: what the ONNX Runtime and TensorRT backends share.

A subclass only runs one graph on named tensors (``_run``); this class maps the ``SamParts`` calls onto the
graphs' inputs and outputs (``graphs.py``) and checks that the files were made from the running model.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base

from sa2va_ros.runtime.base import DecodedMasks, FrameFeatures, SamParts, model_hash

MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}


class ManifestError(RuntimeError):
    """Exported files that are missing, incomplete or made from another model."""


def read_manifest(onnx_dir: str | Path) -> dict[str, Any]:
    """The manifest of an export directory (``sa2va-export``), with a clear error when there is none."""
    path = Path(onnx_dir) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path.parent}: no {MANIFEST} (make one with: sa2va-export MODEL {path.parent})")
    return json.loads(path.read_text())


def check_model_matches(manifest: dict[str, Any], sam: SAM2Base, digest: str | None, source: Path) -> None:
    """Refuse files exported from another model (they would run silently wrong)."""
    digest = digest or model_hash(sam)
    if manifest["model_hash"] != digest:
        raise ManifestError(
            f"{source} was exported from model {manifest['model_hash'][:16]}, not from this one ({digest[:16]}); "
            "export this model again (sa2va-export) or point the backend at its own files"
        )


class GraphParts(SamParts):
    """``SamParts`` on the four exported graphs; ``_run`` executes one of them."""

    def __init__(self, sam: SAM2Base, manifest: dict[str, Any]) -> None:
        self.sam = sam
        self.manifest = manifest
        self.device = next(sam.parameters()).device
        self.dims = manifest["dims"]  # dimension name -> {"min", "opt", "max"}

    @abstractmethod
    def _run(self, part: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run graph ``part`` on contiguous tensors of its input dtypes; returns its outputs by name."""

    def _call(self, part: str, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = self.manifest["graphs"][part]["inputs"]
        prepared = {
            name: feeds[name].to(self.device, DTYPES[spec["dtype"]]).contiguous() for name, spec in inputs.items()
        }
        return self._run(part, prepared)

    def encode_image(self, image: torch.Tensor) -> FrameFeatures:
        out = self._call("image_encoder", image=image)
        return FrameFeatures(
            high_res=(out["high_res_0"], out["high_res_1"]), image_embed=out["image_embed"], image_pos=out["image_pos"]
        )

    def attend_memory(
        self,
        image_embed: torch.Tensor,
        image_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int,
    ) -> torch.Tensor:
        spatial = memory.size(0) - num_pointer_tokens
        frame_tokens = image_embed.shape[-2] * image_embed.shape[-1]
        out = self._call(
            "memory_attention",
            image_embed=image_embed,
            image_pos=image_pos,
            memory=memory[:spatial].unflatten(0, (-1, frame_tokens)),  # [F, hw, B, Cm]
            memory_pos=memory_pos[:spatial].unflatten(0, (-1, frame_tokens)),
            pointers=memory[spatial:],  # [P, B, Cm]
            pointers_pos=memory_pos[spatial:],
        )
        return out["conditioned_embed"]

    def encode_memory(
        self,
        image_embed: torch.Tensor,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._call(
            "memory_encoder",
            image_embed=image_embed,
            high_res_masks=high_res_masks,
            object_score_logits=object_score_logits,
            binarize=torch.tensor([binarize]),
        )
        return out["memory"], out["memory_pos"]

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
        batch, channels, height, width = image_embed.shape
        device = image_embed.device
        if point_coords is None:  # the "no point" Sa2VA's language prompt and tracking ride on
            point_coords = torch.zeros(batch, 1, 2, device=device)
            point_labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
        mask_size = (4 * height, 4 * width)
        has_mask = mask_input is not None
        if mask_input is None:
            mask_input = torch.zeros(batch, 1, *mask_size, device=device)
        elif mask_input.shape[-2:] != mask_size:  # as language_forward_sam_heads
            mask_input = F.interpolate(
                mask_input.float(), size=mask_size, mode="bilinear", align_corners=False, antialias=True
            )
        if language_embd is None:
            language_embd = torch.zeros(batch, 0, channels, device=device)
        out = self._call(
            "mask_decoder",
            image_embed=image_embed,
            high_res_0=features.high_res[0],
            high_res_1=features.high_res[1],
            point_coords=point_coords,
            point_labels=point_labels,
            mask_input=mask_input,
            has_mask_input=torch.tensor([has_mask]),
            multimask_output=torch.tensor([multimask]),
            language_embd=language_embd,
        )
        return DecodedMasks(
            low_res_masks=out["low_res_masks"],
            high_res_masks=out["high_res_masks"],
            object_pointers=out["object_pointers"],
            object_score_logits=out["object_score_logits"],
        )

    def output_shape(self, part: str, output: str, feeds: dict[str, torch.Tensor]) -> tuple[int, ...]:
        """An output's shape: its static sizes, and its named dimensions read off the inputs that carry them."""
        graph = self.manifest["graphs"][part]
        sizes = {}
        for name, spec in graph["inputs"].items():
            for axis, dim in enumerate(spec["shape"]):
                if isinstance(dim, str):
                    sizes[dim] = feeds[name].shape[axis]
        return tuple(sizes[dim] if isinstance(dim, str) else dim for dim in graph["outputs"][output]["shape"])
