"""The interface every SAM-2 backend implements: the four parts the tracker calls on every frame.

Tensors are torch tensors on the tracker's device, in SAM-2's layouts (image maps ``[B, C, h, w]``, memory tokens
``[M, B, Cm]``). ``h × w`` is the image embedding's size (``image_size / 16``); the decoder's masks are ``4h × 4w``.
Image features are computed once per frame and shared by every target (batch 1, broadcast over the B targets).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from sam2.modeling.sam2_base import SAM2Base

from sa2va_ros.model.sam2_grounding import Sa2VASam2

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# backend -> (the Python packages it imports, the runtime first; how to install them). The export (made on first
# use) needs onnx and onnxscript, and its check onnxruntime.
BACKEND_PACKAGES = {
    "onnxruntime": (
        ("onnxruntime", "onnx", "onnxscript"),
        "pip install onnxruntime onnx onnxscript (onnxruntime-gpu instead of onnxruntime for CUDA)",
    ),
    "tensorrt": (
        ("tensorrt", "onnx", "onnxscript", "onnxruntime"),
        "pip install tensorrt onnx onnxscript onnxruntime (tensorrt: NVIDIA's wheels, for a CUDA GPU)",
    ),
}


class BackendUnavailableError(RuntimeError):
    """The selected backend cannot run here; the message names what to install or change."""


@dataclass
class FrameFeatures:
    """One frame's image-encoder output (batch 1)."""

    high_res: tuple[torch.Tensor, ...]  # the decoder's high-resolution maps [1, C/8, 4h, 4w], [1, C/4, 2h, 2w]
    image_embed: torch.Tensor  # [1, C, h, w] what memory attention and the memory encoder read
    image_pos: torch.Tensor  # [1, C, h, w] its positional encoding (the same for every frame)


@dataclass
class DecodedMasks:
    """The mask decoder's choice per target."""

    low_res_masks: torch.Tensor  # [B, 1, 4h, 4w] mask logits
    high_res_masks: torch.Tensor  # [B, 1, S, S] the same, upsampled (what the memory encoder reads)
    object_pointers: torch.Tensor  # [B, C]
    object_score_logits: torch.Tensor  # [B, 1] (> 0: the object is present)


class SamParts(ABC):
    """SAM-2's image encoder, memory attention, memory encoder and mask decoder (with the language prompt)."""

    name: str

    @abstractmethod
    def encode_image(self, image: torch.Tensor) -> FrameFeatures:
        """``image [1, 3, S, S]`` (normalised) -> the frame's features."""

    @abstractmethod
    def attend_memory(
        self,
        image_embed: torch.Tensor,
        image_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int,
    ) -> torch.Tensor:
        """Condition the frame on B targets' memories ``[M, B, Cm]`` -> ``[B, C, h, w]``.

        The memory holds whole frames of spatial memory (``h·w`` tokens each) followed by ``num_pointer_tokens``
        object-pointer tokens, which get no rotary encoding.
        """

    @abstractmethod
    def encode_memory(
        self,
        image_embed: torch.Tensor,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits ``[B, 1, S, S]`` on the frame -> memory ``[B, Cm, h, w]`` and its positional encoding.

        ``binarize`` encodes 0/1 masks instead of sigmoid probabilities (SAM-2's treatment of prompted frames).
        """

    @abstractmethod
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
        """Prompt encoder + mask decoder on ``image_embed [B, C, h, w]``.

        Prompts (all optional): points ``[B, P, 2]`` in model pixels with labels ``[B, P]`` (1/0 click, 2/3 box
        corners), a mask ``[B, 1, 4h, 4w]`` (resized if not), and the projected ``[SEG]`` vectors
        ``[B, L, C]``. ``multimask``: choose among the three candidate masks by predicted IoU, else SAM-2's
        single mask (with its stability fallback).
        """


def suppresses_absent_masks(sam: SAM2Base) -> bool:
    """Stock SAM-2 forces an absent object's mask logits to -1024; Sa2VA's model does not."""
    return not isinstance(sam, Sa2VASam2)


def model_hash(sam: SAM2Base) -> str:
    """SHA-256 of a SAM-2 model: its class, every module's scalar settings and its weights as float32.

    The same model in bfloat16 on a GPU hashes like its float32 copy, so exported files match either.
    """
    digest = hashlib.sha256(type(sam).__name__.encode())
    settings = {
        name: {
            key: value
            for key, value in sorted(vars(module).items())
            if not key.startswith("_") and key != "training" and isinstance(value, (bool, int, float, str))
        }
        for name, module in sam.named_modules()
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(sam.state_dict().items()):
        values = tensor.detach().float() if tensor.is_floating_point() else tensor.detach()
        values = values.cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{values.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(values.view(torch.uint8).numpy())
    return digest.hexdigest()
