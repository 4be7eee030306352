"""``sa2va-convert``: turn an official ByteDance Sa2VA checkpoint into the project's format (no remote code), or
re-save a checkpoint of either format at another precision (``--dtype``; the bundled model is stored in bf16)."""

from __future__ import annotations

import argparse
import re
import sys

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``"5GB"``, ``"500MiB"`` or a plain byte count -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MiB, 1000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sa2va-convert", description=__doc__)
    parser.add_argument("src", help="official checkpoint directory (config.json with model_type sa2va_chat)")
    parser.add_argument("dst", help="output directory for the project-format checkpoint (must not hold one)")
    parser.add_argument("--max-shard-size", type=parse_size, default=None, help="shard weights above this size")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="store the weights at this precision (src may then also be a project checkpoint)")
    args = parser.parse_args(argv)

    from pathlib import Path

    from sa2va_ros.model import CheckpointError, Sa2VA
    from sa2va_ros.model.convert import convert_checkpoint

    try:
        if args.dtype is None:
            config = convert_checkpoint(args.src, args.dst, max_shard_bytes=args.max_shard_size)
        else:
            if (Path(args.dst) / "config.json").exists():
                raise ValueError(f"{args.dst} already holds a checkpoint; choose an empty directory")
            import torch

            model = Sa2VA.from_pretrained(args.src, dtype=getattr(torch, args.dtype))
            model.save_pretrained(args.dst, max_shard_bytes=args.max_shard_size)
            config = model.config
    except (CheckpointError, ValueError) as exc:
        print(f"sa2va-convert: {exc}", file=sys.stderr)
        return 1
    print(
        f"converted {args.src} ({config.family}, SAM-2 {config.sam2_variant}, template {config.template}) "
        f"-> {args.dst}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
