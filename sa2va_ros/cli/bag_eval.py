"""``sa2va-bag-eval``: replay a ROS 2 bag through the pipeline and score it against its ground-truth masks.

Writes summary.json (J&F, J, F, time to first mask, latency percentiles, frames, drops), results/results.mcap
(sa2va_ros/msg/FrameResult per frame) and report.html (plots and overlays) into --out.
"""

from __future__ import annotations

import argparse
import json
import sys

from sa2va_ros.eval.bags import BagTopics, evaluate_bag

DEFAULT_TOPICS = BagTopics()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sa2va-bag-eval", description=__doc__)
    parser.add_argument("bag", help="ROS 2 bag (directory, or a .db3 / .mcap file)")
    parser.add_argument("--image-topic", default=DEFAULT_TOPICS.image, help="Image or CompressedImage topic")
    parser.add_argument("--command-topic", default=DEFAULT_TOPICS.command, help="std_msgs/String commands")
    parser.add_argument("--gt-topic", default=DEFAULT_TOPICS.ground_truth, help="mono8/mono16 label images")
    parser.add_argument("--out", default="bag_eval", help="output directory")
    parser.add_argument("--model", help="checkpoint directory; default: the bundled model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rate-limited", action="store_true",
                        help="replay at the bag's rate, latest frame wins (default: every frame, lockstep)")
    args = parser.parse_args(argv)

    from sa2va_ros.model import CheckpointError, Sa2VA
    from sa2va_ros.model.modeling import bundled_model_available

    if args.model is None and not bundled_model_available():
        print("sa2va-bag-eval: no bundled model in this install; pass --model CHECKPOINT_DIR", file=sys.stderr)
        return 2
    try:
        model = Sa2VA.from_pretrained(args.model, device=args.device)
        topics = BagTopics(args.image_topic, args.command_topic, args.gt_topic)
        summary = evaluate_bag(args.bag, model, topics, args.out, rate_limited=args.rate_limited)
    except (CheckpointError, ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"sa2va-bag-eval: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/summary.json, {args.out}/results/results.mcap, {args.out}/report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
