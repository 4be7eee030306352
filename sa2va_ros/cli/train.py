"""``sa2va-train CONFIG``: train (or resume) Sa2VA from a YAML config; ``accelerate launch`` for many GPUs."""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sa2va-train", description=__doc__)
    parser.add_argument("config", help="training YAML (see config/train/)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    parser.add_argument("--steps", type=int, help="override the number of optimiser steps")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--threads", type=int, help="override torch's CPU threads (1 is steadiest on a shared machine)")
    args = parser.parse_args(argv)

    from sa2va_ros.train import load_train_config, train

    config = load_train_config(args.config)
    if args.steps is not None:
        config.steps = args.steps
    if args.output_dir:
        config.output_dir = args.output_dir
    if args.threads is not None:
        config.threads = args.threads
    final = train(config, resume=not args.no_resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch, once
        print(f"final model: {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
