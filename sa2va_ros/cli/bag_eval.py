"""``sa2va-bag-eval``: replay a ROS 2 bag through the pipeline and score it against its ground-truth masks.

Writes summary.json (J&F, J, F, time to first mask, latency percentiles, frames, drops), results/results.mcap
(sa2va_ros/msg/FrameResult per frame) and report.html (plots and overlays) into --out.

Offline (default), the bag drives the Pipeline directly: every frame, lockstep (--rate-limited: at the bag's rate).
With --live, it is replayed over rclpy through the sa2va node (started in this process, or --running-node): the
node's published masks are scored, latency is image published -> mask received (default: at the bag's rate;
--lockstep: as fast as the node keeps up).
"""

from __future__ import annotations

import argparse
import json
import sys

from sa2va_ros.eval.bags import BagTopics, evaluate_bag

DEFAULT_TOPICS = BagTopics()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sa2va-bag-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", help="ROS 2 bag (directory, or a .db3 / .mcap file)")
    parser.add_argument("--image-topic", default=DEFAULT_TOPICS.image, help="Image or CompressedImage topic")
    parser.add_argument("--command-topic", default=DEFAULT_TOPICS.command, help="std_msgs/String commands")
    parser.add_argument("--gt-topic", default=DEFAULT_TOPICS.ground_truth, help="mono8/mono16 label images")
    parser.add_argument("--out", default="bag_eval", help="output directory")
    parser.add_argument("--model", help="checkpoint directory; default: the bundled model")
    parser.add_argument("--device", default="cpu")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument("--rate-limited", action="store_true",
                        help="replay at the bag's rate, latest frame wins (default with --live)")
    pacing.add_argument("--lockstep", action="store_true",
                        help="every frame, the next once the previous one's result exists (default offline)")
    live = parser.add_argument_group("live replay through the node (rclpy)")
    live.add_argument("--live", action="store_true", help="publish the bag to the sa2va node and score its output")
    live.add_argument("--running-node", action="store_true",
                      help="use the sa2va node already running in --namespace instead of starting one")
    live.add_argument("--namespace", help="the node's namespace (default: /sa2va_bag_eval for the node started "
                                          "here, / for a running node)")
    live.add_argument("--params-file", help="node parameter YAML for the node started here (e.g. config/*.yaml)")
    live.add_argument("--discovery-timeout", type=float, default=30.0, metavar="S",
                      help="how long to wait for the node's topics")
    args = parser.parse_args(argv)
    topics = BagTopics(args.image_topic, args.command_topic, args.gt_topic)
    errors = (ValueError, FileExistsError, FileNotFoundError, TimeoutError, RuntimeError)

    from sa2va_ros.model.modeling import bundled_model_available

    if args.model is None and not args.running_node and not bundled_model_available():
        print("sa2va-bag-eval: no bundled model in this install; pass --model CHECKPOINT_DIR", file=sys.stderr)
        return 2
    if args.live:
        if args.running_node and (args.model or args.params_file):
            parser.error("--model and --params-file configure the node started here, not a --running-node")
        from sa2va_ros.ros.live_replay import evaluate_bag_live

        node_parameters = {"device": args.device}
        if args.model is not None:
            node_parameters["model_path"] = args.model
        try:
            summary = evaluate_bag_live(
                args.bag, topics, args.out, pace="lockstep" if args.lockstep else "bag_rate",
                namespace=args.namespace, running_node=args.running_node, node_parameters=node_parameters,
                ros_args=["--params-file", args.params_file] if args.params_file else (),
                discovery_timeout_s=args.discovery_timeout,
            )
        except errors as error:
            print(f"sa2va-bag-eval: {error}", file=sys.stderr)
            return 1
    else:
        if args.running_node or args.namespace or args.params_file:
            parser.error("--running-node, --namespace and --params-file need --live")
        from sa2va_ros.model import CheckpointError, Sa2VA

        try:
            model = Sa2VA.from_pretrained(args.model, device=args.device)
            summary = evaluate_bag(args.bag, model, topics, args.out, rate_limited=args.rate_limited)
        except (CheckpointError, *errors) as error:
            print(f"sa2va-bag-eval: {error}", file=sys.stderr)
            return 1
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/summary.json, {args.out}/results/results.mcap, {args.out}/report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
