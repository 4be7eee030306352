"""The ``sa2va`` lifecycle node: a thin rclpy adapter around ``Pipeline``.

Lifecycle: ``configure`` validates the parameters and loads the model, ``activate`` opens the topics and starts
tracking, ``deactivate`` closes them and frees the accelerator (the model moves to the CPU), ``cleanup`` drops
the model. The ``sa2va_node`` executable (``main``) configures and activates the node itself unless the
parameter ``autostart`` is false (for a lifecycle manager).

Topics (relative, so namespaces and remapping apply):

* in: ``image`` (sensor_msgs/Image) or ``image/compressed`` (sensor_msgs/CompressedImage) per
  ``image_transport``; ``command`` (std_msgs/String);
* out: ``masks`` (sensor_msgs/Image mono8 or mono16 label image: 0 = background, k = target id),
  ``targets`` (std_msgs/String JSON, schema in ``sa2va_ros.targets_schema``), ``answer`` (std_msgs/String,
  the model's answer text), ``overlay`` (rgb8, when ``publish_overlay``), ``/diagnostics``.

Every ``masks``, ``targets`` and ``overlay`` message carries the camera frame's header unchanged. The image
callback only hands the message to a one-frame mailbox (the latest frame wins, drops are counted); a frame
thread decodes, tracks and publishes; grounding runs in the pipeline's worker thread. Bad input is refused
with one log line per kind and counted in ``/diagnostics``.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from sa2va_ros.diagnostics import INTERNAL_PREFIX, ProblemLog, diagnostic_array, health_status
from sa2va_ros.label_mask import blend_targets, draw_target_boxes
from sa2va_ros.node_params import PARAMETER_NAMES, PARAMETERS, NodeParams, ParameterError, validate_parameters
from sa2va_ros.pipeline import (
    Answer,
    CommandError,
    FrameRejectedError,
    FrameResult,
    Grounder,
    LatencyWindow,
    LatestFrameSlot,
    Pipeline,
)
from sa2va_ros.ros_io import (
    ImageDecodeError,
    decode_image,
    encode_label_mask,
    encode_rgb,
    qos_profile_from_params,
    qos_profile_from_preset,
    stamp_to_ns,
    subscription_problems,
)
from sa2va_ros.runtime import SamParts, load_parts
from sa2va_ros.tracking import TRACKING, StreamingTracker

NODE_NAME = "sa2va"
EXECUTABLE = "sa2va_node"
IMAGE_TOPIC = "image"
COMPRESSED_IMAGE_TOPIC = "image/compressed"
COMMAND_TOPIC = "command"
MASKS_TOPIC = "masks"
TARGETS_TOPIC = "targets"
ANSWER_TOPIC = "answer"
OVERLAY_TOPIC = "overlay"
DIAGNOSTICS_TOPIC = "/diagnostics"
TOPICS = (IMAGE_TOPIC, COMPRESSED_IMAGE_TOPIC, COMMAND_TOPIC, MASKS_TOPIC, TARGETS_TOPIC, ANSWER_TOPIC, OVERLAY_TOPIC)
FRAME_THREAD_JOIN_S = 10.0
ModelLoader = Callable[[NodeParams], Grounder]


def load_model(params: NodeParams) -> Grounder:
    """The Sa2VA checkpoint named by ``model_path`` (empty: the bundled model) on the configured device."""
    from sa2va_ros.model import Sa2VA

    return Sa2VA.from_pretrained(params.model_path or None, device=params.torch_device, dtype=params.torch_dtype)


def draw_overlay(frame: np.ndarray, result: FrameResult) -> np.ndarray:
    """The frame with each tracked target's mask blended in, its box and "id phrase" drawn, in its id's colour."""
    image = blend_targets(frame, result.labels)  # H×W×3
    return draw_target_boxes(image, [target for target in result.targets if target.state == TRACKING])


class Sa2VANode(LifecycleNode):
    """Lifecycle node ``sa2va``: camera frames + commands in, label masks, targets JSON and answers out.

    ``model_loader`` builds the model at ``configure`` (default: ``load_model``); tests and embedders may pass
    their own. Parameters are declared with dynamic typing and validated at ``configure``.
    """

    def __init__(self, node_name: str = NODE_NAME, *, model_loader: ModelLoader = load_model, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            descriptor = ParameterDescriptor(description=spec.description, dynamic_typing=True)
            self.declare_parameter(spec.name, spec.default, descriptor)
        self._model_loader = model_loader
        self._params: NodeParams | None = None
        self._model: Grounder | None = None
        self._parts: SamParts | None = None  # the SAM-2 parts on the configured backend, loaded at configure
        self.problems = ProblemLog()
        self._publish_lock = threading.Lock()
        self._pipeline: Pipeline | None = None
        self._outputs: dict[str, Any] = {}
        self._subscriptions_opened: list[Any] = []
        self._image_subscription: Any = None
        self._timers_opened: list[Any] = []
        self._slot: LatestFrameSlot[tuple[Any, float]] = LatestFrameSlot()
        self._frame_thread: threading.Thread | None = None
        self._stop_frames = threading.Event()
        self._latency = LatencyWindow(1000)
        self._frames_published = 0
        self._activated_at = 0.0
        self._last_image_at: float | None = None
        self._silence_reported = False
        self._fps_mark = (0.0, 0)  # (monotonic time, frames published) at the previous diagnostics
        self._commands_dropped_seen = 0

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        values = {name: self.get_parameter(name).value for name in PARAMETER_NAMES}
        try:
            params = validate_parameters(values)
        except ParameterError as error:
            for problem in error.problems:
                self.get_logger().error(problem)
            return TransitionCallbackReturn.FAILURE
        if params.torch_threads:
            torch.set_num_threads(params.torch_threads)
        started = time.monotonic()
        source = params.model_path or ("the bundled model" if self._model_loader is load_model else "the model loader")
        try:
            model = self._model_loader(params)
        except Exception as error:  # any loading failure is reported and leaves the node unconfigured
            self.get_logger().error(f"could not load the model from {source}: {type(error).__name__}: {error}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f"model loaded from {source} on {params.torch_device} in {time.monotonic() - started:.1f} s"
        )
        started = time.monotonic()
        try:  # here, not at activate: an empty engine cache means an ONNX export / TensorRT build (minutes)
            tracker_config = params.tracker_config()
            parts = load_parts(model.grounding_encoder, params.backend, tracker_config.engines_dir or None,
                               cuda_graphs=tracker_config.cuda_graphs)
        except Exception as error:
            self.get_logger().error(f"could not load the '{params.backend}' backend: {type(error).__name__}: {error}")
            return TransitionCallbackReturn.FAILURE
        if params.backend != "torch":
            self.get_logger().info(f"backend '{params.backend}' ready in {time.monotonic() - started:.1f} s")
        self._params, self._model, self._parts = params, model, parts
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._open_topics()
        except Exception as error:  # e.g. the device ran out of memory: reported, the node stays inactive
            self.get_logger().error(f"could not activate: {type(error).__name__}: {error}")
            self._close_topics()
            return TransitionCallbackReturn.FAILURE
        return super().on_activate(state)

    def _open_topics(self) -> None:
        """Move the model to its device, build the pipeline, open publishers, subscriptions and timers."""
        params, model = self._params, self._model
        assert params is not None and model is not None
        if isinstance(model, torch.nn.Module):
            model.to(params.torch_device)  # back from the CPU after a deactivate
        tracker = StreamingTracker(model.grounding_encoder, params.tracker_config(), parts=self._parts)
        self._pipeline = Pipeline(model, tracker, params.pipeline_config(), on_answer=self._publish_answer)
        output_qos = qos_profile_from_params(*params.qos("output_qos"))
        with self._publish_lock:
            self._outputs = {
                MASKS_TOPIC: self.create_publisher(Image, MASKS_TOPIC, output_qos),
                TARGETS_TOPIC: self.create_publisher(String, TARGETS_TOPIC, output_qos),
                ANSWER_TOPIC: self.create_publisher(String, ANSWER_TOPIC, output_qos),
                DIAGNOSTICS_TOPIC: self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10),
            }
            if params.publish_overlay:
                self._outputs[OVERLAY_TOPIC] = self.create_publisher(
                    Image, OVERLAY_TOPIC, qos_profile_from_preset("sensor_data")
                )
        self._slot = LatestFrameSlot()
        self._stop_frames.clear()
        self._frame_thread = threading.Thread(target=self._process_frames, name="sa2va-frames", daemon=True)
        self._frame_thread.start()
        compressed = params.image_transport == "compressed"
        self._image_subscription = self.create_subscription(
            CompressedImage if compressed else Image,
            COMPRESSED_IMAGE_TOPIC if compressed else IMAGE_TOPIC,
            self._on_image,
            qos_profile_from_params(*params.qos("image_qos")),
        )
        command_subscription = self.create_subscription(
            String, COMMAND_TOPIC, self._on_command, qos_profile_from_params(*params.qos("command_qos"))
        )
        self._subscriptions_opened = [self._image_subscription, command_subscription]
        self._timers_opened = [self.create_timer(params.diagnostics_period_s, self._publish_diagnostics)]
        if params.no_image_warning_s > 0:
            self._timers_opened.append(self.create_timer(params.no_image_warning_s / 4, self._check_silence))
        self._activated_at = time.monotonic()
        self._fps_mark = (self._activated_at, self._frames_published)
        self._last_image_at = None
        self._silence_reported = False
        self.get_logger().info(
            f"active: {self._image_subscription.topic_name} ({params.image_qos_reliability}) and "
            f"{command_subscription.topic_name} -> masks ({params.mask_encoding}), targets, answer"
        )

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_topics()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_model()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error("error during a lifecycle transition: releasing everything (back to unconfigured)")
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Close the topics, stop the threads and drop the model, whatever the state (used at exit)."""
        self._close_topics()
        self._drop_model()

    def _close_topics(self) -> None:
        """Undo ``on_activate``: timers, subscriptions, frame thread, pipeline, publishers; free the accelerator."""
        for timer in self._timers_opened:
            self.destroy_timer(timer)
        for subscription in self._subscriptions_opened:
            self.destroy_subscription(subscription)
        self._timers_opened, self._subscriptions_opened, self._image_subscription = [], [], None
        self._stop_frames.set()
        self._slot.close()
        if self._frame_thread is not None:
            self._frame_thread.join(FRAME_THREAD_JOIN_S)
            self._frame_thread = None
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        with self._publish_lock:
            for publisher in self._outputs.values():
                self.destroy_publisher(publisher)
            self._outputs = {}
        if self._params is not None and self._params.torch_device.type != "cpu":
            if isinstance(self._model, torch.nn.Module):
                self._model.to("cpu")
            torch.cuda.empty_cache()

    def _drop_model(self) -> None:
        self._model, self._params, self._parts = None, None, None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ input

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Thin: note the arrival and hand the message to the frame thread (the latest frame wins)."""
        now = time.monotonic()
        self._last_image_at = now
        self._silence_reported = False
        self._slot.put((msg, now))

    def _on_command(self, msg: String) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return
        try:
            command_id = pipeline.submit_command(msg.data, stamp_ns=self.get_clock().now().nanoseconds)
        except CommandError as error:
            self._report("command", error.kind, str(error))
            return
        self.get_logger().info(f"command {command_id}: {msg.data[:200]!r}", throttle_duration_sec=1.0)

    def _process_frames(self) -> None:
        """The frame thread: decode, track and publish the latest frame, until deactivated."""
        while not self._stop_frames.is_set():
            item = self._slot.take(timeout=0.2)
            if item is not None:
                self._process_frame(*item)

    def _process_frame(self, msg: Image | CompressedImage, received_at: float) -> None:
        params, pipeline = self._params, self._pipeline
        if params is None or pipeline is None:
            return
        try:
            frame = decode_image(msg, params.max_image_pixels)  # H×W×3 uint8 RGB
            result = pipeline.push_frame(frame, stamp_to_ns(msg.header.stamp))
            self._publish_result(msg.header, frame, result)
        except (ImageDecodeError, FrameRejectedError) as error:
            self._report("image", error.kind, str(error))
            return
        except Exception as error:  # the node keeps serving; the first of each error type is logged in full
            self._report("internal", type(error).__name__, f"{error}\n{traceback.format_exc()}")
            return
        self._frames_published += 1
        self._latency.add(time.monotonic() - received_at)

    def _report(self, source: str, kind: str, message: str) -> None:
        """Count a problem; log the first of each kind in one line (later ones show in /diagnostics)."""
        if not self.problems.record(f"{source}.{kind}"):
            return
        text = f"{source} refused ({kind}): {message} -- later '{source}.{kind}' problems are counted in /diagnostics"
        if source + "." == INTERNAL_PREFIX:
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)

    # ------------------------------------------------------------------ output

    def _publish_result(self, header: Any, frame: np.ndarray, result: FrameResult) -> None:
        params = self._params
        assert params is not None
        with self._publish_lock:
            if not self._outputs:
                return
            self._outputs[MASKS_TOPIC].publish(encode_label_mask(result.labels, header, params.mask_encoding))
            self._outputs[TARGETS_TOPIC].publish(String(data=result.targets_json(header.frame_id)))
            if OVERLAY_TOPIC in self._outputs:
                self._outputs[OVERLAY_TOPIC].publish(encode_rgb(draw_overlay(frame, result), header))

    def _publish_answer(self, answer: Answer) -> None:
        """Called by the pipeline the moment an answer exists (from its worker or the command callback)."""
        with self._publish_lock:
            if ANSWER_TOPIC not in self._outputs:
                return
            self._outputs[ANSWER_TOPIC].publish(String(data=answer.text))
        self.get_logger().info(
            f"answer to command {answer.command_id} after {answer.latency_s:.2f} s: {answer.text[:200]!r}"
        )

    def _check_silence(self) -> None:
        """Warn once per silent spell when no image arrives: no publisher, wrong type or QoS mismatch."""
        params, subscription = self._params, self._image_subscription
        if params is None or subscription is None or self._silence_reported:
            return
        silent_for = time.monotonic() - (self._last_image_at or self._activated_at)
        if silent_for < params.no_image_warning_s:
            return
        self._silence_reported = True
        problems = subscription_problems(self, subscription)
        reason = "; ".join(problems) if problems else "a publisher is matched but nothing arrives"
        self.get_logger().warning(f"no image on {subscription.topic_name} for {silent_for:.1f} s: {reason}")

    def _publish_diagnostics(self) -> None:
        params, pipeline = self._params, self._pipeline
        if params is None or pipeline is None:
            return
        stats = pipeline.stats()
        dropped = stats.get("commands_dropped", 0)
        if dropped > self._commands_dropped_seen:
            if self.problems.record("command.dropped", dropped - self._commands_dropped_seen):
                self.get_logger().warning(
                    f"commands arrive faster than they are grounded: the oldest waiting one is dropped "
                    f"(command_queue_size={params.command_queue_size}); counted in /diagnostics"
                )
            self._commands_dropped_seen = dropped
        now = time.monotonic()
        mark_time, mark_frames = self._fps_mark
        self._fps_mark = (now, self._frames_published)
        node_stats = {
            "frames_received": self._slot.offered,
            "frames_dropped": self._slot.dropped,
            "frames_published": self._frames_published,
            "fps": (self._frames_published - mark_frames) / max(now - mark_time, 1e-6),
            "latency_ms_p50": self._latency.percentile_ms(50),
            "latency_ms_p99": self._latency.percentile_ms(99),
            "seconds_without_image": now - (self._last_image_at or self._activated_at),
        }
        status = health_status(
            node_stats,
            stats,
            self.problems.counts(),
            self.problems.take_new(),
            node_stats["seconds_without_image"],
            params.no_image_warning_s,
        )
        with self._publish_lock:
            if DIAGNOSTICS_TOPIC in self._outputs:
                message = diagnostic_array(
                    status,
                    f"{self.get_fully_qualified_name()}: pipeline",
                    str(params.torch_device),
                    self.get_clock().now().to_msg(),
                )
                self._outputs[DIAGNOSTICS_TOPIC].publish(message)


def main(args: list[str] | None = None) -> None:
    """``sa2va_node [--ros-args ...]``: run the node, configured and active unless ``autostart`` is false."""
    rclpy.init(args=args)
    node = Sa2VANode()
    try:
        autostart = node.get_parameter("autostart").value is not False  # a wrong type fails at configure
        if autostart and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.release()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
