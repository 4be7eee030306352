"""The bundled-model card's scores on the synthetic world (sa2va_ros.eval.synthetic_eval), on a tiny model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from sa2va_ros.eval.synthetic_eval import evaluate_point_prompts, evaluate_same_colour_distractors, main
from sa2va_ros.model.presets import tiny_model
from sa2va_ros.synthetic import sample_referring_image

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
    distractors = scores["test_same_colour_distractors"]
    assert sum(group["count"] for group in distractors.values()) == 60  # the default


def test_point_prompt_diagnostic_bounds_the_selected_mask_by_the_best_candidate(checkpoint):
    from sa2va_ros.model import Sa2VA

    model = Sa2VA.from_pretrained(checkpoint)
    scores = evaluate_point_prompts(model, "test", 3, (48, 64))
    assert scores["objects"] >= 3  # every visible object of every image is prompted
    assert 0 <= scores["selected_iou"] <= scores["best_candidate_iou"] <= 1
    assert evaluate_point_prompts(model, "test", 3, (48, 64)) == scores  # deterministic points


class ColourOnlyReader:
    """Grounds each of the given samples, in order, to every visible object of its target's colour: the failure
    of a model that reads colour but not class."""

    def __init__(self, samples: list) -> None:
        self.samples = iter(samples)

    def ground(self, images: list[np.ndarray], prompt: str) -> SimpleNamespace:
        sample = next(self.samples)
        assert prompt.endswith(sample.prompt) and images[0] is not None
        colour = sample.objects[sample.target_ids[0]].colour
        same = [o.index + 1 for o in sample.objects if o.colour == colour]
        return SimpleNamespace(masks=np.isin(sample.labels, same)[None, None])


def test_same_colour_distractor_diagnostic_separates_what_only_class_tells_apart() -> None:
    size, count = (96, 128), 24
    samples = [sample_referring_image(i, split="test", size=size, kind="attribute") for i in range(count)]
    scores = evaluate_same_colour_distractors(ColourOnlyReader(samples), "test", count, size)
    with_, without = scores["with_same_colour"], scores["without_same_colour"]
    assert with_["count"] > 0 and without["count"] > 0 and with_["count"] + without["count"] == count
    assert without["iou"] == 1.0 and without["on_target"] == 1.0  # colour alone singles the target out
    assert with_["iou"] < 1.0  # the mask also covers the same-coloured object of another class
