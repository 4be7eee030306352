"""Live bag evaluation: replay a bag over real rclpy through the sa2va node and score what it publishes.

Where ``sa2va_ros.eval.bags.evaluate_bag`` drives the ``Pipeline`` directly, this measures the node itself: DDS
transport, its callbacks, its latest-frame-wins mailbox and frame thread. A player node publishes the bag's camera
frames and commands on the node's ``image`` (or ``image/compressed``) and ``command`` topics and records its
``masks``, ``targets``, ``answer`` and ``/diagnostics``; masks are matched to ground truth by header stamp (the
node copies the camera header). The summary, report and result bag are the offline ones (``mode`` live_*)::

    evaluate_bag_live("clip", BagTopics(), "out")                                   # a node started in-process
    evaluate_bag_live("clip", BagTopics(), "out", running_node=True, namespace="/robot")   # one already running

Pacing: ``bag_rate`` publishes at the bag's rate (slow processing drops frames in the node's mailbox, as live);
``lockstep`` publishes a frame once the previous one's mask arrived, and after a command waits for its answer
before the next frame (as fast as the node keeps up; accuracy then does not depend on the machine's speed).
Latency is wall time from publishing a frame to receiving its mask. A frame whose mask never arrives is dropped.

The in-process node gets its own rclpy context (``ROS_DOMAIN_ID`` and discovery settings from the environment)
and executor thread; ``ros_args`` (e.g. ``--params-file config/sa2va.yaml``) and ``node_parameters`` configure it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from sa2va_ros.eval.bags import (
    GROUNDING_WAIT_S,
    BagMessage,
    BagTopics,
    ReplayRecord,
    ResultBagWriter,
    play_at_bag_rate,
    read_bag_messages,
    result_bag_path,
    thumbnail_ordinals,
    typestore_with_results,
    write_replay_summary,
)
from sa2va_ros.ros.node import (
    ANSWER_TOPIC,
    COMMAND_TOPIC,
    COMPRESSED_IMAGE_TOPIC,
    DIAGNOSTICS_TOPIC,
    IMAGE_TOPIC,
    MASKS_TOPIC,
    NODE_NAME,
    TARGETS_TOPIC,
    ModelLoader,
    Sa2VANode,
    load_model,
)
from sa2va_ros.ros_io import (
    decode_image,
    decode_label_mask,
    qos_profile_from_params,
    stamp_to_ns,
    subscription_problems,
)
from sa2va_ros.targets_schema import NANOSECONDS_PER_SECOND, MaskGeometry, TargetEntry, parse_targets

Pace = Literal["bag_rate", "lockstep"]
PLAYER_NODE = "sa2va_bag_player"
IN_PROCESS_NAMESPACE = "/sa2va_bag_eval"  # where the in-process node lives unless told otherwise
DISCOVERY_TIMEOUT_S = 30.0
FRAME_TIMEOUT_S = 60.0  # the longest wait for one frame's mask (lockstep, and the last frame of a bag)
DIAGNOSTICS_WAIT_S = 3.0  # after the last mask: wait this long for a /diagnostics message written after it
OUTPUT_DEPTH = 100  # our subscriptions keep this many outputs, so none is lost while the callbacks run


@dataclass
class _Inbox:
    """What the node published, stored as received (decoded after the run); guarded by ``changed``."""

    changed: threading.Condition = field(default_factory=threading.Condition)
    masks: dict[int, tuple[Image, float]] = field(default_factory=dict)  # stamp -> message, received (monotonic)
    targets: list[str] = field(default_factory=list)  # targets JSON payloads
    answers: list[tuple[float, str]] = field(default_factory=list)  # received (monotonic), text
    diagnostics: dict[str, str] = field(default_factory=dict)  # the latest pipeline status values
    diagnostics_at: float = 0.0

    def add_mask(self, msg: Image) -> None:
        with self.changed:
            self.masks[stamp_to_ns(msg.header.stamp)] = (msg, time.monotonic())
            self.changed.notify_all()

    def add_targets(self, msg: String) -> None:
        with self.changed:
            self.targets.append(msg.data)

    def add_answer(self, msg: String) -> None:
        with self.changed:
            self.answers.append((time.monotonic(), msg.data))
            self.changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(condition, timeout)


class _Player:
    """The camera / operator side: publishes into the node's namespace and records its outputs."""

    def __init__(self, context: Context, namespace: str, compressed: bool) -> None:
        self.node = Node(PLAYER_NODE, namespace=namespace, context=context)
        self.inbox = _Inbox()
        self.prefix = namespace.rstrip("/")
        self.node_status_name = f"{self.prefix}/{NODE_NAME}: pipeline"
        self.image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        # Reliable publishers match best-effort and reliable subscriptions alike (the node's image QoS is a parameter).
        self.image_pub = self.node.create_publisher(
            CompressedImage if compressed else Image, COMPRESSED_IMAGE_TOPIC if compressed else IMAGE_TOPIC,
            qos_profile_from_params("reliable", "volatile", 5),
        )
        self.command_pub = self.node.create_publisher(String, COMMAND_TOPIC, qos_profile_from_params(
            "reliable", "volatile", 10))
        output_qos = qos_profile_from_params("reliable", "volatile", OUTPUT_DEPTH)
        self.outputs = [
            self.node.create_subscription(Image, MASKS_TOPIC, self.inbox.add_mask, output_qos),
            self.node.create_subscription(String, TARGETS_TOPIC, self.inbox.add_targets, output_qos),
            self.node.create_subscription(String, ANSWER_TOPIC, self.inbox.add_answer, output_qos),
        ]
        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, 10)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == self.node_status_name:
                with self.inbox.changed:
                    self.inbox.diagnostics = {item.key: item.value for item in status.values}
                    self.inbox.diagnostics_at = time.monotonic()
                    self.inbox.changed.notify_all()

    def wait_for_node(self, timeout: float) -> None:
        """Wait until the node's subscriptions and publishers are matched; a clear error names what is missing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.image_pub.get_subscription_count() and self.command_pub.get_subscription_count()
                    and all(sub.get_publisher_count() for sub in self.outputs)):
                return
            time.sleep(0.05)
        missing = [f"nothing subscribes to {pub.topic_name}" for pub in (self.image_pub, self.command_pub)
                   if not pub.get_subscription_count()]
        missing += [problem for sub in self.outputs if not sub.get_publisher_count()
                    for problem in subscription_problems(self.node, sub) or [f"no match on {sub.topic_name}"]]
        raise TimeoutError(f"no sa2va node answered in {self.prefix or '/'} within {timeout:.0f} s: "
                           + "; ".join(missing))


@contextmanager
def _spinning(context: Context, nodes: Sequence[Node]) -> Iterator[None]:
    """Spin ``nodes`` in one executor thread each, until the block ends."""
    executors = []
    for node in nodes:
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        thread = threading.Thread(target=executor.spin, name=f"spin-{node.get_name()}", daemon=True)
        thread.start()
        executors.append((executor, thread))
    try:
        yield
    finally:
        for executor, thread in executors:
            executor.shutdown(timeout_sec=5)
            thread.join(5)


@contextmanager
def _node_under_test(context: Context, namespace: str, compressed: bool, running_node: bool,
                     model_loader: ModelLoader, node_parameters: Mapping[str, Any]) -> Iterator[Sa2VANode | None]:
    """A configured, active sa2va node in ``namespace``, released and destroyed afterwards (None: one runs)."""
    if running_node:
        yield None
        return
    overrides = [Parameter(name, value=value) for name, value in node_parameters.items()]
    overrides.append(Parameter("image_transport", value="compressed" if compressed else "raw"))
    node = Sa2VANode(model_loader=model_loader, namespace=namespace, context=context, parameter_overrides=overrides)
    try:
        for transition in (node.trigger_configure, node.trigger_activate):
            if transition() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError(f"the sa2va node failed to {transition.__name__.removeprefix('trigger_')} "
                                   "(its log says why)")
        yield node
    finally:
        node.release()
        node.destroy_node()


def _image_is_compressed(bag_path: str | Path, topics: BagTopics) -> tuple[bool, int]:
    """Whether the bag's camera topic holds CompressedImage, and how many frames it holds."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(bag_path)], default_typestore=typestore_with_results()) as reader:
        connections = [c for c in reader.connections if c.topic == topics.image]
        if not connections:
            raise ValueError(f"{bag_path}: no topic {topics.image}")
        return connections[0].msgtype == "sensor_msgs/msg/CompressedImage", sum(c.msgcount for c in connections)


@dataclass
class _Published:
    """What the player sent: per frame stamp the publish time, and the report thumbnails' RGB frames."""

    frames: dict[int, float] = field(default_factory=dict)  # stamp -> published at (monotonic)
    last_stamp: int | None = None
    thumbnails: dict[int, np.ndarray] = field(default_factory=dict)  # stamp -> H×W×3 RGB


def evaluate_bag_live(
    bag_path: str | Path,
    topics: BagTopics,
    out_dir: str | Path,
    *,
    pace: Pace = "bag_rate",
    namespace: str | None = None,
    running_node: bool = False,
    model_loader: ModelLoader = load_model,
    node_parameters: Mapping[str, Any] | None = None,
    ros_args: Sequence[str] = (),
    discovery_timeout_s: float = DISCOVERY_TIMEOUT_S,
    frame_timeout_s: float = FRAME_TIMEOUT_S,
    answer_timeout_s: float = GROUNDING_WAIT_S,
) -> dict[str, Any]:
    """Replay a bag through the sa2va node over rclpy; write ``summary.json``, ``report.html`` and the result bag
    of what the node published into ``out_dir``; return the summary.

    By default a node is started in-process in ``namespace`` (default ``IN_PROCESS_NAMESPACE``) with
    ``model_loader`` and ``node_parameters``; ``running_node`` uses one already in the graph (default namespace
    ``/``) instead. ``ros_args`` go to this process's rclpy context (e.g. ``["--params-file", "sa2va.yaml"]``).
    """
    if pace not in ("bag_rate", "lockstep"):
        raise ValueError(f"pace must be bag_rate or lockstep, got {pace!r}")
    namespace = namespace or ("/" if running_node else IN_PROCESS_NAMESPACE)
    result_bag = result_bag_path(out_dir)
    compressed, frame_count = _image_is_compressed(bag_path, topics)
    thumbnails = thumbnail_ordinals(frame_count)
    record, published = ReplayRecord(), _Published()
    context = Context()
    rclpy.init(context=context, args=[PLAYER_NODE, "--ros-args", *ros_args] if ros_args else [PLAYER_NODE])
    try:
        with _node_under_test(context, namespace, compressed, running_node, model_loader,
                              node_parameters or {}) as node:
            player = _Player(context, namespace, compressed)
            try:
                with _spinning(context, [player.node] + ([node] if node is not None else [])):
                    player.wait_for_node(discovery_timeout_s)
                    started = time.monotonic()
                    _play(bag_path, topics, player, record, published, thumbnails, pace, frame_timeout_s,
                          answer_timeout_s)
                    _drain(player.inbox, published, frame_timeout_s)
                    wall_s = time.monotonic() - started
            finally:
                player.node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    _collect(player.inbox, published, record, result_bag)
    stats = {name: _number(player.inbox.diagnostics.get(f"pipeline.{name}"))
             for name in ("grounding_ms_p50", "first_mask_ms_p50")}
    extra = {"node": "running" if running_node else "in-process", "namespace": namespace}
    return write_replay_summary(out_dir, bag_path, record, f"live_{pace}", stats, wall_s, extra)


def _play(bag_path: str | Path, topics: BagTopics, player: _Player, record: ReplayRecord, published: _Published,
          thumbnails: set[int], pace: Pace, frame_timeout_s: float, answer_timeout_s: float) -> None:
    """Publish the bag's commands and frames (paced), keep its ground truth."""
    store = typestore_with_results()
    inbox = player.inbox
    awaiting_answer = False

    def handle(message: BagMessage) -> None:
        nonlocal awaiting_answer
        if message.kind == "ground_truth":
            record.gt_labels[stamp_to_ns(message.msg.header.stamp)] = decode_label_mask(message.msg)
            return
        if message.kind == "command":
            player.command_pub.publish(String(data=message.msg.data))
            record.command_stamps_ns.append(message.log_time_ns)
            awaiting_answer = True
            return
        stamp = stamp_to_ns(message.msg.header.stamp)
        if record.frames_in_bag in thumbnails:
            published.thumbnails[stamp] = decode_image(message.msg)
        record.frames_in_bag += 1
        cdr = bytes(store.serialize_cdr(message.msg, player.image_type))  # the bag's message, published unchanged
        published.frames[stamp] = time.monotonic()
        published.last_stamp = stamp
        player.image_pub.publish(cdr)
        if pace == "lockstep":
            inbox.wait_for(lambda: stamp in inbox.masks, frame_timeout_s)  # no mask in time: counted as dropped
            if awaiting_answer:
                commands = len(record.command_stamps_ns)
                if not inbox.wait_for(lambda: len(inbox.answers) >= commands, answer_timeout_s):
                    raise TimeoutError(f"no answer from the node within {answer_timeout_s} s of a command")
                awaiting_answer = False

    messages = read_bag_messages(bag_path, topics)
    if pace == "bag_rate":
        play_at_bag_rate(messages, handle)
    else:
        for message in messages:
            handle(message)


def _drain(inbox: _Inbox, published: _Published, frame_timeout_s: float) -> None:
    """Wait for the last frame's mask (a mailbox never drops its newest frame), then for fresh diagnostics."""
    last = published.last_stamp
    if last is None:
        return
    inbox.wait_for(lambda: last in inbox.masks, frame_timeout_s)
    with inbox.changed:
        received = max((at for _, at in inbox.masks.values()), default=time.monotonic())
    inbox.wait_for(lambda: inbox.diagnostics_at > received, DIAGNOSTICS_WAIT_S)


def _collect(inbox: _Inbox, published: _Published, record: ReplayRecord, result_bag: Path) -> None:
    """Fill the record from what arrived (masks matched by stamp) and write the result bag of the node's outputs."""
    stamps = sorted(stamp for stamp in inbox.masks if stamp in published.frames)
    answers = sorted(inbox.answers)
    targets_by_stamp: dict[int, list[dict[str, Any]]] = {}
    for text in inbox.targets:
        payload = parse_targets(text)
        targets_by_stamp[payload["stamp"]["sec"] * NANOSECONDS_PER_SECOND + payload["stamp"]["nanosec"]] = (
            payload["targets"])
    writer = ResultBagWriter(result_bag)
    try:
        for position, stamp in enumerate(stamps):
            msg, received_at = inbox.masks[stamp]
            labels = decode_label_mask(msg)  # H×W: 0 = background, k = target k
            latency_s = received_at - published.frames[stamp]
            record.result_stamps.append(stamp)
            record.result_labels.append(labels)
            record.latencies_s.append(latency_s)
            if stamp in published.thumbnails:
                record.thumbnails.append((stamp, published.thumbnails[stamp], labels))
            last = position == len(stamps) - 1
            ready = [text for at, text in answers if at <= received_at or last]  # answers ready with this frame
            answers = answers[len(ready):]
            targets = _target_entries(targets_by_stamp.get(stamp, []))
            writer.write(stamp, msg.header.frame_id, labels, targets, ready, latency_s * 1000)
    finally:
        writer.close()
    record.dropped = len(published.frames) - len(stamps)


def _target_entries(targets: list[dict[str, Any]]) -> list[TargetEntry]:
    """The entries of one ``targets`` payload (schema in ``sa2va_ros.targets_schema``)."""
    return [
        TargetEntry(t["id"], t["phrase"], t["state"], t["score"],
                    MaskGeometry(tuple(t["bbox"]) if t["bbox"] else None,
                                 tuple(t["centroid"]) if t["centroid"] else None, t["area"]))
        for t in targets
    ]


def _number(text: str | None) -> float | None:
    """A /diagnostics value as a float ("n/a" and missing values: None)."""
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
