"""The ONNX Runtime backend: the exported graphs on the CPU or CUDA execution provider.

Tensors are bound in place (IO binding on torch's buffers), so no copy is made on either device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sam2.modeling.sam2_base import SAM2Base

from sa2va_ros.runtime.base import BACKEND_PACKAGES, BackendUnavailableError
from sa2va_ros.runtime.graph_parts import DTYPES, GraphParts, check_model_matches, read_manifest

try:
    import onnxruntime as ort
except ImportError as exc:
    raise BackendUnavailableError(
        f"backend 'onnxruntime' needs the Python package 'onnxruntime': {BACKEND_PACKAGES['onnxruntime'][1]}"
    ) from exc  # load_parts checks this first; the message is for direct imports

NUMPY_DTYPES = {torch.float32: np.float32, torch.int32: np.int32, torch.int64: np.int64, torch.bool: np.bool_}


def providers_for(device: torch.device) -> list[str]:
    """Execution providers for the model's device; CUDA without ``onnxruntime-gpu`` is one clear error."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                "backend 'onnxruntime' on CUDA needs the CUDA execution provider: pip install onnxruntime-gpu "
                f"(this onnxruntime offers {', '.join(ort.get_available_providers())})"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise BackendUnavailableError(f"backend 'onnxruntime' does not run on device {device}")


class OnnxRuntimeParts(GraphParts):
    """The four parts as ONNX Runtime sessions over an export directory made from the same model."""

    name = "onnxruntime"

    def __init__(
        self, sam: SAM2Base, onnx_dir: str | Path, model_digest: str | None = None, threads: int | None = None
    ) -> None:
        onnx_dir = Path(onnx_dir)
        manifest = read_manifest(onnx_dir)
        check_model_matches(manifest, sam, model_digest, onnx_dir)
        super().__init__(sam, manifest)
        self.onnx_dir = onnx_dir
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # the same budget as torch
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers_for(self.device)
        self.sessions = {
            part: ort.InferenceSession(str(onnx_dir / graph["file"]), options, providers=providers)
            for part, graph in manifest["graphs"].items()
        }

    def _run(self, part: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        session = self.sessions[part]
        binding = session.io_binding()
        device_type, device_id = self.device.type, self.device.index or 0
        for name, tensor in feeds.items():
            binding.bind_input(
                name, device_type, device_id, NUMPY_DTYPES[tensor.dtype], tuple(tensor.shape), tensor.data_ptr()
            )
        outputs = {}
        for name, spec in self.manifest["graphs"][part]["outputs"].items():
            dtype = DTYPES[spec["dtype"]]
            tensor = torch.empty(self.output_shape(part, name, feeds), dtype=dtype, device=self.device)
            binding.bind_output(
                name, device_type, device_id, NUMPY_DTYPES[dtype], tuple(tensor.shape), tensor.data_ptr()
            )
            outputs[name] = tensor
        if device_type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the inputs are written on torch's stream
        session.run_with_iobinding(binding)
        return outputs
