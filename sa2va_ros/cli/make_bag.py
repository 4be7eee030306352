"""``sa2va-make-bag``: write a synthetic referring clip as a ROS 2 bag (camera, command, ground-truth masks)."""

from __future__ import annotations

import argparse
import sys

from sa2va_ros.eval.bags import BagTopics, write_synthetic_bag

DEFAULT_TOPICS = BagTopics()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sa2va-make-bag", description=__doc__)
    parser.add_argument("out", help="bag directory to create (must not exist)")
    parser.add_argument("--synthetic-seed", type=int, required=True, help="seed of the synthetic clip")
    parser.add_argument("--frames", type=int, default=30, help="number of camera frames")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"), help="frame size")
    parser.add_argument("--compressed", action="store_true", help="JPEG sensor_msgs/CompressedImage frames")
    parser.add_argument("--command-time", type=float, default=0.0, metavar="S",
                        help="bag time of the command, seconds after the first frame")
    parser.add_argument("--rate", type=float, default=10.0, metavar="HZ", help="camera rate")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    parser.add_argument("--image-topic", help=f"default {DEFAULT_TOPICS.image} ({DEFAULT_TOPICS.image}/compressed "
                                              "with --compressed)")
    parser.add_argument("--command-topic", default=DEFAULT_TOPICS.command)
    parser.add_argument("--gt-topic", default=DEFAULT_TOPICS.ground_truth, help="ground-truth mono8 label images")
    parser.add_argument("--split", default="test", help="synthetic split (train, val, test, compositional)")
    args = parser.parse_args(argv)

    image_topic = args.image_topic or (f"{DEFAULT_TOPICS.image}/compressed" if args.compressed
                                       else DEFAULT_TOPICS.image)
    topics = BagTopics(image_topic, args.command_topic, args.gt_topic)
    try:
        info = write_synthetic_bag(
            args.out, args.synthetic_seed, args.frames, tuple(args.size), compressed=args.compressed,
            command_time_s=args.command_time, rate_hz=args.rate, storage=args.storage, topics=topics,
            split=args.split,
        )
    except (ValueError, FileExistsError) as error:
        print(f"sa2va-make-bag: {error}", file=sys.stderr)
        return 1
    print(f"wrote {info.path}: {len(info.frame_stamps_ns)} frames on {topics.image}, command {info.command!r} on "
          f"{topics.command}, {info.targets} target(s) on {topics.ground_truth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
