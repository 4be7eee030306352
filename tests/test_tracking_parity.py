"""Faithfulness: the streaming tracker reproduces Meta's offline ``SAM2VideoPredictor`` frame by frame.

Both models get identical (random, seeded) weights, the same JPEG frames at the model's image size (the
tracker reads the decoded pixels back) and the same mask prompt on frame 0. Logits are compared, not only
masks (with random weights masks barely depend on the prompt), over at least 16 frames (the predictor
uses min(num_frames, 16) object pointers). Each wrong variant of the tracker must fail the same check.

Config equivalence: ``build_sam2_video_predictor`` adds hydra overrides: dynamic multimask fallback (also in
``bundled_sam2_config`` / ``tiny_sam2_config``), ``binarize_mask_from_pts_for_mem_enc`` (reproduced by
``TrackerConfig.binarize_prompt_masks_for_memory``, on by default) and ``fill_hole_area=8`` (needs sam2's CUDA
extension, absent here, so it is a no-op; ``build_reference_predictor`` sets it to 0). The tiny predictor is
``build_sam2_video_predictor`` on ``sam2_hiera_t.yaml`` with the overrides that turn it into ``tiny_sam2_config``;
loading its state_dict strictly into the tracker's model proves the architectures are identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import sa2va_ros.tracking.tracker as tracker_module
from sa2va_ros.model.sam2_grounding import build_sam2, bundled_sam2_config, tiny_sam2_config
from sa2va_ros.tracking import StreamingTracker, TrackerConfig
from sa2va_ros.tracking.memory import spatial_memory_frames
from sa2va_ros.tracking.reference import build_reference_predictor

ATOL = 2e-6  # measured: 0.0 (bit-identical) for both configurations on this machine
WRONG_MIN_DIFF = 10 * ATOL  # every wrong variant must miss the reference by at least this much
TINY_FRAMES = 18


def write_clip(folder: Path, num_frames: int, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A noisy moving square as ``size``² JPEGs; returns the decoded frames and the frame-0 mask."""
    rng = np.random.default_rng(0)
    side, step = size * 5 // 16, max(1, size // 128)
    frames = []
    for t in range(num_frames):
        image = np.full((size, size, 3), 40, np.int16)
        y0, x0 = size // 4 + step * t, size // 8 + 2 * step * t
        image[y0 : y0 + side, x0 : x0 + side] = (200, 60, 50)
        image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
        path = folder / f"{t:05d}.jpg"
        Image.fromarray(image).save(path, quality=95)
        frames.append(np.array(Image.open(path).convert("RGB")))
    mask = np.zeros((size, size), bool)
    mask[size // 4 : size // 4 + side, size // 8 : size // 8 + side] = True
    return frames, mask


def predictor_logits(predictor: Any, folder: Path, mask: np.ndarray) -> list[np.ndarray]:
    """Meta's offline path: init_state on the JPEG folder, add_new_mask on frame 0, propagate_in_video."""
    state = predictor.init_state(str(folder), offload_video_to_cpu=True)
    predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=mask)
    return [logits[0, 0].numpy().copy() for _, _, logits in predictor.propagate_in_video(state)]


def tracker_logits(tracker: StreamingTracker, frames: list[np.ndarray], mask: np.ndarray) -> list[np.ndarray]:
    """The streaming path: add_target with the mask on frame 0, then step through the rest."""
    results = [tracker.add_target(1, frames[0], mask=mask)] + [tracker.step(frame) for frame in frames[1:]]
    assert [r.frame_index for r in results] == list(range(len(frames)))
    return [r.logits[1] for r in results]


def max_abs_diff(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    assert len(ours) == len(reference)
    return max(float(np.abs(a - b).max()) for a, b in zip(ours, reference, strict=True))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """Tiny models run fastest on one thread on a shared 2-core machine; both sides use the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    tiny = tiny_sam2_config(128)
    predictor = build_reference_predictor("sam2_hiera_t", tiny)  # build_sam2_video_predictor + tiny overrides
    folder = tmp_path_factory.mktemp("tiny_clip")
    frames, mask = write_clip(folder, TINY_FRAMES, predictor.image_size)
    return {
        "config": tiny,
        "weights": predictor.state_dict(),
        "frames": frames,
        "mask": mask,
        "logits": predictor_logits(predictor, folder, mask),
    }


def _tiny_model(reference: dict[str, Any]) -> torch.nn.Module:
    model = build_sam2(reference["config"], sa2va=False)
    model.load_state_dict(reference["weights"])  # strict: the architectures are identical
    return model


def _one_memory_frame(frame_idx: int, num_maskmem: int, stride: int) -> list[tuple[int, int]]:
    return spatial_memory_frames(frame_idx, num_maskmem, stride)[-1:]


@pytest.mark.parametrize(
    "variant",
    ["faithful", "one_memory_frame", "no_object_pointers", "eight_object_pointers", "sigmoid_prompt_memory"],
)
def test_tiny_tracker_matches_video_predictor_and_wrong_variants_do_not(
    variant: str, tiny_reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _tiny_model(tiny_reference)
    config = TrackerConfig()
    if variant == "one_memory_frame":
        monkeypatch.setattr(tracker_module, "spatial_memory_frames", _one_memory_frame)
    elif variant == "no_object_pointers":
        model.use_obj_ptrs_in_encoder = False
    elif variant == "eight_object_pointers":
        model.max_obj_ptrs_in_encoder = 8
    elif variant == "sigmoid_prompt_memory":
        config = TrackerConfig(binarize_prompt_masks_for_memory=False)
    ours = tracker_logits(StreamingTracker(model, config), tiny_reference["frames"], tiny_reference["mask"])
    diff = max_abs_diff(ours, tiny_reference["logits"])
    if variant == "faithful":
        assert diff <= ATOL
        for a, b in zip(ours, tiny_reference["logits"], strict=True):
            assert np.array_equal(a > 0, b > 0)
    else:
        assert diff > WRONG_MIN_DIFF, f"the check cannot tell the {variant!r} variant from the reference"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of CPU at 1024² (the memory attention over 7 × 64² tokens dominates)
def test_sam21_hiera_t_tracker_matches_video_predictor(tmp_path: Path) -> None:
    """The real sam2.1_hiera_t architecture at 1024², random seeded weights, 16 frames (~2 s/frame/model)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        predictor = build_reference_predictor("sam2.1_hiera_t")  # build_sam2_video_predictor(its yaml)
        model = build_sam2(bundled_sam2_config("sam2.1_hiera_t"), sa2va=False)
        model.load_state_dict(predictor.state_dict())
        frames, mask = write_clip(tmp_path, 16, predictor.image_size)
        reference = predictor_logits(predictor, tmp_path, mask)
        del predictor
        ours = tracker_logits(StreamingTracker(model), frames, mask)
    finally:
        torch.set_num_threads(threads)
    assert max_abs_diff(ours, reference) <= ATOL
    assert max(float(np.abs(r).max()) for r in reference[1:]) > 100 * ATOL  # the logits are not trivially ~0
    for a, b in zip(ours, reference, strict=True):
        assert np.array_equal(a > 0, b > 0)
