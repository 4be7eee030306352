"""``sa2va-demo``: drive the node's ``Pipeline`` on a synthetic tabletop stream with a command and film it.

Writes into --out: ``demo.mp4`` (or ``demo.gif``), every processed frame annotated (masks in per-id colours,
boxes with "id phrase", the answer and a frame counter); ``contact_sheet.png``, a grid of evenly spaced annotated
frames; ``summary.json``: targets, answer, per-frame IoU against the synthetic ground truth when it is known
(the command names one object of the world, or is the clip's own expression), time to first mask.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from sa2va_ros.cli.common import load_model
from sa2va_ros.eval.metrics import video_region_similarity
from sa2va_ros.label_mask import ascii_text, blend_targets, draw_target_boxes, text_style
from sa2va_ros.pipeline import (
    CommandError,
    FrameResult,
    LatestFrameSlot,
    Pipeline,
    PipelineConfig,
    clean_command,
)
from sa2va_ros.synthetic import CLASSES, COLOURS, HELD_OUT_PAIRS, ReferringStream, StreamFrame, sample_referring_stream
from sa2va_ros.tracking import TRACKING

PROG = "sa2va-demo"
DEFAULT_COMMAND = "pick the blue mug"
DEFAULT_SIZE = "240x320"
SHEET_FRAMES = 8  # annotated frames on the contact sheet
SHEET_COLUMNS = 4
GROUNDING_WAIT_S = 600.0  # lockstep: the longest wait for one grounding before giving up
VIDEO_NAMES = {"mp4": "demo.mp4", "gif": "demo.gif"}
TEXT_COLOUR = (255, 255, 255)
_PRONOUNS = frozenset({"i", "you", "we", "u"})


class DemoInputError(ValueError):
    """A bad command-line value: reported in one line, exit code 2."""


# ---------------------------------------------------------------------------------------------- the clip


@dataclass(frozen=True)
class DemoClip:
    """The synthetic stream the demo plays, and which of its objects the command refers to (None: unknown)."""

    stream: ReferringStream
    split: str
    ground_truth_objects: tuple[int, ...] | None  # object indices; their union is the ground-truth mask

    def ground_truth(self, frame: StreamFrame) -> np.ndarray | None:
        """The H×W bool ground-truth mask of ``frame``, or None when the command's referent is unknown."""
        if self.ground_truth_objects is None:
            return None
        return np.isin(frame.labels, [index + 1 for index in self.ground_truth_objects])


def named_object(command: str) -> tuple[str | None, str] | None:
    """(colour or None, class) when the command names exactly one object class of the synthetic world.

    "pick the blue mug" -> ("blue", "mug"); "grab the mug" -> (None, "mug"); "the mug and the ball" -> None.
    """
    words = re.findall(r"[a-z]+", command.lower())
    followers = [*words[1:], ""]
    positions = [i for i, (word, after) in enumerate(zip(words, followers, strict=True))
                 if word in CLASSES and not (word == "can" and after in _PRONOUNS)]  # "can you ..." is no object
    if len(positions) != 1:
        return None
    position = positions[0]
    colour = words[position - 1] if position > 0 and words[position - 1] in COLOURS else None
    return colour, words[position]


def demo_clip(command: str, seed: int, frames: int, size: tuple[int, int]) -> DemoClip:
    """A clip built around the object the command names; otherwise a random command clip of ``seed``.

    The ground truth is known when exactly one object of the clip fits the named (colour, class), or when the
    command is the clip's own expression.
    """
    target = named_object(command)
    if target is None:
        stream = sample_referring_stream(seed, "test", frames, size, kind="command")
        own = _words(command) in (_words(stream.expression), _words(stream.prompt))
        return DemoClip(stream, "test", stream.target_ids if own else None)
    colour, cls = target
    split = "compositional" if (colour, cls) in HELD_OUT_PAIRS else "test"
    stream = sample_referring_stream(seed, split, frames, size, kind="command", target=target)
    matching = tuple(o.index for o in stream.objects if o.cls == cls and colour in (None, o.colour))
    return DemoClip(stream, split, matching if len(matching) == 1 else None)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


# ---------------------------------------------------------------------------------------------- drawing


def annotate_frame(frame: np.ndarray, result: FrameResult, header: str, answer: str) -> np.ndarray:
    """The demo frame (H×W×3 RGB): masks blended, a top band with ``header``, a bottom band with ``answer``, then
    boxes and "id phrase" labels on top."""
    image = blend_targets(frame, result.labels)
    height, width = image.shape[:2]
    scale, thickness = text_style(image.shape)
    (_, text_height), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    band = text_height + baseline + 4
    for text, top in ((header, 0), (answer, height - band)):
        shaded = image[top : top + band]  # band×W×3 view
        shaded[:] = (0.45 * shaded).astype(np.uint8)  # darken so white text reads on any background
        fitted = _fit(ascii_text(text), width - 4, scale, thickness)
        cv2.putText(image, fitted, (2, top + 2 + text_height), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR,
                    thickness, cv2.LINE_AA)
    return draw_target_boxes(image, [t for t in result.targets if t.state == TRACKING], top=band)


def _fit(text: str, width: int, scale: float, thickness: int) -> str:
    """``text``, cut with "..." so that it fits ``width`` pixels."""
    def fits(candidate: str) -> bool:
        return cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] <= width

    if fits(text):
        return text
    while text and not fits(text + "..."):
        text = text[:-1]
    return text + "..."


# ---------------------------------------------------------------------------------------------- outputs


class VideoOutput:
    """Annotated frames into an MP4 (OpenCV 'mp4v') or, when that cannot open or GIF is asked for, a GIF (Pillow)."""

    def __init__(self, out: Path, video_format: str, fps: float, size: tuple[int, int]) -> None:
        self.fps = fps
        self.frames_written = 0
        self._gif_frames: list[Image.Image] = []
        self._writer: cv2.VideoWriter | None = None
        height, width = size
        self._padding = (height % 2, width % 2)  # the MPEG-4 encoder needs even sides: pad one row / column
        if video_format == "mp4":
            path = out / VIDEO_NAMES["mp4"]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                     (width + self._padding[1], height + self._padding[0]))
            if writer.isOpened():
                self._writer, self.path = writer, path
                return
            writer.release()
            path.unlink(missing_ok=True)
            print(f"{PROG}: OpenCV cannot write MP4 ('mp4v') here; writing a GIF instead", file=sys.stderr)
        self.path = out / VIDEO_NAMES["gif"]

    def write(self, rgb: np.ndarray) -> None:
        """Append one H×W×3 RGB frame."""
        if self._writer is not None:
            padded = np.pad(rgb, ((0, self._padding[0]), (0, self._padding[1]), (0, 0)), mode="edge")
            self._writer.write(cv2.cvtColor(padded, cv2.COLOR_RGB2BGR))
        else:
            self._gif_frames.append(Image.fromarray(rgb))
        self.frames_written += 1

    def close(self) -> Path:
        """Finish the file; returns its path."""
        if self._writer is not None:
            self._writer.release()
        elif self._gif_frames:
            first, *rest = self._gif_frames
            first.save(self.path, save_all=True, append_images=rest, duration=round(1000 / self.fps), loop=0)
        return self.path


class ContactSheet:
    """Up to ``SHEET_FRAMES`` evenly spaced annotated frames in a grid of ``SHEET_COLUMNS`` columns."""

    def __init__(self, stream_frames: int, size: tuple[int, int]) -> None:
        count = min(SHEET_FRAMES, stream_frames)
        self.wanted = [round(i * (stream_frames - 1) / max(count - 1, 1)) for i in range(count)]  # stream indices
        self.size = size
        self.tiles: list[np.ndarray | None] = [None] * count

    def offer(self, stream_index: int, annotated: np.ndarray) -> None:
        """Keep the frame for every slot it is the first processed frame at or after (frames may be dropped)."""
        for slot, wanted in enumerate(self.wanted):
            if self.tiles[slot] is None and stream_index >= wanted:
                self.tiles[slot] = annotated

    def save(self, path: Path) -> Path:
        """Write the grid as a PNG (slots never filled stay black); returns the path."""
        height, width = self.size
        columns = min(SHEET_COLUMNS, len(self.tiles))
        rows = math.ceil(len(self.tiles) / columns)
        sheet = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)  # rows·H × columns·W × 3
        for slot, tile in enumerate(self.tiles):
            if tile is not None:
                row, column = divmod(slot, columns)
                sheet[row * height : (row + 1) * height, column * width : (column + 1) * width] = tile
        Image.fromarray(sheet).save(path)
        return path


@dataclass
class _TargetRecord:
    phrase: str
    first_frame: int
    frames_tracking: int = 0
    frames_lost: int = 0


@dataclass
class DemoRecorder:
    """Annotates, films and scores every processed frame."""

    clip: DemoClip
    command: str
    video: VideoOutput
    sheet: ContactSheet
    submitted_at: float  # monotonic time of submit_command
    answers: list[str] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    targets: dict[int, _TargetRecord] = field(default_factory=dict)
    frames: int = 0
    first_mask_frame: int | None = None
    time_to_first_mask_s: float | None = None
    frame_latencies_s: list[float] = field(default_factory=list)

    def add(self, frame: StreamFrame, result: FrameResult) -> None:
        self.frames += 1
        self.frame_latencies_s.append(result.timings["total_s"])
        self.answers.extend(answer.text for answer in result.answers)
        for target in result.targets:
            record = self.targets.setdefault(target.id, _TargetRecord(target.phrase, frame.index))
            if target.state == TRACKING:
                record.frames_tracking += 1
            else:
                record.frames_lost += 1
        predicted = result.labels > 0  # H×W
        if self.first_mask_frame is None and predicted.any():
            self.first_mask_frame = frame.index
            self.time_to_first_mask_s = time.monotonic() - self.submitted_at
        truth = self.clip.ground_truth(frame)
        if truth is not None:
            self.iou.append(float(video_region_similarity(predicted[None], truth[None])[0]))
        answer = self.answers[-1] if self.answers else "(grounding...)"
        header = f"{frame.index + 1}/{self.clip.stream.num_frames}  {self.command}"
        annotated = annotate_frame(frame.image, result, header, f"answer: {answer}")
        self.video.write(annotated)
        self.sheet.offer(frame.index, annotated)


# ---------------------------------------------------------------------------------------------- driving


def _stamp_ns(index: int, fps: float) -> int:
    return round(index * 1e9 / fps)


def drive_lockstep(pipeline: Pipeline, clip: DemoClip, fps: float) -> Iterator[tuple[StreamFrame, FrameResult]]:
    """Push every frame; after each, wait until no grounding is queued or running, so the run is repeatable."""
    for frame in clip.stream.iter_frames():
        result = pipeline.push_frame(frame.image, _stamp_ns(frame.index, fps))
        if not pipeline.wait_until_idle(GROUNDING_WAIT_S):
            raise TimeoutError(f"grounding took longer than {GROUNDING_WAIT_S} s")
        yield frame, result


def drive_live(pipeline: Pipeline, clip: DemoClip, fps: float,
               slot: LatestFrameSlot[StreamFrame]) -> Iterator[tuple[StreamFrame, FrameResult]]:
    """Render frames at ``fps`` from a thread into ``slot``, as a camera would; the latest frame wins, as in the
    node, and ``slot.dropped`` counts the frames replaced before they were processed."""
    failure: list[BaseException] = []
    stop = threading.Event()

    def camera() -> None:
        try:
            started = time.monotonic()
            for frame in clip.stream.iter_frames():
                if stop.wait(max(0.0, started + frame.index / fps - time.monotonic())):
                    return
                slot.put(frame)
        except BaseException as error:  # re-raised on the caller's thread
            failure.append(error)
        finally:
            slot.close()

    thread = threading.Thread(target=camera, name="sa2va-demo-camera", daemon=True)
    thread.start()
    try:
        while (frame := slot.take(timeout=0.5)) is not None or thread.is_alive():
            if frame is not None:
                yield frame, pipeline.push_frame(frame.image, _stamp_ns(frame.index, fps))
    finally:
        stop.set()
        thread.join()
    if failure:
        raise failure[0]


# ---------------------------------------------------------------------------------------------- command line


def parse_size(text: str) -> tuple[int, int]:
    """"HxW" -> (H, W); raises DemoInputError unless both sides are integers >= 16."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if match is None or min(int(match.group(1)), int(match.group(2))) < 16:
        raise DemoInputError(f"--size must be HxW with both sides >= 16 pixels (e.g. {DEFAULT_SIZE}), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", default=DEFAULT_COMMAND, help="the command given to the robot")
    parser.add_argument("--model", help="checkpoint directory (project or official format); default: bundled")
    parser.add_argument("--frames", type=int, default=60, help="frames of the synthetic stream")
    parser.add_argument("--size", default=DEFAULT_SIZE, help="frame size HxW")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic stream")
    parser.add_argument("--fps", type=float, default=10.0, help="camera rate (stamps, video rate, live pacing)")
    parser.add_argument("--out", default="out/demo", help="output directory")
    parser.add_argument("--format", choices=tuple(VIDEO_NAMES), default="mp4", dest="video_format",
                        help="video format (mp4 falls back to gif when OpenCV cannot write it)")
    parser.add_argument("--lockstep", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for each grounding before the next frame (repeatable); --no-lockstep plays the "
                             "stream at --fps and drops frames the pipeline cannot keep up with, as live")
    parser.add_argument("--device", default="cpu")
    return parser


def _check(args: argparse.Namespace) -> tuple[str, tuple[int, int]]:
    """The cleaned command and the frame size; raises DemoInputError for bad values."""
    if args.frames < 1:
        raise DemoInputError(f"--frames must be >= 1, got {args.frames}")
    if args.seed < 0:
        raise DemoInputError(f"--seed must be >= 0, got {args.seed}")
    if not args.fps > 0:
        raise DemoInputError(f"--fps must be > 0, got {args.fps}")
    try:
        command = clean_command(args.command, PipelineConfig().max_command_chars)
    except CommandError as error:
        raise DemoInputError(f"--command: {error}") from error
    return command, parse_size(args.size)


def _percentile_ms(samples: list[float], q: float) -> float | None:
    return float(np.percentile(samples, q) * 1000) if samples else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sa2va_ros.model import CheckpointError

    try:
        command, size = _check(args)
        clip = demo_clip(command, args.seed, args.frames, size)
        model = load_model(args.model, args.device, PROG)
    except (DemoInputError, CheckpointError, ValueError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video = VideoOutput(out, args.video_format, args.fps, size)
    started = time.monotonic()
    camera: LatestFrameSlot[StreamFrame] = LatestFrameSlot()  # used by --no-lockstep only
    with Pipeline(model) as pipeline:
        recorder = DemoRecorder(clip, command, video, ContactSheet(args.frames, size), time.monotonic())
        pipeline.submit_command(command, _stamp_ns(0, args.fps))
        frames = drive_lockstep(pipeline, clip, args.fps) if args.lockstep else drive_live(
            pipeline, clip, args.fps, camera)
        with tqdm(total=args.frames, desc=PROG, unit="frame") as progress:
            for frame, result in frames:
                recorder.add(frame, result)
                progress.update(frame.index + 1 - progress.n)
                progress.set_postfix(targets=sum(t.state == TRACKING for t in result.targets))
        stats = pipeline.stats()
    video_path = video.close()
    sheet_path = recorder.sheet.save(out / "contact_sheet.png")
    summary = _summary(args, size, clip, recorder, stats, camera.dropped, time.monotonic() - started, video_path,
                       sheet_path)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))

    score = f"mean IoU {summary['mean_iou']:.3f}" if summary["mean_iou"] is not None else "no ground truth"
    print(f"answer: {summary['answer']!r}; {len(summary['targets'])} target(s); {score} over {recorder.frames} "
          "frames")
    print(f"wrote {video_path}\nwrote {sheet_path}\nwrote {summary_path}")
    return 0


def _model_name(path: str | None) -> str:
    from sa2va_ros.model.modeling import bundled_model_available, default_model_path

    if path is not None:
        return path
    return str(default_model_path()) if bundled_model_available() else "random tiny model (none bundled)"


def _summary(args: argparse.Namespace, size: tuple[int, int], clip: DemoClip, recorder: DemoRecorder,
             stats: dict[str, Any], dropped: int, wall_s: float, video_path: Path, sheet_path: Path) -> dict[str, Any]:
    """The JSON summary of one run (what summary.json holds)."""
    stream = clip.stream
    return {
        "command": recorder.command,
        "model": _model_name(args.model),
        "mode": "lockstep" if args.lockstep else "live",
        "clip": {"seed": stream.seed, "split": clip.split, "expression": stream.expression, "size": list(size),
                 "frames": stream.num_frames, "fps": args.fps},
        "frames": recorder.frames,  # processed = frames in the video
        "frames_dropped": dropped,
        "answer": recorder.answers[0] if recorder.answers else None,
        "answers": recorder.answers,
        "targets": [{"id": target_id, "phrase": r.phrase, "first_frame": r.first_frame,
                     "frames_tracking": r.frames_tracking, "frames_lost": r.frames_lost}
                    for target_id, r in sorted(recorder.targets.items())],
        "ground_truth": clip.ground_truth_objects is not None,
        "mean_iou": float(np.mean(recorder.iou)) if recorder.iou else None,
        "iou_per_frame": [round(v, 4) for v in recorder.iou] if recorder.iou else None,
        "first_mask_frame": recorder.first_mask_frame,
        "time_to_first_mask_s": recorder.time_to_first_mask_s,  # wall time: command -> first frame with a mask
        "frame_ms_p50": _percentile_ms(recorder.frame_latencies_s, 50),
        "frame_ms_p99": _percentile_ms(recorder.frame_latencies_s, 99),
        "grounding_ms_p50": stats.get("grounding_ms_p50"),
        "wall_s": wall_s,
        "video": str(video_path),
        "video_format": video_path.suffix.lstrip("."),
        "contact_sheet": str(sheet_path),
    }


if __name__ == "__main__":
    raise SystemExit(main())
