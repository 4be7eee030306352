"""Rosbag tools: synthetic bags written and read back with rosbags; bag replay evaluation on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from sa2va_ros.cli import make_bag
from sa2va_ros.eval.bags import (
    FRAME_RESULT_TYPE,
    BagTopics,
    evaluate_bag,
    match_to_ground_truth,
    read_bag_messages,
    score_frames,
    typestore_with_results,
    write_dataset_bag,
    write_synthetic_bag,
)
from sa2va_ros.eval.datasets import load_dataset
from sa2va_ros.eval.metrics import video_j_and_f
from sa2va_ros.model.presets import tiny_model
from sa2va_ros.ros_io import decode_image, decode_label_mask, stamp_to_ns
from sa2va_ros.synthetic import sample_referring_video
from sa2va_ros.tracking import TrackerConfig
from tests.dataset_fixtures import write_video_benchmark
from tests.model_helpers import scripted_answer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 80)  # H, W
FRAMES = 8
SEED = 3
RATE_HZ = 10.0


@pytest.mark.parametrize(("storage", "compressed"), [("sqlite3", False), ("mcap", True)])
def test_synthetic_bag_reads_back_with_types_stamps_and_ground_truth(
    tmp_path: Path, storage: str, compressed: bool
) -> None:
    topics = BagTopics("/cam/image/compressed" if compressed else "/cam/image", "/cmd", "/gt")
    info = write_synthetic_bag(tmp_path / "bag", SEED, FRAMES, SIZE, compressed=compressed, command_time_s=0.25,
                               rate_hz=RATE_HZ, storage=storage, topics=topics)
    clip = sample_referring_video(SEED, "test", FRAMES, SIZE, kind="command")
    with AnyReader([tmp_path / "bag"]) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
    assert types == {
        topics.image: "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image",
        topics.command: "std_msgs/msg/String",
        topics.ground_truth: "sensor_msgs/msg/Image",
    }
    messages = list(read_bag_messages(tmp_path / "bag", topics))
    commands = [m for m in messages if m.kind == "command"]
    images = [m for m in messages if m.kind == "image"]
    truths = [m for m in messages if m.kind == "ground_truth"]
    assert [m.msg.data for m in commands] == [clip.prompt]
    assert commands[0].log_time_ns - images[0].log_time_ns == 250_000_000
    image_stamps = [stamp_to_ns(m.msg.header.stamp) for m in images]
    assert image_stamps == [stamp_to_ns(m.msg.header.stamp) for m in truths] == list(info.frame_stamps_ns)
    assert np.diff(image_stamps).tolist() == [round(1e9 / RATE_HZ)] * (FRAMES - 1)
    for t, (image, truth) in enumerate(zip(images, truths, strict=True)):
        rgb = decode_image(image.msg)
        if compressed:
            assert np.abs(rgb.astype(int) - clip.frames[t]).mean() < 12  # JPEG: close, not exact
        else:
            np.testing.assert_array_equal(rgb, clip.frames[t])
        labels = decode_label_mask(truth.msg)
        assert truth.msg.encoding == "mono8"
        for k, target_masks in enumerate(clip.target_masks, start=1):
            np.testing.assert_array_equal(labels == k, target_masks[t])
        np.testing.assert_array_equal(labels > 0, clip.masks[t])


def test_make_bag_cli_refuses_an_existing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert make_bag.main([str(tmp_path / "b"), "--synthetic-seed", "1", "--frames", "2", "--size", "32", "40"]) == 0
    assert make_bag.main([str(tmp_path / "b"), "--synthetic-seed", "1", "--frames", "2"]) == 1
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["mevis", "ref-davis17"])
def test_dataset_video_bag_holds_its_frames_the_expression_as_command_and_its_ground_truth(
    tmp_path: Path, layout: str
) -> None:
    root = write_video_benchmark(tmp_path / layout, layout)
    topics = BagTopics("/cam/image", "/cmd", "/gt")
    info = write_dataset_bag(tmp_path / "bag", root, "vid_a", 1, rate_hz=RATE_HZ, storage="mcap", topics=topics)
    sample = [s for s in load_dataset(root) if s.video_id == "vid_a"][1]
    assert sample.expression == "both objects" and info.targets == 1
    messages = list(read_bag_messages(tmp_path / "bag", topics))
    assert [m.msg.data for m in messages if m.kind == "command"] == [info.command] == ["Please segment both objects."]
    images = [m for m in messages if m.kind == "image"]
    truths = [m for m in messages if m.kind == "ground_truth"]
    assert [stamp_to_ns(m.msg.header.stamp) for m in images] == list(info.frame_stamps_ns)
    assert [stamp_to_ns(m.msg.header.stamp) for m in truths] == list(info.frame_stamps_ns)
    assert np.diff(info.frame_stamps_ns).tolist() == [round(1e9 / RATE_HZ)] * (sample.num_frames - 1)
    for t, (image, truth) in enumerate(zip(images, truths, strict=True)):
        np.testing.assert_array_equal(decode_image(image.msg), sample.load_frame(t))
        labels = decode_label_mask(truth.msg)
        np.testing.assert_array_equal(labels, sample.load_mask(t).astype(np.uint8))  # the union of both objects = 1


def test_dataset_bag_without_ground_truth_and_the_make_bag_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_video_benchmark(tmp_path / "mevis", "mevis")
    out = tmp_path / "bag"
    assert make_bag.main([str(out), "--dataset", str(root), "--video", "vid_b", "--compressed"]) == 0
    assert "command 'Please segment the cat.'" in capsys.readouterr().out
    with AnyReader([out]) as reader:
        assert {c.topic: c.msgtype for c in reader.connections}["/camera/image/compressed"] == (
            "sensor_msgs/msg/CompressedImage")
    assert make_bag.main([str(tmp_path / "b2"), "--dataset", str(root), "--video", "vid_a",
                          "--expression-index", "3"]) == 1
    assert "0: 'the red ball'; 1: 'both objects'; 2: 'nothing here'" in capsys.readouterr().err
    assert make_bag.main([str(tmp_path / "b3"), "--dataset", str(root), "--video", "vid_z"]) == 1
    assert "no video 'vid_z'" in capsys.readouterr().err
    (root / "mask_dict.json").unlink()  # a split released without masks: frames and command only
    info = write_dataset_bag(tmp_path / "b4", root, "vid_a", 0)
    assert info.targets == 0 and info.command == "Please segment the red ball."
    assert {m.kind for m in read_bag_messages(tmp_path / "b4", BagTopics())} == {"image", "command"}


def test_ground_truth_is_matched_by_stamp_and_held_over_dropped_frames() -> None:
    # results for stamps 10, 30 (20 was dropped); ground truth at 5 (before any result), 10, 20, 30, 40
    assert match_to_ground_truth([5, 10, 20, 30, 40], [10, 30]) == [
        (None, False), (0, False), (0, True), (1, False), (1, True)
    ]


def test_frame_scores_equal_the_davis_metrics_of_the_matched_masks() -> None:
    rng = np.random.default_rng(0)
    gt = {stamp: (rng.random((24, 32)) < 0.3).astype(np.uint8) * 2 for stamp in (100, 200, 300)}  # id 2
    predicted = [gt[100] * 0, (gt[200] > 0).astype(np.uint16) * 5, np.ones((24, 32), np.uint16)]
    scores = score_frames(gt, [100, 200, 300], predicted)
    expected = video_j_and_f(np.stack(predicted) > 0, np.stack([gt[s] for s in (100, 200, 300)]) > 0)
    assert scores.j[1] == scores.f[1] == 1.0  # another target id, same pixels: foreground matches
    assert scores.j[0] == 0.0
    assert scores.j.mean() == pytest.approx(expected.j)
    assert scores.f.mean() == pytest.approx(expected.f)
    dropped = score_frames(gt, [100, 300], [predicted[0], predicted[2]])
    assert dropped.held == 1 and dropped.j[1] == 0.0  # frame 200 scored with frame 100's empty mask


def test_evaluate_bag_writes_summary_result_bag_and_report(tmp_path: Path) -> None:
    topics = BagTopics()
    info = write_synthetic_bag(tmp_path / "bag", SEED, FRAMES, SIZE, storage="mcap", topics=topics)
    model = tiny_model("internvl-qwen2").eval()
    tracking = TrackerConfig(lost_score_threshold=-1e6)  # random weights: keep the target "tracking"
    with scripted_answer(model, "Sure, [SEG]."):
        summary = evaluate_bag(tmp_path / "bag", model, topics, tmp_path / "out", tracker_config=tracking)

    assert summary == json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == summary["frames_processed"] == summary["frames_scored"] == FRAMES
    assert summary["dropped"] == 0 and summary["commands"] == 1
    for key in ("j_and_f", "j", "f"):
        assert isinstance(summary[key], float) and 0.0 <= summary[key] <= 1.0
    assert summary["j_and_f"] == pytest.approx((summary["j"] + summary["f"]) / 2)
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    first_mask = summary["time_to_first_mask_s"]
    assert first_mask is None or first_mask >= 1 / RATE_HZ  # the target enters on the frame after its keyframe

    store = typestore_with_results()
    with AnyReader([tmp_path / "out" / "results" / "results.mcap"], default_typestore=store) as reader:
        assert [c.msgtype for c in reader.connections] == [FRAME_RESULT_TYPE]
        results = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()]
    assert [stamp_to_ns(r.header.stamp) for r in results] == list(info.frame_stamps_ns)
    assert {r.header.frame_id for r in results} == {"camera"}
    assert results[0].targets == [] and results[0].answers == []  # grounding runs on frame 0
    for result in results[1:]:  # lockstep: the scripted [SEG] is a target from the next frame on
        assert [t.id for t in result.targets] == [1]
        assert (result.masks.height, result.masks.width) == SIZE
        labels = decode_label_mask(result.masks)
        assert result.targets[0].has_mask == bool(labels.any())
    assert results[1].answers == ["Sure, [SEG]."]

    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 2 + 2  # two plots and overlay thumbnails
    assert "j_and_f" in report


def test_rate_limited_replay_drops_frames_it_cannot_keep_up_with_and_scores_every_ground_truth_frame(
    tmp_path: Path,
) -> None:
    fast_hz = 1000.0  # 1 ms per frame: faster than the tiny model tracks on a CPU, so the latest frame wins
    write_synthetic_bag(tmp_path / "bag", SEED, FRAMES, SIZE, rate_hz=fast_hz)
    model = tiny_model("internvl-qwen2").eval()
    with scripted_answer(model, "Sure, [SEG]."):
        summary = evaluate_bag(tmp_path / "bag", model, BagTopics(), tmp_path / "out", rate_limited=True)
    assert summary["mode"] == "rate_limited"
    assert summary["frames"] == FRAMES
    assert summary["frames_processed"] + summary["dropped"] == FRAMES
    assert summary["dropped"] >= 1
    assert summary["frames_scored"] == FRAMES  # dropped frames are scored with the result held before them
    assert summary["frames_scored_held"] + summary["frames_scored_without_result"] == summary["dropped"]


def test_bag_eval_cli_reports_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sa2va_ros.cli import bag_eval

    assert bag_eval.main([str(tmp_path / "bag"), "--model", str(tmp_path / "no_model"), "--out", str(tmp_path)]) == 1
    assert "sa2va-bag-eval:" in capsys.readouterr().err
