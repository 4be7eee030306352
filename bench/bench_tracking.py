"""Streaming tracker benchmarks, side by side with Meta's SAM2VideoPredictor on the same weights and frames.

Measures (CPU, torch threads pinned and reported; or ``--device cuda``, where both run under bf16 autocast
as SAM-2's own video examples do, and every timing synchronises the GPU):
  1. per-frame cost, 1 target: tracker.step vs one step of SAM2VideoPredictor.propagate_in_video
     (interleaved frame by frame so both see the same machine load);
  2. N targets (--targets, default 8) vs 1 target (tracker; and the predictor with N objects for reference);
  3. RSS growth over a long stream (tiny config);
  4. catch-up cost: add_target(at=now-k) for k buffered frames;
  5. torch ops the tracker dispatches per step outside the four SAM-2 parts, 1 vs N targets (each is at least one
     kernel launch on a GPU: host-side work that batching does not hide). Deterministic, so any machine will do;
  6. a torch.profiler view of 1 vs N targets: time per SAM-2 part and the costliest ops (device time on CUDA).

Commands used for bench/RESULTS_tracking.md:
  .venv/bin/python bench/bench_tracking.py --config tiny --frames 60 --multi-frames 30 --rss-frames 5000 --threads 1
  .venv/bin/python bench/bench_tracking.py --config sam2.1_hiera_t --frames 6 --multi-frames 3 \
      --no-reference-multi --sections 1,2 --threads 1
  python bench/bench_tracking.py --config sam2.1_hiera_t --device cuda --frames 30 --multi-frames 30 --sections 1,2
  python bench/bench_tracking.py --config sam2.1_hiera_t --device cuda --frames 30 --sections 6 --targets 8
  python bench/bench_tracking.py --config sam2.1_hiera_t --device cuda --frames 30 --sections 3,4 --rss-frames 2000 \
      --churn 25 --catch-up 1,4,8
  .venv/bin/python bench/bench_tracking.py --config sam2.1_hiera_t --frames 6 --sections 4 --catch-up 1,4,8 --threads 1
  .venv/bin/python bench/bench_tracking.py --config tiny --frames 40 --multi-frames 30 --rss-frames 0 \
      --sections 1,2 --threads 1   (and --targets 16 --no-reference-multi --sections 2)
  .venv/bin/python bench/bench_tracking.py --config tiny --pointer-encodings --sections 5 --targets 16 --threads 1
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import wraps
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # silence the predictor's progress bars

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from sa2va_ros.model.sam2_grounding import build_sam2, bundled_sam2_config, tiny_sam2_config
from sa2va_ros.tracking import StreamingTracker, TrackerConfig
from sa2va_ros.tracking.reference import build_reference_predictor

SAM2_PARTS = ("encode_image", "attend_memory", "encode_memory", "decode_masks")


def write_clip(folder: Path, num_frames: int, size: int, num_objects: int) -> tuple[list[np.ndarray], list]:
    """``num_objects`` noisy moving squares as ``size``² JPEGs; decoded frames + frame-0 masks."""
    rng = np.random.default_rng(0)
    side = size // 8
    rows = (num_objects + 3) // 4  # four squares per row; rows squeeze together past three so all stay in view
    row_step = min(size // 3, (size - size // 5 - side) // max(1, rows - 1))
    starts = [(size // 10 + (i % 4) * size // 5, size // 10 + (i // 4) * row_step) for i in range(num_objects)]
    frames = []
    for t in range(num_frames):
        image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        for i, (x0, y0) in enumerate(starts):
            dx = (t * max(1, size // 128)) % (size // 6)
            colour = ((60 + 25 * i) % 256, (200 - 15 * i) % 256, (40 + 20 * i) % 256)
            image[y0 : y0 + side, x0 + dx : x0 + dx + side] = colour
        path = folder / f"{t:05d}.jpg"
        Image.fromarray(image).save(path, quality=95)
        frames.append(np.array(Image.open(path).convert("RGB")))
    masks = []
    for x0, y0 in starts:
        mask = np.zeros((size, size), bool)
        mask[y0 : y0 + side, x0 : x0 + side] = True
        masks.append(mask)
    return frames, masks


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call. With one torch thread, CPU time is the stable measure on a
    shared machine; wall time is what a robot sees on an idle one."""
    synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def reference_autocast(device: torch.device):
    """The predictor's precision: bf16 autocast on CUDA (the tracker applies the same by itself)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def mean(samples: list[tuple[float, float]], which: int) -> float:
    return statistics.fmean(sample[which] for sample in samples)


def summary(samples: list[tuple[float, float]]) -> str:
    wall_median = statistics.median(sample[0] for sample in samples)
    return (
        f"wall mean {1000 * mean(samples, 0):9.2f} ms (median {1000 * wall_median:9.2f})"
        f" | CPU mean {1000 * mean(samples, 1):9.2f} ms"
    )


def ratio(ours: list[tuple[float, float]], theirs: list[tuple[float, float]]) -> str:
    return f"wall {mean(ours, 0) / mean(theirs, 0):.3f}, CPU {mean(ours, 1) / mean(theirs, 1):.3f}"


def predictor_steps(predictor, folder: Path, masks: list) -> Iterator[object]:
    """Meta's offline path; yields once per propagated frame (frame 0 is the prompted one)."""
    with reference_autocast(predictor.device):
        state = predictor.init_state(str(folder), offload_video_to_cpu=True)
        for obj_id, mask in enumerate(masks, start=1):
            predictor.add_new_mask(state, frame_idx=0, obj_id=obj_id, mask=mask)
    steps = predictor.propagate_in_video(state)
    while True:
        with reference_autocast(predictor.device):
            out = next(steps, None)
        if out is None:
            return
        yield out


def tracker_with_targets(model, frames, masks, count: int, parts=None) -> StreamingTracker:
    """A tracker given ``count`` mask targets on frame 0 (the first as a new frame, the others caught up on it)."""
    tracker = StreamingTracker(model, parts=parts)
    for i in range(count):
        tracker.add_target(i + 1, frames[0] if i == 0 else None, mask=masks[i], at=None if i == 0 else 0)
    return tracker


def tracker_variants(model) -> dict[str, TrackerConfig]:
    """The tracker as shipped, and on CUDA also with its parts eager (no CUDA graphs), for comparison."""
    variants = {"StreamingTracker": TrackerConfig()}
    if model.device.type == "cuda":
        variants["  no CUDA graphs"] = TrackerConfig(cuda_graphs=False)
    return variants


def passes(model) -> int:
    """Passes over the clip, the last one kept. On CUDA a warm-up pass first: cuDNN / cuBLAS plans are made per
    new shape (the memory grows for 16 frames), and whichever side met a shape first would pay for both; the
    trackers of the last pass reuse the warm-up's SAM-2 parts, and so its CUDA graphs, as a running node does."""
    return 2 if model.device.type == "cuda" else 1


def per_frame_cost(predictor, model, folder, frames, masks, steady_from: int) -> None:
    """1 target: tracker.step vs one predictor propagation step, interleaved frame by frame."""

    parts = {}  # per variant: the SAM-2 parts (and CUDA graphs) of the first pass, reused by the next

    def one_pass() -> tuple[list, dict[str, list]]:
        trackers = {
            name: StreamingTracker(model, config, parts=parts.get(name))
            for name, config in tracker_variants(model).items()
        }
        parts.update((name, tracker.parts) for name, tracker in trackers.items())
        for tracker in trackers.values():
            tracker.add_target(1, frames[0], mask=masks[0])
        reference = predictor_steps(predictor, folder, masks[:1])
        next(reference)  # frame 0: the prompted frame (memory encoding of the prompt)
        theirs, ours = [], {name: [] for name in trackers}
        for frame in frames[1:]:
            theirs.append(timed(lambda: next(reference)))
            for name, tracker in trackers.items():
                ours[name].append(timed(lambda frame=frame, tracker=tracker: tracker.step(frame)))
        return theirs, ours

    first = None
    for _ in range(passes(model)):
        theirs, ours = one_pass()
        first = first or ours
    with torch.inference_mode():
        image = torch.zeros(1, 3, model.image_size, model.image_size, device=model.device)
        with reference_autocast(model.device):
            encoder = [timed(lambda: model.forward_image(image)) for _ in range(3)]
    print("\n[1] per-frame cost, 1 target (frames 1..N-1)")
    print(f"  SAM2VideoPredictor   {summary(theirs)}")
    for name, samples in ours.items():
        print(f"  {name:20s} {summary(samples)}")
    print(f"  image encoder alone  {summary(encoder)} (eager)")
    for name, samples in ours.items():
        print(f"  ratio {name.strip()} / predictor: {ratio(samples, theirs)}  (goal <= 0.8)")
    if first is not ours:
        print(f"  warm-up pass, StreamingTracker (captures its CUDA graphs) {summary(first['StreamingTracker'])}")
        print(f"  CUDA graphs of StreamingTracker: {parts['StreamingTracker'].graph_stats()}")
    if len(frames) > steady_from + 1:
        print(f"  steady state, frames >= {steady_from + 1} (full memory):")
        print(f"  SAM2VideoPredictor   {summary(theirs[steady_from:])}")
        for name, samples in ours.items():
            print(f"  {name:20s} {summary(samples[steady_from:])}")
            steady = ratio(samples[steady_from:], theirs[steady_from:])
            print(f"  ratio {name.strip()} / predictor, steady state: {steady}")


def multi_target_cost(
    predictor, model, folder, frames, masks, num_targets: int, with_reference: bool, steady_from: int
) -> None:
    """num_targets vs 1 target on the same frames (tracker batched; the predictor loops over objects)."""

    parts = {}  # per target count: the SAM-2 parts (and CUDA graphs) of the first pass, reused by the next

    def one_pass() -> tuple[list, list, list]:
        single, multi = (
            tracker_with_targets(model, frames, masks, count, parts.get(count)) for count in (1, num_targets)
        )
        parts.update({1: single.parts, num_targets: multi.parts})
        reference = predictor_steps(predictor, folder, masks[:num_targets]) if with_reference else None
        if reference is not None:
            next(reference)
        one, many, theirs = [], [], []
        for frame in frames[1:]:
            one.append(timed(lambda frame=frame: single.step(frame)))
            many.append(timed(lambda frame=frame: multi.step(frame)))
            if reference is not None:
                theirs.append(timed(lambda: next(reference)))
        return one, many, theirs

    for _ in range(passes(model)):
        one, many, theirs = one_pass()
    print(f"\n[2] {num_targets} targets vs 1 target (frames 1..N-1)")
    print(f"  tracker, 1 target              {summary(one)}")
    print(f"  tracker, {num_targets} targets (batched)    {summary(many)}")
    print(f"  ratio {num_targets} / 1: {ratio(many, one)}  (goal <= 2.5)")
    if len(frames) > steady_from + 1:
        print(f"  steady state, frames >= {steady_from + 1}: 1 target {summary(one[steady_from:])}")
        print(f"  {'':33s}{num_targets} targets {summary(many[steady_from:])}")
        print(f"  ratio {num_targets} / 1, steady state: {ratio(many[steady_from:], one[steady_from:])}")
    if theirs:
        print(f"  SAM2VideoPredictor, {num_targets} objects  {summary(theirs)}")
        print(f"  ratio tracker / predictor at {num_targets} objects: {ratio(many, theirs)}")


def rss_growth(model, frames, masks, num_frames: int, churn: int) -> None:
    """RSS (and GPU memory on CUDA) over a long stream with 2 targets; the first 200 frames are warm-up.

    ``churn`` > 0: every ``churn`` frames a new target is caught up from 2 frames back and the oldest removed, so
    memories of every age and batch keep coming (new shapes for the CUDA graphs, which are bounded too).
    """
    process = psutil.Process()
    cuda = model.device.type == "cuda"
    tracker = StreamingTracker(model, TrackerConfig())
    tracker.add_target(1, frames[0], mask=masks[0])
    tracker.add_target(2, frames[0 + 1], mask=masks[1 % len(masks)])
    gc.collect()
    checkpoints = sorted({200, *range(1000, num_frames + 1, 1000), num_frames})
    rss, device_memory = {}, {}
    start = time.perf_counter()
    for t in range(2, num_frames + 1):
        tracker.step(frames[t % len(frames)])
        if churn and t % churn == 0:
            new_id = max(tracker.target_ids) + 1
            tracker.add_target(new_id, at=t - 2, mask=masks[new_id % len(masks)])
            tracker.remove_target(tracker.target_ids[0])
        if t in checkpoints:
            rss[t] = process.memory_info().rss / 2**20
            if cuda:
                device_memory[t] = torch.cuda.memory_allocated(model.device) / 2**20
    elapsed = time.perf_counter() - start
    added = f", a new target every {churn} frames" if churn else ""
    print(
        f"\n[3] RSS over {num_frames} frames, 2 targets{added} ({elapsed:.0f} s, "
        f"{1000 * elapsed / num_frames:.1f} ms/frame)"
    )
    print("  " + "  ".join(f"{t}: {mib:.1f} MiB" for t, mib in rss.items()))
    growth = rss[num_frames] - rss[200]
    print(f"  growth frame 200 -> {num_frames}: {growth:+.1f} MiB  (goal <= 50 MB)")
    if cuda:
        print("  GPU memory allocated: " + "  ".join(f"{t}: {mib:.1f} MiB" for t, mib in device_memory.items()))
        print(f"  growth frame 200 -> {num_frames}: {device_memory[num_frames] - device_memory[200]:+.1f} MiB")
        print(f"  CUDA graphs: {tracker.parts.graph_stats()}")
    print(f"  memory_stats: {tracker.memory_stats()}")


def catch_up_cost(model, frames, masks, ks: list[int]) -> None:
    """add_target(at=now-k): condition on a buffered keyframe and propagate k frames to the present."""
    tracker = StreamingTracker(model, TrackerConfig(feature_buffer=max(ks) + 1))
    tracker.add_target(1, frames[0], mask=masks[0])
    steps = [timed(lambda t=t: tracker.step(frames[t % len(frames)])) for t in range(1, max(ks) + 2)]
    now = tracker.frames_seen - 1
    print("\n[4] catch-up cost (1 target already tracked; one new target from a buffered keyframe)")
    print(f"  step(), for scale: {summary(steps)}")
    for k in ks:
        costs = []
        for _ in range(2):
            costs.append(timed(lambda k=k: tracker.add_target(2, at=now - k, mask=masks[1 % len(masks)])))
            tracker.remove_target(2)
        wall, cpu = min(costs)
        print(
            f"  k = {k:2d}: wall {1000 * wall:9.2f} ms, CPU {1000 * cpu:9.2f} ms"
            f"  ({1000 * cpu / k:.2f} ms CPU per caught-up frame; best of 2)"
        )


class _OpCounter(TorchDispatchMode):
    """Counts the torch ops dispatched, except inside functions wrapped by ``uncounted``."""

    def __init__(self) -> None:
        super().__init__()
        self.counting, self.ops = True, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += self.counting
        return func(*args, **(kwargs or {}))

    def uncounted(self, fn: Callable) -> Callable:
        @wraps(fn)
        def call(*args, **kwargs):
            self.counting = False
            try:
                return fn(*args, **kwargs)
            finally:
                self.counting = True

        return call


def host_ops(model, frames, masks, num_targets: int) -> None:
    """Torch ops per step in the tracker's own code (memory assembly, results: masks and boxes read, logits not)."""
    print("\n[5] torch ops per step outside the four SAM-2 parts (steady state, frames 20..29)")
    for count in sorted({1, num_targets}):
        tracker = tracker_with_targets(model, frames, masks, count)
        for frame in frames[1:20]:
            tracker.step(frame)
        counter = _OpCounter()
        for name in SAM2_PARTS:
            setattr(tracker.parts, name, counter.uncounted(getattr(tracker.parts, name)))
        with counter:
            for frame in frames[20:30]:
                result = tracker.step(frame)
                [(result.masks[i], result.boxes[i]) for i in result.masks]
        print(f"  {count:2d} target(s): {counter.ops / 10:6.0f} ops per step")


def part_profile(model, frames, masks, num_targets: int) -> None:
    """torch.profiler over steps 20..24: time per SAM-2 part and the costliest ops, 1 vs N targets."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = model.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    print("\n[6] profile, mean per step over frames 20..24 (device time on CUDA, else CPU time)")
    for count in sorted({1, num_targets}):
        tracker = tracker_with_targets(model, frames, masks, count)
        for frame in frames[1:20]:
            tracker.step(frame)
        for name in SAM2_PARTS:
            setattr(tracker.parts, name, record_function(name)(getattr(tracker.parts, name)))
        synchronize()
        with profile(activities=activities) as prof:
            for frame in frames[20:25]:
                tracker.step(frame)
            synchronize()
        events = prof.key_averages()
        by_name = {event.key: event for event in events}
        total = "device_time_total" if cuda else "cpu_time_total"
        parts = ", ".join(f"{name} {getattr(by_name[name], total) / 5e3:.2f} ms" for name in SAM2_PARTS)
        print(f"  {count} target(s): {parts}")
        print(events.table(sort_by=f"self_{total}", row_limit=12, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="tiny, or a bundled variant such as sam2.1_hiera_t")
    parser.add_argument("--frames", type=int, default=60, help="clip length for [1]")
    parser.add_argument("--multi-frames", type=int, default=30, help="clip length for [2]")
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--no-reference-multi", action="store_true", help="skip the predictor with N objects")
    parser.add_argument("--rss-frames", type=int, default=5000, help="0 to skip [3]")
    parser.add_argument("--churn", type=int, default=0, help="[3]: a new target every N frames (0: the same two)")
    parser.add_argument("--catch-up", default="1,4,8", help="k values for [4]; empty to skip")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--sections", default="1,2,3,4", help="which measurements to run (5: host ops, 6: profile; opt-in)"
    )
    parser.add_argument(
        "--pointer-encodings",
        action="store_true",
        help="tiny config with SAM 2.1's temporal encodings of object pointers (obj_ptr_tpos_proj)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.config == "tiny":
        model_cfg = tiny_sam2_config(128)
        variant = "sam2_hiera_t"
        if args.pointer_encodings:  # sam2.1_hiera_t's settings that sam2_hiera_t lacks
            variant = "sam2.1_hiera_t"
            model_cfg.update(
                add_tpos_enc_to_obj_ptrs=True,
                proj_tpos_enc_in_obj_ptrs=True,
                use_signed_tpos_enc_to_obj_ptrs=True,
                no_obj_embed_spatial=True,
            )
        predictor = build_reference_predictor(variant, model_cfg)
    else:
        model_cfg = bundled_sam2_config(args.config)
        predictor = build_reference_predictor(args.config)
    model = build_sam2(model_cfg, sa2va=False)
    model.load_state_dict(predictor.state_dict())
    device = torch.device(args.device)
    model.to(device)
    predictor.to(device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {os.cpu_count()} logical cores"
    print(
        f"config {args.config}: image {model.image_size}², torch {torch.__version__}, "
        f"torch.set_num_threads({torch.get_num_threads()}), {hardware}"
    )

    sections = {int(section) for section in args.sections.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "per_frame"
        folder.mkdir()
        frames, masks = write_clip(
            folder, max(args.frames, 30 if sections & {5, 6} else 0), model.image_size, max(2, args.targets)
        )
        if 1 in sections:
            per_frame_cost(predictor, model, folder, frames, masks, steady_from=model.max_obj_ptrs_in_encoder)
        if 2 in sections:
            multi_folder = Path(tmp) / "multi"
            multi_folder.mkdir()
            multi_frames, multi_masks = write_clip(multi_folder, args.multi_frames, model.image_size, args.targets)
            multi_target_cost(
                predictor, model, multi_folder, multi_frames, multi_masks, args.targets, not args.no_reference_multi,
                steady_from=model.max_obj_ptrs_in_encoder,
            )
    if 3 in sections and args.rss_frames:
        rss_growth(model, frames, masks, args.rss_frames, args.churn)
    if 4 in sections and args.catch_up:
        catch_up_cost(model, frames, masks, [int(k) for k in args.catch_up.split(",")])
    if 5 in sections:
        host_ops(model, frames, masks, args.targets)
    if 6 in sections:
        part_profile(model, frames, masks, args.targets)


if __name__ == "__main__":
    main()
