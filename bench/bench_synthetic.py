"""Timing of the synthetic tabletop world: images per size, short clips, and a long lazily rendered stream.

    python bench/bench_synthetic.py [--samples 50] [--stream-frames 1000]

Reports wall time per item (and process CPU time, steadier on a shared machine). OpenCV may use several
threads, so CPU time can exceed wall time.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from sa2va_ros.synthetic import sample_referring_image, sample_referring_stream, sample_referring_video


def _timed(label: str, count: int, run) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        run(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:38s} {1000 * wall / count:7.2f} ms wall  {1000 * cpu / count:7.2f} ms cpu  per item")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--stream-frames", type=int, default=1000)
    args = parser.parse_args()
    sample_referring_image(0, "train", (64, 64))  # warm caches (noise bank, geometry)
    for size in ((64, 64), (128, 128), (256, 256), (240, 320)):
        _timed(f"image {size[0]}x{size[1]} (sample + render)", args.samples,
               lambda i, s=size: sample_referring_image(i, "train", s))
    _timed("video 8 x 128x128 (sample + render)", max(1, args.samples // 4),
           lambda i: sample_referring_video(i, "train", 8, (128, 128)))
    stream = sample_referring_stream(0, "test", args.stream_frames, (240, 320), leave_and_return=True,
                                     kind="command")
    frames = stream.iter_frames()
    _timed(f"stream frame 240x320 ({args.stream_frames} frames)", args.stream_frames, lambda i: next(frames))
    tracemalloc.start()
    for _ in stream.iter_frames(200):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"stream: peak traced memory over 200 rendered frames {peak / 2**20:.1f} MiB (frames are not kept)")

if __name__ == "__main__":
    main()
