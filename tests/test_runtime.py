"""SAM-2 backends: each part on ONNX Runtime against PyTorch, end-to-end tracking with both backends, and backend
selection through the tracker, the pipeline and the node parameters (tiny SAM-2, CPU).

The ONNX files are exported once per session into a cache shared with ``test_export.py``. Each parity check is
shown to fail on a deliberately wrong variant (random weights make masks barely prompt-dependent, so logits
are compared as well as masks). TensorRT and ONNX Runtime's CUDA provider are tested where they exist.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sa2va_ros.cli.export import load_sam2
from sa2va_ros.model.preprocess import sam2_pixels
from sa2va_ros.node_params import ParameterError, validate_parameters
from sa2va_ros.pipeline import Pipeline
from sa2va_ros.runtime import BackendUnavailableError, SamParts, TorchParts, load_parts, model_hash
from sa2va_ros.runtime.base import DecodedMasks, FrameFeatures
from sa2va_ros.runtime.graph_parts import ManifestError
from sa2va_ros.runtime.onnxruntime_parts import OnnxRuntimeParts
from sa2va_ros.runtime.parity import relative_error
from sa2va_ros.synthetic import sample_referring_video
from sa2va_ros.tracking import StreamingTracker, TrackerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = 1e-5  # relative error per part (parity.relative_error); measured <= 1e-6 on the CPU
WRONG = 1e-3  # a deliberately wrong variant must miss by at least this much
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_ORT_CUDA = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def sam() -> torch.nn.Module:
    return load_sam2("tiny", seed=0)  # the same model test_export.py exports


@pytest.fixture(scope="module")
def engines_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "sa2va_engines"


@pytest.fixture(scope="module")
def onnx_parts(sam: torch.nn.Module, engines_root: Path) -> SamParts:
    return load_parts(sam, "onnxruntime", engines_root)  # exports on first use


@pytest.fixture(scope="module")
def reference(sam: torch.nn.Module) -> TorchParts:
    return TorchParts(sam)


@pytest.fixture(scope="module")
def video() -> Any:
    return sample_referring_video(seed=4, num_frames=18, size=(96, 128), kind="multi")


@pytest.fixture(scope="module")
def features(reference: TorchParts, video: Any) -> FrameFeatures:
    with torch.inference_mode():
        return reference.encode_image(sam2_pixels(video.frames[0], 128)[None])


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------- per part


def test_image_encoder_matches_pytorch(onnx_parts: SamParts, reference: TorchParts, video: Any) -> None:
    image = sam2_pixels(video.frames[3], 128)[None]
    with torch.inference_mode():
        ours, theirs = onnx_parts.encode_image(image), reference.encode_image(image)
    outputs = [*theirs.high_res, theirs.image_embed, theirs.image_pos]
    assert [t.shape for t in outputs] == [(1, 32, 32, 32), (1, 64, 16, 16), (1, 256, 8, 8), (1, 256, 8, 8)]
    assert relative_error(outputs, [*ours.high_res, ours.image_embed, ours.image_pos]) <= TOLERANCE
    shifted = sam2_pixels(video.frames[4], 128)[None]
    with torch.inference_mode():
        assert relative_error([theirs.image_embed], [onnx_parts.encode_image(shifted).image_embed]) > WRONG


@pytest.mark.parametrize(("batch", "frames", "pointer_tokens"), [(1, 1, 4), (5, 7, 64), (2, 3, 0)])
def test_memory_attention_matches_pytorch(
    onnx_parts: SamParts, reference: TorchParts, features: FrameFeatures, batch: int, frames: int, pointer_tokens: int
) -> None:
    """Any number of targets, memory frames and pointer tokens (traced with 2, 2 and 8)."""
    tokens = frames * 64 + pointer_tokens
    memory, memory_pos = randn(tokens, batch, 64, seed=1), randn(tokens, batch, 64, seed=2)
    args = (features.image_embed, features.image_pos, memory, memory_pos)
    with torch.inference_mode():
        theirs = reference.attend_memory(*args, pointer_tokens)
        assert theirs.shape == (batch, 256, 8, 8)
        assert relative_error([theirs], [onnx_parts.attend_memory(*args, pointer_tokens)]) <= TOLERANCE
        if pointer_tokens:  # without the object pointers: wrong, and the check sees it
            spatial = frames * 64
            wrong = onnx_parts.attend_memory(*args[:2], memory[:spatial], memory_pos[:spatial], 0)
            assert relative_error([theirs], [wrong]) > WRONG


@pytest.mark.parametrize(("batch", "binarize"), [(1, True), (3, False)])
def test_memory_encoder_matches_pytorch(
    onnx_parts: SamParts, reference: TorchParts, features: FrameFeatures, batch: int, binarize: bool
) -> None:
    masks, scores = randn(batch, 1, 128, 128, seed=3, scale=4.0), randn(batch, 1, seed=4, scale=4.0)
    with torch.inference_mode():
        theirs = reference.encode_memory(features.image_embed, masks, scores, binarize)
        assert theirs[0].shape == (batch, 64, 8, 8)
        ours = onnx_parts.encode_memory(features.image_embed, masks, scores, binarize)
        assert relative_error(theirs, ours) <= TOLERANCE
        wrong = onnx_parts.encode_memory(features.image_embed, masks, scores, not binarize)
        assert relative_error(theirs, wrong) > WRONG


def _prompts() -> dict[str, dict[str, Any]]:
    box = torch.tensor([[[20.0, 30.0], [90.0, 100.0]]])
    return {
        "tracking (3 targets)": {"multimask": True, "batch": 3},
        "box": {"multimask": False, "point_coords": box, "point_labels": torch.tensor([[2, 3]], dtype=torch.int32)},
        "clicks": {
            "multimask": False,
            "point_coords": torch.tensor([[[40.0, 50.0], [100.0, 20.0]]]),
            "point_labels": torch.tensor([[1, 0]], dtype=torch.int32),
        },
        "mask": {"multimask": False, "mask_input": (randn(1, 1, 128, 128, seed=5) > 0).float()},
        "[SEG] (2 targets)": {"multimask": True, "language_embd": randn(2, 1, 256, seed=6), "batch": 2},
        "two [SEG] tokens": {"multimask": True, "language_embd": randn(1, 2, 256, seed=7)},
    }


def _decoded(decoded: DecodedMasks) -> list[torch.Tensor]:
    return [decoded.low_res_masks, decoded.high_res_masks, decoded.object_pointers, decoded.object_score_logits]


@pytest.mark.parametrize("kind", list(_prompts()))
def test_mask_decoder_with_each_prompt_matches_pytorch(
    onnx_parts: SamParts, reference: TorchParts, features: FrameFeatures, kind: str
) -> None:
    prompt = dict(_prompts()[kind])
    batch = prompt.pop("batch", 1)
    conditioned = randn(batch, 256, 8, 8, seed=8)
    with torch.inference_mode():
        theirs = reference.decode_masks(conditioned, features, **prompt)
        assert theirs.low_res_masks.shape == (batch, 1, 32, 32) and theirs.object_pointers.shape == (batch, 256)
        assert relative_error(_decoded(theirs), _decoded(onnx_parts.decode_masks(conditioned, features, **prompt))) \
            <= TOLERANCE
        wrong = {**prompt, "multimask": not prompt["multimask"]}
        assert relative_error(_decoded(theirs), _decoded(onnx_parts.decode_masks(conditioned, features, **wrong))) \
            > WRONG


# ---------------------------------------------------------------- end to end


class _WithoutPointers(OnnxRuntimeParts):
    """A wrong backend: memory attention reads the spatial memories but not the object pointers."""

    def attend_memory(
        self,
        image_embed: torch.Tensor,
        image_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int,
    ) -> torch.Tensor:
        spatial = memory.size(0) - num_pointer_tokens
        return super().attend_memory(image_embed, image_pos, memory[:spatial], memory_pos[:spatial], 0)


def track_clip(tracker: StreamingTracker, video: Any) -> list[Any]:
    """Two objects by mask on frame 0, a [SEG] vector on frame 1, a box on frame 2 conditioned on buffered frame
    1 (catch-up), then every later frame."""
    frames, labels = video.frames, video.labels
    results = [tracker.add_target(1, frames[0], mask=labels[0] == 1), tracker.step(frames[1])]
    results[-1] = tracker.add_target(2, mask=labels[0] == 2, at=0)
    results.append(tracker.add_target(3, frames[2], embedding=randn(256, seed=9)))
    ys, xs = np.nonzero(labels[1] == 3)
    results.append(tracker.add_target(4, frames[3], box=(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), at=1))
    results += [tracker.step(frame) for frame in frames[4:]]
    assert [r.frame_index for r in results] == list(range(len(frames)))
    return results


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.fixture(scope="module")
def torch_tracks(sam: torch.nn.Module, video: Any) -> list[Any]:
    return track_clip(StreamingTracker(sam), video)


def test_tracking_with_onnxruntime_matches_pytorch_frame_by_frame(
    sam: torch.nn.Module, engines_root: Path, video: Any, torch_tracks: list[Any]
) -> None:
    tracker = StreamingTracker(sam, TrackerConfig(backend="onnxruntime", engines_dir=str(engines_root)))
    assert tracker.parts.name == "onnxruntime"
    ours = track_clip(tracker, video)
    worst_logit = 0.0
    for theirs, mine in zip(torch_tracks, ours, strict=True):
        assert sorted(mine.masks) == sorted(theirs.masks)
        for target_id, mask in theirs.masks.items():
            assert mask_iou(mask, mine.masks[target_id]) >= 0.99, (theirs.frame_index, target_id)
            assert mine.states[target_id] == theirs.states[target_id]
            worst_logit = max(worst_logit, float(np.abs(mine.logits[target_id] - theirs.logits[target_id]).max()))
    assert worst_logit <= 1e-4
    wrong = track_clip(StreamingTracker(sam, parts=_WithoutPointers(sam, tracker.parts.onnx_dir)), video)
    assert max(
        float(np.abs(mine.logits[i] - theirs.logits[i]).max())
        for theirs, mine in zip(torch_tracks, wrong, strict=True)
        for i in theirs.logits
    ) > 100 * worst_logit


# ---------------------------------------------------------------- selection


def test_the_onnx_files_of_another_model_are_refused(onnx_parts: OnnxRuntimeParts) -> None:
    other = load_sam2("tiny", seed=1)
    with pytest.raises(ManifestError, match="sa2va-export"):
        OnnxRuntimeParts(other, onnx_parts.onnx_dir)


def test_model_hash_follows_weights_and_settings_not_precision(sam: torch.nn.Module) -> None:
    other = load_sam2("tiny", seed=0)
    assert model_hash(other) == model_hash(sam)
    other.sigmoid_scale_for_mem_enc = 10.0
    assert model_hash(other) != model_hash(sam)
    other = load_sam2("tiny", seed=0)
    with torch.no_grad():
        other.no_obj_ptr[0, 0] += 1e-3
    assert model_hash(other) != model_hash(sam)
    half = load_sam2("tiny", seed=0).to(torch.bfloat16)
    assert model_hash(half) == model_hash(half.float())  # files exported from a bf16 model match it on the GPU


def test_backends_are_chosen_by_name_and_unknown_ones_refused(sam: torch.nn.Module, engines_root: Path) -> None:
    assert StreamingTracker(sam).parts.name == "torch"
    with pytest.raises(ValueError, match="backend"):
        TrackerConfig(backend="mxnet")
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        load_parts(sam, "mxnet")
    assert load_parts(sam, "onnxruntime", engines_root).name == "onnxruntime"


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_a_missing_runtime_is_one_error_naming_the_package(sam: torch.nn.Module, engines_root: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"'tensorrt'.*pip install tensorrt"):
        StreamingTracker(sam, TrackerConfig(backend="tensorrt", engines_dir=str(engines_root)))
    with pytest.raises(ParameterError) as refused:
        validate_parameters({"backend": "tensorrt"})
    (problem,) = refused.value.problems
    assert problem.startswith("parameter 'backend' = 'tensorrt':") and "pip install tensorrt" in problem


class _Grounder:
    def __init__(self, sam: torch.nn.Module) -> None:
        self.grounding_encoder = sam

    def ground(self, frames: Any, text: str, max_new_tokens: int = 64) -> Any:
        raise AssertionError("not called")


@pytest.fixture
def pipelines() -> Iterator[list[Pipeline]]:
    created: list[Pipeline] = []
    yield created
    for pipeline in created:
        pipeline.close()


def test_the_pipeline_and_the_node_parameters_select_the_backend(
    sam: torch.nn.Module, engines_root: Path, monkeypatch: pytest.MonkeyPatch, pipelines: list[Pipeline]
) -> None:
    monkeypatch.setenv("SA2VA_ROS_ENGINES_DIR", str(engines_root))  # the default cache, here the session's
    pipelines.append(Pipeline(_Grounder(sam), backend="onnxruntime"))
    assert pipelines[-1].tracker.parts.name == "onnxruntime"
    pipelines.append(Pipeline(_Grounder(sam)))
    assert pipelines[-1].tracker.parts.name == "torch"
    with pytest.raises(ValueError, match="not both"):
        Pipeline(_Grounder(sam), tracker=StreamingTracker(sam), backend="onnxruntime")
    config = validate_parameters({"backend": "onnxruntime", "engines_dir": str(engines_root)}).tracker_config()
    assert (config.backend, config.engines_dir) == ("onnxruntime", str(engines_root))
    assert StreamingTracker(sam, config).parts.name == "onnxruntime"
    assert validate_parameters({}).tracker_config().backend == "torch"
    with pytest.raises(ParameterError, match="must be one of: torch, onnxruntime, tensorrt"):
        validate_parameters({"backend": "openvino"})


# ---------------------------------------------------------------- GPU backends (where they exist)


def _gpu_tracking_matches_torch(backend: str, engines_root: Path, video: Any) -> None:
    model = load_sam2("tiny", seed=0).cuda()
    config = TrackerConfig(cuda_bf16_autocast=False)
    theirs = track_clip(StreamingTracker(model, config), video)
    tracker = StreamingTracker(model, TrackerConfig(backend=backend, cuda_bf16_autocast=False,
                                                    engines_dir=str(engines_root)))
    for a, b in zip(theirs, track_clip(tracker, video), strict=True):
        for target_id, mask in a.masks.items():
            assert mask_iou(mask, b.masks[target_id]) >= 0.99, (a.frame_index, target_id)


@pytest.mark.skipif(not HAS_ORT_CUDA, reason="needs a CUDA GPU and onnxruntime-gpu")
def test_tracking_with_onnxruntime_cuda_matches_pytorch(engines_root: Path, video: Any) -> None:
    _gpu_tracking_matches_torch("onnxruntime", engines_root, video)


@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not installed (it cannot be on the development machines)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")
def test_tracking_with_tensorrt_matches_pytorch(engines_root: Path, video: Any) -> None:
    _gpu_tracking_matches_torch("tensorrt", engines_root, video)
