"""Drawing label images: one stable colour per target id, boxes and "id phrase" labels (node overlay + demo)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sa2va_ros.label_mask import OVERLAY_COLOURS, ascii_text, blend_targets, draw_target_boxes, target_colour


@dataclass
class Drawn:
    id: int
    phrase: str
    box: tuple[int, int, int, int] | None


def test_blend_colours_each_target_by_its_id_whatever_else_is_present():
    frame = np.zeros((8, 8, 3), np.uint8)
    labels = np.zeros((8, 8), np.uint8)
    labels[0, 0], labels[1, 1] = 2, 2 + len(OVERLAY_COLOURS)  # ids that share a palette slot
    blended = blend_targets(frame, labels)
    expected = (0.5 * OVERLAY_COLOURS[1]).astype(np.uint8)
    np.testing.assert_array_equal(blended[0, 0], expected)
    np.testing.assert_array_equal(blended[1, 1], expected)
    assert not blended[labels == 0].any()  # background untouched
    alone = blend_targets(frame, np.where(labels == 2, 2, 0).astype(np.uint8))
    np.testing.assert_array_equal(alone[0, 0], blended[0, 0])  # target 2's colour does not depend on the others
    assert target_colour(2) == tuple(int(c) for c in OVERLAY_COLOURS[1])


def test_boxes_are_drawn_in_the_ids_colour_and_targets_without_a_box_are_skipped():
    image = np.zeros((120, 160, 3), np.uint8)
    drawn = draw_target_boxes(image, [Drawn(3, "the blue mug", (40, 50, 90, 100)), Drawn(1, "gone", None)])
    assert drawn is image  # in place
    colour = np.array(target_colour(3), np.uint8)
    for y, x in ((50, 40), (99, 89), (75, 40), (50, 60)):  # corners and edges of [x0, x1) x [y0, y1)
        np.testing.assert_array_equal(image[y, x], colour)
    assert not image[75, 65].any()  # the inside stays clear
    assert image[30:49, 40:90].any()  # the "3 the blue mug" label above the box
    assert not (image == np.array(target_colour(1), np.uint8)).all(axis=-1).any()  # nothing drawn for target 1


def test_labels_are_ascii_for_opencv_fonts():
    assert ascii_text("la tasse bleue \u2014 caf\u00e9") == "la tasse bleue ? caf?"
