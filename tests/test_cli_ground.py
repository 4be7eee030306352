"""``sa2va-ground``: the README's main job writes its PNGs and reports bad checkpoints clearly."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from sa2va_ros.cli.ground import main
from sa2va_ros.label_mask import overlay


def test_ground_writes_mask_overlay_and_result(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--seed", "2", "--text", "the blue mug"]) == 0
    image = np.asarray(Image.open(tmp_path / "image.png"))
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert image.shape == (240, 320, 3) and mask.shape == (240, 320)
    assert set(np.unique(mask)) <= {0, 255}
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["text"] == "the blue mug" and result["targets"] == len(result["scores"])
    assert "wrote" in capsys.readouterr().out


def test_bad_checkpoint_exits_with_one_clear_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a checkpoint directory" in err[0]


def test_overlay_tints_only_masked_pixels():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, :2] = True
    out = overlay(image, masks)
    assert np.array_equal(out[2:], image[2:])
    assert not np.array_equal(out[:2], image[:2])
