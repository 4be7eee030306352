"""Sa2VA model core on tiny random models: grounding end to end, [SEG] positions, tiling, pixel shuffle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import random_frames, scripted_answer
from PIL import Image

from sa2va_ros.model import GroundingResult
from sa2va_ros.model.modeling import _keyframe_indices, seg_phrases
from sa2va_ros.model.preprocess import (
    candidate_grids,
    closest_grid,
    dynamic_tiles,
    pixel_shuffle,
    tiles_to_tensor,
)
from sa2va_ros.model.presets import FAMILIES, tiny_model


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param, seed=1)


@pytest.fixture(scope="module")
def internvl():
    return tiny_model("internvl-qwen2", seed=2)


def test_ground_end_to_end(model):
    frames = random_frames(1, 45, 70)
    with scripted_answer(model, "Sure, [SEG]."):
        first = model.ground(frames, "Please segment the blue mug.")
    with scripted_answer(model, "Sure, [SEG]."):
        again = model.ground(frames, "Please segment the blue mug.")
    assert isinstance(first, GroundingResult)
    assert first.text == "Sure, [SEG]."
    assert first.seg_embeddings.shape == (1, 256)
    assert first.masks.shape == (1, 1, 45, 70) and first.masks.dtype == bool
    assert first.scores.shape == (1,)
    assert torch.equal(first.seg_embeddings, again.seg_embeddings)
    assert np.array_equal(first.masks, again.masks)


def test_ground_keyframes_and_no_target(model):
    frames = random_frames(3, 40, 64, seed=3)
    with scripted_answer(model, "It is [SEG] and [SEG]."):
        result = model.ground(frames, "the mug and the ball")
    assert result.seg_embeddings.shape == (2, 256)
    assert result.masks.shape == (2, 3, 40, 64)
    with scripted_answer(model, "There is no purple banana."):
        empty = model.ground(frames, "the purple banana")
    assert empty.seg_embeddings.shape == (0, 256)
    assert empty.masks.shape == (0, 3, 40, 64)


def test_seg_hidden_state_is_read_where_seg_is_the_input_token(internvl):
    """The [SEG] vector is the last-layer hidden state at the position where [SEG] is fed as input."""
    model = internvl
    image = Image.fromarray(random_frames(1, 50, 50)[0])
    prompt = "<image>\nPlease segment the mug."
    embeds = model._internvl_prompt_embeds(prompt, image, None)
    with scripted_answer(model, "a [SEG] b [SEG] c") as script, torch.inference_mode():
        generation = model._greedy_decode(embeds, max_new_tokens=32)
    assert generation.token_ids == script
    # Reference: one forward pass over prompt + generated tokens (all but the last, which is never fed).
    generated = torch.tensor([script[:-1]])
    full = torch.cat([embeds, model.mllm.get_input_embeddings()(generated)], dim=1)
    with torch.inference_mode():
        hidden = model.mllm.model.language_model(inputs_embeds=full).last_hidden_state[0]  # [L + n - 1, D]
    positions = [embeds.size(1) + i for i, tok in enumerate(script[:-1]) if tok == model.seg_token_id]
    assert len(positions) == 2
    torch.testing.assert_close(generation.seg_hidden, hidden[positions], atol=1e-4, rtol=1e-4)
    # A position shifted by one (the hidden state that *predicts* [SEG]) is a different vector.
    shifted = hidden[[p - 1 for p in positions]]
    assert not torch.allclose(generation.seg_hidden, shifted, atol=1e-3)


def test_stop_word_ends_generation_and_is_kept_in_official_prediction(internvl):
    with scripted_answer(internvl, "Sure, [SEG].<|im_end|> trailing"):
        out = internvl.predict_forward(image=random_frames(1)[0], text="<image>\nPlease segment the mug.")
    assert out["prediction"] == "Sure, [SEG].<|im_end|>"
    assert len(out["prediction_masks"]) == 1
    assert out["prediction_masks"][0].shape == (1, 45, 70)


def test_text_only_chat_returns_no_masks(internvl):
    with scripted_answer(internvl, "Hello."):
        out = internvl.predict_forward(text="Say hello.")
    assert out == {"prediction": "Hello.<|im_end|>", "prediction_masks": []}


@pytest.mark.parametrize(
    ("size", "grid", "tiles"),
    [
        # Hand-computed with the InternVL rule (closest aspect ratio; ties go to the larger grid only if the
        # image covers more than half of its pixels); tiles include the thumbnail when more than one.
        ((448, 448), (1, 1), 1),
        ((896, 448), (2, 1), 3),
        ((1000, 300), (3, 1), 4),  # aspect 3.33: |3.33-3| < |3.33-4|
        ((800, 800), (2, 2), 5),  # square ties: 800² > 0.5·448²·4 but not > 0.5·448²·9
        ((300, 300), (1, 1), 1),  # square ties: 300² is not > 0.5·448²·4
        ((448, 1344), (1, 3), 4),
    ],
)
def test_tiling_matches_internvl_rule(size, grid, tiles):
    width, height = size
    assert closest_grid(width, height, candidate_grids(1, 12), 448) == grid
    assert len(dynamic_tiles(Image.new("RGB", size), 1, 12, 448, True)) == tiles


def test_candidate_grids_order_and_bounds():
    grids = candidate_grids(1, 12)
    assert grids[0] == (1, 1)
    assert all(1 <= c * r <= 12 for c, r in grids)
    assert [c * r for c, r in grids] == sorted(c * r for c, r in grids)
    assert len(grids) == sum(1 for c in range(1, 13) for r in range(1, 13) if c * r <= 12)


def test_pixel_shuffle_v2_matches_transformers_and_v1_is_transposed(internvl):
    features = torch.randn(2, 8, 8, 12)
    ours = pixel_shuffle(features, 0.5, "v2")
    theirs = internvl.mllm.model.pixel_shuffle(features, 0.5)
    assert torch.equal(ours, theirs)
    v1 = pixel_shuffle(features, 0.5, "v1")
    assert v1.shape == ours.shape == (2, 4, 4, 48)
    assert torch.equal(v1, ours.transpose(1, 2))
    assert not torch.equal(v1, ours)


def test_tile_features_match_transformers_image_features(internvl):
    pixels = torch.randn(3, 3, 56, 56)
    with torch.inference_mode():
        ours = internvl._internvl_tile_features(pixels)
        theirs = internvl.mllm.model.get_image_features(
            pixel_values=pixels, vision_feature_layer=-1, vision_feature_select_strategy="default"
        ).pooler_output
    assert ours.shape == (3, 4, 64)
    torch.testing.assert_close(ours, theirs)


def test_video_prompt_has_one_image_block_per_llm_frame(internvl):
    frames = [Image.fromarray(f) for f in random_frames(3)]
    text = "<image>\nPlease segment the ball."
    embeds_video = internvl._internvl_prompt_embeds(text, None, frames)
    embeds_image = internvl._internvl_prompt_embeds(text, frames[0], None)
    ids_text = internvl.tokenizer.encode(internvl.template.user_turn(text.replace("<image>", "")))
    assert embeds_video.size(1) - len(ids_text) == 3 * (4 + 2) + 2  # 3 blocks of 4 tokens + <img></img>, 2 "\n"
    cfg = internvl.config
    tiles = len(dynamic_tiles(frames[0], 1, cfg.max_dynamic_patch, cfg.force_image_size, cfg.use_thumbnail))
    assert tiles == 3  # 70×45: a 2×1 grid plus the thumbnail
    assert embeds_image.size(1) - len(ids_text) == 4 * tiles + 2  # every tile in one <img> block


def test_visual_prompt_regions_add_context_tokens(internvl):
    image = random_frames(1, 56, 56)[0]
    region = np.zeros((1, 56, 56), dtype=np.float32)
    region[0, :28, :28] = 1  # top-left quarter -> 1 of the 2×2 feature cells
    base = internvl._internvl_prompt_embeds("<image>\nWhat is region1?", Image.fromarray(image), None)
    with_vp = internvl._internvl_prompt_embeds(
        "<image>\nWhat is region1?", Image.fromarray(image), None, mask_prompts=[region]
    )
    vp_text = "\nThere are 1 part regions in the picture: region1<vp><IMG_CONTEXT></vp>.\n"
    extra = len(internvl.tokenizer.encode(vp_text))
    assert with_vp.size(1) == base.size(1) + extra
    # The region slot carries the feature of the selected cell of the (only) tile.
    with torch.inference_mode():
        tile = internvl._internvl_tile_features(tiles_to_tensor([Image.fromarray(image)], 56))[0]
    ids = internvl.tokenizer.encode(
        internvl.template.user_turn("<img>" + "<IMG_CONTEXT>" * 4 + "</img>" + vp_text + "\nWhat is region1?")
    )
    slots = [i for i, t in enumerate(ids) if t == internvl.img_context_token_id]
    torch.testing.assert_close(with_vp[0, slots[-1]], tile[0])


def test_seg_phrases_ties_each_seg_to_its_phrase():
    answer = "<p>A man</p> [SEG] is next to <p>a red car</p> [SEG], and [SEG]."
    assert seg_phrases(answer) == ["A man", "a red car", None]


def test_keyframe_indices_spread_and_keep_last():
    assert _keyframe_indices(3, 5) == [0, 1, 2]
    assert _keyframe_indices(9, 5) == [0, 2, 4, 6, 8]
    assert _keyframe_indices(7, 1) == [6]


def test_multi_turn_chat_prepends_the_past_conversation(internvl, monkeypatch):
    """Official semantics: the prompt is ``past_text`` + the template's user turn for the new text."""
    seen = {}
    original = internvl._greedy_decode

    def capture(embeds, max_new_tokens):
        seen["embeds"] = embeds
        return original(embeds, max_new_tokens)

    monkeypatch.setattr(internvl, "_greedy_decode", capture)
    past = internvl.template.user_turn("What is on the table?") + "A blue mug.<|im_end|>\n"
    with scripted_answer(internvl, "Sure, it is blue."):
        out = internvl.predict_forward(text="What colour is it?", past_text=past)
    ids = internvl.tokenizer.encode(past + internvl.template.user_turn("What colour is it?"))
    expected = internvl.mllm.get_input_embeddings()(torch.tensor([ids]))
    torch.testing.assert_close(seen["embeds"], expected)
    assert out["prediction"] == "Sure, it is blue.<|im_end|>"
