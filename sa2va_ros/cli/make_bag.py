"""``sa2va-make-bag``: write a referring clip as a ROS 2 bag (camera frames, a command, ground-truth label masks).

The clip is synthetic (``--synthetic-seed N``) or one expression of a benchmark video (``--dataset DIR --video ID
--expression-index K``; MeViS, ReVOS, Ref-DAVIS17 or Ref-SAV layout: frames + mask_dict.json), whose command is
the official video prompt ("Please segment <expression>.") and whose ground truth is label 1.
"""

from __future__ import annotations

import argparse
import sys

from sa2va_ros.eval.bags import BagTopics, write_dataset_bag, write_synthetic_bag

DEFAULT_TOPICS = BagTopics()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sa2va-make-bag", description=__doc__)
    parser.add_argument("out", help="bag directory to create (must not exist)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic-seed", type=int, help="seed of a synthetic clip")
    source.add_argument("--dataset", metavar="DIR", help="video benchmark folder (with --video)")
    parser.add_argument("--video", metavar="ID", help="--dataset: the video id")
    parser.add_argument("--expression-index", type=int, default=0, metavar="K",
                        help="--dataset: the video's K-th expression (0-based, sorted expression ids)")
    parser.add_argument("--dataset-split", metavar="NAME", help="--dataset: a split sub-folder (e.g. valid_u)")
    parser.add_argument("--frames", type=int, default=30, help="synthetic: number of camera frames")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"),
                        help="synthetic: frame size")
    parser.add_argument("--split", default="test", help="synthetic split (train, val, test, compositional)")
    parser.add_argument("--compressed", action="store_true", help="JPEG sensor_msgs/CompressedImage frames")
    parser.add_argument("--command-time", type=float, default=0.0, metavar="S",
                        help="bag time of the command, seconds after the first frame")
    parser.add_argument("--rate", type=float, default=10.0, metavar="HZ", help="camera rate")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    parser.add_argument("--image-topic", help=f"default {DEFAULT_TOPICS.image} ({DEFAULT_TOPICS.image}/compressed "
                                              "with --compressed)")
    parser.add_argument("--command-topic", default=DEFAULT_TOPICS.command)
    parser.add_argument("--gt-topic", default=DEFAULT_TOPICS.ground_truth, help="ground-truth mono8 label images")
    args = parser.parse_args(argv)
    if args.dataset is not None and args.video is None:
        parser.error("--dataset needs --video ID")

    image_topic = args.image_topic or (f"{DEFAULT_TOPICS.image}/compressed" if args.compressed
                                       else DEFAULT_TOPICS.image)
    topics = BagTopics(image_topic, args.command_topic, args.gt_topic)
    common = {"compressed": args.compressed, "command_time_s": args.command_time, "rate_hz": args.rate,
              "storage": args.storage, "topics": topics}
    try:
        if args.dataset is not None:
            info = write_dataset_bag(args.out, args.dataset, args.video, args.expression_index,
                                     split=args.dataset_split, **common)
        else:
            info = write_synthetic_bag(args.out, args.synthetic_seed, args.frames, tuple(args.size),
                                       split=args.split, **common)
    except (ValueError, KeyError, FileExistsError, FileNotFoundError) as error:
        print(f"sa2va-make-bag: {error}", file=sys.stderr)
        return 1
    truth = f"{info.targets} target(s) on {topics.ground_truth}" if info.targets else "no ground truth"
    print(f"wrote {info.path}: {len(info.frame_stamps_ns)} frames on {topics.image}, command {info.command!r} on "
          f"{topics.command}, {truth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
