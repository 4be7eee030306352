"""``sa2va-demo``: the README's main command drives the Pipeline on a synthetic stream and films the result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sa2va_ros.cli import demo
from sa2va_ros.model import Sa2VA
from sa2va_ros.model.presets import tiny_model
from tests.model_helpers import scripted_answer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEIGHT, WIDTH = 64, 80
FRAMES = 9  # more than the contact sheet's 8 tiles


@pytest.fixture(scope="module")
def scripted_model() -> Iterator[Sa2VA]:
    """A tiny random model whose every grounding answers one [SEG]."""
    model = tiny_model("internvl-qwen2").eval()
    with scripted_answer(model, "Sure, [SEG]."):
        yield model


@pytest.fixture
def use_scripted_model(monkeypatch: pytest.MonkeyPatch, scripted_model: Sa2VA) -> None:
    monkeypatch.setattr(demo, "load_model", lambda path, device, prog: scripted_model)


def run_demo(out: Path, *extra: str) -> int:
    return demo.main(["--frames", str(FRAMES), "--size", f"{HEIGHT}x{WIDTH}", "--seed", "1", "--out", str(out),
                      *extra])


def decoded_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.mark.usefixtures("use_scripted_model")
def test_demo_writes_video_contact_sheet_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(tmp_path) == 0

    frames = decoded_frames(tmp_path / "demo.mp4")
    assert len(frames) == FRAMES
    assert {frame.shape for frame in frames} == {(HEIGHT, WIDTH, 3)}

    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG"
        tiles = np.asarray(sheet.convert("RGB"))
    assert tiles.shape == (2 * HEIGHT, 4 * WIDTH, 3)  # 8 tiles, 4 columns
    for row in range(2):
        for column in range(4):
            tile = tiles[row * HEIGHT : (row + 1) * HEIGHT, column * WIDTH : (column + 1) * WIDTH]
            assert tile.std() > 0  # every slot holds a frame, none left black

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["command"] == demo.DEFAULT_COMMAND and summary["mode"] == "lockstep"
    assert summary["frames"] == FRAMES and summary["frames_dropped"] == 0
    assert summary["clip"]["size"] == [HEIGHT, WIDTH] and summary["clip"]["frames"] == FRAMES
    assert summary["answer"] == "Sure, [SEG]." and summary["answers"] == ["Sure, [SEG]."]
    # lockstep: grounded on frame 0, the target enters on frame 1 and is on every frame after
    assert [(t["id"], t["phrase"], t["first_frame"]) for t in summary["targets"]] == [(1, "the blue mug", 1)]
    target = summary["targets"][0]
    assert target["frames_tracking"] + target["frames_lost"] == FRAMES - 1
    assert summary["ground_truth"] is True  # the command names the clip's one blue mug
    ious = summary["iou_per_frame"]
    assert len(ious) == FRAMES and all(0.0 <= v <= 1.0 for v in ious)
    assert ious[0] == 0.0  # no mask before the grounding, the blue mug is in view
    assert summary["mean_iou"] == pytest.approx(np.mean(ious), abs=1e-4)
    assert (summary["first_mask_frame"] is None) == (summary["time_to_first_mask_s"] is None)
    assert summary["first_mask_frame"] is None or summary["first_mask_frame"] >= 1
    assert summary["video"] == str(tmp_path / "demo.mp4") and summary["video_format"] == "mp4"

    printed = capsys.readouterr().out
    for name in ("demo.mp4", "contact_sheet.png", "summary.json"):
        assert str(tmp_path / name) in printed


@pytest.mark.usefixtures("use_scripted_model")
def test_mp4_writer_that_cannot_open_falls_back_to_gif(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    class ClosedWriter:
        def __init__(self, *args: object) -> None:
            pass

        def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
            return False

        def release(self) -> None:
            pass

    monkeypatch.setattr(demo.cv2, "VideoWriter", ClosedWriter)
    assert run_demo(tmp_path, "--frames", "3") == 0
    assert "writing a GIF instead" in capsys.readouterr().err
    assert not (tmp_path / "demo.mp4").exists()
    with Image.open(tmp_path / "demo.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (WIDTH, HEIGHT)
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.size == (3 * WIDTH, HEIGHT)  # 3 frames: one row of 3
    assert json.loads((tmp_path / "summary.json").read_text())["video_format"] == "gif"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "10x20"], "--size"),
        (["--size", "wide"], "--size"),
        (["--frames", "0"], "--frames"),
        (["--command", "   "], "empty command"),
        (["--model", "MISSING"], "not a checkpoint directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               args: list[str], message: str) -> None:
    args = [str(tmp_path / "nope") if a == "MISSING" else a for a in args]
    assert demo.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sa2va-demo:") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_named_object_reads_the_one_object_a_command_names() -> None:
    assert demo.named_object("pick the blue mug") == ("blue", "mug")
    assert demo.named_object("Grab the mug, please!") == (None, "mug")
    assert demo.named_object("Can you hand me the red can?") == ("red", "can")  # the verb is no object
    assert demo.named_object("put the red ball in the box") is None  # two objects: no single referent
    assert demo.named_object("what is on the table?") is None


def test_ground_truth_is_the_named_object_or_the_clips_own_expression() -> None:
    size = (HEIGHT, WIDTH)
    named = demo.demo_clip("pick the blue mug", 1, 2, size)
    (index,) = named.ground_truth_objects
    assert (named.stream.objects[index].colour, named.stream.objects[index].cls) == ("blue", "mug")
    frame = named.stream.frame(0)
    assert np.array_equal(named.ground_truth(frame), frame.labels == index + 1)

    held_out = demo.demo_clip("pick the green mug", 1, 2, size)  # a held-out pair lives in the compositional split
    assert held_out.split == "compositional" and held_out.ground_truth_objects is not None

    unknown = demo.demo_clip("do a little dance", 1, 2, size)
    assert unknown.ground_truth_objects is None and unknown.ground_truth(unknown.stream.frame(0)) is None

    # a clip whose expression names no single object (e.g. a relation): that expression as the command
    clips = (demo.demo_clip("do a little dance", seed, 2, size) for seed in range(100))
    clip = next(c for c in clips if demo.named_object(c.stream.expression) is None)
    own = demo.demo_clip(clip.stream.expression, clip.stream.seed, 2, size)
    assert own.ground_truth_objects == clip.stream.target_ids
