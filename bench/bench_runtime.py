"""SAM-2 backends side by side: each of the four parts, and a tracked frame, per backend, with ratios to PyTorch.

On the CPU: PyTorch vs ONNX Runtime (CPU provider). With ``--device cuda`` also PyTorch under bfloat16 autocast
(the tracker's default on CUDA), ``torch.compile``, ONNX Runtime's CUDA provider and TensorRT; a backend that is
not installed (or fails to start) is reported as unavailable and the others still run (``--backends`` picks).
Calls are interleaved (every backend once per repeat, in turn) so that all see the same machine load; times are
wall clock, after ``torch.cuda.synchronize`` on the GPU, and process CPU time is printed too on the CPU (threads
pinned).

Commands used for bench/RESULTS_runtime.md:
  .venv/bin/python bench/bench_runtime.py --config tiny --threads 1
  .venv/bin/python bench/bench_runtime.py --config sam2.1_hiera_t --threads 1 --repeats 3 --frames 4 --targets 1
  python bench/bench_runtime.py --config sam2.1_hiera_t --device cuda      (GPU machine)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sa2va_ros.cli.export import load_sam2
from sa2va_ros.model.preprocess import sam2_pixels
from sa2va_ros.runtime import BackendUnavailableError, SamParts, TorchParts, load_parts
from sa2va_ros.synthetic import sample_referring_video
from sa2va_ros.tracking import StreamingTracker, TrackerConfig


@dataclass
class Variant:
    name: str
    parts: SamParts
    autocast: bool = False  # bfloat16 autocast on CUDA around every call (the tracker's CUDA default)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[tuple[float, float], Any]:
    """((wall, process CPU) seconds, result) of one call, the GPU drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - wall, time.process_time() - cpu), result


@contextlib.contextmanager
def compute(variant: Variant, device: torch.device) -> Iterator[None]:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if variant.autocast else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        yield


def compiled_parts(sam: torch.nn.Module) -> SamParts:
    """PyTorch parts whose four modules go through ``torch.compile`` (a copy; the eager model is untouched)."""
    model = copy.deepcopy(sam)
    for name in ("image_encoder", "memory_attention", "memory_encoder", "sam_mask_decoder", "sam_prompt_encoder"):
        setattr(model, name, torch.compile(getattr(model, name), dynamic=None))
    return TorchParts(model)


CHOICES = ("torch", "torch-bf16", "compile", "onnxruntime", "tensorrt")  # --backends; the GPU-only ones skip on CPU


def variants(sam: torch.nn.Module, device: torch.device, root: Path, chosen: set[str]) -> list[Variant]:
    """The PyTorch reference and every chosen backend this machine can run; the others are printed as
    unavailable, with the reason."""
    found = [Variant("torch (eager, fp32)", TorchParts(sam))]
    ort_name = "onnxruntime (CPU)" if device.type == "cpu" else "onnxruntime (CUDA)"
    candidates: list[tuple[str, str, Callable[[], SamParts], bool]] = [
        ("torch-bf16", "torch (eager, bf16 autocast)", lambda: TorchParts(sam), True),
        ("compile", "torch.compile (fp32)", lambda: compiled_parts(sam), False),
        ("onnxruntime", ort_name, lambda: load_parts(sam, "onnxruntime", root), False),
        ("tensorrt", "tensorrt (fp16 engines)", lambda: load_parts(sam, "tensorrt", root), False),
    ]
    for key, name, make, autocast in candidates:
        if key not in chosen or (device.type == "cpu" and key in ("torch-bf16", "compile", "tensorrt")):
            continue
        try:
            found.append(Variant(name, make(), autocast))
        except (BackendUnavailableError, RuntimeError, ImportError) as exc:
            print(f"  {name:30s} unavailable: {exc}")
            continue
        check = getattr(found[-1].parts, "manifest", {}).get("check")
        if check:  # the export's own comparison with PyTorch, on the CPU
            errors = ", ".join(f"{part} {error:.1e}" for part, error in check["max_relative_error"].items())
            print(f"  {name:30s} export check, relative error vs PyTorch: {errors}")
    return found


def part_calls(sam: torch.nn.Module, parts: SamParts, frame: np.ndarray, targets: int) -> dict[str, Callable[[], Any]]:
    """One call per part on realistic inputs: a synthetic frame, a full memory bank per target (num_maskmem
    frames and max_obj_ptrs_in_encoder pointers), the decoder in tracking mode."""
    device = next(sam.parameters()).device
    generator = torch.Generator().manual_seed(0)
    image = sam2_pixels(frame, sam.image_size, device)[None]
    with torch.inference_mode():
        features = parts.encode_image(image)
    embed, pos = features.image_embed, features.image_pos
    frame_tokens = embed.shape[-2] * embed.shape[-1]
    pointers = (sam.hidden_dim // sam.mem_dim) * sam.max_obj_ptrs_in_encoder
    tokens = sam.num_maskmem * frame_tokens + pointers
    memory = torch.randn(tokens, targets, sam.mem_dim, generator=generator).to(device)
    memory_pos = torch.randn(tokens, targets, sam.mem_dim, generator=generator).to(device)
    conditioned = torch.randn(targets, sam.hidden_dim, *embed.shape[-2:], generator=generator).to(device)
    masks = torch.randn(targets, 1, sam.image_size, sam.image_size, generator=generator).to(device)
    scores = torch.randn(targets, 1, generator=generator).to(device)
    return {
        "image_encoder": lambda: parts.encode_image(image),
        "memory_attention": lambda: parts.attend_memory(embed, pos, memory, memory_pos, pointers),
        "memory_encoder": lambda: parts.encode_memory(embed, masks, scores, False),
        "mask_decoder": lambda: parts.decode_masks(conditioned, features, multimask=True),
    }


def summary(samples: list[tuple[float, float]], device: torch.device) -> str:
    wall = [sample[0] for sample in samples]
    text = f"wall mean {1000 * statistics.fmean(wall):9.3f} ms (median {1000 * statistics.median(wall):9.3f})"
    if device.type == "cpu":
        text += f" | CPU {1000 * statistics.fmean(sample[1] for sample in samples):9.3f} ms"
    return text


def ratio(ours: list[tuple[float, float]], theirs: list[tuple[float, float]], device: torch.device) -> str:
    text = f"wall {statistics.fmean(s[0] for s in ours) / statistics.fmean(s[0] for s in theirs):.3f}"
    if device.type == "cpu":
        text += f", CPU {statistics.fmean(s[1] for s in ours) / statistics.fmean(s[1] for s in theirs):.3f}"
    return text


def report(title: str, samples: dict[str, list[tuple[float, float]]], device: torch.device) -> None:
    print(title)
    baseline = next(iter(samples.values()))
    for name, values in samples.items():
        print(f"  {name:30s} {summary(values, device)}   ratio to torch: {ratio(values, baseline, device)}")


def bench_parts(sam: torch.nn.Module, found: list[Variant], frame: np.ndarray, targets: int, repeats: int,
                device: torch.device) -> None:
    calls = {variant.name: part_calls(sam, variant.parts, frame, targets) for variant in found}
    for part in ("image_encoder", "memory_attention", "memory_encoder", "mask_decoder"):
        samples: dict[str, list[tuple[float, float]]] = {variant.name: [] for variant in found}
        for round_index in range(repeats + 1):  # round 0 warms up (and compiles)
            for variant in found:
                with compute(variant, device):
                    sample, _ = timed(calls[variant.name][part], device)
                if round_index:
                    samples[variant.name].append(sample)
        batch = "1 frame" if part == "image_encoder" else f"{targets} target(s)"
        report(f"\n[parts] {part} ({batch}, {repeats} repeats)", samples, device)


def bench_frames(sam: torch.nn.Module, found: list[Variant], frames: list[np.ndarray], labels: list[np.ndarray],
                 targets: int, device: torch.device) -> None:
    """tracker.step per backend, interleaved frame by frame; masks compared with the PyTorch tracker's."""
    trackers = {}
    for variant in found:
        tracker = StreamingTracker(sam, TrackerConfig(cuda_bf16_autocast=variant.autocast), parts=variant.parts)
        for target in range(targets):
            mask = labels[0] == (target % int(labels[0].max())) + 1
            tracker.add_target(target + 1, frames[0] if target == 0 else None, mask=mask, at=0 if target else None)
        trackers[variant.name] = tracker
    samples: dict[str, list[tuple[float, float]]] = {variant.name: [] for variant in found}
    worst_iou = dict.fromkeys(samples, 1.0)
    for frame in frames[1:]:
        results = {}
        for name, tracker in trackers.items():
            sample, results[name] = timed(lambda tracker=tracker, frame=frame: tracker.step(frame), device)
            samples[name].append(sample)
        reference = next(iter(results.values()))
        for name, result in results.items():
            for target_id, mask in reference.masks.items():
                union = (mask | result.masks[target_id]).sum()
                iou = 1.0 if union == 0 else float((mask & result.masks[target_id]).sum() / union)
                worst_iou[name] = min(worst_iou[name], iou)
    for values in samples.values():
        del values[0]  # the first step warms up (and compiles)
    report(f"\n[frame] tracker.step, {targets} target(s), frames 2..{len(frames) - 1}", samples, device)
    print("  lowest mask IoU vs torch over the clip: " + ", ".join(f"{k}: {v:.4f}" for k, v in worst_iou.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="tiny, or a SAM-2 variant such as sam2.1_hiera_t")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime CPU threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per part and backend")
    parser.add_argument("--frames", type=int, default=30, help="clip length for the per-frame measurement")
    parser.add_argument("--targets", default="1,8", help="numbers of targets to measure")
    parser.add_argument("--engines-dir", default=None, help="ONNX / TensorRT cache (default: a temporary one)")
    parser.add_argument("--backends", default=",".join(CHOICES),
                        help=f"compared with eager PyTorch: any of {', '.join(CHOICES)} (bf16 / compile / tensorrt: "
                        "CUDA only)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sam = load_sam2(args.config, seed=0).to(device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"config {args.config}: image {sam.image_size}², torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {hardware}")
    size = (sam.image_size * 3 // 4, sam.image_size)
    video = sample_referring_video(seed=4, num_frames=args.frames, size=size, kind="multi")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.engines_dir or tmp)
        started = time.perf_counter()
        found = variants(sam, device, root, set(args.backends.split(",")))
        print(f"backends ready in {time.perf_counter() - started:.1f} s (ONNX export / engine builds included): "
              + ", ".join(variant.name for variant in found))
        for targets in (int(n) for n in args.targets.split(",")):
            bench_parts(sam, found, video.frames[0], targets, args.repeats, device)
            bench_frames(sam, found, video.frames, video.labels, targets, device)


if __name__ == "__main__":
    main()
