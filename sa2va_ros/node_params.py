"""Parameters of the ``sa2va`` node: names, defaults, descriptions and validation (ROS-free).

``config/sa2va.yaml`` lists every parameter with its default value. The node declares each one with
dynamic typing, so a value of the wrong type reaches ``validate_parameters`` and gets the same clear,
one-line message as an out-of-range value; ``configure`` fails listing every bad value at once.
Parameters are read at ``configure``: change them, then ``cleanup`` and ``configure`` again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sa2va_ros.pipeline import PipelineConfig
from sa2va_ros.ros_io import DEFAULT_MAX_PIXELS, DURABILITY_CHOICES, RELIABILITY_CHOICES, QoSSettings
from sa2va_ros.runtime import BACKENDS, backend_problem
from sa2va_ros.tracking import TrackerConfig

ParameterValue = bool | int | float | str
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LABEL_ID_LIMITS = {"mono8": 255, "mono16": 65535}


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: its default (which also fixes its type), meaning and allowed values."""

    name: str
    default: ParameterValue
    description: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def field(self) -> str:
        """The ``NodeParams`` attribute: the name with dots (nested YAML keys) as underscores."""
        return self.name.replace(".", "_")


def _qos_specs(group: str, reliability: str, depth: int, what: str) -> tuple[ParameterSpec, ...]:
    return (
        ParameterSpec(f"{group}.reliability", reliability, f"QoS reliability of {what}", RELIABILITY_CHOICES),
        ParameterSpec(f"{group}.durability", "volatile", f"QoS durability of {what}", DURABILITY_CHOICES),
        ParameterSpec(f"{group}.depth", depth, f"QoS history depth (keep last N) of {what}", minimum=1),
    )


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model_path", "", "checkpoint directory (project or official Sa2VA); empty: the bundled model"),
    ParameterSpec("device", "auto", "torch device: auto (cuda when available), cpu, cuda or cuda:N"),
    ParameterSpec("dtype", "auto", "model dtype; auto: float32 on cpu, bfloat16 on cuda", tuple(DTYPES)),
    ParameterSpec("backend", "torch", "runtime of the SAM-2 parts (onnxruntime and tensorrt use exported files)",
                  BACKENDS),
    ParameterSpec("engines_dir", "", "cache of exported ONNX files and TensorRT engines, made on first use; "
                  "empty: $SA2VA_ROS_ENGINES_DIR or ~/.cache/sa2va_ros/engines"),
    ParameterSpec("torch_threads", 0, "CPU threads for torch; 0 keeps torch's default", minimum=0),
    ParameterSpec("autostart", True, "the sa2va_node executable configures and activates the node itself"),
    ParameterSpec("image_transport", "raw", "raw: subscribe to image; compressed: image/compressed",
                  ("raw", "compressed")),
    ParameterSpec("keyframes", 1, "most recent frames given to the LLM per grounding (motion needs several)",
                  minimum=1, maximum=32),
    ParameterSpec("max_new_tokens", 64, "answer length limit of one grounding", minimum=1, maximum=4096),
    ParameterSpec("catch_up_frames", 16, "frames kept for catch-up; older keyframes prompt the present frame",
                  minimum=1, maximum=256),
    ParameterSpec("lost_score_threshold", 0.0, "object score logit below which a frame counts as absent"),
    ParameterSpec("lost_after_frames", 5, "consecutive absent frames before a target is reported lost", minimum=1),
    ParameterSpec("reground_lost", True, "re-ground a lost target with its phrase (it keeps its id)"),
    ParameterSpec("reground_interval_s", 2.0, "at most one re-grounding per target in this interval", minimum=0),
    ParameterSpec("reground_min_score", 0.0, "object score logit a re-grounded target needs on its keyframe"),
    ParameterSpec("max_targets", 8, "targets tracked at once; further [SEG]s are refused", minimum=1,
                  maximum=65535),
    ParameterSpec("mask_encoding", "mono8", "label image encoding of masks (mono16 for ids above 255)",
                  tuple(LABEL_ID_LIMITS)),
    ParameterSpec("publish_overlay", False, "publish the rgb8 overlay image (costs a copy per frame)"),
    ParameterSpec("max_image_pixels", DEFAULT_MAX_PIXELS, "larger images are refused (default: 8K UHD)",
                  minimum=1),
    ParameterSpec("max_command_chars", 1000, "longer commands are refused", minimum=1),
    ParameterSpec("command_queue_size", 4, "grounding requests waiting; the oldest is dropped past it", minimum=1),
    ParameterSpec("no_image_warning_s", 3.0, "warn when no image arrived for this long; 0 disables", minimum=0),
    ParameterSpec("diagnostics_period_s", 1.0, "period of /diagnostics", minimum=0.05),
    *_qos_specs("image_qos", "best_effort", 1, "the image subscription"),
    *_qos_specs("command_qos", "reliable", 10, "the command subscription"),
    *_qos_specs("output_qos", "reliable", 5, "masks, targets and answer"),
)
PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)


class ParameterError(ValueError):
    """One or more invalid parameter values; ``problems`` holds one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid parameters:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class NodeParams:
    """Validated parameter values (see ``PARAMETERS`` for their meaning)."""

    model_path: str
    device: str
    dtype: str
    backend: str
    engines_dir: str
    torch_threads: int
    autostart: bool
    image_transport: str
    keyframes: int
    max_new_tokens: int
    catch_up_frames: int
    lost_score_threshold: float
    lost_after_frames: int
    reground_lost: bool
    reground_interval_s: float
    reground_min_score: float
    max_targets: int
    mask_encoding: str
    publish_overlay: bool
    max_image_pixels: int
    max_command_chars: int
    command_queue_size: int
    no_image_warning_s: float
    diagnostics_period_s: float
    image_qos_reliability: str
    image_qos_durability: str
    image_qos_depth: int
    command_qos_reliability: str
    command_qos_durability: str
    command_qos_depth: int
    output_qos_reliability: str
    output_qos_durability: str
    output_qos_depth: int

    def qos(self, group: str) -> QoSSettings:
        """QoS settings of ``image_qos``, ``command_qos`` or ``output_qos``."""
        return QoSSettings(
            getattr(self, f"{group}_reliability"), getattr(self, f"{group}_durability"), getattr(self, f"{group}_depth")
        )

    @property
    def torch_device(self) -> torch.device:
        """The device to run on ("auto": the first CUDA device when there is one)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype]

    def tracker_config(self) -> TrackerConfig:
        return TrackerConfig(
            feature_buffer=self.catch_up_frames,
            lost_score_threshold=self.lost_score_threshold,
            lost_after_frames=self.lost_after_frames,
            backend=self.backend,
            engines_dir=str(Path(self.engines_dir).expanduser()) if self.engines_dir else "",
        )

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(
            keyframes=self.keyframes,
            max_new_tokens=self.max_new_tokens,
            max_targets=self.max_targets,
            max_target_id=LABEL_ID_LIMITS[self.mask_encoding],
            reground_lost=self.reground_lost,
            reground_interval_s=self.reground_interval_s,
            reground_min_score=self.reground_min_score,
            command_queue_size=self.command_queue_size,
            max_command_chars=self.max_command_chars,
        )


def default_values() -> dict[str, ParameterValue]:
    """Every parameter's default, by ROS name."""
    return {spec.name: spec.default for spec in PARAMETERS}


def validate_parameters(values: Mapping[str, Any]) -> NodeParams:
    """Check every value (missing ones take their default); raises ParameterError listing each bad one."""
    problems = [f"unknown parameter {name!r}" for name in values if name not in PARAMETER_NAMES]
    checked: dict[str, Any] = {}
    for spec in PARAMETERS:
        value = values.get(spec.name, spec.default)
        problem = _check(spec, value)
        if problem:
            problems.append(f"parameter {spec.name!r} = {value!r}: {problem}")
        checked[spec.field] = float(value) if isinstance(spec.default, float) and not problem else value
    if not problems:
        problems.extend(_check_together(checked))
    if problems:
        raise ParameterError(problems)
    return NodeParams(**checked)


def _check(spec: ParameterSpec, value: Any) -> str | None:
    """Why ``value`` is not valid for ``spec``, or None."""
    expected = type(spec.default)
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return "must be a number"
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
    elif not isinstance(value, expected):
        return f"must be a {'boolean (true/false)' if expected is bool else 'string'}"
    if spec.choices and value not in spec.choices:
        return f"must be one of: {', '.join(spec.choices)}"
    if spec.minimum is not None and value < spec.minimum:
        return f"must be >= {spec.minimum:g}"
    if spec.maximum is not None and value > spec.maximum:
        return f"must be <= {spec.maximum:g}"
    if spec.name == "device":
        return _device_problem(value)
    if spec.name == "backend":
        return backend_problem(value)
    if spec.name == "model_path" and value:
        return _model_path_problem(Path(value).expanduser())
    return None


def _device_problem(device: str) -> str | None:
    if not _DEVICE.fullmatch(device):
        return "must be auto, cpu, cuda or cuda:N"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine (use cpu or auto)"
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return f"there are only {torch.cuda.device_count()} CUDA device(s)"
    return None


def _model_path_problem(path: Path) -> str | None:
    if not path.is_dir():
        return "no such directory"
    if not (path / "config.json").is_file():
        return "not a checkpoint directory (no config.json)"
    return None


def _check_together(values: dict[str, Any]) -> list[str]:
    """Constraints between parameters."""
    problems = []
    limit = LABEL_ID_LIMITS[values["mask_encoding"]]
    if values["max_targets"] > limit:
        problems.append(
            f"parameter 'max_targets' = {values['max_targets']}: {values['mask_encoding']} masks hold ids up to "
            f"{limit}; lower it or set mask_encoding to mono16"
        )
    runs_on_cuda = values["device"].startswith("cuda") or (values["device"] == "auto" and torch.cuda.is_available())
    if values["backend"] == "tensorrt" and not runs_on_cuda:
        problems.append(f"parameter 'backend' = 'tensorrt': TensorRT runs on CUDA, but device is {values['device']!r}"
                        + ("" if values["device"] != "auto" else " and this machine has no CUDA device"))
    return problems
