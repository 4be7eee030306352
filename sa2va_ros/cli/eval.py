"""``sa2va-eval DATASET_DIR --model PATH``: evaluate a checkpoint on a public benchmark with the official prompts.

RefCOCO / RefCOCO+ / RefCOCOg -> cIoU, gIoU; MeViS, ReVOS, Ref-DAVIS17, Ref-SAV -> J, F, J&F. Writes
samples.jsonl (one line per sample: key, expression, answer, scores) and summary.json into --out and prints a
table. Runs as one process, or sharded (every N-th sample per process) over GPUs or CPU processes:
``accelerate launch --multi_gpu --num_processes 8 -m sa2va_ros.cli.eval ...`` or ``torchrun --nproc-per-node 8
-m sa2va_ros.cli.eval ...``.
"""

from __future__ import annotations

import argparse
import sys

from sa2va_ros.eval.run import (
    DEFAULT_MAX_NEW_TOKENS,
    FORMATS,
    IMAGE_FORMATS,
    evaluate_benchmark,
    format_summary,
    open_benchmark,
    process_state,
)

PROG = "sa2va-eval"
BAD_INPUT = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("dataset", metavar="DATASET_DIR", help="benchmark folder (its format is recognised)")
    parser.add_argument("--model", help="checkpoint directory (project or official format); default: bundled")
    parser.add_argument("--format", dest="format_name", metavar="FORMAT",
                        help=f"check the folder is this benchmark ({', '.join(FORMATS)}); default: recognised")
    parser.add_argument("--split", help="RefCOCO split (val, testA, testB, test; default val), or the split "
                                        "sub-folder of a video benchmark (e.g. valid_u)")
    parser.add_argument("--image-root", help="RefCOCO images (default: DATA/images/mscoco/images/train2014)")
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="evaluate the first N samples only")
    parser.add_argument("--out", default="eval_out", help="output directory")
    parser.add_argument("--device", default="auto", help="auto (this process's GPU under accelerate, else CPU), "
                                                         "cpu, cuda, cuda:N")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--save-masks", action="store_true",
                        help="video: also write Annotations/<video>/<expression>/<frame>.png for a submission")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from sa2va_ros.model import CheckpointError, Sa2VA
    from sa2va_ros.model.modeling import bundled_model_available

    def refuse(message: object) -> int:
        print(f"{PROG}: {message}", file=sys.stderr)
        return BAD_INPUT

    try:
        dataset, format_name = open_benchmark(args.dataset, args.format_name, args.split, args.image_root)
    except (FileNotFoundError, ValueError, KeyError) as error:
        return refuse(error)
    if args.save_masks and format_name in IMAGE_FORMATS:
        return refuse("--save-masks applies to video benchmarks only")
    if args.model is None and not bundled_model_available():
        return refuse("no bundled model in this install; pass --model CHECKPOINT_DIR")

    state = process_state(args.device)
    device = state.device if args.device == "auto" else args.device
    try:
        model = Sa2VA.from_pretrained(args.model, device=device)
    except (CheckpointError, ValueError, RuntimeError) as error:
        return refuse(error)
    info = {"dataset": str(args.dataset), "split": args.split, "model": args.model or "bundled",
            "device": str(model.device)}
    summary = evaluate_benchmark(
        model, dataset, args.out, format_name=format_name, limit=args.limit, max_new_tokens=args.max_new_tokens,
        save_masks=args.save_masks, state=state, progress=not args.no_progress, info=info,
    )
    state.destroy_process_group()  # a no-op for a single process
    if summary is not None:
        print(format_summary(summary))
        print(f"wrote {args.out}/summary.json and {args.out}/{summary['samples_file']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
