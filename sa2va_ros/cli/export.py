"""``sa2va-export MODEL OUT_DIR``: export the four SAM-2 parts of a model to ONNX, checked against PyTorch.

MODEL is a checkpoint directory (the project's or an official Sa2VA one), ``bundled``, or a SAM-2 variant name
(``sam2.1_hiera_t``, ..., or ``tiny``) for seeded random weights (benchmarks, engine-build rehearsals). The
files and ``manifest.json`` (model hash, opset, shapes) are written only once ONNX Runtime reproduces PyTorch.
"""

from __future__ import annotations

import argparse
import sys

import torch
from sam2.modeling.sam2_base import SAM2Base

RANDOM_MODELS = "tiny or a SAM-2 variant"


def load_sam2(model: str, seed: int = 0) -> SAM2Base:
    """The SAM-2 part (float32, CPU, eval) of a checkpoint, of the bundled model, or of a random variant."""
    from sa2va_ros.model.sam2_grounding import SAM2_VARIANTS, build_sam2, bundled_sam2_config, tiny_sam2_config

    if model == "tiny" or model in SAM2_VARIANTS:
        torch.manual_seed(seed)
        return build_sam2(tiny_sam2_config() if model == "tiny" else bundled_sam2_config(model), sa2va=True)
    from sa2va_ros.model import Sa2VA

    path = None if model == "bundled" else model
    return Sa2VA.from_pretrained(path, device="cpu", dtype=torch.float32).grounding_encoder.eval()


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="checkpoint directory (project or official Sa2VA format), 'bundled', or for seeded random weights "
        "'tiny' or a SAM-2 variant (sam2.1_hiera_t, sam2.1_hiera_s, sam2.1_hiera_b+, sam2.1_hiera_l, ...)",
    )
    parser.add_argument("--seed", type=int, default=0, help=f"seed of the random weights ({RANDOM_MODELS} only)")


def main(argv: list[str] | None = None) -> int:
    from sa2va_ros.runtime.export import TOLERANCE, ExportLimits

    defaults = ExportLimits()
    parser = argparse.ArgumentParser(prog="sa2va-export", description=__doc__)
    add_model_argument(parser)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory for the .onnx files and manifest.json")
    parser.add_argument("--max-targets", type=int, default=defaults.max_targets,
                        help="largest number of targets the TensorRT profiles will accept (ONNX accepts any)")
    parser.add_argument("--max-points", type=int, default=defaults.max_points, help="largest point prompt")
    parser.add_argument("--max-language-tokens", type=int, default=defaults.max_language_tokens,
                        help="largest number of [SEG] vectors per target")
    parser.add_argument("--max-conditioning-frames", type=int, default=defaults.max_conditioning_frames,
                        help="TrackerConfig.max_conditioning_frames the engines must support")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help="largest relative error against PyTorch accepted before writing")
    parser.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime CPU threads (0: default)")
    args = parser.parse_args(argv)

    from sa2va_ros.model import CheckpointError
    from sa2va_ros.runtime.base import BackendUnavailableError
    from sa2va_ros.runtime.export import ExportCheckError, export_onnx
    from sa2va_ros.runtime.graphs import UnsupportedModelError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        limits = ExportLimits(args.max_targets, args.max_points, args.max_language_tokens, args.max_conditioning_frames)
        sam = load_sam2(args.model, args.seed)
        manifest = export_onnx(sam, args.out_dir, limits, tolerance=args.tolerance)
    except (CheckpointError, UnsupportedModelError, ExportCheckError, BackendUnavailableError, ValueError) as exc:
        print(f"sa2va-export: {exc}", file=sys.stderr)
        return 1
    print(f"sa2va-export: model {manifest['model_hash'][:16]} -> {args.out_dir} "
          f"(opset {manifest['opset']}, {manifest['export_seconds']} s)")
    for part, error in manifest["check"]["max_relative_error"].items():
        print(f"  {manifest['graphs'][part]['file']:24s} relative error vs PyTorch {error:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
