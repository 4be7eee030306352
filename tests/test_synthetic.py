"""Tests of the synthetic tabletop world: determinism, exact masks, language validity, splits, videos."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from sa2va_ros.synthetic import (
    CLASSES,
    COLOURS,
    HELD_OUT_PAIRS,
    SEG_TOKEN,
    sample_referring_image,
    sample_referring_stream,
    sample_referring_video,
)

SMALL = (64, 80)
COLOUR_WORDS = "|".join(COLOURS)
CLASS_WORDS = "|".join(CLASSES)
NOUN = rf"(?:({COLOUR_WORDS}) )?({CLASS_WORDS})"


def _pair(obj) -> tuple[str, str]:
    return obj.colour, obj.cls


def _matching(sample, colour: str | None, cls: str) -> list[int]:
    return [o.index for o in sample.objects if o.cls == cls and (colour is None or o.colour == colour)]


def test_same_seed_same_sample_and_different_seeds_differ():
    a = sample_referring_image(11, "train", SMALL)
    b = sample_referring_image(11, "train", SMALL)
    c = sample_referring_image(12, "train", SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert (a.expression, a.answer, a.prompt) == (b.expression, b.answer, b.prompt)
    assert not np.array_equal(a.image, c.image)
    d = sample_referring_image(11, "test", SMALL)
    assert not np.array_equal(a.image, d.image), "splits must draw different scenes for one seed"
    v1 = sample_referring_video(4, "train", 5, SMALL)
    v2 = sample_referring_video(4, "train", 5, SMALL)
    assert all(np.array_equal(x, y) for x, y in zip(v1.frames, v2.frames, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(v1.masks, v2.masks, strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_masks_are_exactly_the_pixels_each_object_paints(seed):
    sample = sample_referring_image(seed, "train", (96, 128), noise=False, shadows=False)
    scene = sample.scene
    background = scene.render(objects=[], noise=False, shadows=False).image
    outside = sample.labels == 0
    assert np.array_equal(sample.image[outside], background[outside])
    for i in range(len(sample.objects)):
        alone = scene.render(objects=[i], noise=False, shadows=False)
        visible = sample.instance_masks[i]
        amodal = scene.amodal_mask(i)
        assert visible.any(), "every object is visible in the first frame"
        assert np.array_equal(sample.image[visible], alone.image[visible])
        assert np.array_equal(alone.labels == i + 1, amodal)
        assert not (visible & ~amodal).any()
        # Drawing the object changes (almost) every pixel of its silhouette: the mask is not larger than it.
        changed = np.any(alone.image != background, axis=-1)
        assert (changed & amodal).sum() >= 0.9 * amodal.sum()
        assert not (changed & ~amodal).any()


def test_target_masks_are_disjoint_and_union_is_mask():
    for seed in range(6):
        sample = sample_referring_image(seed, "train", SMALL, kind="multi")
        assert len(sample.target_masks) >= 2
        total = np.sum(sample.target_masks, axis=0)
        assert total.max() == 1
        assert np.array_equal(total.astype(bool), sample.mask)
        for mask, index in zip(sample.target_masks, sample.target_ids, strict=True):
            assert np.array_equal(mask, sample.labels == index + 1)


def test_occlusion_makes_visible_masks_smaller_than_full_shapes():
    occluded = 0
    for seed in range(12):
        sample = sample_referring_image(seed, "train", SMALL)
        for i in range(len(sample.objects)):
            visible, amodal = sample.instance_masks[i].sum(), sample.scene.amodal_mask(i).sum()
            assert visible <= amodal
            occluded += visible < amodal
    assert occluded >= 3


@pytest.mark.parametrize("kind", ["attribute", "command", "relation", "ordinal", "multi", "question", "absent"])
def test_one_seg_per_target_mask(kind):
    for seed in range(4):
        sample = sample_referring_image(seed, "train", SMALL, kind=kind)
        assert sample.kind == kind
        assert sample.answer.count(SEG_TOKEN) == len(sample.target_masks) == len(sample.target_ids)
        assert sample.image.shape == (*SMALL, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == SMALL and sample.mask.dtype == bool
        if kind in ("question", "absent"):
            assert not sample.mask.any() and sample.target_masks == []
        else:
            assert all(m.any() for m in sample.target_masks)
            assert sample.answer.startswith(("Sure, ", "It is "))


def test_absent_targets_have_empty_masks_and_say_so():
    for seed in range(8):
        sample = sample_referring_image(seed, "test", SMALL, kind="absent")
        colour, cls = sample.queried
        assert _matching(sample, colour, cls) == []
        assert SEG_TOKEN not in sample.answer
        noun = f"{colour} {cls}" if colour else cls
        assert sample.answer == f"There is no {noun}."
        assert noun in sample.expression
        assert not sample.mask.any()


def test_questions_have_plain_correct_answers():
    seen = set()
    for seed in range(30):
        sample = sample_referring_image(seed, "train", SMALL, kind="question")
        assert SEG_TOKEN not in sample.answer
        colour, cls = sample.queried
        if sample.expression.startswith("what colour"):
            (index,) = _matching(sample, None, cls)
            assert sample.answer == f"The {cls} is {sample.objects[index].colour}."
            seen.add("colour")
        elif sample.expression.startswith("how many"):
            count = len(_matching(sample, colour, cls))
            assert (sample.answer.startswith("There is one") if count == 1 else
                    sample.answer.startswith("There are"))
            seen.add("count")
        else:
            present = bool(_matching(sample, colour, cls))
            assert sample.answer.startswith("Yes" if present else "No")
            seen.add("exists")
    assert seen == {"colour", "count", "exists"}


def test_attribute_and_multi_expressions_name_exactly_one_object_each():
    for seed in range(10):
        for kind in ("attribute", "multi"):
            sample = sample_referring_image(seed, "train", SMALL, kind=kind)
            phrases = re.findall(rf"the {NOUN}", sample.expression)
            assert len(phrases) == len(sample.target_ids)
            for (colour, cls), index in zip(phrases, sample.target_ids, strict=True):
                assert _matching(sample, colour or None, cls) == [index]


def test_ordinal_and_relation_expressions_pick_a_unique_object():
    checked = Counter()
    for seed in range(16):
        sample = sample_referring_image(seed, "train", SMALL, kind="ordinal")
        (target,) = sample.target_ids
        match = re.fullmatch(rf"the (biggest|smallest|leftmost|rightmost) {NOUN}", sample.expression)
        if match:
            which, colour, cls = match.groups()
            candidates = _matching(sample, colour, cls)
            sizes = {i: sample.objects[i].size_factor for i in candidates}
            xs = {i: sample.objects[i].position[0] for i in candidates}
            key = {"biggest": lambda i, s=sizes: -s[i], "smallest": lambda i, s=sizes: s[i],
                   "leftmost": lambda i, x=xs: x[i], "rightmost": lambda i, x=xs: -x[i]}[which]
            ranked = sorted(candidates, key=key)
            assert len(ranked) >= 2 and ranked[0] == target and key(ranked[0]) < key(ranked[1])
            checked["ordinal"] += 1
        sample = sample_referring_image(seed, "train", SMALL, kind="relation")
        (target,) = sample.target_ids
        match = re.fullmatch(rf"the {NOUN} (left of|right of) the {NOUN}", sample.expression)
        if match:
            colour, cls, word, anchor_colour, anchor_cls = match.groups()
            (anchor,) = _matching(sample, anchor_colour, anchor_cls)
            sign = -1 if word == "left of" else 1
            anchor_x = sample.objects[anchor].position[0]
            fits = [i for i in _matching(sample, colour, cls) if sign * (sample.objects[i].position[0] - anchor_x) > 0]
            assert fits == [target]
            checked["relation"] += 1
    assert checked["ordinal"] >= 3 and checked["relation"] >= 3


def test_held_out_pairs_only_in_the_compositional_split():
    for seed in range(20):
        for split in ("train", "test"):
            sample = sample_referring_image(seed, split, SMALL)
            assert not any(_pair(o) in HELD_OUT_PAIRS for o in sample.objects)
            assert sample.queried is None or sample.queried not in HELD_OUT_PAIRS
        sample = sample_referring_image(seed, "compositional", SMALL)
        assert all(_pair(sample.objects[i]) in HELD_OUT_PAIRS for i in sample.target_ids)
        if sample.queried is not None:
            assert sample.queried in HELD_OUT_PAIRS
        assert sample.target_ids or sample.queried is not None
    with pytest.raises(ValueError, match="held-out"):
        sample_referring_image(0, "train", SMALL, target=("green", "mug"))
    with pytest.raises(ValueError, match="held-out"):
        sample_referring_image(0, "compositional", SMALL, target=("blue", "mug"))


@pytest.mark.parametrize("size", [(48, 80), (240, 320), (100, 60)])
def test_any_resolution(size):
    sample = sample_referring_image(5, "train", size, kind="command")
    assert sample.image.shape == (*size, 3)
    assert sample.mask.shape == size and sample.mask.any()


def test_same_aspect_ratio_gives_the_same_scene_at_another_resolution():
    low = sample_referring_image(9, "train", (60, 80), kind="attribute")
    high = sample_referring_image(9, "train", (240, 320), kind="attribute")
    assert low.expression == high.expression
    shrunk = high.mask.reshape(60, 4, 80, 4).mean(axis=(1, 3)) > 0.5
    iou = (shrunk & low.mask).sum() / (shrunk | low.mask).sum()
    assert iou > 0.7
    rescaled = low.scene.with_size((240, 320)).render(noise=False)
    assert np.array_equal(rescaled.labels, high.labels)


def test_forced_target_and_kind():
    sample = sample_referring_image(3, "test", SMALL, kind="command", target=("blue", "mug"))
    assert "blue mug" in sample.expression and sample.prompt_style == "command"
    assert [_pair(sample.objects[i]) for i in sample.target_ids] == [("blue", "mug")]
    assert _matching(sample, "blue", "mug") == list(sample.target_ids)
    absent = sample_referring_image(3, "test", SMALL, kind="absent", target=("purple", "banana"))
    assert absent.answer == "There is no purple banana." and _matching(absent, "purple", "banana") == []


def test_default_kinds_favour_attributes_and_commands():
    kinds = Counter(sample_referring_stream(seed, "train", 1, (32, 32)).kind for seed in range(150))
    assert set(kinds) == {"attribute", "command", "relation", "ordinal", "multi", "question", "absent"}
    assert kinds.most_common(2)[0][0] in ("attribute", "command")
    assert kinds.most_common(2)[1][0] in ("attribute", "command")


def test_video_masks_move_smoothly():
    for seed in range(4):
        video = sample_referring_video(seed, "train", 8, (64, 64), kind="motion")
        (target,) = video.target_ids
        centres = []
        for t in range(8):
            amodal = video.scene.amodal_mask(target, t)
            ys, xs = np.nonzero(amodal)
            centres.append((xs.mean(), ys.mean()))
        steps = np.linalg.norm(np.diff(np.array(centres), axis=0), axis=1)
        assert steps.max() < 0.1 * 64
        motion = video.objects[target].motion
        dx, dy = np.subtract(centres[-1], centres[0])
        expected = {"left": dx < -3, "right": dx > 3, "away": dy < -2, "towards": dy > 2,
                    "still": abs(dx) + abs(dy) < 1e-6}[motion]
        assert expected, (video.expression, motion, dx, dy)


def test_leave_and_return_empties_the_target_mask_in_the_middle():
    for seed in range(3):
        video = sample_referring_video(seed, "test", 10, SMALL, leave_and_return=True)
        start, stop = video.absence_window
        first = video.target_masks[0]
        assert first[0].any() and first[-1].any()
        assert not any(first[t].any() for t in range(start, stop))
        assert 0 < start < stop < 10


def test_long_stream_is_lazy_and_matches_the_rendered_video():
    stream = sample_referring_stream(2, "test", 5000, (48, 64), leave_and_return=True, kind="attribute")
    start, stop = stream.absence_window
    assert not stream.frame((start + stop) // 2).mask.any()
    assert stream.frame(0).mask.any() and stream.frame(4999).mask.any()
    frames = stream.iter_frames(3, start=100)
    assert next(frames).index == 100
    assert np.array_equal(next(stream.scene.iter_frames(1, start=101)).labels, next(frames).labels)
    short = sample_referring_stream(6, "train", 6, SMALL)
    video = short.to_video()
    for t, frame in enumerate(short.iter_frames()):
        assert np.array_equal(frame.image, video.frames[t]) and np.array_equal(frame.mask, video.masks[t])


def test_video_questions_and_compositional_video_targets():
    directions = 0
    for seed in range(12):
        video = sample_referring_video(seed, "train", 6, (48, 64), kind="question")
        assert SEG_TOKEN not in video.answer and video.target_masks == []
        if video.expression.startswith("which way"):
            (index,) = _matching(video, None, video.queried[1])
            motion = video.objects[index].motion
            words = {"left": "left", "right": "right", "towards": "towards", "away": "away", "still": "not moving"}
            assert words[motion] in video.answer
            directions += 1
        held_out = sample_referring_video(seed, "compositional", 5, (48, 64))
        assert all(_pair(held_out.objects[i]) in HELD_OUT_PAIRS for i in held_out.target_ids)
    assert directions >= 2
    with pytest.raises(ValueError, match="kind"):
        sample_referring_image(0, "train", SMALL, kind="motion")
