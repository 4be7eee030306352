"""End-to-end benchmark of the sa2va node over Fast DDS (loopback, own domain).

The node runs in a child process (its own GIL, as on a robot); this process is the camera and the planner:
it publishes a synthetic tabletop stream at a fixed rate, sends one command, and measures

  * camera -> mask latency (publish of a frame -> arrival of its mask, matched by stamp): p50, p99;
  * sustained output rate (masks per second) and dropped frames (published, never masked);
  * command -> answer and command -> first mask holding the target;
  * the node process's resident memory over the run (sampled every --memory-every frames).

Without --model the tiny random Sa2VA is used and its answer is scripted to "Sure, [SEG]." (random weights never
emit [SEG]); lost_score_threshold is lowered so the target keeps being tracked on every frame.

Examples:
  .venv/bin/python bench/bench_node.py --frames 300
  .venv/bin/python bench/bench_node.py --frames 5000 --rate 30 --size 240x320 --json bench_node.json
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

DOMAIN_ID = 69
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN_ID)

import numpy as np  # noqa: E402
import psutil  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "/bench"
SCRIPTED_ANSWER = "Sure, [SEG]."


def run_node(model_path: str | None, threads: int, parameters: dict[str, Any]) -> None:
    """Child process: the sa2va node with the given model (or the scripted tiny one), active until SIGTERM."""
    import rclpy
    import torch
    from rclpy.parameter import Parameter

    from sa2va_ros.ros.node import Sa2VANode, load_model

    torch.set_num_threads(threads)
    if model_path:
        loader = load_model
        parameters = {**parameters, "model_path": model_path}
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from model_helpers import scripted_answer

        from sa2va_ros.model.presets import tiny_model

        model = tiny_model("internvl-qwen2", seed=0)
        original_ground = model.ground

        def scripted_ground(frames: Any, text: str, max_new_tokens: int = 64) -> Any:
            with scripted_answer(model, SCRIPTED_ANSWER):
                return original_ground(frames, text, max_new_tokens=max_new_tokens)

        model.ground = scripted_ground

        def loader(params: Any) -> Any:
            return model

    rclpy.init()
    node = Sa2VANode(
        model_loader=loader,
        namespace=NAMESPACE,
        parameter_overrides=[Parameter(name, value=value) for name, value in parameters.items()],
    )
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    try:
        node.trigger_configure()
        node.trigger_activate()
        rclpy.spin(node)
    except Exception:  # shutdown by SIGTERM ends spin with an exception
        pass
    finally:
        node.release()
        node.destroy_node()
        rclpy.try_shutdown()


def stream_frames(count: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """A looping synthetic tabletop clip with a blue mug (rendered once, published over and over)."""
    from sa2va_ros.synthetic import sample_referring_video

    return sample_referring_video(seed, "test", count, size, kind="command", target=("blue", "mug")).frames


def percentile_ms(samples: list[float], q: float) -> float | None:
    return float(np.percentile(samples, q) * 1000) if samples else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=5000, help="frames to publish")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    parser.add_argument("--size", default="240x320", help="frame HxW")
    parser.add_argument("--model", default=None, help="checkpoint directory; default: scripted tiny random model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the node process")
    parser.add_argument("--command-after", type=int, default=30, help="send the command after this many frames")
    parser.add_argument("--memory-every", type=int, default=500, help="sample the node's RSS every N frames")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))

    node_parameters = {"torch_threads": args.threads, "lost_score_threshold": -1e6, "reground_lost": False}
    child = multiprocessing.get_context("spawn").Process(
        target=run_node, args=(args.model, args.threads, node_parameters), daemon=True
    )
    child.start()
    try:
        results = measure(args, (height, width), psutil.Process(child.pid))
    finally:
        child.terminate()
        child.join(30)
    results["machine"] = {"cpus": os.cpu_count(), "node_torch_threads": args.threads}
    print(json.dumps(results, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    return 0


def measure(args: argparse.Namespace, size: tuple[int, int], node_process: psutil.Process) -> dict[str, Any]:
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String

    from sa2va_ros.ros_io import qos_profile_from_preset, stamp_to_ns

    frames = stream_frames(60, size, seed=3)
    rclpy.init()
    camera = Node("bench_camera", namespace=NAMESPACE)
    sent: dict[int, float] = {}  # stamp ns -> publish time
    arrived: dict[int, float] = {}  # stamp ns -> mask arrival time
    events: dict[str, float] = {}
    lock = threading.Lock()

    def on_mask(msg: Image) -> None:
        with lock:
            arrived[stamp_to_ns(msg.header.stamp)] = time.perf_counter()

    def on_targets(msg: String) -> None:
        if "first_target" not in events and '"targets":[{' in msg.data:
            events["first_target"] = time.perf_counter()

    def on_answer(msg: String) -> None:
        events.setdefault("answer", time.perf_counter())

    output_qos = qos_profile_from_preset("reliable", history_depth=5)
    image_pub = camera.create_publisher(Image, "image", qos_profile_from_preset("sensor_data"))
    command_pub = camera.create_publisher(String, "command", qos_profile_from_preset("reliable"))
    camera.create_subscription(Image, "masks", on_mask, output_qos)
    camera.create_subscription(String, "targets", on_targets, output_qos)
    camera.create_subscription(String, "answer", on_answer, output_qos)
    executor = SingleThreadedExecutor()
    executor.add_node(camera)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    deadline = time.monotonic() + 300
    while image_pub.get_subscription_count() == 0 or command_pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the node did not come up within 300 s")
        time.sleep(0.1)
    time.sleep(1.0)  # let the node settle after discovery

    memory = []
    period = 1.0 / args.rate
    started = time.perf_counter()
    for n in range(args.frames):
        tick = started + n * period
        while (now := time.perf_counter()) < tick:
            time.sleep(min(tick - now, 0.005))
        frame = frames[n % len(frames)]
        stamp_ns = 1_700_000_000_000_000_000 + n * int(period * 1e9)
        data = array.array("B")
        data.frombytes(frame.tobytes())
        msg = Image(
            header=Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="camera"),
            height=size[0], width=size[1], encoding="rgb8", step=size[1] * 3, data=data,
        )
        with lock:
            sent[stamp_ns] = time.perf_counter()
        image_pub.publish(msg)
        if n == args.command_after:
            events["command"] = time.perf_counter()
            command_pub.publish(String(data="pick the blue mug"))
        if n % args.memory_every == 0:
            memory.append((n, node_process.memory_info().rss / 2**20))
    duration = time.perf_counter() - started
    time.sleep(2.0)  # the last masks
    memory.append((args.frames, node_process.memory_info().rss / 2**20))
    executor.shutdown(timeout_sec=5)
    camera.destroy_node()
    rclpy.try_shutdown()

    with lock:
        latencies = [arrived[stamp] - sent[stamp] for stamp in arrived if stamp in sent]
    steady = [arrived[s] - sent[s] for s in arrived if s in sent and sent[s] - started > 0.5 * duration]
    command = events.get("command")
    return {
        "frames_published": args.frames,
        "rate_hz": args.rate,
        "frame_size": list(size),
        "masks_received": len(latencies),
        "frames_dropped": args.frames - len(latencies),
        "output_fps": len(latencies) / duration,
        "latency_ms_p50": percentile_ms(latencies, 50),
        "latency_ms_p99": percentile_ms(latencies, 99),
        "latency_ms_p50_second_half": percentile_ms(steady, 50),
        "latency_ms_p99_second_half": percentile_ms(steady, 99),
        "command_to_answer_ms": (events["answer"] - command) * 1000 if command and "answer" in events else None,
        "command_to_first_target_mask_ms": (
            (events["first_target"] - command) * 1000 if command and "first_target" in events else None
        ),
        "node_rss_mib": memory,
        "node_rss_growth_mib": memory[-1][1] - memory[1][1] if len(memory) > 2 else None,
    }


if __name__ == "__main__":
    sys.exit(main())
