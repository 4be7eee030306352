"""The PyTorch backend: SAM-2's own modules, called exactly as ``SAM2VideoPredictor`` calls them (the reference)."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from sam2.modeling.sam2_base import SAM2Base

from sa2va_ros.model.sam2_grounding import language_forward_sam_heads
from sa2va_ros.runtime.base import DecodedMasks, FrameFeatures, SamParts, suppresses_absent_masks


def as_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[h·w, B, C]``, SAM-2's sequence-first layout (a view)."""
    return feature_map.flatten(2).permute(2, 0, 1)


LOGGER = logging.getLogger(__name__)
PARTS = ("image encoder", "memory attention", "mask decoder", "memory encoder")
# A part's call is captured as a CUDA graph once its signature (shapes, dtypes, settings) has been met this many
# times: every frame repeats the image encoder's at once, and a target's memory its steady shape once it is full,
# while the shapes a memory passes through as it fills recur only once per new target (a capture runs the part
# twice and records it once; a replay then saves most of an eager call's time).
CAPTURE_AFTER_CALLS = {"image encoder": 1, "memory attention": 3, "mask decoder": 3, "memory encoder": 3}
MAX_GRAPHS = 32  # captured signatures kept (least recently replayed dropped first); they share one memory pool


@dataclass
class _CapturedCall:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor | None, ...]  # the graph reads these buffers: each call's inputs are copied in
    outputs: tuple[torch.Tensor, ...]  # in the graphs' shared pool: copied out after every replay


class TorchParts(SamParts):
    """SAM-2's modules in PyTorch; run eagerly, bit-identical to ``SAM2VideoPredictor`` on the same inputs.

    With ``cuda_graphs``, each part on CUDA is captured as a CUDA graph per input signature and precision and
    replayed (the work without the Python launch cost that bounds a frame on a GPU; see ``CAPTURE_AFTER_CALLS``).
    Replays equal eager calls but for bfloat16 rounding in the mask decoder (bench/RESULTS_tracking.md).
    Elsewhere, and with gradients enabled, the parts run eagerly.
    """

    name = "torch"

    def __init__(self, sam: SAM2Base, *, cuda_graphs: bool = False) -> None:
        self.sam = sam
        self.suppress_absent_masks = suppresses_absent_masks(sam)
        self.cuda_graphs = cuda_graphs
        self._graphs: OrderedDict[tuple, _CapturedCall] = OrderedDict()
        self._calls: OrderedDict[tuple, int] = OrderedDict()  # signature -> eager calls so far (bounded too)
        self._replays = dict.fromkeys(PARTS, 0)
        self._refused: set[str] = set()  # parts whose capture failed: eager from then on
        self._pool: tuple | None = None

    def graph_stats(self) -> dict[str, dict[str, int]]:
        """Per part: CUDA graphs held and replays so far (all zero when the parts run eagerly)."""
        held = Counter(key[0] for key in self._graphs)
        return {part: {"graphs": held[part], "replays": self._replays[part]} for part in PARTS}

    def encode_image(self, image: torch.Tensor) -> FrameFeatures:
        embed, pos, *high_res = self._call("image encoder", self._encode_image, (image,))
        return FrameFeatures(high_res=tuple(high_res), image_embed=embed, image_pos=pos)

    def _encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> image_embed, image_pos, high-resolution maps (finest first)."""
        out = self.sam.forward_image(image)
        levels = self.sam.num_feature_levels
        maps, pos = out["backbone_fpn"][-levels:], out["vision_pos_enc"][-levels:]
        return (maps[-1], pos[-1], *maps[:-1])

    def _call(
        self, part: str, fn: Callable[..., tuple[torch.Tensor, ...]], inputs: tuple, settings: tuple = ()
    ) -> tuple[torch.Tensor, ...]:
        """``fn(*inputs)``, replayed from a CUDA graph where one is (or now gets) captured for this signature.

        ``settings`` are the Python values ``fn`` closes over (part of the signature); ``inputs`` are tensors
        or None.
        """
        device = inputs[0].device
        if not self.cuda_graphs or device.type != "cuda" or part in self._refused or torch.is_grad_enabled():
            return fn(*inputs)
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        shapes = tuple(None if t is None else (tuple(t.shape), t.dtype) for t in inputs)
        key = (part, settings, shapes, device, autocast)
        captured = self._graphs.get(key)
        if captured is None:
            calls = self._calls.pop(key, 0) + 1
            if calls < CAPTURE_AFTER_CALLS[part]:
                self._calls[key] = calls
                if len(self._calls) > 8 * MAX_GRAPHS:
                    self._calls.popitem(last=False)
                return fn(*inputs)
            try:
                captured = self._capture(fn, inputs, autocast)
            except RuntimeError as error:  # a capture the driver or an op refuses: this part runs eagerly
                LOGGER.warning("CUDA graph capture of the %s failed (%s); running it eagerly", part, error)
                self._refused.add(part)
                return fn(*inputs)
            self._graphs[key] = captured
            if len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        for static, given in zip(captured.inputs, inputs, strict=True):
            if static is not None:
                static.copy_(given)
        captured.graph.replay()
        self._replays[part] += 1
        return tuple(output.clone() for output in captured.outputs)

    def _capture(
        self, fn: Callable[..., tuple[torch.Tensor, ...]], inputs: tuple, autocast: torch.dtype | None
    ) -> _CapturedCall:
        static = tuple(None if t is None else t.clone() for t in inputs)
        device = inputs[0].device
        side = torch.cuda.Stream(device)  # warm-up off the capture (lazy init, cuDNN / cuBLAS plans)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), _uncached_autocast(autocast):
            for _ in range(2):
                fn(*static)
        torch.cuda.current_stream(device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # Graphs share one pool: a replay may overwrite another graph's outputs, which are copied out at once.
        with (
            _uncached_autocast(autocast),
            torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"),
        ):
            outputs = fn(*static)
        return _CapturedCall(graph, static, outputs)

    def attend_memory(
        self,
        image_embed: torch.Tensor,
        image_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int,
    ) -> torch.Tensor:
        def attend(image_embed, image_pos, memory, memory_pos) -> tuple[torch.Tensor]:
            batch = memory.size(1)
            _, channels, height, width = image_embed.shape
            fused = self.sam.memory_attention(
                curr=[as_tokens(image_embed).expand(-1, batch, -1)],
                curr_pos=[as_tokens(image_pos).expand(-1, batch, -1)],
                memory=memory,
                memory_pos=memory_pos,
                num_obj_ptr_tokens=num_pointer_tokens,
            )  # [hw, B, C]
            return (fused.permute(1, 2, 0).reshape(batch, channels, height, width),)

        inputs = (image_embed, image_pos, memory, memory_pos)
        return self._call("memory attention", attend, inputs, (num_pointer_tokens,))[0]

    def encode_memory(
        self,
        image_embed: torch.Tensor,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def encode(image_embed, high_res, object_score_logits) -> tuple[torch.Tensor, torch.Tensor]:
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

        memory, memory_pos = self._call(
            "memory encoder", encode, (image_embed, high_res_masks, object_score_logits), (binarize,)
        )
        return memory, memory_pos

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
        def decode(image_embed, point_coords, point_labels, mask_input, language_embd, *high_res):
            batch = image_embed.size(0)
            points = None
            if point_coords is not None:
                points = {"point_coords": point_coords, "point_labels": point_labels}
            outputs = language_forward_sam_heads(
                self.sam,
                image_embed,
                points,
                mask_input,
                [level.expand(batch, -1, -1, -1) for level in high_res] or None,
                multimask,
                language_embd,
                suppress_absent_masks=self.suppress_absent_masks,
            )
            return outputs[3:7]  # low-res masks, high-res masks, object pointers, object score logits

        inputs = (image_embed, point_coords, point_labels, mask_input, language_embd, *features.high_res)
        low_res, high_res, pointers, scores = self._call("mask decoder", decode, inputs, (multimask,))
        return DecodedMasks(
            low_res_masks=low_res, high_res_masks=high_res, object_pointers=pointers, object_score_logits=scores
        )


@contextlib.contextmanager
def _uncached_autocast(dtype: torch.dtype | None) -> Iterator[None]:
    """The caller's autocast without its weight-cast cache, whose tensors a captured graph must not read."""
    with torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext():
        yield
