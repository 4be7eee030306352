"""Live bag replay (sa2va-bag-eval --live): a bag published over real rclpy / Fast DDS (loopback, own domain) to
the sa2va node, its masks scored by header stamp.

The model is the tiny random Sa2VA with a scripted answer ("Sure, [SEG].": random weights never emit [SEG]).
"""

from __future__ import annotations

import os

ROS_DOMAIN_ID = 73
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(ROS_DOMAIN_ID)
os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"

import json  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from model_helpers import scripted_answer  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402

from sa2va_ros.cli import bag_eval  # noqa: E402
from sa2va_ros.eval.bags import BagTopics, evaluate_bag, typestore_with_results, write_synthetic_bag  # noqa: E402
from sa2va_ros.model.presets import tiny_model  # noqa: E402
from sa2va_ros.ros.live_replay import evaluate_bag_live  # noqa: E402
from sa2va_ros.ros.node import Sa2VANode  # noqa: E402
from sa2va_ros.ros_io import decode_label_mask, stamp_to_ns  # noqa: E402
from sa2va_ros.tracking import TrackerConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread", "ros_environment")

SIZE = (64, 80)  # H, W
FRAMES = 8
SEED = 3
ANSWER = "Sure, [SEG]."
KEEP_TRACKING = {"lost_score_threshold": -1e6, "reground_lost": False, "torch_threads": 1}  # random weights


class ScriptedModel:
    """The tiny Sa2VA grounding with a scripted answer (the model computes everything else)."""

    def __init__(self) -> None:
        self.model = tiny_model("internvl-qwen2", seed=0).eval()
        self.grounding_encoder = self.model.grounding_encoder

    def ground(self, frames: Sequence[np.ndarray], text: str, max_new_tokens: int = 64) -> Any:
        with scripted_answer(self.model, ANSWER):
            return self.model.ground(frames, text, max_new_tokens=max_new_tokens)


@pytest.fixture
def ros_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's DDS settings at the moment the replay initialises rclpy (other modules set theirs at import)."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(ROS_DOMAIN_ID))
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


@pytest.fixture(scope="module")
def scripted() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "clip"
    write_synthetic_bag(path, SEED, FRAMES, SIZE, storage="mcap")
    return path


def result_bag(out: Path) -> list[Any]:
    with AnyReader([out / "results" / "results.mcap"], default_typestore=typestore_with_results()) as reader:
        return [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()]


def test_lockstep_live_replay_scores_the_node_exactly_as_the_offline_replay(
    tmp_path: Path, bag: Path, scripted: ScriptedModel
) -> None:
    offline = evaluate_bag(bag, scripted, BagTopics(), tmp_path / "offline",
                           tracker_config=TrackerConfig(lost_score_threshold=-1e6))
    live = evaluate_bag_live(bag, BagTopics(), tmp_path / "live", pace="lockstep",
                             model_loader=lambda params: scripted, node_parameters=KEEP_TRACKING)

    assert live == json.loads((tmp_path / "live" / "summary.json").read_text())
    assert live["mode"] == "live_lockstep" and live["node"] == "in-process"
    assert live["frames"] == live["frames_processed"] == live["frames_scored"] == FRAMES and live["dropped"] == 0
    for key in ("j_and_f", "j", "f", "time_to_first_mask_s"):  # the node runs the same pipeline on the same frames
        assert live[key] == pytest.approx(offline[key]), key
    assert 0 < live["latency_ms_p50"] <= live["latency_ms_p99"]
    assert live["grounding_ms_p50"] is not None and live["grounding_ms_p50"] > 0  # read from /diagnostics

    live_results, offline_results = result_bag(tmp_path / "live"), result_bag(tmp_path / "offline")
    assert [stamp_to_ns(r.header.stamp) for r in live_results] == [
        stamp_to_ns(r.header.stamp) for r in offline_results]
    for live_result, offline_result in zip(live_results, offline_results, strict=True):
        np.testing.assert_array_equal(decode_label_mask(live_result.masks), decode_label_mask(offline_result.masks))
        assert [(t.id, t.phrase, t.state) for t in live_result.targets] == [
            (t.id, t.phrase, t.state) for t in offline_result.targets]
    assert [t.id for t in live_results[-1].targets] == [1]
    assert [answer for r in live_results for answer in r.answers] == [ANSWER]
    assert "J&amp;F over time" in (tmp_path / "live" / "report.html").read_text()


def test_bag_rate_replay_faster_than_the_node_drops_frames_and_scores_every_ground_truth_frame(
    tmp_path: Path, scripted: ScriptedModel
) -> None:
    fast = tmp_path / "fast"
    info = write_synthetic_bag(fast, SEED, FRAMES, SIZE, rate_hz=1000.0)  # 1 ms per frame: the mailbox must drop
    summary = evaluate_bag_live(fast, BagTopics(), tmp_path / "out", model_loader=lambda params: scripted,
                                node_parameters=KEEP_TRACKING)
    assert summary["mode"] == "live_bag_rate"
    assert summary["frames"] == FRAMES and summary["frames_scored"] == FRAMES
    assert summary["frames_processed"] + summary["dropped"] == FRAMES
    assert summary["dropped"] >= 1
    assert summary["frames_scored_held"] + summary["frames_scored_without_result"] == summary["dropped"]
    stamps = [stamp_to_ns(r.header.stamp) for r in result_bag(tmp_path / "out")]
    assert stamps[-1] == info.frame_stamps_ns[-1]  # the newest frame is never dropped by the mailbox


@pytest.fixture
def running_node(ros_context: Context, scripted: ScriptedModel) -> Iterator[Sa2VANode]:
    """A sa2va node started by someone else (its own context and executor) in /robot."""
    node = Sa2VANode(model_loader=lambda params: scripted, namespace="/robot", context=ros_context,
                     parameter_overrides=[Parameter(k, value=v) for k, v in KEEP_TRACKING.items()])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    yield node
    executor.shutdown(timeout_sec=5)
    spinner.join(5)
    node.release()
    node.destroy_node()


def test_replay_through_a_node_that_is_already_running(tmp_path: Path, bag: Path, running_node: Sa2VANode) -> None:
    summary = evaluate_bag_live(bag, BagTopics(), tmp_path / "out", pace="lockstep", running_node=True,
                                namespace="/robot")
    assert summary["node"] == "running" and summary["namespace"] == "/robot"
    assert summary["frames_processed"] == FRAMES and summary["dropped"] == 0
    assert [t.id for t in result_bag(tmp_path / "out")[-1].targets] == [1]  # the scripted [SEG] is tracked
    with pytest.raises(TimeoutError, match="nothing subscribes to /nobody/image"):
        evaluate_bag_live(bag, BagTopics(), tmp_path / "nobody", running_node=True, namespace="/nobody",
                          discovery_timeout_s=1.0)


def test_bag_eval_cli_live_with_a_checkpoint(tmp_path: Path, bag: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "tiny"
    tiny_model("internvl-qwen2", seed=0).save_pretrained(checkpoint)
    out = tmp_path / "out"
    assert bag_eval.main([str(bag), "--live", "--lockstep", "--model", str(checkpoint), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "live_lockstep" and summary["frames_processed"] == FRAMES
    assert summary["namespace"] == "/sa2va_bag_eval"
    assert "live_lockstep" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # argparse: the running node has its own model
        bag_eval.main([str(bag), "--live", "--running-node", "--model", str(checkpoint)])
    assert refused.value.code == 2
