"""ONNX export (``sa2va-export``) and the TensorRT engine cache (``sa2va-build-engines``) on the tiny SAM-2.

The export runs once per test session (~1 min on 2 shared cores) into a cache shared with ``test_runtime.py``.
TensorRT cannot be installed on the development machines: its build test skips without ``tensorrt`` and a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sa2va_ros.cli import build_engines as build_engines_cli
from sa2va_ros.cli import export as export_cli
from sa2va_ros.runtime import export as export_module
from sa2va_ros.runtime import model_hash
from sa2va_ros.runtime.export import ExportCheckError, export_onnx
from sa2va_ros.runtime.graphs import UnsupportedModelError
from sa2va_ros.runtime.tensorrt_parts import BuildOptions, build_dims, engine_dir, profile_shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def sam() -> torch.nn.Module:
    return export_cli.load_sam2("tiny", seed=0)


@pytest.fixture(scope="module")
def exported(sam: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``sa2va-export tiny OUT_DIR`` into the session's engine cache (where ``load_parts`` looks), and its stdout."""
    out_dir = tmp_path_factory.getbasetemp() / "sa2va_engines" / "onnx" / model_hash(sam)[:16]
    if (out_dir / "manifest.json").is_file():  # test_runtime.py ran first in this session
        return out_dir, ""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert export_cli.main(["tiny", str(out_dir)]) == 0
    return out_dir, printed.getvalue()


def test_export_writes_four_checked_graphs_and_a_manifest(sam: torch.nn.Module, exported: tuple[Path, str]) -> None:
    out_dir, printed = exported
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["model_hash"] == model_hash(sam) and manifest["opset"] == 18
    assert manifest["image_size"] == 128 and manifest["model_class"] == "Sa2VASam2"
    assert list(manifest["graphs"]) == ["image_encoder", "memory_attention", "memory_encoder", "mask_decoder"]
    for part, error in manifest["check"]["max_relative_error"].items():
        assert error <= manifest["check"]["tolerance"], part
    for graph in manifest["graphs"].values():
        onnx.checker.check_model(str(out_dir / graph["file"]), full_check=True)
        assert graph["file"] in printed or not printed  # the CLI lists every file it wrote
    decoder = manifest["graphs"]["mask_decoder"]
    assert decoder["inputs"]["image_embed"]["shape"] == ["batch", 256, 8, 8]
    assert decoder["inputs"]["point_coords"]["shape"] == ["batch", "num_points", 2]
    assert decoder["inputs"]["language_embd"]["shape"] == ["batch", "language_tokens", 256]
    assert decoder["outputs"]["low_res_masks"]["shape"] == ["batch", 1, 32, 32]
    attention = manifest["graphs"]["memory_attention"]["inputs"]
    assert attention["memory"]["shape"] == ["memory_frames", 64, "batch", 64]
    assert attention["pointers"]["shape"] == ["pointer_tokens", "batch", 64]
    # ranges for TensorRT profiles: 1..8 targets, memory as TrackerConfig fills it (4 conditioning frames max)
    assert manifest["dims"]["batch"] == {"min": 1, "opt": 1, "max": 8}
    assert manifest["dims"]["memory_frames"] == {"min": 1, "opt": 7, "max": 10}
    assert manifest["dims"]["pointer_tokens"] == {"min": 0, "opt": 64, "max": 76}


@pytest.mark.parametrize("batch", [1, 5])
def test_the_batch_axis_is_dynamic_in_the_onnx_files(exported: tuple[Path, str], batch: int) -> None:
    """Traced with 2 targets; 1 and 5 must run too (the new exporter can silently freeze an axis traced at 1)."""
    out_dir, _ = exported
    session = ort.InferenceSession(str(out_dir / "memory_encoder.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    memory, memory_pos = session.run(
        None,
        {
            "image_embed": rng.standard_normal((1, 256, 8, 8), dtype=np.float32),
            "high_res_masks": rng.standard_normal((batch, 1, 128, 128), dtype=np.float32),
            "object_score_logits": rng.standard_normal((batch, 1), dtype=np.float32),
            "binarize": np.array([False]),
        },
    )
    assert memory.shape == memory_pos.shape == (batch, 64, 8, 8)


def _perturbed_copy(source: Path, weight_scale: float) -> Any:
    """An ``_export_graph`` stand-in that writes the already exported graph, the memory encoder's output
    projection scaled (a wrong export)."""

    def export_graph(spec: Any, path: Path, optimize: bool) -> None:
        model = onnx.load(str(source / f"{spec.name}.onnx"))
        if spec.name == "memory_encoder":
            (weight,) = [t for t in model.graph.initializer if t.name.endswith("memory_encoder.out_proj.weight")]
            values = onnx.numpy_helper.to_array(weight) * weight_scale
            weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")

    return export_graph


def test_an_export_that_does_not_reproduce_pytorch_writes_nothing(
    sam: torch.nn.Module, exported: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = exported
    monkeypatch.setattr(export_module, "_export_graph", _perturbed_copy(source, 1.0))
    export_onnx(sam, tmp_path / "faithful")  # the stand-in itself reproduces the export
    assert (tmp_path / "faithful" / "manifest.json").is_file()
    monkeypatch.setattr(export_module, "_export_graph", _perturbed_copy(source, 1.05))
    with pytest.raises(ExportCheckError, match="memory_encoder"):
        export_onnx(sam, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["faithful"]  # no staging directory left behind


def test_configurations_outside_the_graphs_are_refused_before_tracing(sam: torch.nn.Module, tmp_path: Path) -> None:
    sam.use_obj_ptrs_in_encoder = False
    try:
        with pytest.raises(UnsupportedModelError, match="use_obj_ptrs_in_encoder"):
            export_onnx(sam, tmp_path / "out")
    finally:
        sam.use_obj_ptrs_in_encoder = True
    assert not (tmp_path / "out").exists()


def test_export_cli_reports_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_cli.main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert "sa2va-export:" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- TensorRT engine cache


def test_engine_cache_is_keyed_by_model_tensorrt_version_and_gpu() -> None:
    a = engine_dir("/cache", "0123456789abcdef" * 4, "10.3.0", "NVIDIA H100 80GB HBM3")
    assert a == Path("/cache/tensorrt/0123456789abcdef/trt-10.3.0/NVIDIA-H100-80GB-HBM3")
    assert engine_dir("/cache", "f" * 64, "10.3.0", "NVIDIA H100 80GB HBM3") != a
    assert engine_dir("/cache", "0123456789abcdef" * 4, "10.4.0", "NVIDIA H100 80GB HBM3") != a
    assert engine_dir("/cache", "0123456789abcdef" * 4, "10.3.0", "Orin (nvgpu)") != a


def test_optimisation_profiles_span_one_to_max_targets(exported: tuple[Path, str]) -> None:
    manifest = json.loads((exported[0] / "manifest.json").read_text())
    dims = build_dims(manifest, BuildOptions(max_targets=12))
    assert dims["batch"] == {"min": 1, "opt": 1, "max": 12} and manifest["dims"]["batch"]["max"] == 8
    decoder = profile_shapes(manifest["graphs"]["mask_decoder"], dims)
    assert decoder["image_embed"] == ((1, 256, 8, 8), (1, 256, 8, 8), (12, 256, 8, 8))
    assert decoder["high_res_0"] == ((1, 32, 32, 32),) * 3  # shared by the targets: static
    assert decoder["language_embd"] == ((1, 0, 256), (1, 0, 256), (12, 4, 256))
    attention = profile_shapes(manifest["graphs"]["memory_attention"], dims)
    assert attention["memory"] == ((1, 64, 1, 64), (7, 64, 1, 64), (10, 64, 12, 64))


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_build_engines_without_tensorrt_names_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_engines_cli.main(["tiny"]) == 1
    error = capsys.readouterr().err
    assert "'tensorrt'" in error and "pip install tensorrt" in error


@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not installed (it cannot be on the development machines)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT engines need a CUDA GPU")
def test_build_engines_writes_checked_engines_into_the_cache(exported: tuple[Path, str], tmp_path: Path) -> None:
    onnx_dir, _ = exported
    assert build_engines_cli.main(["tiny", "--cache-dir", str(tmp_path), "--onnx-dir", str(onnx_dir)]) == 0
    (build_file,) = tmp_path.glob("tensorrt/*/trt-*/*/build.json")
    build = json.loads(build_file.read_text())
    assert build["gpu"] == torch.cuda.get_device_name() and build["options"]["fp16"]
    assert all(error <= build["check"]["tolerance"] for error in build["check"]["max_relative_error"].values())
    for part in ("image_encoder", "memory_attention", "memory_encoder", "mask_decoder"):
        assert (build_file.parent / f"{part}.engine").stat().st_size > 0
    assert (build_file.parent / "timing.cache").is_file()


class _FakeTensorRT:
    """A MOCK standing only for the ``tensorrt`` module (which cannot be installed here): it records the builder
    calls ``build_engine`` makes, so their order and arguments are checked against TensorRT's documented API."""

    __version__ = "10.0.0"

    class Logger:
        WARNING = "warning"

        def __init__(self, severity: str) -> None:
            self.severity = severity

    class BuilderFlag:
        FP16, TF32 = "FP16", "TF32"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    def __init__(self, parses: bool = True) -> None:
        self.calls: list[tuple] = []
        self.parses = parses
        fake = self

        class Profile:
            def set_shape(self, name: str, smallest: tuple, typical: tuple, largest: tuple) -> None:
                fake.calls.append(("set_shape", name, smallest, typical, largest))

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+timings"

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag: str) -> None:
                fake.calls.append(("set_flag", flag))

            def clear_flag(self, flag: str) -> None:
                fake.calls.append(("clear_flag", flag))

            def add_optimization_profile(self, profile: Profile) -> None:
                fake.calls.append(("add_optimization_profile",))

            def create_timing_cache(self, data: bytes) -> Cache:
                return Cache(bytes(data))

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                self.cache = cache

            def get_timing_cache(self) -> Cache:
                return self.cache

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> str:
                return "network"

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: str, config: Config) -> bytes:
                return b"engine"

        class OnnxParser:
            num_errors = 1

            def __init__(self, network: str, logger: Any) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                fake.calls.append(("parse_from_file", Path(path).name))
                return fake.parses

            def get_error(self, index: int) -> str:
                return "unsupported operator"

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_build_engine_drives_the_tensorrt_builder_as_documented(
    exported: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sa2va_ros.runtime.tensorrt_parts import EngineBuildError, build_engine

    manifest = json.loads((exported[0] / "manifest.json").read_text())
    shapes = profile_shapes(manifest["graphs"]["memory_encoder"], manifest["dims"])
    fake = _FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"earlier")
    onnx_file = exported[0] / "memory_encoder.onnx"
    assert build_engine(onnx_file, shapes, BuildOptions(tf32=False, workspace_gib=1), cache) == b"engine"
    assert fake.calls[0] == ("parse_from_file", "memory_encoder.onnx")
    assert ("set_memory_pool_limit", "WORKSPACE", 2**30) in fake.calls
    assert ("set_flag", "FP16") in fake.calls and ("clear_flag", "TF32") in fake.calls
    profile = [call for call in fake.calls if call[0] == "set_shape"]
    assert ("set_shape", "high_res_masks", (1, 1, 128, 128), (1, 1, 128, 128), (8, 1, 128, 128)) in profile
    assert len(profile) == 4 and fake.calls[-1] == ("add_optimization_profile",)
    assert cache.read_bytes() == b"earlier+timings"  # loaded before, saved after the build
    fake.parses = False
    with pytest.raises(EngineBuildError, match="unsupported operator"):
        build_engine(onnx_file, shapes, BuildOptions(), cache)
