"""Pipeline: commands and frames in, tracked targets, label masks and answers out (ROS-free).

The tracker is the real streaming SAM-2 tracker on a tiny random model. Only the grounder is a stand-in: it
answers from a script (optionally looking at the ground truth of the synthetic clip, like an oracle LLM) and
returns a fixed [SEG] embedding, which is what makes the threading, queues and catch-up testable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from sa2va_ros.model import GroundingResult
from sa2va_ros.model.modeling import seg_phrases
from sa2va_ros.model.sam2_grounding import build_sam2, tiny_sam2_config
from sa2va_ros.pipeline import (
    Answer,
    CommandError,
    ControlCommand,
    FrameRejectedError,
    LatestFrameSlot,
    Pipeline,
    PipelineConfig,
    command_object,
    parse_control,
    target_phrases,
)
from sa2va_ros.synthetic import sample_referring_video
from sa2va_ros.targets_schema import parse_targets
from sa2va_ros.tracking import LOST, TRACKING, StreamingTracker, TrackerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 80)  # H, W
WAIT_S = 20.0  # upper bound of every wait; a hang fails the test instead of stalling the suite
ALWAYS_TRACKING = TrackerConfig(lost_score_threshold=-1e6)  # random weights: keep targets "tracking"
ALWAYS_ABSENT = TrackerConfig(lost_score_threshold=1e6, lost_after_frames=3)  # random weights: force "lost"


@pytest.fixture(scope="module")
def sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam2(tiny_sam2_config(128), sa2va=True)


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return sample_referring_video(3, "test", 10, SIZE, kind="command", target=("blue", "mug")).frames


class ScriptedGrounder:
    """Answers ``respond(frames, text)``; one fixed embedding per [SEG]. ``gate`` holds a grounding mid-way."""

    def __init__(self, sam: torch.nn.Module, respond: Callable[[Sequence[np.ndarray], str], str]) -> None:
        self.grounding_encoder = sam
        self.respond = respond
        self.calls: list[tuple[list[np.ndarray], str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.embedding = torch.randn(1, 256, generator=torch.Generator().manual_seed(7))  # [1, 256]

    def ground(self, frames: Sequence[np.ndarray], text: str, max_new_tokens: int = 64) -> GroundingResult:
        self.calls.append((list(frames), text))
        self.started.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        answer = self.respond(frames, text)
        count = answer.count("[SEG]")
        height, width = frames[-1].shape[:2]
        return GroundingResult(
            answer,
            self.embedding.expand(count, -1).clone(),
            np.zeros((count, len(frames), height, width), dtype=bool),
            np.ones(count, dtype=np.float32),
            seg_phrases(answer),
        )


def answering(text: str) -> Callable[[Sequence[np.ndarray], str], str]:
    return lambda frames, command: text


def make_pipeline(
    sam: torch.nn.Module, grounder: ScriptedGrounder, tracker_config: TrackerConfig = ALWAYS_TRACKING, **config
) -> tuple[Pipeline, list[Answer]]:
    delivered: list[Answer] = []
    pipeline = Pipeline(grounder, StreamingTracker(sam, tracker_config), PipelineConfig(**config), delivered.append)
    return pipeline, delivered


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def index_of(frame: np.ndarray, frames: Sequence[np.ndarray]) -> int:
    return next(i for i, candidate in enumerate(frames) if np.array_equal(candidate, frame))


# ---------------------------------------------------------------- grounding, catch-up, answers


def test_grounding_enters_through_catch_up_and_the_mask_refers_to_the_present_frame(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    grounder = ScriptedGrounder(sam, answering("Sure, [SEG]."))
    grounder.gate.clear()
    pipeline, delivered = make_pipeline(sam, grounder)
    with pipeline:
        for t in range(2):
            pipeline.push_frame(clip[t], t)
        command_id = pipeline.submit_command("Bring me the blue mug.", stamp_ns=123)
        assert grounder.started.wait(WAIT_S)
        for t in range(2, 6):  # the camera does not wait for the LLM
            assert pipeline.push_frame(clip[t], t).targets == ()
        grounder.gate.set()
        wait_for(lambda: delivered, "the answer")
        assert pipeline.wait_until_idle(WAIT_S)
        result = pipeline.push_frame(clip[6], 6)
    keyframe = index_of(grounder.calls[0][0][-1], clip)
    assert keyframe in (1, 2, 3, 4, 5) and grounder.calls[0][1] == "Bring me the blue mug."

    reference = StreamingTracker(sam, ALWAYS_TRACKING)
    for frame in clip[:7]:
        reference.step(frame)
    expected = reference.add_target(1, embedding=grounder.embedding[0], at=keyframe)

    assert result.frame_index == expected.frame_index == 6 and result.stamp_ns == 6
    (target,) = result.targets
    assert (target.id, target.phrase, target.state, target.command_id) == (1, "the blue mug", TRACKING, command_id)
    np.testing.assert_array_equal(target.mask, expected.masks[1])
    assert target.score == pytest.approx(expected.scores[1], abs=1e-5)
    assert target.box == expected.boxes[1]
    np.testing.assert_array_equal(result.labels, expected.masks[1].astype(np.uint16))
    assert [(a.command_id, a.text, a.target_ids, a.stamp_ns) for a in result.answers] == [
        (command_id, "Sure, [SEG].", (1,), 123)
    ]
    payload = parse_targets(result.targets_json("camera"))
    assert payload["frame_id"] == "camera" and [t["id"] for t in payload["targets"]] == [1]
    assert result.timings["catch_up_s"] > 0 and result.timings["total_s"] >= result.timings["track_s"]


def test_the_answer_is_delivered_as_soon_as_it_exists_and_listed_once(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    grounder = ScriptedGrounder(sam, answering("The mug is blue."))
    pipeline, delivered = make_pipeline(sam, grounder)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("what colour is the mug?")
        wait_for(lambda: delivered, "the answer without any further frame")
        assert delivered[0].text == "The mug is blue." and delivered[0].target_ids == ()
        assert delivered[0].latency_s > 0
        assert [a.text for a in pipeline.push_frame(clip[1], 1).answers] == ["The mug is blue."]
        assert pipeline.push_frame(clip[2], 2).answers == ()
        assert pipeline.stats()["answer_ms_p50"] is not None


def test_two_targets_from_one_answer_get_their_own_ids_and_phrases(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    grounder = ScriptedGrounder(sam, answering("Sure, the blue mug [SEG], the red ball [SEG] and a box [SEG]."))
    pipeline, _ = make_pipeline(sam, grounder, max_targets=2)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("find the mug, the ball and the box")
        assert pipeline.wait_until_idle(WAIT_S)
        result = pipeline.push_frame(clip[1], 1)
        stats = pipeline.stats()
    assert [(t.id, t.phrase) for t in result.targets] == [(1, "the blue mug"), (2, "the red ball")]
    assert set(np.unique(result.labels)) <= {0, 1, 2}
    for target in result.targets:
        assert np.all(result.labels[target.mask & (result.labels != 0)] > 0)
    assert result.answers[0].target_ids == (1, 2)
    assert stats["targets_refused"] == 1 and stats["targets_created"] == 2 and stats["targets"] == 2


def test_keyframes_are_the_most_recent_frames_and_each_conditions_the_target(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    grounder = ScriptedGrounder(sam, answering("Sure, [SEG]."))
    pipeline, _ = make_pipeline(sam, grounder, keyframes=3)
    with pipeline:
        for t in range(4):
            pipeline.push_frame(clip[t], t)
        pipeline.submit_command("track the blue mug")
        assert pipeline.wait_until_idle(WAIT_S)
        pipeline.push_frame(clip[4], 4)
        memory = pipeline.tracker.memory_stats()["targets"][1]
    assert [index_of(frame, clip) for frame in grounder.calls[0][0]] == [1, 2, 3]
    assert memory["conditioning_frames"] == [1, 2, 3]


def test_a_keyframe_that_left_the_feature_buffer_falls_back_to_the_present_frame(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    grounder = ScriptedGrounder(sam, answering("Sure, [SEG]."))
    grounder.gate.clear()
    config = TrackerConfig(lost_score_threshold=-1e6, feature_buffer=2)
    pipeline, _ = make_pipeline(sam, grounder, tracker_config=config)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("track the blue mug")
        assert grounder.started.wait(WAIT_S)
        for t in range(1, 5):
            pipeline.push_frame(clip[t], t)
        grounder.gate.set()
        assert pipeline.wait_until_idle(WAIT_S)
        result = pipeline.push_frame(clip[5], 5)
        assert [t.id for t in result.targets] == [1]
        assert pipeline.stats()["keyframes_expired"] == 1
        assert pipeline.tracker.memory_stats()["targets"][1]["conditioning_frames"] == [5]


# ---------------------------------------------------------------- re-grounding


def test_a_target_that_leaves_and_returns_is_regrounded_with_its_phrase_and_keeps_its_id(
    sam: torch.nn.Module,
) -> None:
    video = sample_referring_video(
        5, "test", 16, SIZE, kind="command", target=("blue", "mug"), leave_and_return=True
    )
    absent_from, absent_until = video.absence_window

    def oracle(frames: Sequence[np.ndarray], text: str) -> str:
        """Says [SEG] only when the mug is visible in the newest keyframe (the ground truth decides)."""
        visible = video.target_masks[0][index_of(frames[-1], video.frames)].sum() > 0
        return "Sure, [SEG]." if visible else "There is no blue mug."

    grounder = ScriptedGrounder(sam, oracle)
    # Random weights cannot see the mug leave, so the tracker is told every frame is "absent": a target turns
    # lost 3 frames after each conditioning, and only a re-grounding on a frame showing the mug revives it.
    pipeline, _ = make_pipeline(sam, grounder, tracker_config=ALWAYS_ABSENT, reground_interval_s=0.0)
    results = []
    with pipeline:
        pipeline.push_frame(video.frames[0], 0)
        pipeline.submit_command(video.prompt)
        assert pipeline.wait_until_idle(WAIT_S)
        for t in range(1, len(video.frames)):  # a slow camera: each grounding finishes before the next frame
            results.append((t, pipeline.push_frame(video.frames[t], t)))
            assert pipeline.wait_until_idle(WAIT_S)
        stats = pipeline.stats()
    assert video.prompt.endswith("the blue mug")
    assert {target.id for _, result in results for target in result.targets} == {1}
    assert all(target.phrase == "the blue mug" for _, result in results for target in result.targets)
    regrounds = [(index_of(frames[-1], video.frames), text) for frames, text in grounder.calls[1:]]
    assert regrounds and all(text == "Please segment the blue mug." for _, text in regrounds)
    assert any(absent_from <= t < absent_until for t, _ in regrounds)  # tried (and failed) while out of view
    states = {t: result.targets[0].state for t, result in results}
    assert LOST in states.values()
    # Revived only by a keyframe showing the mug: never while it is out of view, again once it is back.
    revived = [t for t in states if states[t] == TRACKING and states.get(t - 1) == LOST]
    assert revived and all(not absent_from <= t - 1 < absent_until for t in revived)
    assert any(t > absent_until for t in revived)
    assert stats["regrounds_succeeded"] == len(revived) and stats["regrounds_requested"] == len(regrounds)


def test_regrounding_is_rate_limited_per_target(sam: torch.nn.Module, clip: list[np.ndarray]) -> None:
    grounder = ScriptedGrounder(sam, lambda frames, text: "Sure, [SEG]." if len(grounder.calls) == 1 else "No.")
    pipeline, _ = make_pipeline(sam, grounder, tracker_config=ALWAYS_ABSENT, reground_interval_s=0.4)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("track the blue mug")
        assert pipeline.wait_until_idle(WAIT_S)
        started = time.monotonic()
        t = 1
        while t <= 12 or time.monotonic() - started < 1.0:  # many lost frames, over more than one interval
            pipeline.push_frame(clip[t % len(clip)], t)
            t += 1
        elapsed = time.monotonic() - started
        assert pipeline.wait_until_idle(WAIT_S)
    regrounds = len(grounder.calls) - 1
    assert 1 <= regrounds <= 1 + elapsed / 0.4


# ---------------------------------------------------------------- control commands


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clear", ControlCommand("clear")),
        ("Stop tracking.", ControlCommand("clear")),
        ("please forget everything!", ControlCommand("clear")),
        ("RESET", ControlCommand("clear")),
        ("forget 2", ControlCommand("forget", target_id=2)),
        ("Forget target #12.", ControlCommand("forget", target_id=12)),
        ("untrack id 3", ControlCommand("forget", target_id=3)),
        ("forget the blue mug", ControlCommand("forget", phrase="the blue mug")),
        ("stop tracking the red ball, please", ControlCommand("forget", phrase="the red ball")),
        ("pick the blue mug", None),
        ("stop the conveyor", None),
        ("what should I forget?", None),
    ],
)
def test_control_words(text: str, expected: ControlCommand | None) -> None:
    assert parse_control(text) == expected


def test_forget_by_id_and_phrase_and_ids_are_not_reused(sam: torch.nn.Module, clip: list[np.ndarray]) -> None:
    grounder = ScriptedGrounder(sam, answering("Sure, the blue mug [SEG] and the red ball [SEG]."))
    pipeline, delivered = make_pipeline(sam, grounder)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("pick the mug and the ball")
        assert pipeline.wait_until_idle(WAIT_S)
        assert [t.id for t in pipeline.push_frame(clip[1], 1).targets] == [1, 2]
        pipeline.submit_command("forget 1")  # no frame in progress: applied at once
        assert delivered[-1].text == "Forgot target 1 (the blue mug)."
        assert [t.id for t in pipeline.push_frame(clip[2], 2).targets] == [2]
        pipeline.submit_command("forget 7")
        assert delivered[-1].text == "No target matches target 7; current targets: 2 (the red ball)."
        pipeline.submit_command("stop tracking the ball")
        assert delivered[-1].text == "Forgot target 2 (the red ball)."
        result = pipeline.push_frame(clip[3], 3)
        assert result.targets == () and not result.labels.any()
        assert pipeline.tracker.target_ids == []
        pipeline.submit_command("pick the mug and the ball")
        assert pipeline.wait_until_idle(WAIT_S)
        assert [t.id for t in pipeline.push_frame(clip[4], 4).targets] == [3, 4]


def test_clear_forgets_every_target_and_cancels_the_grounding_in_progress(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    grounder = ScriptedGrounder(sam, answering("Sure, [SEG]."))
    pipeline, delivered = make_pipeline(sam, grounder)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("pick the blue mug")
        assert pipeline.wait_until_idle(WAIT_S)
        assert len(pipeline.push_frame(clip[1], 1).targets) == 1
        grounder.gate.clear()
        grounder.started.clear()
        pipeline.submit_command("pick the red ball")
        assert grounder.started.wait(WAIT_S)
        pipeline.submit_command("clear")
        assert delivered[-1].text == "Cleared 1 target."
        grounder.gate.set()
        assert pipeline.wait_until_idle(WAIT_S)
        result = pipeline.push_frame(clip[2], 2)
        stats = pipeline.stats()
    assert result.targets == () and not result.labels.any()
    assert [a.text for a in delivered] == ["Sure, [SEG].", "Cleared 1 target."]
    assert stats["groundings_cancelled"] == 1 and stats["controls_applied"] == 1


def test_a_control_word_arriving_during_a_frame_applies_right_after_it(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    grounder = ScriptedGrounder(sam, answering("Sure, [SEG]."))
    pipeline, delivered = make_pipeline(sam, grounder)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("pick the blue mug")
        assert pipeline.wait_until_idle(WAIT_S)
        with pipeline._frame_lock:  # as if a frame were being processed
            pipeline.submit_command("clear")
            assert len(delivered) == 1
        assert pipeline.push_frame(clip[1], 1).targets == ()
        assert delivered[-1].text == "Cleared 1 target."


# ---------------------------------------------------------------- phrases


@pytest.mark.parametrize(
    ("answer", "model_phrases", "command", "expected"),
    [
        ("Sure, [SEG].", [None], "Please bring me the blue mug.", ["the blue mug"]),
        ("It is [SEG].", [None], "the red ball in this image", ["the red ball"]),
        ("Sure, the book [SEG] and the red can [SEG].", [None, None], "push them", ["the book", "the red can"]),
        ("<p>the left mug</p> [SEG]", ["the left mug"], "find it", ["the left mug"]),
        ("Sure, [SEG] and [SEG].", [None, None], "pick the mug and the ball", ["the mug", "the ball"]),
        ("Sure, [SEG] and [SEG].", [None, None], "pick the mugs", ["the mugs", "the mugs"]),
    ],
)
def test_target_phrases(answer: str, model_phrases: list, command: str, expected: list[str]) -> None:
    assert target_phrases(answer, model_phrases, command, answer.count("[SEG]")) == expected


def test_command_object_keeps_text_it_cannot_simplify() -> None:
    assert command_object("grab") == "grab"
    assert command_object("could you track the man in the blue coat?") == "the man in the blue coat"


# ---------------------------------------------------------------- bad input, bounded queues, counters


@pytest.mark.parametrize(
    ("text", "kind"),
    [("", "empty"), ("  \n\t ", "empty"), ("x" * 1_000_001, "too_long"), ("pick \x00\x01\x02", "binary"),
     ("mug \ufffd", "binary"), (bytes(range(256)).decode("latin-1"), "binary")],
)
def test_bad_commands_are_refused_with_a_kind(sam: torch.nn.Module, text: str, kind: str) -> None:
    pipeline, _ = make_pipeline(sam, ScriptedGrounder(sam, answering("")))
    with pipeline:
        with pytest.raises(CommandError) as refused:
            pipeline.submit_command(text)
        assert refused.value.kind == kind and str(refused.value)
        assert pipeline.stats()[f"commands_rejected_{kind}"] == 1


def test_unicode_commands_are_grounded(sam: torch.nn.Module, clip: list[np.ndarray]) -> None:
    grounder = ScriptedGrounder(sam, answering("Sure, [SEG]."))
    pipeline, delivered = make_pipeline(sam, grounder)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("把蓝色的杯子递给我 🙂  bitte")
        assert pipeline.wait_until_idle(WAIT_S)
    assert grounder.calls[0][1] == "把蓝色的杯子递给我 🙂 bitte" and delivered[0].target_ids == (1,)


def test_the_command_queue_is_bounded_and_the_oldest_waiting_command_is_dropped(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    grounder = ScriptedGrounder(sam, lambda frames, text: f"answer to {text}")
    grounder.gate.clear()
    pipeline, delivered = make_pipeline(sam, grounder, command_queue_size=2)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("command 1")
        assert grounder.started.wait(WAIT_S)
        for n in range(2, 102):  # a flood
            pipeline.submit_command(f"command {n}")
        assert pipeline.stats()["commands_queued"] == 2
        grounder.gate.set()
        assert pipeline.wait_until_idle(WAIT_S)
        stats = pipeline.stats()
    assert [a.text for a in delivered] == ["answer to command 1", "answer to command 100", "answer to command 101"]
    assert stats["commands_dropped"] == 98 and stats["commands_received"] == 101


def test_stamps_going_backwards_drop_stale_frames_and_accept_clock_restarts(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    pipeline, _ = make_pipeline(sam, ScriptedGrounder(sam, answering("")))
    second = 1_000_000_000
    with pipeline:
        assert pipeline.push_frame(clip[0], 100 * second).frame_index == 0
        assert pipeline.push_frame(clip[1], 100 * second).frame_index == 1  # equal stamps are fine
        with pytest.raises(FrameRejectedError) as stale:
            pipeline.push_frame(clip[2], 100 * second - second // 2)
        assert stale.value.kind == "stale_stamp"
        assert pipeline.push_frame(clip[3], 5 * second).frame_index == 2  # a bag restarted: tracked
        assert pipeline.push_frame(clip[4], 5 * second + 1).frame_index == 3
        stats = pipeline.stats()
    assert stats["frames_stale"] == 1 and stats["time_jumps_back"] == 1 and stats["frames_processed"] == 4


def test_invalid_frames_are_refused_without_changing_state_and_8k_frames_are_tracked(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    grounder = ScriptedGrounder(sam, answering("Sure, [SEG]."))
    pipeline, _ = make_pipeline(sam, grounder)
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        for bad in (clip[1].astype(np.float32), clip[1][:4, :4], np.zeros((0, 0, 3), np.uint8), clip[1][..., :2]):
            with pytest.raises(FrameRejectedError) as refused:
                pipeline.push_frame(bad, 1)
            assert refused.value.kind == "bad_frame"
        assert pipeline.stats()["frames_rejected"] == 4
        eight_k = np.zeros((4320, 7680), dtype=np.uint8)  # mono8 8K UHD
        result = pipeline.push_frame(eight_k, 2)
        assert result.frame_index == 1 and result.labels.shape == (4320, 7680)
        pipeline.submit_command("pick the blue mug")  # the 8K keyframe goes to the grounder as RGB
        assert pipeline.wait_until_idle(WAIT_S)
        assert grounder.calls[0][0][-1].shape == (4320, 7680, 3)
        assert pipeline.push_frame(clip[2], 3).targets[0].mask.shape == SIZE


def test_a_failing_grounder_is_answered_and_the_pipeline_keeps_serving(
    sam: torch.nn.Module, clip: list[np.ndarray]
) -> None:
    def flaky(frames: Sequence[np.ndarray], text: str) -> str:
        if text == "explode":
            raise RuntimeError("out of memory")
        return "Sure, [SEG]."

    pipeline, delivered = make_pipeline(sam, ScriptedGrounder(sam, flaky))
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("explode")
        pipeline.submit_command("pick the blue mug")
        assert pipeline.wait_until_idle(WAIT_S)
        assert [t.id for t in pipeline.push_frame(clip[1], 1).targets] == [1]
        stats = pipeline.stats()
    assert delivered[0].text == "Grounding failed: RuntimeError: out of memory"
    assert stats["groundings_failed"] == 1 and stats["groundings_done"] == 1


def test_latencies_are_counted(sam: torch.nn.Module, clip: list[np.ndarray]) -> None:
    pipeline, _ = make_pipeline(sam, ScriptedGrounder(sam, answering("Sure, [SEG].")))
    with pipeline:
        pipeline.push_frame(clip[0], 0)
        pipeline.submit_command("pick the blue mug")
        assert pipeline.wait_until_idle(WAIT_S)
        for t in range(1, 4):
            pipeline.push_frame(clip[t], t)
        stats = pipeline.stats()
    for name in ("frame", "track", "catch_up", "grounding", "answer", "first_mask"):
        assert 0 < stats[f"{name}_ms_p50"] <= stats[f"{name}_ms_p99"] < WAIT_S * 1000, name
    assert stats["frames_processed"] == 4


def test_latest_frame_slot_keeps_only_the_newest_item_and_counts_drops() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.take(timeout=0.01) is None
    assert slot.put(1) is False and slot.put(2) is True and slot.put(3) is True
    assert slot.take(timeout=0.01) == 3 and slot.take(timeout=0.01) is None
    assert (slot.offered, slot.dropped) == (3, 2)
    taken: list[int | None] = []
    consumer = threading.Thread(target=lambda: taken.append(slot.take(timeout=WAIT_S)))
    consumer.start()
    slot.close()
    consumer.join(WAIT_S)
    assert taken == [None] and not consumer.is_alive()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match=r"keyframes=0.*max_targets=300"):
        PipelineConfig(keyframes=0, max_targets=300)
