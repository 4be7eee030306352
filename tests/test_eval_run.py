"""Offline benchmark evaluation (sa2va-eval): official prompts and rules, toolkit aggregation, sharding, the CLI.

Benchmarks are the tiny fixtures of test_eval_datasets, written in the public layouts. ``OracleModel`` stands in
for ``Sa2VA.predict_forward`` and answers from the ground truth (with per-sample twists), so every expected score
follows from the fixture's masks; the CLI tests run a real tiny checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from sa2va_ros.cli import eval as eval_cli
from sa2va_ros.eval.datasets import ReferringVideoDataset
from sa2va_ros.eval.metrics import video_j_and_f
from sa2va_ros.eval.run import (
    SAMPLES_FILE,
    SUMMARY_FILE,
    evaluate_benchmark,
    image_prompt,
    open_benchmark,
    summarize_records,
    video_instruction,
    video_prompt,
)
from tests.dataset_fixtures import write_refcoco, write_video_benchmark

TESTS_DIR = Path(__file__).resolve().parent
Respond = Callable[[Any, np.ndarray], tuple[str, list[np.ndarray]]]


class OracleModel:
    """``predict_forward`` from the ground truth: "Sure, [SEG]." with the true masks ([T, H, W]; T = 1 for an
    image), unless ``respond(sample, gt)`` answers otherwise. Records every prompt it was given."""

    def __init__(self, dataset: Any, respond: Respond | None = None) -> None:
        video = isinstance(dataset, ReferringVideoDataset)
        prompt = video_prompt if video else image_prompt
        self.samples = {prompt(sample.expression): sample for sample in dataset}
        self.respond = respond
        self.prompts: list[str] = []

    def predict_forward(self, image: Any = None, video: Any = None, text: str = "", max_new_tokens: int = 0) -> dict:
        self.prompts.append(text)
        sample = self.samples[text]
        if video is not None:
            assert len(video) == sample.num_frames
            gt = sample.load_masks() if sample.has_ground_truth else np.zeros((len(video), *video[0].shape[:2]), bool)
        else:
            gt = sample.load_mask()[None]  # [1, H, W]
        answer, masks = self.respond(sample, gt) if self.respond else ("Sure, [SEG].", [gt])
        return {"prediction": answer, "prediction_masks": masks}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sa2va_ros.model.presets import tiny_model  # here: the sharding workers import this module, keep it light

    path = tmp_path_factory.mktemp("tiny")
    tiny_model("internvl-qwen2", seed=0).save_pretrained(path)
    return path


def test_official_prompts() -> None:
    assert image_prompt("the left mug") == "<image>\n Please segment the left mug in this image."
    assert video_prompt("the cat jumping") == "<image>\nPlease segment the cat jumping."
    assert video_prompt("which cat jumps?") == "<image>\n which cat jumps? Please respond with a segmentation mask."
    assert video_instruction("the cat jumping") == "Please segment the cat jumping."
    assert video_instruction("which cat jumps?") == "which cat jumps? Please respond with a segmentation mask."


def test_refcoco_union_of_segs_no_seg_means_empty_and_dataset_ciou_giou(tmp_path: Path) -> None:
    dataset, format_name = open_benchmark(write_refcoco(tmp_path / "data"))
    assert format_name == "refcoco" and [s.expression for s in dataset] == [
        "left box", "the box on the left", "right box"]
    extra = np.zeros(dataset[2].load_mask().shape, bool)
    extra[0, :4] = True  # four wrong pixels beside "right box"

    def respond(sample: Any, gt: np.ndarray) -> tuple[str, list[np.ndarray]]:
        if sample.expression == "left box":  # two [SEG]s: the prediction is their union
            left_part, right_part = gt.copy(), gt.copy()
            left_part[:, :, 3:], right_part[:, :, :3] = False, False
            return "[SEG] and [SEG]", [left_part, right_part]
        if sample.expression == "the box on the left":  # masks without [SEG] in the answer count as empty
            return "It is not in the image.", [gt]
        return "Sure, [SEG].", [gt | extra[None]]

    model = OracleModel(dataset, respond)
    summary = evaluate_benchmark(model, dataset, tmp_path / "out", progress=False)

    assert model.prompts == [image_prompt(s.expression) for s in dataset]
    gts = [s.load_mask() for s in dataset]
    union_right = np.count_nonzero(gts[2] | extra)
    assert summary["ciou"] == pytest.approx((gts[0].sum() + gts[2].sum()) / (gts[0].sum() + gts[1].sum() + union_right))
    assert summary["giou"] == pytest.approx((1.0 + 0.0 + gts[2].sum() / union_right) / 3)
    assert summary == json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    records = read_jsonl(tmp_path / "out" / SAMPLES_FILE)
    assert [(r["index"], r["key"], r["expression"]) for r in records] == [
        (i, s.key, s.expression) for i, s in enumerate(dataset)]
    assert [r["iou"] for r in records[:2]] == [1.0, 0.0]
    assert records[1]["prediction"] == "It is not in the image." and records[1]["masks"] == 1


def write_revos_with_types(root: Path) -> Path:
    """The video fixture in the ReVOS layout, with type_ids (three referring, one reason) and a question."""
    write_video_benchmark(root, "revos")
    path = root / "meta_expressions_valid_.json"
    meta = json.loads(path.read_text())
    expressions = meta["videos"]["vid_a"]["expressions"]
    expressions["1"]["exp"] = "which objects move?"
    for video_id, expression_id, type_id in (("vid_b", "0", 0), ("vid_a", "0", 0), ("vid_a", "2", 0),
                                             ("vid_a", "1", 1)):
        meta["videos"][video_id]["expressions"][expression_id]["type_id"] = type_id
    path.write_text(json.dumps(meta))
    return root


def test_video_first_seg_only_and_revos_mean_of_type_means(tmp_path: Path) -> None:
    dataset, format_name = open_benchmark(write_revos_with_types(tmp_path / "revos"))
    assert format_name == "revos"
    rng = np.random.default_rng(0)

    def respond(sample: Any, gt: np.ndarray) -> tuple[str, list[np.ndarray]]:
        if sample.expression == "the red ball":
            return "I cannot see it.", []  # no [SEG]: empty masks on every frame
        return "Sure, [SEG] and [SEG].", [gt, rng.random(gt.shape) < 0.5]  # only the first [SEG] counts

    model = OracleModel(dataset, respond)
    summary = evaluate_benchmark(model, dataset, tmp_path / "out", progress=False)

    assert "<image>\n which objects move? Please respond with a segmentation mask." in model.prompts
    red_ball = next(s for s in dataset if s.expression == "the red ball")
    missed = video_j_and_f(np.zeros_like(red_ball.load_masks()), red_ball.load_masks())
    referring_j, referring_f = (2 + missed.j) / 3, (2 + missed.f) / 3
    assert summary["types"]["referring"] == pytest.approx(
        {"j": referring_j, "f": referring_f, "j_and_f": (referring_j + referring_f) / 2, "count": 3})
    assert summary["types"]["reason"] == {"j": 1.0, "f": 1.0, "j_and_f": 1.0, "count": 1}
    assert summary["j"] == pytest.approx((referring_j + 1) / 2)  # the toolkit's overall, not the mean of 4
    assert summary["j"] != pytest.approx((3 + missed.j) / 4)
    assert summary["j_and_f"] == pytest.approx((summary["j"] + summary["f"]) / 2)
    records = {r["key"]: r for r in read_jsonl(tmp_path / "out" / SAMPLES_FILE)}
    assert records[red_ball.key]["j"] == pytest.approx(missed.j) and records[red_ball.key]["masks"] == 0
    assert {r["type_id"] for r in records.values()} == {0, 1}


def test_split_without_ground_truth_limit_and_masks_for_submission(tmp_path: Path) -> None:
    root = write_video_benchmark(tmp_path / "mevis", "mevis")
    (root / "mask_dict.json").unlink()
    dataset, _ = open_benchmark(root)

    def left_half(sample: Any, gt: np.ndarray) -> tuple[str, list[np.ndarray]]:
        masks = np.zeros(gt.shape, bool)
        masks[:, :, : gt.shape[2] // 2] = True
        return "Sure, [SEG].", [masks]

    summary = evaluate_benchmark(OracleModel(dataset, left_half), dataset, tmp_path / "out", limit=2,
                                 save_masks=True, progress=False)

    assert summary["samples"] == 2 and summary["scored"] == 0 and summary["j_and_f"] is None
    assert all(r["j"] is None for r in read_jsonl(tmp_path / "out" / SAMPLES_FILE))
    written = sorted(p.relative_to(tmp_path / "out" / "Annotations").as_posix()
                     for p in (tmp_path / "out" / "Annotations").rglob("*.png"))
    assert written == ["vid_a/0/00000.png", "vid_a/0/00001.png", "vid_a/0/00002.png",
                       "vid_b/0/00000.png", "vid_b/0/00005.png"]
    png = cv2.imread(str(tmp_path / "out" / "Annotations" / "vid_a/0/00001.png"), cv2.IMREAD_UNCHANGED)
    assert png.shape == (6, 8) and (png[:, :4] == 255).all() and (png[:, 4:] == 0).all()


def test_two_processes_take_every_other_sample_and_the_main_one_merges(tmp_path: Path) -> None:
    root = write_revos_with_types(tmp_path / "revos")
    dataset, _ = open_benchmark(root)
    single = evaluate_benchmark(OracleModel(dataset), dataset, tmp_path / "single", progress=False)
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(TESTS_DIR.parent)!r})\n"
        "from tests.test_eval_run import OracleModel\n"
        "from sa2va_ros.eval.run import evaluate_benchmark, open_benchmark, process_state\n"
        f"dataset, _ = open_benchmark({str(root)!r})\n"
        "model, state = OracleModel(dataset), process_state('cpu')\n"
        f"summary = evaluate_benchmark(model, dataset, {str(tmp_path / 'shared')!r}, state=state, progress=False)\n"
        f"path = {str(tmp_path)!r} + f'/rank{{state.process_index}}.json'\n"
        "json.dump({'prompts': model.prompts, 'summary': summary}, open(path, 'w'))\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    processes = [
        subprocess.Popen([sys.executable, str(worker)], env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    for process in processes:
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0, output

    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    prompts = [video_prompt(sample.expression) for sample in dataset]
    assert ranks[0]["prompts"] == prompts[0::2] and ranks[1]["prompts"] == prompts[1::2]
    assert ranks[1]["summary"] is None  # only the main process writes and summarises
    merged = ranks[0]["summary"]
    assert merged["processes"] == 2 and single["processes"] == 1
    assert {k: v for k, v in merged.items() if k not in ("processes", "wall_s")} == {
        k: v for k, v in single.items() if k not in ("processes", "wall_s")}
    assert (tmp_path / "shared" / SAMPLES_FILE).read_text() == (tmp_path / "single" / SAMPLES_FILE).read_text()


def test_cli_evaluates_a_tiny_checkpoint_on_video_and_image_benchmarks(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video_root = write_video_benchmark(tmp_path / "mevis", "mevis")
    common = ["--model", str(tiny_checkpoint), "--max-new-tokens", "4", "--no-progress", "--device", "cpu"]
    assert eval_cli.main([str(video_root), "--out", str(tmp_path / "v"), "--limit", "3", *common]) == 0
    printed = capsys.readouterr().out
    assert "J&F" in printed and "overall" in printed
    records = read_jsonl(tmp_path / "v" / SAMPLES_FILE)
    assert [r["key"] for r in records] == ["vid_b_0", "vid_a_0", "vid_a_1"]
    for record in records:
        assert {"key", "expression", "prediction", "j", "f", "j_and_f"} <= record.keys()
        assert 0.0 <= record["j"] <= 1.0 and isinstance(record["prediction"], str)
    summary = json.loads((tmp_path / "v" / SUMMARY_FILE).read_text())
    assert summary["format"] == "mevis" and summary["samples"] == 3 and summary["model"] == str(tiny_checkpoint)
    assert summary["j_and_f"] == pytest.approx(summarize_records(records, "mevis")["j_and_f"])

    image_root = write_refcoco(tmp_path / "data")
    assert eval_cli.main([str(image_root), "--split", "testA", "--out", str(tmp_path / "i"), *common]) == 0
    assert "cIoU" in capsys.readouterr().out
    records = read_jsonl(tmp_path / "i" / SAMPLES_FILE)
    assert [r["expression"] for r in records] == ["the person", "person again"]  # testA takes testAB refs too
    summary = json.loads((tmp_path / "i" / SUMMARY_FILE).read_text())
    assert summary["split"] == "testA" and summary["ciou"] == pytest.approx(
        sum(r["intersection"] for r in records) / sum(r["union"] for r in records))


def test_cli_refuses_bad_input_with_one_line_and_exit_code_2(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video_root = write_video_benchmark(tmp_path / "mevis", "mevis")
    image_root = write_refcoco(tmp_path / "data")
    model = ["--model", str(tiny_checkpoint)]
    cases = {
        "does not exist": [str(tmp_path / "missing"), *model],
        "unknown format 'coco'": [str(video_root), "--format", "coco", *model],
        "not refcoco": [str(video_root), "--format", "refcoco", *model],
        "no sub-folder 'valid_u'": [str(video_root), "--split", "valid_u", *model],
        "video benchmarks only": [str(image_root), "--save-masks", *model],
        "no known dataset layout": [str(tmp_path), *model],
        "not a checkpoint directory": [str(video_root), "--model", str(tmp_path / "no_model")],
    }
    for expected, argv in cases.items():
        assert eval_cli.main([*argv, "--out", str(tmp_path / "out")]) == 2, expected
        err = capsys.readouterr().err
        assert err.startswith("sa2va-eval: ") and expected in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
