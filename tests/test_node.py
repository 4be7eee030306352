"""The sa2va lifecycle node over real rclpy and Fast DDS (loopback only, own domain), in-process and as a
separate process.

The model is the tiny random Sa2VA: its LLM computes everything, but the answer's tokens are scripted (random
weights never emit [SEG]), by the command text or, for re-grounding, by the synthetic clip's ground truth.
"""

from __future__ import annotations

import os

ROS_DOMAIN_ID = 57
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(ROS_DOMAIN_ID)
os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"

import array  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from model_helpers import scripted_answer  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402

from sa2va_ros.model.presets import tiny_model  # noqa: E402
from sa2va_ros.node_params import ParameterError, validate_parameters  # noqa: E402
from sa2va_ros.ros.node import Sa2VANode  # noqa: E402
from sa2va_ros.ros_io import decode_label_mask, qos_profile_from_params, qos_profile_from_preset  # noqa: E402
from sa2va_ros.synthetic import sample_referring_video  # noqa: E402
from sa2va_ros.targets_schema import parse_targets  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parent.parent
SIZE = (64, 80)  # H, W
WAIT_S = 60.0  # every wait fails after this instead of hanging (generous: CI machines can be busy)
FRAME_ID = "camera_color_optical_frame"
KEEP_TRACKING = [Parameter("lost_score_threshold", value=-1e6), Parameter("reground_lost", value=False)]


class ScriptedModel:
    """The tiny Sa2VA whose answers are scripted: ``respond(frames, text)`` picks the answer, the model computes."""

    def __init__(self) -> None:
        self.model = tiny_model("internvl-qwen2", seed=0)
        self.grounding_encoder = self.model.grounding_encoder
        self.respond: Callable[[Sequence[np.ndarray], str], str] = lambda frames, text: "Sure, [SEG]."
        self.calls: list[tuple[list[np.ndarray], str, str]] = []

    def ground(self, frames: Sequence[np.ndarray], text: str, max_new_tokens: int = 64) -> Any:
        answer = self.respond(frames, text)
        self.calls.append((list(frames), text, answer))
        with scripted_answer(self.model, answer):
            return self.model.ground(frames, text, max_new_tokens=max_new_tokens)


@pytest.fixture(scope="module")
def scripted() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return sample_referring_video(3, "test", 6, SIZE, kind="command", target=("blue", "mug")).frames


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return value


def header(t: int) -> Header:
    return Header(stamp=Time(sec=1_700_000_000 + t, nanosec=123_456_789), frame_id=FRAME_ID)


def raw_image(frame: np.ndarray, head: Header, encoding: str = "rgb8") -> Image:
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(frame).tobytes())
    channels = frame.shape[2] if frame.ndim == 3 else 1
    return Image(header=head, height=frame.shape[0], width=frame.shape[1], encoding=encoding,
                 step=frame.shape[1] * channels, data=data)


def jpeg_image(frame: np.ndarray, head: Header) -> CompressedImage:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = array.array("B")
    data.frombytes(encoded.tobytes())
    return CompressedImage(header=head, format="jpeg", data=data)


class Harness:
    """A camera / planner node beside the node under test, spun by a background executor.

    Publishes frames and commands into ``namespace`` and records everything the node publishes.
    """

    def __init__(self, context: Context, namespace: str, image_qos: Any = None) -> None:
        self.context = context
        self.namespace = namespace
        self.node = Node(f"harness_{namespace.strip('/')}", namespace=namespace, context=context)
        self.inbox: dict[str, list] = {
            "masks": [], "targets": [], "answer": [], "overlay": [], "diagnostics": [], "rosout": []
        }
        image_qos = image_qos or qos_profile_from_preset("sensor_data")
        self.image_pub = self.node.create_publisher(Image, "image", image_qos)
        self.compressed_pub = self.node.create_publisher(CompressedImage, "image/compressed", image_qos)
        self.command_pub = self.node.create_publisher(String, "command", qos_profile_from_preset("reliable"))
        output_qos = qos_profile_from_preset("reliable", history_depth=5)
        for topic, msg_type in (("masks", Image), ("targets", String), ("answer", String)):
            self.node.create_subscription(msg_type, topic, self.inbox[topic].append, output_qos)
        self.node.create_subscription(Image, "overlay", self.inbox["overlay"].append, image_qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.inbox["diagnostics"].append, 10)
        rosout_qos = qos_profile_from_params("reliable", "transient_local", 1000)
        self.node.create_subscription(Log, "/rosout", self.inbox["rosout"].append, rosout_qos)
        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def add(self, node: Node) -> None:
        self.executor.add_node(node)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.spinner.join(5)
        self.node.destroy_node()

    def send(self, msg: Any, compressed: bool = False) -> None:
        (self.compressed_pub if compressed else self.image_pub).publish(msg)

    def command(self, text: str) -> None:
        wait_until(lambda: self.command_pub.get_subscription_count() > 0, "the node's command subscription")
        self.command_pub.publish(String(data=text))

    def frame(
        self, msg: Any, compressed: bool = False, timeout: float = WAIT_S, retry_s: float = 1.0
    ) -> tuple[Image, dict]:
        """Publish a frame until its mask and targets (same stamp) arrive; check their headers; return them."""
        publisher = self.compressed_pub if compressed else self.image_pub
        wait_until(lambda: publisher.get_subscription_count() > 0, "the node's image subscription", timeout)
        stamp = msg.header.stamp
        deadline = time.monotonic() + timeout
        while True:
            publisher.publish(msg)  # best effort: sent again if lost
            try:
                mask = wait_until(lambda: self._find("masks", stamp), "a mask", timeout=retry_s)
                targets = wait_until(lambda: self._find("targets", stamp), "targets", timeout=retry_s)
                break
            except pytest.fail.Exception:
                if time.monotonic() > deadline:
                    raise
        assert mask.header == msg.header  # stamp and frame_id unchanged
        payload = parse_targets(targets.data)
        assert payload["stamp"] == {"sec": stamp.sec, "nanosec": stamp.nanosec} and payload["frame_id"] == FRAME_ID
        return mask, payload

    def _find(self, box: str, stamp: Time) -> Any:
        for msg in self.inbox[box]:
            if box == "masks" and msg.header.stamp == stamp:
                return msg
            if box == "targets" and json.loads(msg.data)["stamp"] == {"sec": stamp.sec, "nanosec": stamp.nanosec}:
                return msg
        return None

    def answers(self) -> list[str]:
        return [msg.data for msg in self.inbox["answer"]]

    def log_lines(self, node_name: str) -> list[str]:
        return [msg.msg for msg in self.inbox["rosout"] if msg.name.endswith(node_name)]


@pytest.fixture
def harness_factory(ros_context: Context, node_factory: Callable) -> Iterator[Callable[..., Harness]]:
    """Harnesses (their executors) close before the nodes they spin are destroyed."""
    made: list[Harness] = []

    def make(namespace: str, image_qos: Any = None) -> Harness:
        made.append(Harness(ros_context, namespace, image_qos))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def node_factory(ros_context: Context, scripted: ScriptedModel) -> Iterator[Callable[..., Sa2VANode]]:
    made: list[Sa2VANode] = []

    def make(namespace: str, parameters: Sequence[Parameter] = (), activate: bool = True) -> Sa2VANode:
        node = Sa2VANode(
            model_loader=lambda params: scripted,
            namespace=namespace,
            context=ros_context,
            parameter_overrides=[Parameter("torch_threads", value=1), *parameters],
        )
        made.append(node)
        if activate:
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        return node

    yield make
    for node in made:
        node.release()
        node.destroy_node()


def labels_of(mask: Image) -> np.ndarray:
    return decode_label_mask(mask)


# ---------------------------------------------------------------- in-process


def test_masks_carry_the_frame_headers_and_the_answer_and_target_arrive(
    harness_factory: Callable, node_factory: Callable, scripted: ScriptedModel, clip: list[np.ndarray]
) -> None:
    scripted.respond = lambda frames, text: "Sure, [SEG]."
    node = node_factory("/headers", [*KEEP_TRACKING, Parameter("publish_overlay", value=True)])
    harness = harness_factory("/headers")
    harness.add(node)
    for t in range(2):
        mask, payload = harness.frame(raw_image(clip[t], header(t)))
        assert mask.encoding == "mono8" and (mask.height, mask.width) == SIZE
        assert not labels_of(mask).any() and payload["targets"] == []
    harness.command("Bring me the blue mug.")
    wait_until(lambda: harness.answers() == ["Sure, [SEG]."], "the answer")
    targets = []
    for t in range(2, 6):
        mask, payload = harness.frame(raw_image(clip[t], header(t)))
        targets = payload["targets"]
        if targets:
            break
    assert [(target["id"], target["phrase"], target["state"]) for target in targets] == [
        (1, "the blue mug", "tracking")
    ]
    labels = labels_of(mask)
    assert set(np.unique(labels)) <= {0, 1}
    assert int((labels == 1).sum()) == targets[0]["area"]
    # The overlay (best effort: any frame's will do) has the frame's header and the target's mask blended in.
    overlay, overlay_mask = wait_until(lambda: next(
        ((o, m) for o in harness.inbox["overlay"] for m in harness.inbox["masks"] if o.header == m.header), None
    ), "an overlay")
    assert overlay.encoding == "rgb8" and (overlay.height, overlay.width) == SIZE
    pixels = np.frombuffer(bytes(overlay.data), np.uint8).reshape(*SIZE, 3)
    frame, overlay_labels = clip[overlay.header.stamp.sec - header(0).stamp.sec], labels_of(overlay_mask)
    if overlay_labels.any():
        assert (pixels != frame).any(axis=-1)[overlay_labels == 1].mean() > 0.9
    else:
        np.testing.assert_array_equal(pixels, frame)


def test_compressed_input_two_targets_clear_and_reconfiguring_through_the_lifecycle(
    harness_factory: Callable, node_factory: Callable, scripted: ScriptedModel, clip: list[np.ndarray]
) -> None:
    scripted.respond = lambda frames, text: "Sure, the blue mug [SEG] and the red ball [SEG]."
    node = node_factory("/compressed", KEEP_TRACKING)
    harness = harness_factory("/compressed")
    harness.add(node)
    harness.frame(raw_image(clip[0], header(0)))
    # Reconfigure for compressed input: deactivate (topics closed), cleanup (model dropped), configure, activate.
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    wait_until(lambda: harness.image_pub.get_subscription_count() == 0, "the image subscription to close")
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    node.set_parameters([Parameter("image_transport", value="compressed"), Parameter("mask_encoding", value="mono16")])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    mask, _ = harness.frame(jpeg_image(clip[1], header(1)), compressed=True)
    assert mask.encoding == "mono16"
    harness.command("pick the blue mug and the red ball")
    wait_until(lambda: harness.answers(), "the answer")
    targets: list = []
    for t in range(2, 6):
        mask, payload = harness.frame(jpeg_image(clip[t], header(t)), compressed=True)
        targets = payload["targets"]
        if targets:
            break
    assert [(target["id"], target["phrase"]) for target in targets] == [(1, "the blue mug"), (2, "the red ball")]
    assert set(np.unique(labels_of(mask))) <= {0, 1, 2}
    harness.command("clear")
    wait_until(lambda: "Cleared 2 targets." in harness.answers(), "the answer to clear")
    mask, payload = harness.frame(jpeg_image(clip[5], header(9)), compressed=True)
    assert payload["targets"] == [] and not labels_of(mask).any()


def test_a_target_that_leaves_and_returns_keeps_its_id(
    harness_factory: Callable, node_factory: Callable, scripted: ScriptedModel
) -> None:
    video = sample_referring_video(5, "test", 16, SIZE, kind="command", target=("blue", "mug"), leave_and_return=True)

    def oracle(frames: Sequence[np.ndarray], text: str) -> str:
        """[SEG] only when the mug is visible in the newest keyframe (the clip's ground truth decides)."""
        index = next(i for i, frame in enumerate(video.frames) if np.array_equal(frame, frames[-1]))
        return "Sure, [SEG]." if video.target_masks[0][index].any() else "There is no blue mug."

    scripted.respond = oracle
    scripted.calls.clear()
    # Random weights cannot see the mug leave: every frame counts as "absent", so the target turns lost three
    # frames after each conditioning and only a re-grounding on a frame showing the mug revives it.
    absent = [Parameter("lost_score_threshold", value=1e6), Parameter("lost_after_frames", value=3),
              Parameter("reground_interval_s", value=0.0), Parameter("reground_min_score", value=-1e6)]
    node = node_factory("/reenter", absent)
    harness = harness_factory("/reenter")
    harness.add(node)
    harness.frame(raw_image(video.frames[0], header(0)))
    harness.command(video.prompt)
    states = []
    for t in range(1, 40):  # the clip, then its last frame (mug in view) until the target is revived
        index = min(t, len(video.frames) - 1)
        _, payload = harness.frame(raw_image(video.frames[index], header(t)))
        states.append((index, [(target["id"], target["phrase"], target["state"]) for target in payload["targets"]]))
        if index == len(video.frames) - 1 and payload["targets"] and payload["targets"][0]["state"] == "tracking":
            break
        time.sleep(0.05)  # a 20 Hz camera
    assert {target[:2] for _, targets in states for target in targets} == {(1, "the blue mug")}
    assert ("lost" in [targets[0][2] for _, targets in states if targets])
    assert states[-1][1] == [(1, "the blue mug", "tracking")]
    regrounds = [(frames, answer) for frames, text, answer in scripted.calls if text == "Please segment the blue mug."]
    assert any(answer.startswith("There is no") for _, answer in regrounds)  # tried while out of view


def test_bad_input_is_refused_once_per_kind_in_the_log_counted_in_diagnostics_and_serving_goes_on(
    harness_factory: Callable, node_factory: Callable, scripted: ScriptedModel, clip: list[np.ndarray]
) -> None:
    scripted.respond = lambda frames, text: "Sure, [SEG]."
    reliable = qos_profile_from_params("reliable", "volatile", 10)
    node = node_factory("/bad", [*KEEP_TRACKING, Parameter("image_qos.reliability", value="reliable"),
                                 Parameter("image_qos.depth", value=10), Parameter("diagnostics_period_s", value=0.2)])
    harness = harness_factory("/bad", image_qos=reliable)
    harness.add(node)
    harness.frame(raw_image(clip[0], header(0)))

    def bad(**fields: Any) -> Image:
        msg = raw_image(clip[1], header(1))
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    bad_images = {
        "unsupported_encoding": [bad(encoding="banana"), bad(encoding="32FC1")],
        "size_mismatch": [bad(step=10), bad(step=10)],
        "truncated": [bad(data=array.array("B", bytes(100))), bad(height=65)],
        "empty": [bad(height=0, width=0, step=0, data=array.array("B")), bad(width=0)],
    }
    def send_and_count(msg: Any, kind: str, count: int) -> None:
        """One at a time: back to back, the latest-frame-wins mailbox could drop one before it is counted."""
        harness.send(msg)
        wait_until(lambda: node.problems.counts().get(kind) == count, f"{kind} counted {count} times")

    for t, (kind, messages) in enumerate(bad_images.items(), start=2):
        for count, msg in enumerate(messages, start=1):
            send_and_count(msg, f"image.{kind}", count)
        harness.frame(raw_image(clip[t % len(clip)], header(10 * t)))  # still serving, right after
    eight_k = np.zeros((4320, 7680), dtype=np.uint8)
    mask, payload = harness.frame(raw_image(eight_k, header(100), encoding="mono8"), timeout=120, retry_s=60)
    assert (mask.height, mask.width) == (4320, 7680) and payload["targets"] == []
    # Stamps going backwards: a stale frame is dropped (no mask), the next one is served.
    for count in (1, 2):
        send_and_count(raw_image(clip[2], header(99)), "image.stale_stamp", count)
    harness.frame(raw_image(clip[3], header(101)))
    assert not harness._find("masks", header(99).stamp)
    # Commands: empty, 1 MB, binary, unicode, then a flood of 100 per second.
    for text in ("", "   ", "x" * 1_000_000, "x" * 1_000_000, bytes(range(1, 32)).decode(), "\x07\x08 mug"):
        harness.command(text)
    harness.command("把蓝色的杯子递给我 🙂")
    wait_until(lambda: harness.answers() == ["Sure, [SEG]."], "the answer to the unicode command")
    for n in range(100):
        harness.command(f"find the blue mug number {n}")
        time.sleep(0.01)
    harness.frame(raw_image(clip[4], header(102)))  # serving goes on
    wait_until(lambda: diagnostic_value(harness, "problems.command.dropped"), "dropped commands in diagnostics")

    kinds = [f"image.{kind}" for kind in bad_images] + [
        "image.stale_stamp", "command.empty", "command.too_long", "command.binary"
    ]
    lines = wait_until(lambda: harness.log_lines("bad.sa2va"), "log lines")
    for kind in kinds:
        source, _, short = kind.partition(".")
        matching = [line for line in lines if line.startswith(f"{source} refused ({short}):")]
        assert len(matching) == 1, (kind, matching)
    assert len([line for line in lines if line.startswith("commands arrive faster")]) == 1
    counts = wait_until(lambda: diagnostic_counts(harness, kinds), "every problem in diagnostics")
    assert counts == {**{f"image.{kind}": 2 for kind in bad_images}, "image.stale_stamp": 2,
                      "command.empty": 2, "command.too_long": 2, "command.binary": 2}
    assert int(diagnostic_value(harness, "problems.command.dropped")) > 0


def latest_status(harness: Harness) -> Any:
    for message in reversed(harness.inbox["diagnostics"]):
        for status in message.status:
            if status.name == f"{harness.namespace}/sa2va: pipeline":
                return status
    return None


def diagnostic_value(harness: Harness, key: str) -> str | None:
    status = latest_status(harness)
    return next((kv.value for kv in status.values if kv.key == key), None) if status else None


def diagnostic_counts(harness: Harness, kinds: list[str]) -> dict[str, int] | None:
    values = {kind: diagnostic_value(harness, f"problems.{kind}") for kind in kinds}
    return {kind: int(value) for kind, value in values.items()} if all(values.values()) else None


def test_silence_on_the_image_topic_is_explained_with_the_qos_mismatch(
    harness_factory: Callable, node_factory: Callable, clip: list[np.ndarray]
) -> None:
    strict = [Parameter("image_qos.reliability", value="reliable"), Parameter("no_image_warning_s", value=0.5),
              Parameter("diagnostics_period_s", value=0.2)]
    harness = harness_factory("/silent")  # publishes best effort: a reliable reader never matches it
    node = node_factory("/silent", strict)
    harness.add(node)
    for t in range(5):
        harness.send(raw_image(clip[0], header(t)))
        time.sleep(0.1)
    lines = wait_until(
        lambda: [line for line in harness.log_lines("silent.sa2va") if line.startswith("no image on /silent/image")],
        "the no-image warning",
    )
    assert len(lines) == 1 and "incompatible QoS" in lines[0] and "harness_silent" in lines[0]
    status = wait_until(lambda: (s := latest_status(harness)) and s.level == bytes([1]) and s, "a WARN status")
    assert "no image for" in status.message and float(diagnostic_value(harness, "node.seconds_without_image")) > 0.5


def test_configure_refuses_bad_parameters_with_one_line_each(
    harness_factory: Callable, node_factory: Callable
) -> None:
    harness = harness_factory("/params")
    bad = [Parameter("keyframes", value=0), Parameter("device", value="gpu"),
           Parameter("image_transport", value="theora"), Parameter("lost_after_frames", value="five"),
           Parameter("model_path", value="/nonexistent/checkpoint")]
    node = node_factory("/params", bad, activate=False)
    harness.add(node)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    lines = wait_until(lambda: len(harness.log_lines("params.sa2va")) >= 5 and harness.log_lines("params.sa2va"),
                       "five error lines")
    for name in ("keyframes", "device", "image_transport", "lost_after_frames", "model_path"):
        assert len([line for line in lines if line.startswith(f"parameter '{name}'")]) == 1, name


def test_the_backend_is_loaded_at_configure_and_a_failure_is_one_line(
    harness_factory: Callable, node_factory: Callable, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An empty engine cache means minutes of export/build: configure pays it, activate reuses the parts."""
    import sa2va_ros.ros.node as node_module
    from sa2va_ros.runtime import BackendUnavailableError

    calls = []
    real_load_parts = node_module.load_parts

    def recording_load_parts(sam, backend, engines_dir, **options):  # records the call, loads the torch parts
        calls.append((backend, engines_dir))
        return real_load_parts(sam, "torch", None)

    monkeypatch.setattr(node_module, "load_parts", recording_load_parts)
    harness = harness_factory("/backend")
    params = [Parameter("backend", value="onnxruntime"), Parameter("engines_dir", value=str(tmp_path))]
    node = node_factory("/backend", params, activate=False)
    harness.add(node)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert calls == [("onnxruntime", str(tmp_path))]
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert len(calls) == 1  # activate builds the tracker on the parts loaded at configure

    def broken_load_parts(sam, backend, engines_dir, **options):
        raise BackendUnavailableError("backend 'onnxruntime' needs the onnxruntime package")

    monkeypatch.setattr(node_module, "load_parts", broken_load_parts)
    other = node_factory("/backend_broken", params, activate=False)
    harness.add(other)
    assert other.trigger_configure() == TransitionCallbackReturn.FAILURE
    errors = wait_until(lambda: [line for line in harness.log_lines("backend_broken.sa2va")
                                 if line.startswith("could not")], "the error line")
    assert errors == ["could not load the 'onnxruntime' backend: BackendUnavailableError: "
                     "backend 'onnxruntime' needs the onnxruntime package"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"keyframes": 0}, ["parameter 'keyframes' = 0: must be >= 1"]),
        ({"keyframes": 2.5}, ["parameter 'keyframes' = 2.5: must be an integer"]),
        ({"reground_interval_s": True}, ["parameter 'reground_interval_s' = True: must be a number"]),
        ({"image_qos.reliability": "sometimes"},
         ["parameter 'image_qos.reliability' = 'sometimes': must be one of: best_effort, reliable"]),
        ({"max_targets": 300}, ["parameter 'max_targets' = 300: mono8 masks hold ids up to 255; lower it or set "
                                "mask_encoding to mono16"]),
        ({"device": "tpu", "publish_overlay": "yes"},
         ["parameter 'device' = 'tpu': must be auto, cpu, cuda or cuda:N",
          "parameter 'publish_overlay' = 'yes': must be a boolean (true/false)"]),
        ({"colour": "blue"}, ["unknown parameter 'colour'"]),
    ],
)
def test_parameter_validation_messages(values: dict, expected: list[str]) -> None:
    with pytest.raises(ParameterError) as refused:
        validate_parameters(values)
    assert refused.value.problems == expected


def test_valid_parameters_map_onto_the_pipeline_and_tracker() -> None:
    params = validate_parameters({"lost_score_threshold": 1, "mask_encoding": "mono16", "catch_up_frames": 4})
    assert params.lost_score_threshold == 1.0 and isinstance(params.lost_score_threshold, float)
    assert params.pipeline_config().max_target_id == 65535 and params.tracker_config().feature_buffer == 4
    assert params.qos("image_qos") == ("best_effort", "volatile", 1)


# ---------------------------------------------------------------- separate process


@contextlib.contextmanager
def node_process(namespace: str, *ros_args: str) -> Iterator[subprocess.Popen]:
    """``python -m sa2va_ros.ros.node`` with the package's parameter file (+ ``ros_args``) in ``namespace``; stopped
    (killed if it must be) on exit, after which its output must name the model and hold no traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sa2va_ros.ros.node", "--ros-args", "--params-file", str(REPO / "config" / "sa2va.yaml"),
         "-p", "device:=cpu", "-p", "torch_threads:=1", "-r", f"__ns:={namespace}", *ros_args],
        # other test modules set ROS_DOMAIN_ID at import too: give the child this module's domain explicitly
        env={**os.environ, "PYTHONPATH": str(REPO), "ROS_DOMAIN_ID": str(ROS_DOMAIN_ID),
             "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=WAIT_S)[0]
    assert "model loaded from" in output and "Traceback" not in output, output


def test_the_node_as_a_separate_process_serves_answers_and_follows_lifecycle_requests(
    harness_factory: Callable, ros_context: Context, scripted: ScriptedModel, clip: list[np.ndarray],
    tmp_path: Path,
) -> None:
    scripted.model.save_pretrained(tmp_path / "tiny")
    with node_process("/process", "-p", f"model_path:={tmp_path / 'tiny'}", "-p", "max_new_tokens:=6",
                      "-r", "image:=camera/image") as process:
        harness = harness_factory("/process")
        camera = harness.node.create_publisher(Image, "camera/image", qos_profile_from_preset("sensor_data"))
        harness.image_pub = camera  # the node reads /process/camera/image through its remapping
        mask, payload = harness.frame(raw_image(clip[0], header(0)), timeout=120)  # the process starts first
        assert payload["targets"] == [] and mask.header.frame_id == FRAME_ID
        harness.command("what is on the table?")
        wait_until(lambda: harness.answers(), "the answer")
        harness.frame(raw_image(clip[1], header(1)))

        assert lifecycle_state(harness) == State.PRIMARY_STATE_ACTIVE
        change = harness.node.create_client(ChangeState, "sa2va/change_state")
        request = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))
        assert call(change, request).success
        assert lifecycle_state(harness) == State.PRIMARY_STATE_INACTIVE
        wait_until(lambda: camera.get_subscription_count() == 0, "the image subscription to close")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT_S) == 0


def call(client: Any, request: Any) -> Any:
    wait_until(lambda: client.service_is_ready(), f"the service {client.srv_name}")
    future = client.call_async(request)
    return wait_until(lambda: future.done() and future.result(), f"a reply from {client.srv_name}")


def lifecycle_state(harness: Harness) -> int:
    client = harness.node.create_client(GetState, "sa2va/get_state")
    try:
        return call(client, GetState.Request()).current_state.id
    finally:
        harness.node.destroy_client(client)
