"""The TensorRT backend: engines built on the target machine from the exported ONNX files, and run on CUDA.

Engines are specific to the model, the TensorRT version and the GPU, so the cache is keyed by all three::

    <root>/tensorrt/<model hash[:16]>/trt-<TensorRT version>/<GPU name>/
        image_encoder.engine  memory_attention.engine  memory_encoder.engine  mask_decoder.engine
        timing.cache          TensorRT's layer-timing cache, reused by later builds on this GPU
        build.json            model hash, versions, GPU, flags, optimisation profiles, parity check, the ONNX manifest

Written against TensorRT 10's Python API (named I/O tensors, ``execute_async_v3``). TensorRT cannot be installed
on this project's development machines, so this path is not exercised by CI; its tests skip without ``tensorrt``
and a GPU. Every function that needs TensorRT imports it through ``require_tensorrt()``; the rest (cache layout,
profiles) is plain Python.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from sam2.modeling.sam2_base import SAM2Base

from sa2va_ros.runtime.base import BACKEND_PACKAGES, BackendUnavailableError, model_hash
from sa2va_ros.runtime.graph_parts import DTYPES, GraphParts, ManifestError, check_model_matches, read_manifest

BUILD_FILE = "build.json"
TIMING_CACHE = "timing.cache"
LOGGER = logging.getLogger(__name__)


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a graph, or the engines do not reproduce PyTorch."""


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings (recorded in ``build.json``)."""

    fp16: bool = True  # FP16 kernels where TensorRT finds them faster (inputs and outputs stay float32)
    tf32: bool = True  # TF32 for float32 matrix products (TensorRT's default)
    workspace_gib: float = 4.0  # scratch memory TensorRT may use while choosing kernels
    max_targets: int | None = None  # widen the profile's batch axis past the export's limit
    tolerance: float = 5e-2  # relative error allowed against PyTorch (parity.relative_error)


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module (version 10 or later), or ``BackendUnavailableError`` saying what to install."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'tensorrt' needs the Python package 'tensorrt': {BACKEND_PACKAGES['tensorrt'][1]}"
        ) from exc
    if int(tensorrt.__version__.split(".")[0]) < 10:
        raise BackendUnavailableError(f"backend 'tensorrt' needs TensorRT >= 10, found {tensorrt.__version__}")
    return tensorrt


def engine_dir(root: str | Path, model_digest: str, tensorrt_version: str, gpu_name: str) -> Path:
    """Where the engines of one model, TensorRT version and GPU live (see the module docstring)."""
    gpu = re.sub(r"[^A-Za-z0-9.]+", "-", gpu_name).strip("-")
    return Path(root) / "tensorrt" / model_digest[:16] / f"trt-{tensorrt_version}" / gpu


def profile_shapes(graph: dict[str, Any], dims: dict[str, dict[str, int]]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """``input -> (min, opt, max)`` shapes of one graph: each named axis takes its range from ``dims``."""
    shapes = {}
    for name, spec in graph["inputs"].items():
        shapes[name] = tuple(
            tuple(dims[dim][end] if isinstance(dim, str) else dim for dim in spec["shape"])
            for end in ("min", "opt", "max")
        )
    return shapes


def build_dims(manifest: dict[str, Any], options: BuildOptions) -> dict[str, dict[str, int]]:
    """The export's dimension ranges, with the batch axis widened to ``options.max_targets`` if given."""
    dims = copy.deepcopy(manifest["dims"])
    if options.max_targets is not None:
        dims["batch"]["max"] = options.max_targets
    return dims


def build_engine(onnx_path: Path, shapes: dict[str, tuple], options: BuildOptions, timing_cache: Path) -> bytes:
    """Parse one ONNX file and build a serialized engine with one optimisation profile, updating the timing cache."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path.name}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, (smallest, typical, largest) in shapes.items():
        profile.set_shape(name, smallest, typical, largest)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path.name}: TensorRT could not build an engine (see its log above)")
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized))


def build_engines(
    sam: SAM2Base,
    onnx_dir: str | Path,
    root: str | Path,
    options: BuildOptions | None = None,
    digest: str | None = None,
) -> Path:
    """Build, check against PyTorch and cache the four engines of ``sam`` (on its CUDA device); returns their
    directory. Nothing is written to the cache unless every part passes the check."""
    from sa2va_ros.runtime.parity import compare_parts
    from sa2va_ros.runtime.torch_parts import TorchParts

    trt = require_tensorrt()
    options = options or BuildOptions()
    device = next(sam.parameters()).device
    if device.type != "cuda":
        raise BackendUnavailableError("backend 'tensorrt' needs the model on a CUDA device")
    onnx_dir = Path(onnx_dir)
    manifest = read_manifest(onnx_dir)
    digest = digest or model_hash(sam)
    check_model_matches(manifest, sam, digest, onnx_dir)
    gpu = torch.cuda.get_device_name(device)
    out_dir = engine_dir(root, digest, trt.__version__, gpu)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    dims = build_dims(manifest, options)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".sa2va-engines-", dir=out_dir.parent) as tmp:
        staging = Path(tmp)
        timing_cache = staging / TIMING_CACHE
        if (out_dir / TIMING_CACHE).is_file():
            timing_cache.write_bytes((out_dir / TIMING_CACHE).read_bytes())
        for part, graph in manifest["graphs"].items():
            LOGGER.warning("building the TensorRT engine %s (minutes on a large model)", part)
            engine = build_engine(onnx_dir / graph["file"], profile_shapes(graph, dims), options, timing_cache)
            (staging / f"{part}.engine").write_bytes(engine)
        build = {
            "model_hash": digest,
            "tensorrt": trt.__version__,
            "gpu": gpu,
            "options": asdict(options),
            "dims": dims,
            "onnx_manifest": {**manifest, "dims": dims},
            "torch": torch.__version__,
        }
        (staging / BUILD_FILE).write_text(json.dumps(build, indent=2) + "\n")
        reference = sam if all(p.dtype == torch.float32 for p in sam.parameters()) else copy.deepcopy(sam).float()
        errors = compare_parts(TensorRTParts(sam, staging, digest), TorchParts(reference), reference)
        failed = {part: error for part, error in errors.items() if not error <= options.tolerance}
        if failed:
            raise EngineBuildError(
                f"TensorRT engines do not reproduce PyTorch for {sorted(failed)} (relative errors {failed}, "
                f"tolerance {options.tolerance}); nothing was written to {out_dir}"
            )
        build["check"] = {"max_relative_error": errors, "tolerance": options.tolerance}
        build["build_seconds"] = round(time.monotonic() - started, 1)
        (staging / BUILD_FILE).write_text(json.dumps(build, indent=2) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / BUILD_FILE).unlink(missing_ok=True)
        for file in sorted(staging.iterdir(), key=lambda f: f.name == BUILD_FILE):
            os.replace(file, out_dir / file.name)
    return out_dir


def ensure_engines(sam: SAM2Base, onnx_dir: Path, root: str | Path, digest: str | None = None) -> Path:
    """The cached engines of ``sam`` for this TensorRT and GPU, built (with default options) on first use."""
    trt = require_tensorrt()
    digest = digest or model_hash(sam)
    device = next(sam.parameters()).device
    if device.type != "cuda":
        raise BackendUnavailableError("backend 'tensorrt' needs the model on a CUDA device")
    out_dir = engine_dir(root, digest, trt.__version__, torch.cuda.get_device_name(device))
    build_file = out_dir / BUILD_FILE
    if build_file.is_file() and json.loads(build_file.read_text())["model_hash"] == digest:
        return out_dir
    return build_engines(sam, onnx_dir, root, digest=digest)


class TensorRTParts(GraphParts):
    """The four parts as TensorRT engines (one execution context each), on torch's current CUDA stream."""

    name = "tensorrt"

    def __init__(self, sam: SAM2Base, engines: str | Path, model_digest: str | None = None) -> None:
        trt = require_tensorrt()
        engines = Path(engines)
        build_file = engines / BUILD_FILE
        if not build_file.is_file():
            raise ManifestError(f"{engines}: no {BUILD_FILE} (build the engines with sa2va-build-engines)")
        build = json.loads(build_file.read_text())
        check_model_matches(build["onnx_manifest"], sam, model_digest, engines)
        super().__init__(sam, build["onnx_manifest"])
        if self.device.type != "cuda":
            raise BackendUnavailableError("backend 'tensorrt' needs the model on a CUDA device")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {
            part: runtime.deserialize_cuda_engine((engines / f"{part}.engine").read_bytes())
            for part in self.manifest["graphs"]
        }
        self.contexts = {part: engine.create_execution_context() for part, engine in self.engines.items()}
        self._empty = torch.empty(16, dtype=torch.uint8, device=self.device)  # an address for zero-size tensors

    def _run(self, part: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context = self.contexts[part]
        for name, tensor in feeds.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise EngineBuildError(
                    f"{part}: input {name!r} of shape {tuple(tensor.shape)} is outside the engine's optimisation "
                    f"profile (dims {self.dims}); rebuild with sa2va-build-engines (e.g. --max-targets)"
                )
            context.set_tensor_address(name, tensor.data_ptr() if tensor.numel() else self._empty.data_ptr())
        outputs = {}
        for name, spec in self.manifest["graphs"][part]["outputs"].items():
            tensor = torch.empty(tuple(context.get_tensor_shape(name)), dtype=DTYPES[spec["dtype"]], device=self.device)
            context.set_tensor_address(name, tensor.data_ptr())
            outputs[name] = tensor
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {part} engine")
        return outputs
