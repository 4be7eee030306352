"""ONNX export of the four SAM-2 parts, checked before anything is written.

``export_onnx(sam, out_dir)`` traces each part (``graphs.py``) with ``torch.onnx.export`` (the dynamo exporter),
with dynamic axes for the number of targets, memory frames, pointer tokens, points and ``[SEG]`` tokens. Each
file must pass the ONNX checker, and the whole set must match the PyTorch parts in ONNX Runtime (``parity.py``),
in a temporary directory; only then are the files moved into ``out_dir``, with ``manifest.json`` last:

    {"format": 1, "model_hash": "<sha256>", "opset": 18, "image_size": 1024, "dims": {"batch": {"min": 1,
     "opt": 1, "max": 8}, ...}, "graphs": {"mask_decoder": {"file": "mask_decoder.onnx", "inputs":
     {"image_embed": {"shape": ["batch", 256, 64, 64], "dtype": "float32"}, ...}, "outputs": {...}}, ...},
     "check": {"max_relative_error": {...}, "tolerance": 0.001}, "versions": {...}}

``dims`` gives each dynamic axis the range the runtime uses (TensorRT optimisation profiles are built from it).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from sam2.modeling.sam2_base import SAM2Base
from torch.export import Dim

from sa2va_ros.runtime.base import model_hash, suppresses_absent_masks
from sa2va_ros.runtime.graph_parts import MANIFEST, ManifestError, read_manifest
from sa2va_ros.runtime.graphs import GraphSpec, check_exportable, graph_specs

FORMAT = 1
OPSET = 18
TOLERANCE = 1e-3  # relative (parity.relative_error); measured ~1e-6 on the tiny model
LOGGER = logging.getLogger(__name__)
_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
}


class ExportCheckError(RuntimeError):
    """Exported graphs that do not match the PyTorch parts; nothing was written."""


@dataclass(frozen=True)
class ExportLimits:
    """Upper ends of the dynamic axes (the ONNX files accept any size; TensorRT engines are built for these)."""

    max_targets: int = 8  # PipelineConfig.max_targets
    max_points: int = 16  # clicks + 2 box corners per prompt
    max_language_tokens: int = 4  # [SEG] vectors per target (Sa2VA uses 1)
    max_conditioning_frames: int = 4  # TrackerConfig.max_conditioning_frames

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 1:
            raise ValueError(f"every export limit must be >= 1, got {asdict(self)}")


def dimension_ranges(sam: SAM2Base, limits: ExportLimits) -> dict[str, dict[str, int]]:
    """min / opt / max of every dynamic axis; opt is the steady state of one target with full memory."""
    split = sam.hidden_dim // sam.mem_dim  # tokens per object pointer
    pointer_frames = limits.max_conditioning_frames + sam.max_obj_ptrs_in_encoder - 1
    return {
        "batch": {"min": 1, "opt": 1, "max": limits.max_targets},
        "num_points": {"min": 1, "opt": 1, "max": limits.max_points},
        "language_tokens": {"min": 0, "opt": 0, "max": limits.max_language_tokens},
        "memory_frames": {
            "min": 1,
            "opt": sam.num_maskmem,
            "max": limits.max_conditioning_frames + sam.num_maskmem - 1,
        },
        "pointer_tokens": {"min": 0, "opt": split * sam.max_obj_ptrs_in_encoder, "max": split * pointer_frames},
    }


def export_onnx(
    sam: SAM2Base,
    out_dir: str | Path,
    limits: ExportLimits | None = None,
    *,
    tolerance: float = TOLERANCE,
    optimize: bool = True,
) -> dict[str, Any]:
    """Export, check and write the four graphs and ``manifest.json`` into ``out_dir``; returns the manifest.

    Raises ``UnsupportedModelError`` for configurations the graphs do not cover and ``ExportCheckError`` when
    ONNX Runtime does not reproduce PyTorch within ``tolerance`` (then ``out_dir`` is left untouched).
    """
    from sa2va_ros.runtime.onnxruntime_parts import OnnxRuntimeParts
    from sa2va_ros.runtime.parity import compare_parts
    from sa2va_ros.runtime.torch_parts import TorchParts

    check_exportable(sam)
    limits = limits or ExportLimits()
    model = _float32_cpu(sam)
    digest = model_hash(sam)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".sa2va-export-", dir=out_dir.parent) as tmp:
        staging = Path(tmp)
        graphs = {}
        for spec in graph_specs(model):
            path = staging / f"{spec.name}.onnx"
            _export_graph(spec, path, optimize)
            onnx.checker.check_model(str(path), full_check=True)
            graphs[spec.name] = _describe(path)
        manifest = {
            "format": FORMAT,
            "model_hash": digest,
            "model_class": type(sam).__name__,
            "image_size": sam.image_size,
            "suppress_absent_masks": suppresses_absent_masks(sam),
            "opset": OPSET,
            "limits": asdict(limits),
            "dims": dimension_ranges(sam, limits),
            "graphs": graphs,
            "versions": _versions(),
        }
        _write_json(staging / MANIFEST, manifest)
        errors = compare_parts(OnnxRuntimeParts(model, staging, digest), TorchParts(model), model)
        failed = {part: error for part, error in errors.items() if not error <= tolerance}
        if failed:
            raise ExportCheckError(
                f"ONNX Runtime does not reproduce PyTorch for {sorted(failed)} (relative errors {failed}, "
                f"tolerance {tolerance}); nothing was written to {out_dir}"
            )
        manifest["check"] = {"max_relative_error": errors, "tolerance": tolerance, "provider": "CPUExecutionProvider"}
        manifest["export_seconds"] = round(time.monotonic() - started, 1)
        _write_json(staging / MANIFEST, manifest)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MANIFEST).unlink(missing_ok=True)  # an interrupted move leaves no manifest, so no stale set
        for file in sorted(staging.iterdir(), key=lambda f: f.name == MANIFEST):
            os.replace(file, out_dir / file.name)
    return manifest


def ensure_exported(sam: SAM2Base, root: str | Path, digest: str | None = None) -> Path:
    """The export directory of ``sam`` in the cache ``root`` (``root/onnx/<model hash>``), exported on first use."""
    digest = digest or model_hash(sam)
    onnx_dir = Path(root) / "onnx" / digest[:16]
    try:
        if read_manifest(onnx_dir)["model_hash"] == digest:
            return onnx_dir
    except ManifestError:
        pass
    LOGGER.warning("exporting the SAM-2 parts to ONNX in %s (once per model)", onnx_dir)
    export_onnx(sam, onnx_dir)
    return onnx_dir


def _float32_cpu(sam: SAM2Base) -> SAM2Base:
    """``sam`` itself when it is a float32 CPU model in eval mode, else such a copy (export traces on the CPU)."""
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in sam.parameters()) and not sam.training:
        return sam
    return copy.deepcopy(sam).float().cpu().eval()


def _export_graph(spec: GraphSpec, path: Path, optimize: bool) -> None:
    dims: dict[str, Dim] = {}
    dynamic_shapes = {
        name: {axis: dims.setdefault(dim, Dim(dim, min=1)) for axis, dim in spec.dynamic[name].items()}
        if name in spec.dynamic
        else None
        for name in spec.inputs
    }
    # The exporter reports progress on stdout and warns about SAM-2's caches written while tracing.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module.eval(),
            spec.examples,
            str(path),
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            optimize=optimize,
        )


def _describe(path: Path) -> dict[str, Any]:
    """File name, and every input's and output's shape (ints, or dimension names) and dtype."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def tensors(values: Any) -> dict[str, dict[str, Any]]:
        return {
            value.name: {
                "shape": [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim],
                "dtype": _ONNX_DTYPES[value.type.tensor_type.elem_type],
            }
            for value in values
        }

    inputs, outputs = tensors(graph.input), tensors(graph.output)
    named = {dim for spec in inputs.values() for dim in spec["shape"] if isinstance(dim, str)}
    for name, spec in outputs.items():
        unknown = [dim for dim in spec["shape"] if isinstance(dim, str) and dim not in named]
        if unknown:  # the runtimes size outputs from their inputs' dimensions
            raise ExportCheckError(f"{path.name}: output {name!r} has dimensions {unknown} no input carries")
    return {"file": path.name, "inputs": inputs, "outputs": outputs}


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
