"""ROS 2 bags for evaluation: write referring clips as bags, replay bags through the ``Pipeline``, score them.

Pure Python on ``rosbags`` (sqlite3 and MCAP, no ROS install), so what the node runs on the robot is measured
offline on recorded data::

    write_synthetic_bag("clip", seed=3, frames=30)                 # camera, command and ground-truth topics
    write_dataset_bag("clip2", "data/mevis/valid_u", "vid", 0)     # a benchmark video and one of its expressions
    summary = evaluate_bag("clip", model, BagTopics(), "out")      # out/summary.json, results/, report.html

Replay modes: by default every frame is pushed, and after a command the replay waits for its grounding before
the next frame ("lockstep"), so accuracy does not depend on the machine's speed. ``rate_limited`` replays at the
bag's rate with the node's latest-frame-wins mailbox: slow processing drops frames and delays masks, as live.
Outputs are matched to ground truth by header stamp; a ground-truth frame whose camera frame was dropped is
scored against the latest earlier result (what a planner would hold then). The live replay through the running
node (``sa2va_ros.ros.live_replay``, rclpy) fills the same ``ReplayRecord`` and writes the same summary and report.
"""

from __future__ import annotations

import base64
import bisect
import html
import io
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from sa2va_ros.eval.metrics import video_boundary_f_measure, video_region_similarity
from sa2va_ros.pipeline import FrameRejectedError, Grounder, LatestFrameSlot, Pipeline, PipelineConfig
from sa2va_ros.ros_io import decode_image, decode_label_mask, stamp_to_ns
from sa2va_ros.targets_schema import TargetEntry, split_stamp_ns
from sa2va_ros.tracking import StreamingTracker, TrackerConfig

StorageName = Literal["sqlite3", "mcap"]
FRAME_RESULT_TYPE = "sa2va_ros/msg/FrameResult"
RESULT_BAG_NAME = "results"  # <out>/results/ (a rosbag2 directory) holding results.mcap
FIRST_STAMP_NS = 1_700_000_000 * 1_000_000_000  # synthetic bags start here (a plausible wall-clock time)
GROUNDING_WAIT_S = 600.0  # lockstep replay: the longest wait for one grounding before giving up
THUMBNAILS = 4


@dataclass(frozen=True)
class BagTopics:
    """The topics a replay reads (and the bag writers write)."""

    image: str = "/camera/image"
    command: str = "/command"
    ground_truth: str = "/ground_truth/masks"


# ---------------------------------------------------------------------------------------------- types


def msg_directory() -> Path:
    """The package's msg/ folder: beside the package in a source tree, under share/ once installed."""
    candidates = [
        Path(__file__).resolve().parents[2] / "msg",
        Path(sys.prefix) / "share" / "sa2va_ros" / "msg",
    ]
    for candidate in candidates:
        if (candidate / "FrameResult.msg").is_file():
            return candidate
    raise FileNotFoundError(f"sa2va_ros msg definitions not found in {', '.join(map(str, candidates))}")


def typestore_with_results() -> Any:
    """A ROS 2 (Kilted) rosbags typestore with sa2va_ros/msg/Target and FrameResult registered at runtime."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for path in sorted(msg_directory().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"sa2va_ros/msg/{path.stem}"))
    store.register(types)
    return store


def _header(store: Any, stamp_ns: int, frame_id: str) -> Any:
    sec, nanosec = split_stamp_ns(stamp_ns)
    time_type = store.types["builtin_interfaces/msg/Time"]
    return store.types["std_msgs/msg/Header"](stamp=time_type(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _raw_image(store: Any, header: Any, pixels: np.ndarray, encoding: str) -> Any:
    """A rosbags sensor_msgs/Image from H×W or H×W×C pixels (little-endian, tightly packed rows)."""
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    return store.types["sensor_msgs/msg/Image"](
        header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
        step=pixels.strides[0], data=pixels.view(np.uint8).reshape(-1),
    )


# ---------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class BagInfo:
    """What a bag writer wrote: the command, its bag time, the frame stamps and the ground-truth target count."""

    path: Path
    command: str
    command_stamp_ns: int
    frame_stamps_ns: tuple[int, ...]
    targets: int


def write_referring_bag(
    out: str | Path,
    frames: Iterable[np.ndarray],
    command: str,
    ground_truth: Iterable[np.ndarray] | None,
    *,
    targets: int,
    compressed: bool = False,
    command_time_s: float = 0.0,
    rate_hz: float = 10.0,
    storage: StorageName = "sqlite3",
    topics: BagTopics = BagTopics(),
    frame_id: str = "camera",
) -> BagInfo:
    """Write a referring clip as a ROS 2 bag directory: camera frames (H×W×3 RGB, taken one at a time) as rgb8
    Image or JPEG CompressedImage at ``rate_hz``, ``command`` as a String ``command_time_s`` after the first frame,
    and one ground-truth label image per frame (uint8 H×W, 0 = background, k = target k; ``targets`` of them) as
    mono8 with the frame's header stamp. ``ground_truth`` None writes no ground-truth topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if rate_hz <= 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate_hz}")
    if command_time_s < 0:
        raise ValueError(f"command time must be >= 0 s, got {command_time_s}")
    if Path(out).exists():
        raise FileExistsError(f"{out} exists already; a bag is never overwritten")
    store = get_typestore(Stores.ROS2_KILTED)
    command_stamp = FIRST_STAMP_NS + round(command_time_s * 1e9)
    image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    pairs = zip(frames, ground_truth, strict=True) if ground_truth is not None else ((f, None) for f in frames)
    stamps: list[int] = []
    with Writer(Path(out), version=9, storage_plugin=plugin) as writer:
        command_conn = writer.add_connection(topics.command, "std_msgs/msg/String", typestore=store)
        image_conn = writer.add_connection(topics.image, image_type, typestore=store)
        if ground_truth is not None:
            gt_conn = writer.add_connection(topics.ground_truth, "sensor_msgs/msg/Image", typestore=store)
        message = store.types["std_msgs/msg/String"](data=command)
        writer.write(command_conn, command_stamp, store.serialize_cdr(message, "std_msgs/msg/String"))
        for t, (frame, labels) in enumerate(pairs):
            stamp = FIRST_STAMP_NS + round(t * 1e9 / rate_hz)
            stamps.append(stamp)
            header = _header(store, stamp, frame_id)
            if compressed:
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise RuntimeError(f"JPEG encoding of frame {t} failed")
                image = store.types[image_type](header=header, format="jpeg", data=jpeg.reshape(-1))
            else:
                image = _raw_image(store, header, frame, "rgb8")
            writer.write(image_conn, stamp, store.serialize_cdr(image, image_type))
            if labels is not None:
                gt = _raw_image(store, header, np.asarray(labels, dtype=np.uint8), "mono8")
                writer.write(gt_conn, stamp, store.serialize_cdr(gt, "sensor_msgs/msg/Image"))
    return BagInfo(Path(out), command, command_stamp, tuple(stamps), targets)


def write_synthetic_bag(
    out: str | Path,
    seed: int,
    frames: int = 30,
    size: tuple[int, int] = (240, 320),
    *,
    compressed: bool = False,
    command_time_s: float = 0.0,
    rate_hz: float = 10.0,
    storage: StorageName = "sqlite3",
    topics: BagTopics = BagTopics(),
    split: str = "test",
    kind: str | None = "command",
    frame_id: str = "camera",
) -> BagInfo:
    """A synthetic referring clip as a bag (``write_referring_bag``): the clip's prompt is the command, target k of
    its answer is label k of the ground truth."""
    from sa2va_ros.synthetic import sample_referring_video

    clip = sample_referring_video(seed, split, frames, size, kind=kind)

    def labels() -> Iterator[np.ndarray]:
        for t in range(frames):
            image = np.zeros(size, dtype=np.uint8)  # H×W: 0 = background, k = k-th target of the answer
            for k, target_masks in enumerate(clip.target_masks, start=1):
                image[target_masks[t]] = k
            yield image

    return write_referring_bag(
        out, clip.frames, clip.prompt, labels(), targets=len(clip.target_masks), compressed=compressed,
        command_time_s=command_time_s, rate_hz=rate_hz, storage=storage, topics=topics, frame_id=frame_id,
    )


def write_dataset_bag(
    out: str | Path,
    dataset_dir: str | Path,
    video_id: str,
    expression_index: int = 0,
    *,
    split: str | None = None,
    compressed: bool = False,
    command_time_s: float = 0.0,
    rate_hz: float = 10.0,
    storage: StorageName = "sqlite3",
    topics: BagTopics = BagTopics(),
    frame_id: str = "camera",
) -> BagInfo:
    """One expression of a MeViS / ReVOS / Ref-DAVIS17 / Ref-SAV video as a bag (``write_referring_bag``): the
    video's frames, the command ``video_instruction(expression)`` (the official video prompt, e.g. "Please segment
    the red ball.") and the expression's ground truth (the union of its objects) as label 1. ``expression_index``
    counts the video's expressions in the reader's order (sorted expression ids); ``split`` as ``open_benchmark``.
    """
    from sa2va_ros.eval.datasets import ReferringVideoDataset
    from sa2va_ros.eval.run import open_benchmark, video_instruction

    dataset, format_name = open_benchmark(dataset_dir, split=split)
    if not isinstance(dataset, ReferringVideoDataset):
        raise ValueError(f"{dataset_dir} is an image benchmark ({format_name}); a bag needs a video benchmark")
    expressions = [sample for sample in dataset if sample.video_id == video_id]
    if not expressions:
        known = dataset.video_ids
        listed = ", ".join(known[:10]) + (f", ... ({len(known)} videos)" if len(known) > 10 else "")
        raise ValueError(f"no video {video_id!r} in {dataset_dir}; videos: {listed}")
    if not 0 <= expression_index < len(expressions):
        listed = "; ".join(f"{i}: {sample.expression!r}" for i, sample in enumerate(expressions))
        raise ValueError(f"video {video_id!r} has {len(expressions)} expression(s): {listed}")
    sample = expressions[expression_index]
    ground_truth = None
    if sample.has_ground_truth:
        ground_truth = (sample.load_mask(t).astype(np.uint8) for t in range(sample.num_frames))  # H×W, 1 = target
    return write_referring_bag(
        out, sample.iter_frames(), video_instruction(sample.expression), ground_truth,
        targets=1 if sample.has_ground_truth else 0, compressed=compressed, command_time_s=command_time_s,
        rate_hz=rate_hz, storage=storage, topics=topics, frame_id=frame_id,
    )


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class BagMessage:
    """One message of a replay: a camera frame (header kept), a command, or a ground-truth label image."""

    kind: Literal["image", "command", "ground_truth"]
    log_time_ns: int
    msg: Any


def read_bag_messages(bag_path: str | Path, topics: BagTopics) -> Iterator[BagMessage]:
    """The bag's camera, command and ground-truth messages in log-time order (sqlite3 or MCAP, any ROS 2 bag)."""
    from rosbags.highlevel import AnyReader

    kinds = {topics.image: "image", topics.command: "command", topics.ground_truth: "ground_truth"}
    with AnyReader([Path(bag_path)], default_typestore=typestore_with_results()) as reader:
        present = {c.topic for c in reader.connections}
        missing = [t for t in (topics.image, topics.command) if t not in present]
        if missing:
            raise ValueError(
                f"{bag_path}: topic(s) {', '.join(missing)} not in the bag; it has {', '.join(sorted(present))}"
            )
        connections = [c for c in reader.connections if c.topic in kinds]
        for connection, log_time, raw in reader.messages(connections=connections):
            yield BagMessage(kinds[connection.topic], log_time, reader.deserialize(raw, connection.msgtype))


# ---------------------------------------------------------------------------------------------- scoring


def match_to_ground_truth(gt_stamps: Sequence[int], result_stamps: Sequence[int]) -> list[tuple[int | None, bool]]:
    """For each ground-truth stamp: (index of the result with that stamp, False), else (the latest earlier
    result, True = held over a dropped frame), else (None, False). ``result_stamps`` must be ascending."""
    matches: list[tuple[int | None, bool]] = []
    for stamp in gt_stamps:
        position = bisect.bisect_right(result_stamps, stamp)
        if position == 0:
            matches.append((None, False))
        else:
            matches.append((position - 1, result_stamps[position - 1] != stamp))
    return matches


@dataclass(frozen=True)
class FrameScores:
    """Per scored frame: stamp, J and F of the predicted foreground (all targets) against ground truth."""

    stamps_ns: np.ndarray  # [T] int64
    j: np.ndarray  # [T]
    f: np.ndarray  # [T]
    held: int  # frames scored against an earlier frame's result (their own frame was dropped)
    unmatched: int  # frames with no result at or before them (scored against an empty prediction)


def score_frames(
    gt_labels: dict[int, np.ndarray], result_stamps: Sequence[int], result_labels: Sequence[np.ndarray]
) -> FrameScores:
    """J and F per ground-truth frame (foreground = any target, as MeViS scores multi-object expressions)."""
    gt_stamps = sorted(gt_labels)
    matches = match_to_ground_truth(gt_stamps, result_stamps)
    preds, gts = [], []
    for stamp, (index, _) in zip(gt_stamps, matches, strict=True):
        gt = gt_labels[stamp] > 0  # H×W
        pred = result_labels[index] > 0 if index is not None else np.zeros_like(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"result mask {pred.shape} and ground truth {gt.shape} differ at stamp {stamp}")
        preds.append(pred)
        gts.append(gt)
    if not gts:
        empty = np.zeros(0)
        return FrameScores(np.zeros(0, dtype=np.int64), empty, empty, 0, 0)
    pred_stack, gt_stack = np.stack(preds), np.stack(gts)  # [T, H, W]
    return FrameScores(
        np.asarray(gt_stamps, dtype=np.int64),
        video_region_similarity(pred_stack, gt_stack),
        video_boundary_f_measure(pred_stack, gt_stack),
        held=sum(held for _, held in matches),
        unmatched=sum(index is None for index, _ in matches),
    )


# ---------------------------------------------------------------------------------------------- replay


@dataclass
class ReplayRecord:
    """Everything a replay collected (results in ascending stamp order); the offline and the live replay fill it."""

    frames_in_bag: int = 0
    frames_rejected: int = 0
    dropped: int = 0
    command_stamps_ns: list[int] = field(default_factory=list)
    result_stamps: list[int] = field(default_factory=list)
    result_labels: list[np.ndarray] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    gt_labels: dict[int, np.ndarray] = field(default_factory=dict)
    thumbnails: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # stamp, rgb, labels


class ResultBagWriter:
    """Writes one sa2va_ros/msg/FrameResult per processed frame into an MCAP rosbag2 directory."""

    def __init__(self, path: Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.store = typestore_with_results()
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.connection = self.writer.add_connection("/sa2va/results", FRAME_RESULT_TYPE, typestore=self.store)

    def write(self, stamp_ns: int, frame_id: str, labels: np.ndarray, targets: Sequence[TargetEntry],
              answers: Sequence[str], latency_ms: float) -> None:
        """One frame's result: its label image (H×W, 0 = background, k = target k), targets, answers, latency."""
        target_type = self.store.types["sa2va_ros/msg/Target"]
        entries = [
            target_type(
                id=t.id, phrase=t.phrase, state=t.state, score=float(t.score), has_mask=t.geometry.area > 0,
                bbox=np.asarray(t.geometry.bbox or (0, 0, 0, 0), dtype=np.int32),
                centroid=np.asarray(t.geometry.centroid or (0.0, 0.0), dtype=np.float32),
                area=t.geometry.area,
            )
            for t in targets
        ]
        wide = labels.size and int(labels.max()) > 255
        labels = labels.astype(np.dtype("<u2") if wide else np.uint8)
        header = _header(self.store, stamp_ns, frame_id)
        message = self.store.types[FRAME_RESULT_TYPE](
            header=header, targets=entries, masks=_raw_image(self.store, header, labels, "mono16" if wide else "mono8"),
            answers=list(answers), latency_ms=float(latency_ms),
        )
        self.writer.write(self.connection, stamp_ns, self.store.serialize_cdr(message, FRAME_RESULT_TYPE))

    def close(self) -> None:
        self.writer.close()


def result_bag_path(out_dir: str | Path) -> Path:
    """``<out>/results``, the result bag of a replay (created with ``out``); refuses to overwrite one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result_bag = out / RESULT_BAG_NAME
    if result_bag.exists():
        raise FileExistsError(f"{result_bag} exists; choose another --out directory")
    return result_bag


def count_frames(bag_path: str | Path, topics: BagTopics) -> int:
    """Number of camera messages in the bag (from its index, without reading them)."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(bag_path)], default_typestore=typestore_with_results()) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic == topics.image)


def thumbnail_ordinals(frame_count: int) -> set[int]:
    """Which camera frames (0-based order in the bag) the report shows as overlays: a few, evenly spread."""
    return {round(i * (frame_count - 1) / max(THUMBNAILS - 1, 1)) for i in range(THUMBNAILS)} if frame_count else set()


def _process_frame(pipeline: Pipeline, replay: ReplayRecord, results: ResultBagWriter, msg: Any, keep: bool) -> bool:
    """Decode and push one camera frame; record its result. False when the pipeline refused it."""
    stamp = stamp_to_ns(msg.header.stamp)
    rgb = decode_image(msg)  # H×W×3 uint8
    try:
        result = pipeline.push_frame(rgb, stamp)
    except FrameRejectedError:
        replay.frames_rejected += 1
        return False
    replay.result_stamps.append(stamp)
    replay.result_labels.append(result.labels)
    replay.latencies_s.append(result.timings["total_s"])
    targets = [TargetEntry.from_mask(t.id, t.phrase, t.state, t.score, t.mask) for t in result.targets]
    results.write(stamp, msg.header.frame_id, result.labels, targets, [answer.text for answer in result.answers],
                  result.timings["total_s"] * 1000)
    if keep:
        replay.thumbnails.append((stamp, rgb, result.labels))
    return True


def _replay_lockstep(pipeline: Pipeline, messages: Iterator[BagMessage], replay: ReplayRecord,
                     results: ResultBagWriter, thumbnails: set[int]) -> None:
    """Push every frame; after a command, wait for its grounding so the next frame gets its targets."""
    awaiting_grounding = False
    for message in messages:
        if message.kind == "command":
            pipeline.submit_command(message.msg.data, message.log_time_ns)
            replay.command_stamps_ns.append(message.log_time_ns)
            awaiting_grounding = True
        elif message.kind == "ground_truth":
            replay.gt_labels[stamp_to_ns(message.msg.header.stamp)] = decode_label_mask(message.msg)
        else:
            ordinal = replay.frames_in_bag
            replay.frames_in_bag += 1
            pushed = _process_frame(pipeline, replay, results, message.msg, ordinal in thumbnails)
            if pushed and awaiting_grounding:
                if not pipeline.wait_until_idle(GROUNDING_WAIT_S):
                    raise TimeoutError(f"grounding took longer than {GROUNDING_WAIT_S} s")
                awaiting_grounding = False


def play_at_bag_rate(messages: Iterator[BagMessage], handle: Callable[[BagMessage], None]) -> None:
    """Hand each message to ``handle`` at its log time relative to the first one (the bag's own rate)."""
    started, first_log_time = time.monotonic(), None
    for message in messages:
        first_log_time = message.log_time_ns if first_log_time is None else first_log_time
        delay = started + (message.log_time_ns - first_log_time) / 1e9 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        handle(message)


def _replay_rate_limited(pipeline: Pipeline, messages: Iterator[BagMessage], replay: ReplayRecord,
                         results: ResultBagWriter, thumbnails: set[int]) -> None:
    """Play the bag at its rate from a thread; frames go through a latest-frame-wins slot, as in the node."""
    slot: LatestFrameSlot[tuple[int, Any]] = LatestFrameSlot()
    failure: list[BaseException] = []

    def handle(message: BagMessage) -> None:
        if message.kind == "command":
            pipeline.submit_command(message.msg.data, message.log_time_ns)
            replay.command_stamps_ns.append(message.log_time_ns)
        elif message.kind == "ground_truth":
            replay.gt_labels[stamp_to_ns(message.msg.header.stamp)] = decode_label_mask(message.msg)
        else:
            slot.put((replay.frames_in_bag, message.msg))
            replay.frames_in_bag += 1

    def play() -> None:
        try:
            play_at_bag_rate(messages, handle)
        except BaseException as error:  # re-raised on the caller's thread
            failure.append(error)
        finally:
            slot.close()

    player = threading.Thread(target=play, name="sa2va-bag-player", daemon=True)
    player.start()
    while True:
        item = slot.take(timeout=0.5)
        if item is None:
            if not player.is_alive():
                break
            continue
        ordinal, msg = item
        _process_frame(pipeline, replay, results, msg, ordinal in thumbnails)
    player.join()
    if failure:
        raise failure[0]
    replay.dropped = slot.dropped


def evaluate_bag(
    bag_path: str | Path,
    model: Grounder,
    topics: BagTopics,
    out_dir: str | Path,
    *,
    rate_limited: bool = False,
    pipeline_config: PipelineConfig | None = None,
    tracker_config: TrackerConfig | None = None,
) -> dict[str, Any]:
    """Replay a bag through a fresh ``Pipeline`` on ``model``; write ``summary.json``, the result bag
    ``results/results.mcap`` (sa2va_ros/msg/FrameResult, header = the camera frame's) and ``report.html``.
    Returns the summary."""
    result_bag = result_bag_path(out_dir)
    thumbnails = thumbnail_ordinals(count_frames(bag_path, topics))
    replay = ReplayRecord()
    results = ResultBagWriter(result_bag)
    tracker = StreamingTracker(model.grounding_encoder, tracker_config or TrackerConfig())
    started = time.monotonic()
    try:
        with Pipeline(model, tracker, pipeline_config) as pipeline:
            drive = _replay_rate_limited if rate_limited else _replay_lockstep
            drive(pipeline, read_bag_messages(bag_path, topics), replay, results, thumbnails)
            stats = pipeline.stats()
    finally:
        results.close()
    mode = "rate_limited" if rate_limited else "lockstep"
    return write_replay_summary(out_dir, bag_path, replay, mode, stats, time.monotonic() - started)


def write_replay_summary(out_dir: str | Path, bag_path: str | Path, replay: ReplayRecord, mode: str,
                         stats: Mapping[str, Any], wall_s: float,
                         extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score a finished replay against its ground truth; write ``summary.json`` and ``report.html``; return the
    summary. ``stats``: the pipeline's (``Pipeline.stats`` names; grounding and first-mask latencies are used);
    ``extra`` entries are added to the summary."""
    out = Path(out_dir)
    scores = score_frames(replay.gt_labels, replay.result_stamps, replay.result_labels)
    summary = {**_summary(bag_path, replay, scores, stats, mode, wall_s), **(extra or {})}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.html").write_text(_report_html(summary, scores, replay))
    return summary


def _percentile_ms(samples: Sequence[float], q: float) -> float | None:
    return float(np.percentile(samples, q) * 1000) if samples else None


def _summary(bag_path: str | Path, replay: ReplayRecord, scores: FrameScores, stats: Mapping[str, Any],
             mode: str, wall_s: float) -> dict[str, Any]:
    j = float(scores.j.mean()) if scores.j.size else None
    f = float(scores.f.mean()) if scores.f.size else None
    first_command = min(replay.command_stamps_ns) if replay.command_stamps_ns else None
    time_to_first_mask = None
    if first_command is not None:
        first_mask = next(
            (s for s, labels in zip(replay.result_stamps, replay.result_labels, strict=True)
             if s >= first_command and labels.any()), None)
        time_to_first_mask = None if first_mask is None else (first_mask - first_command) / 1e9
    return {
        "bag": str(bag_path),
        "mode": mode,
        "j_and_f": None if j is None else (j + f) / 2,
        "j": j,
        "f": f,
        "time_to_first_mask_s": time_to_first_mask,  # bag time: first command -> first frame with a mask
        "latency_ms_p50": _percentile_ms(replay.latencies_s, 50),
        "latency_ms_p99": _percentile_ms(replay.latencies_s, 99),
        "frames": replay.frames_in_bag,
        "frames_processed": len(replay.result_stamps),
        "dropped": replay.dropped + replay.frames_rejected,
        "frames_scored": int(scores.j.size),
        "frames_scored_held": scores.held,
        "frames_scored_without_result": scores.unmatched,
        "commands": len(replay.command_stamps_ns),
        "grounding_ms_p50": stats.get("grounding_ms_p50"),
        "first_mask_wall_ms_p50": stats.get("first_mask_ms_p50"),
        "wall_s": wall_s,
    }


# ---------------------------------------------------------------------------------------------- report


def _png_base64(draw: Callable[[Any], None]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3), dpi=100)
    try:
        draw(axes)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _overlay_png_base64(rgb: np.ndarray, labels: np.ndarray, gt: np.ndarray | None) -> str:
    """Predicted targets blended in colour, the ground-truth outline in white, as a base64 PNG."""
    from sa2va_ros.label_mask import overlay

    ids = [int(i) for i in np.unique(labels) if i]
    image = overlay(rgb, np.stack([labels == i for i in ids]) if ids else np.zeros((0, *labels.shape), bool))
    if gt is not None:
        contours, _ = cv2.findContours((gt > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, (255, 255, 255), 1)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding of an overlay failed")
    return base64.b64encode(png.tobytes()).decode("ascii")


def _report_html(summary: dict[str, Any], scores: FrameScores, replay: ReplayRecord) -> str:
    """A self-contained HTML page: the summary table, J&F over time, the latency histogram, overlays."""
    start = scores.stamps_ns[0] if scores.stamps_ns.size else 0
    seconds = (scores.stamps_ns - start) / 1e9

    def plot_scores(axes: Any) -> None:
        axes.plot(seconds, (scores.j + scores.f) / 2, label="J&F")
        axes.plot(seconds, scores.j, label="J", alpha=0.6)
        axes.plot(seconds, scores.f, label="F", alpha=0.6)
        for command in replay.command_stamps_ns:
            axes.axvline((command - start) / 1e9, color="grey", linestyle="--")
        axes.set(xlabel="bag time (s)", ylabel="score", ylim=(0, 1.05), title="J&F per frame (dashed: command)")
        axes.legend(loc="lower right")

    def plot_latency(axes: Any) -> None:
        axes.hist(np.asarray(replay.latencies_s) * 1000, bins=30)
        measured = "image published -> masks received" if summary["mode"].startswith("live") else "push_frame"
        axes.set(xlabel=f"{measured} (ms)", ylabel="frames", title="Per-frame latency")

    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
        for k, v in summary.items()
    )
    thumbs = "".join(
        f'<figure><img src="data:image/png;base64,{_overlay_png_base64(rgb, labels, replay.gt_labels.get(stamp))}">'
        f"<figcaption>t = {(stamp - start) / 1e9:.2f} s</figcaption></figure>"
        for stamp, rgb, labels in replay.thumbnails
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>sa2va_ros bag evaluation</title>"
        "<style>body{font-family:sans-serif} figure{display:inline-block;margin:4px} "
        "figure img{min-width:240px;image-rendering:pixelated} td,th{text-align:left;padding:2px 8px}</style>"
        "</head><body>"
        f"<h1>Bag evaluation: {html.escape(str(summary['bag']))}</h1><table>{rows}</table>"
        f'<h2>J&amp;F over time</h2><img src="data:image/png;base64,{_png_base64(plot_scores)}">'
        f'<h2>Latency</h2><img src="data:image/png;base64,{_png_base64(plot_latency)}">'
        f"<h2>Overlays (colour: prediction, white: ground truth)</h2>{thumbs}</body></html>"
    )
