"""``sa2va-build-engines MODEL``: build the TensorRT engines of a model on this machine's GPU, into the cache.

The ONNX files come from ``--onnx-dir`` (made by ``sa2va-export``) or are exported into the cache first. Engines
land in ``<cache>/tensorrt/<model hash>/trt-<version>/<GPU>/`` (see ``engines/README.md``), where the node's
``backend: tensorrt`` finds them; they are checked against PyTorch before they are written.
"""

from __future__ import annotations

import argparse
import sys

import torch

from sa2va_ros.cli.export import add_model_argument, load_sam2


def main(argv: list[str] | None = None) -> int:
    from sa2va_ros.runtime import default_engines_dir
    from sa2va_ros.runtime.tensorrt_parts import BuildOptions

    defaults = BuildOptions()
    parser = argparse.ArgumentParser(prog="sa2va-build-engines", description=__doc__)
    add_model_argument(parser)
    parser.add_argument("--cache-dir", default=None,
                        help=f"engine cache root (default: $SA2VA_ROS_ENGINES_DIR or {default_engines_dir()})")
    parser.add_argument("--onnx-dir", default=None, help="exported ONNX files (default: export into the cache)")
    parser.add_argument("--device", default="cuda", help="CUDA device to build for (cuda or cuda:N)")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="float32 / TF32 kernels only")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="no TF32 for float32 matrix products")
    parser.add_argument("--max-targets", type=int, default=None,
                        help="largest number of targets of the optimisation profiles (default: the export's)")
    parser.add_argument("--workspace-gib", type=float, default=defaults.workspace_gib, help="builder scratch memory")
    parser.add_argument("--tolerance", type=float, default=defaults.tolerance,
                        help="largest relative error against PyTorch accepted before writing")
    args = parser.parse_args(argv)

    from sa2va_ros.model import CheckpointError
    from sa2va_ros.runtime.base import BackendUnavailableError, model_hash
    from sa2va_ros.runtime.export import ExportCheckError, ensure_exported
    from sa2va_ros.runtime.graph_parts import ManifestError
    from sa2va_ros.runtime.graphs import UnsupportedModelError
    from sa2va_ros.runtime.tensorrt_parts import EngineBuildError, build_engines, require_tensorrt

    root = args.cache_dir or default_engines_dir()
    options = BuildOptions(args.fp16, args.tf32, args.workspace_gib, args.max_targets, args.tolerance)
    try:
        require_tensorrt()  # fail before loading anything when TensorRT is missing
        if not torch.cuda.is_available():
            raise BackendUnavailableError("TensorRT engines are built on a CUDA GPU, and this machine has none")
        sam = load_sam2(args.model, args.seed)
        digest = model_hash(sam)
        onnx_dir = args.onnx_dir or ensure_exported(sam, root, digest)
        engines = build_engines(sam.to(args.device), onnx_dir, root, options, digest)
    except (
        BackendUnavailableError,
        CheckpointError,
        EngineBuildError,
        ExportCheckError,
        ManifestError,
        UnsupportedModelError,
        ValueError,
    ) as exc:
        print(f"sa2va-build-engines: {exc}", file=sys.stderr)
        return 1
    print(f"sa2va-build-engines: engines of model {digest[:16]} in {engines}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
