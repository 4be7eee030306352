"""Backends for the four SAM-2 parts (image encoder, memory attention, memory encoder, mask decoder with the
language prompt): PyTorch (the reference), ONNX Runtime (CPU / CUDA) and TensorRT (CUDA).

``load_parts(sam, backend)`` returns one ``SamParts``. The ONNX Runtime and TensorRT backends run files made from
the same model: ONNX graphs (``sa2va-export``) and TensorRT engines built from them on the target machine
(``sa2va-build-engines``), cached under ``engines_dir`` by model hash (and TensorRT version + GPU name); missing
files are made on first use. See ``engines/README.md``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sam2.modeling.sam2_base import SAM2Base

from sa2va_ros.runtime.base import (
    BACKEND_PACKAGES,
    BACKENDS,
    BackendUnavailableError,
    DecodedMasks,
    FrameFeatures,
    SamParts,
    model_hash,
)
from sa2va_ros.runtime.torch_parts import TorchParts, as_tokens

ENGINES_DIR_ENV = "SA2VA_ROS_ENGINES_DIR"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "DecodedMasks",
    "FrameFeatures",
    "SamParts",
    "TorchParts",
    "as_tokens",
    "backend_problem",
    "default_engines_dir",
    "load_parts",
    "model_hash",
]


def default_engines_dir() -> Path:
    """``$SA2VA_ROS_ENGINES_DIR``, else ``~/.cache/sa2va_ros/engines``."""
    return Path(os.environ.get(ENGINES_DIR_ENV) or Path.home() / ".cache" / "sa2va_ros" / "engines")


def backend_problem(backend: str) -> str | None:
    """Why ``backend`` cannot run in this environment (its package is missing), or None."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}"
    packages, install = BACKEND_PACKAGES.get(backend, ((), ""))
    missing = [package for package in packages if importlib.util.find_spec(package) is None]
    if missing:
        names = ", ".join(repr(package) for package in missing)
        plural = "s" if len(missing) > 1 else ""
        return f"backend {backend!r} needs the Python package{plural} {names}, not installed here: {install}"
    return None


def load_parts(
    sam: SAM2Base, backend: str = "torch", engines_dir: str | Path | None = None, *, cuda_graphs: bool = False
) -> SamParts:
    """The SAM-2 parts of ``sam`` on ``backend``; ONNX files / engines come from (or are made in) ``engines_dir``.
    ``cuda_graphs``: on CUDA the torch backend replays its parts as CUDA graphs (``TorchParts``).

    Raises ``BackendUnavailableError`` naming the package to install when the backend's runtime is missing.
    """
    problem = backend_problem(backend)
    if problem:
        raise BackendUnavailableError(problem)
    if backend == "torch":
        return TorchParts(sam, cuda_graphs=cuda_graphs)
    from sa2va_ros.runtime.export import ensure_exported

    root = Path(engines_dir) if engines_dir is not None else default_engines_dir()
    device = next(sam.parameters()).device
    if backend == "onnxruntime":
        from sa2va_ros.runtime.onnxruntime_parts import OnnxRuntimeParts, providers_for

        providers_for(device)  # refuse a device this onnxruntime cannot run on before exporting anything
        digest = model_hash(sam)
        return OnnxRuntimeParts(sam, ensure_exported(sam, root, digest), digest)
    from sa2va_ros.runtime.tensorrt_parts import TensorRTParts, ensure_engines, require_tensorrt

    require_tensorrt()
    if device.type != "cuda":
        raise BackendUnavailableError(f"backend 'tensorrt' runs on CUDA; the model is on {device}")
    digest = model_hash(sam)
    onnx_dir = ensure_exported(sam, root, digest)
    return TensorRTParts(sam, ensure_engines(sam, onnx_dir, root, digest), digest)
