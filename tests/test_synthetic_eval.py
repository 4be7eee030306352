"""The bundled-model card's scores on the synthetic world (sa2va_ros.eval.synthetic_eval), on a tiny model."""

from __future__ import annotations

import json

import pytest

from sa2va_ros.eval.synthetic_eval import evaluate_point_prompts, main
from sa2va_ros.model.presets import tiny_model

TINY = {"hidden": 32, "layers": 1, "tile_size": 28, "sam_image_size": 64, "max_dynamic_patch": 1}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model("internvl-qwen2", seed=0, **TINY).eval().save_pretrained(path)
    return path


def test_card_scores_are_written_with_every_section(checkpoint, tmp_path, capsys):
    out = tmp_path / "scores.json"
    argv = ["--model", str(checkpoint), "--images", "2", "--videos", "1", "--absent", "2", "--frames", "2",
            "--point-images", "1", "--size", "48", "64", "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    scores = json.loads(out.read_text())
    assert scores == json.loads(capsys.readouterr().out)
    assert scores["test_images"]["count"] == scores["compositional_images"]["count"] == 2
    assert scores["test_absent"]["count"] == 2 and 0 <= scores["test_absent"]["no_seg_rate"] <= 1
    assert scores["test_videos"]["count"] == 1 and 0 <= scores["test_videos"]["j_and_f"] <= 1
    assert scores["sam2_point_prompts"]["objects"] >= 1


def test_point_prompt_diagnostic_bounds_the_selected_mask_by_the_best_candidate(checkpoint):
    from sa2va_ros.model import Sa2VA

    model = Sa2VA.from_pretrained(checkpoint)
    scores = evaluate_point_prompts(model, "test", 3, (48, 64))
    assert scores["objects"] >= 3  # every visible object of every image is prompted
    assert 0 <= scores["selected_iou"] <= scores["best_candidate_iou"] <= 1
    assert evaluate_point_prompts(model, "test", 3, (48, 64)) == scores  # deterministic points
