"""Sa2VA's SAM-2 video inference against Meta's ``SAM2VideoPredictor`` driven the way the official Sa2VA drives it.

The official code adds each keyframe with a language-only prompt (dummy point + padding point + [SEG] vector,
no absent-object override), then calls ``propagate_in_video``. Here Meta's predictor gets the same weights and
JPEG frames, with its SAM heads swapped for the language-prompted ones on prompted frames; our streamed
implementation must reproduce its logits frame by frame.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from sa2va_ros.model.sam2_grounding import (
    Sa2VASam2,
    build_sam2,
    bundled_sam2_config,
    language_forward_sam_heads,
    tiny_sam2_config,
)

SIZE = 128
NUM_FRAMES = 9
NUM_COND = 5


def _smooth_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """Blurry moving blobs: JPEG-friendly frames with some temporal structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    frames = []
    for t in range(count):
        image = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
        for k in range(3):
            cx, cy = 30 + 7 * t + 25 * k, 40 + 20 * k
            image[..., k] = 255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 300.0)
        image += rng.normal(0, 10, image.shape)
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_sam2_config(SIZE)
    ours = build_sam2(cfg)
    with torch.no_grad():  # make the "zero" inits random too, so every parameter matters
        for param in ours.parameters():
            param.add_(0.02 * torch.randn_like(param))
    predictor_cfg = copy.deepcopy(cfg)
    predictor_cfg["_target_"] = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    predictor = instantiate(OmegaConf.create(predictor_cfg), _recursive_=True).eval()
    predictor.load_state_dict(ours.state_dict())
    folder = tmp_path_factory.mktemp("frames")
    for t, frame in enumerate(_smooth_frames(NUM_FRAMES)):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=95)
    frames = [np.asarray(Image.open(folder / f"{t:05d}.jpg").convert("RGB")) for t in range(NUM_FRAMES)]
    embedding = torch.randn(1, 256)
    return ours, predictor, folder, frames, embedding


def _meta_reference(predictor, folder, embedding: torch.Tensor, num_cond: int) -> list[torch.Tensor]:
    """Meta's predictor, prompted as the official Sa2VA does: language on keyframes, memory elsewhere."""

    def heads(backbone_features, point_inputs=None, mask_inputs=None, high_res_features=None, multimask_output=False):
        language = embedding[:, None, :] if point_inputs is not None else None
        return language_forward_sam_heads(
            predictor, backbone_features, None, mask_inputs, high_res_features, multimask_output, language, False
        )

    predictor._forward_sam_heads = heads
    state = predictor.init_state(str(folder))
    for k in range(num_cond):  # the point is a placeholder: `heads` replaces it by the language prompt
        predictor.add_new_points_or_box(state, frame_idx=k, obj_id=100, points=[[1.0, 1.0]], labels=[1])
    outputs = {}
    with torch.inference_mode():
        for frame_idx, _, masks in predictor.propagate_in_video(state):
            outputs[frame_idx] = masks  # [1, 1, SIZE, SIZE] logits (video size == model size)
    return [outputs[t] for t in range(NUM_FRAMES)]


def _ours(model: Sa2VASam2, frames, embedding: torch.Tensor, num_cond: int) -> list[torch.Tensor]:
    pixels = model.preprocess(frames)
    with torch.inference_mode():
        return [
            F.interpolate(out["pred_masks"], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            for out in model.language_video_inference(pixels, embedding, num_cond)
        ]


def test_streamed_video_inference_matches_meta_predictor(setup):
    ours, predictor, folder, frames, embedding = setup
    reference = _meta_reference(predictor, folder, embedding, NUM_COND)
    result = _ours(ours, frames, embedding, NUM_COND)
    for t in range(NUM_FRAMES):
        torch.testing.assert_close(result[t], reference[t], atol=1e-4, rtol=1e-4, msg=f"frame {t}")
    # Propagated frames really depend on memory: decoding them as keyframes instead gives other logits.
    no_memory = _ours(ours, frames, embedding, NUM_FRAMES)
    assert all(torch.equal(no_memory[t], result[t]) for t in range(NUM_COND))
    assert all((no_memory[t] - reference[t]).abs().max() > 1e-2 for t in range(NUM_COND, NUM_FRAMES))


def test_wrong_prompt_or_override_breaks_parity(setup):
    ours, predictor, folder, frames, embedding = setup
    reference = _meta_reference(predictor, folder, embedding, NUM_COND)
    other = _ours(ours, frames, embedding + 0.5 * torch.randn_like(embedding), NUM_COND)
    assert (other[0] - reference[0]).abs().max() > 1e-2


def test_batched_prompts_equal_separate_runs(setup):
    ours, _, _, frames, embedding = setup
    second = torch.randn(1, 256)
    batched = _ours(ours, frames, torch.cat([embedding, second]), NUM_COND)
    alone = _ours(ours, frames, second, NUM_COND)
    for t in range(NUM_FRAMES):
        torch.testing.assert_close(batched[t][1:], alone[t], atol=1e-4, rtol=1e-4)


def test_absent_object_override_is_disabled_for_sa2va_only(setup):
    ours, *_ = setup
    stock = build_sam2(tiny_sam2_config(SIZE), sa2va=False)
    stock.load_state_dict(ours.state_dict())
    with torch.no_grad():  # force "object absent": a very negative object score
        for model in (ours, stock):
            last = model.sam_mask_decoder.pred_obj_score_head.layers[-1]
            last.weight.zero_()
            last.bias.fill_(-50.0)
    image = ours.preprocess(_smooth_frames(1))
    feats, pos, sizes = ours.encode_frame(image)
    out = ours.decode_conditioning_frame(feats, pos, sizes, torch.randn(1, 1, 256))
    assert out["object_score_logits"].item() < 0
    assert out["pred_masks"].min() > -1024  # Sa2VA keeps the raw logits
    backbone = torch.randn(1, 256, SIZE // 16, SIZE // 16)
    high = [torch.randn(1, 32, SIZE // 4, SIZE // 4), torch.randn(1, 64, SIZE // 8, SIZE // 8)]
    stock_out = stock._forward_sam_heads(backbone, high_res_features=high, multimask_output=True)
    assert torch.all(stock_out[0] == -1024)  # stock SAM-2 forces absent objects to -1024


def test_bundled_variants_build_their_sizes():
    cfg = bundled_sam2_config("sam2_hiera_l")
    assert cfg["image_encoder"]["trunk"]["embed_dim"] == 144
    assert cfg["num_maskmem"] == 7 and cfg["image_size"] == 1024
    assert cfg["sam_mask_decoder_extra_args"]["dynamic_multimask_via_stability"] is True
    assert bundled_sam2_config("sam2.1_hiera_t").get("no_obj_embed_spatial") is True
    with pytest.raises(ValueError, match="unknown SAM-2 variant"):
        bundled_sam2_config("sam3")
