"""Frames + free-text commands -> tracked targets, label masks and answers (ROS-free).

The live node, the rosbag replay evaluation and the demo all drive this one class, so what is measured offline
is what runs on the robot::

    pipeline = Pipeline(model)                        # anything with ground(frames, text) and grounding_encoder
    pipeline.submit_command("pick the blue mug", stamp_ns)
    result = pipeline.push_frame(rgb, stamp_ns)       # every camera frame, in order
    result.labels, result.targets, result.answers     # label mask (0 = background, k = target id), ...

Two speeds: ``push_frame`` tracks every target on the camera thread (one SAM-2 step per frame); grounding (the
LLM) runs in a worker thread on the most recent keyframe(s). Its answer is delivered the moment it exists
(``on_answer``); its targets enter the tracker on the next frame, conditioned on the keyframe and propagated
to the present frame ("catch-up"), so masks always refer to the frame just pushed.

Commands are free text. Control words (case-insensitive, trailing punctuation ignored, "please" allowed)::

    clear | clear all | clear targets | reset | stop | stop tracking | forget all | forget everything
        -> forget every target and cancel groundings not yet applied
    forget 2 | forget target 2 | forget #2 | stop tracking 2 | untrack 2
        -> forget the target with id 2
    forget the blue mug | stop tracking the blue mug | untrack the mug
        -> forget the targets whose phrase matches (same words, or containing every word given)

Anything else is a grounding request or a question: the text is the user turn given to the model; each
``[SEG]`` of the answer becomes a target with a new id (up to ``max_targets``). A target's phrase is the
answer's ``<p>phrase</p>``, else the words before its ``[SEG]`` ("the blue mug [SEG]"), else the object named
by the command ("bring me the blue mug" -> "the blue mug"). A target whose state turns ``lost`` is re-grounded
with "Please segment <phrase>." on a fresh frame (at most once per ``reground_interval_s``) and keeps its id.

Every queue is bounded and every drop is counted (``stats()``): commands past ``command_queue_size`` drop the
oldest queued one; frames whose stamp goes backwards are dropped; ``LatestFrameSlot`` gives drivers a
one-frame mailbox where the latest frame wins.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np
import torch

from sa2va_ros.label_mask import label_image_from_masks
from sa2va_ros.targets_schema import TargetEntry, targets_payload
from sa2va_ros.tracking import LOST, TRACKING, FrameNotBufferedError, StreamingTracker, TrackerConfig, TrackResult
from sa2va_ros.tracking.frames import as_rgb_frame

SEG_TOKEN = "[SEG]"
REGROUND_PROMPT = "Please segment {phrase}."
MAX_QUEUED_CONTROLS = 64  # control words waiting for the frame in progress; past it the oldest is dropped
MAX_UNLISTED_ANSWERS = 64  # answers kept for the next FrameResult while no frame arrives
CommandErrorKind = Literal["empty", "too_long", "binary"]
FrameErrorKind = Literal["stale_stamp", "bad_frame"]
T = TypeVar("T")
LOGGER = logging.getLogger(__name__)


class Grounder(Protocol):
    """What the pipeline needs from a model: grounding, and the SAM-2 the tracker runs on (Sa2VA has both)."""

    grounding_encoder: Any  # a SAM2Base in eval mode

    def ground(self, frames: Sequence[np.ndarray], text: str, max_new_tokens: int = ...) -> Any:
        """Return an object with ``text``, ``seg_embeddings`` [N, 256], ``scores`` [N] and ``phrases`` (N)."""
        ...


class CommandError(ValueError):
    """A command the pipeline refuses; ``kind`` is one of "empty", "too_long", "binary"."""

    def __init__(self, kind: CommandErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class FrameRejectedError(ValueError):
    """A frame the pipeline does not track: its stamp is older than the last one, or it is not a valid image."""

    def __init__(self, kind: FrameErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class PipelineConfig:
    """Pipeline settings (the tracker has its own ``TrackerConfig``); validated on construction."""

    keyframes: int = 1  # most recent processed frames given to the grounder (more helps motion expressions)
    max_new_tokens: int = 64  # answer length limit of one grounding
    max_targets: int = 8  # targets at once; further [SEG]s of an answer are refused (counted)
    max_target_id: int = 255  # ids wrap around below this (255 fits a mono8 label image, 65535 mono16)
    reground_lost: bool = True  # re-ground a lost target with its phrase and keep its id
    reground_interval_s: float = 2.0  # at most one re-grounding per target in this interval
    reground_min_score: float = 0.0  # object-score logit a re-grounded [SEG] needs on its keyframe
    command_queue_size: int = 4  # queued grounding requests; past it the oldest queued one is dropped
    max_command_chars: int = 1000  # longer commands are refused
    stale_stamp_tolerance_s: float = 1.0  # a stamp this much older than the last is a time jump, not a stale frame
    latency_window: int = 1000  # samples kept per latency statistic

    def __post_init__(self) -> None:
        checks = {
            "keyframes": self.keyframes >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "max_targets": 1 <= self.max_targets <= self.max_target_id,
            "max_target_id": self.max_target_id <= 65535,
            "reground_interval_s": self.reground_interval_s >= 0,
            "command_queue_size": self.command_queue_size >= 1,
            "max_command_chars": self.max_command_chars >= 1,
            "stale_stamp_tolerance_s": self.stale_stamp_tolerance_s >= 0,
            "latency_window": self.latency_window >= 1,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "invalid PipelineConfig: " + ", ".join(bad) + " (keyframes, max_new_tokens, command_queue_size, "
                "max_command_chars, latency_window >= 1; 1 <= max_targets <= max_target_id <= 65535; "
                "reground_interval_s, stale_stamp_tolerance_s >= 0)"
            )


@dataclass(frozen=True)
class Answer:
    """The text answer to one command (a grounding request, a question or a control word)."""

    command_id: int
    command: str
    text: str
    target_ids: tuple[int, ...]  # targets created from this answer's [SEG]s, in order
    stamp_ns: int | None  # the stamp the command was submitted with
    latency_s: float  # submit_command -> answer


@dataclass(frozen=True)
class TargetState:
    """One target on one frame."""

    id: int
    phrase: str
    state: str  # "tracking" or "lost"
    score: float  # object score logit (> 0: present)
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (exclusive); None when the mask is empty
    mask: np.ndarray  # bool H×W; all False while lost
    command_id: int  # the command that created it


@dataclass(frozen=True)
class FrameResult:
    """What one pushed frame produced."""

    stamp_ns: int
    frame_index: int  # the tracker's index of this frame
    labels: np.ndarray  # uint16 H×W: 0 = background, k = target id (tracking targets only)
    targets: tuple[TargetState, ...]  # sorted by id
    answers: tuple[Answer, ...]  # answers that became ready since the previous frame
    timings: dict[str, float]  # seconds: track_s, catch_up_s, total_s

    def targets_json(self, frame_id: str) -> str:
        """The ``targets`` topic payload of this frame (schema in ``sa2va_ros.targets_schema``)."""
        entries = [TargetEntry.from_mask(t.id, t.phrase, t.state, t.score, t.mask) for t in self.targets]
        return targets_payload(self.stamp_ns, frame_id, entries)


class LatestFrameSlot(Generic[T]):
    """A one-item mailbox between a fast producer and a slower consumer: the latest item wins, drops counted."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._changed = threading.Condition()
        self.offered = 0
        self.dropped = 0  # items replaced before the consumer took them

    def put(self, item: T) -> bool:
        """Offer an item; returns True when it replaced one the consumer had not taken."""
        with self._changed:
            replaced = self._item is not None
            self.offered += 1
            self.dropped += replaced
            self._item = item
            self._changed.notify()
            return replaced

    def take(self, timeout: float) -> T | None:
        """The latest item, waiting up to ``timeout`` s; None on timeout or once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake a waiting consumer; later ``take`` calls return at once."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class LatencyWindow:
    """The last ``size`` samples of one latency, for percentiles."""

    def __init__(self, size: int) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self._samples, q) * 1000.0) if self._samples else None


# ---------------------------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class ControlCommand:
    """A parsed control word: clear everything, or forget a target by id or by phrase."""

    action: Literal["clear", "forget"]
    target_id: int | None = None
    phrase: str | None = None


_CLEAR_WORDS = re.compile(
    r"(clear|clear all|clear (all )?targets|reset|stop|stop tracking( (all|everything))?|"
    r"forget (all|everything|all targets))"
)
_FORGET = re.compile(r"(forget|stop tracking|untrack)\s+(.+)")
_FORGET_ID = re.compile(r"((target|id)\s+)?(#\s*)?(\d+)")
_TRAILING_PUNCTUATION = " \t\n.!?;,"


def parse_control(text: str) -> ControlCommand | None:
    """The control command in ``text``, or None when it is a grounding request or a question."""
    words = " ".join(text.lower().split()).strip(_TRAILING_PUNCTUATION)
    words = re.sub(r"^please\s+|\s+please$", "", words).strip(_TRAILING_PUNCTUATION)
    if _CLEAR_WORDS.fullmatch(words):
        return ControlCommand("clear")
    forget = _FORGET.fullmatch(words)
    if forget is None:
        return None
    by_id = _FORGET_ID.fullmatch(forget.group(2))
    if by_id is not None:
        return ControlCommand("forget", target_id=int(by_id.group(4)))
    return ControlCommand("forget", phrase=forget.group(2))


def clean_command(text: str, max_chars: int) -> str:
    """Whitespace-normalised command text; raises CommandError for empty, too long or binary input."""
    if len(text) > max_chars:
        raise CommandError("too_long", f"command of {len(text)} characters refused (the limit is {max_chars})")
    control = [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\t\n\r"]
    if control or "\ufffd" in text:
        sample = text[:24].encode("unicode_escape", "replace").decode("ascii")
        raise CommandError(
            "binary", f"command refused: it holds {len(control)} control or invalid characters ({sample!r}...)"
        )
    cleaned = " ".join(text.split())
    if not cleaned:
        raise CommandError("empty", "empty command refused (only whitespace)")
    return cleaned


_FILLER = re.compile(
    r"^(sure|yes|ok|okay|of course|it is|it's|this is|that is|here is|here it is|they are|there is|these are)\b",
    re.I,
)
_REQUEST_PREFIX = re.compile(
    r"^((please|can you|could you|would you|now|then|and)\s+)*"
    r"((pick up|pick|grab|take|hand me|bring me|give me|push|find|segment|track|follow|show me|point at|"
    r"point to|look at|locate|where is|where's|get|watch)\s+)?",
    re.I,
)
_REQUEST_SUFFIX = re.compile(r"\s+(in (this|the) (image|video|picture|frame|scene|view)|please)$", re.I)
_MAX_PHRASE_WORDS = 12


def command_object(command: str) -> str:
    """The object a command names: "Please bring me the blue mug." -> "the blue mug"."""
    text = command.strip().rstrip(_TRAILING_PUNCTUATION)
    text = _REQUEST_SUFFIX.sub("", _REQUEST_PREFIX.sub("", text, count=1)).strip(_TRAILING_PUNCTUATION)
    return text or command.strip()


def target_phrases(answer: str, model_phrases: Sequence[str | None], command: str, count: int) -> list[str]:
    """One phrase per [SEG]: the model's <p> phrase, else the answer's words before it, else the command's object.

    When the command names as many objects as there are [SEG]s ("the mug and the ball"), they are assigned in
    order; otherwise every unnamed target gets the whole object phrase.
    """
    answer_words = _answer_phrases(answer)
    command_text = command_object(command)
    command_parts = [part for part in re.split(r",\s*|\s+and\s+", command_text) if part.strip()]
    phrases = []
    for n in range(count):
        phrase = model_phrases[n] if n < len(model_phrases) else None
        phrase = phrase or (answer_words[n] if n < len(answer_words) else None)
        if not phrase:
            phrase = command_parts[n] if len(command_parts) == count else command_text
        phrases.append(phrase.strip())
    return phrases


def _answer_phrases(answer: str) -> list[str | None]:
    """For each [SEG], the noun phrase written just before it ("Sure, the blue mug [SEG]" -> "the blue mug")."""
    found: list[str | None] = []
    pieces = answer.split(SEG_TOKEN)[:-1]
    for piece in pieces:
        clauses = [c.strip() for c in re.split(r"[,;:]|\band\b", piece) if c.strip(" .!?")]
        phrase = _FILLER.sub("", clauses[-1]).strip(" .!?,") if clauses else ""
        found.append(phrase if phrase and len(phrase.split()) <= _MAX_PHRASE_WORDS else None)
    return found


def _normalise_phrase(phrase: str) -> list[str]:
    return [w for w in re.findall(r"\w+", phrase.lower()) if w not in ("the", "a", "an")]


# ---------------------------------------------------------------------------------------------- pipeline


@dataclass
class _Target:
    id: int
    phrase: str
    command_id: int
    submitted_at: float  # monotonic time of the command that created it
    applied: bool = False  # entered the tracker
    first_mask_seen: bool = False
    state: str = TRACKING
    last_reground_at: float = -float("inf")


@dataclass
class _Job:
    command_id: int
    text: str  # what the grounder is asked
    command: str  # the user's command (for an Answer), or "" for a re-grounding
    stamp_ns: int | None
    submitted_at: float
    reground_of: _Target | None = None


@dataclass
class _Keyframe:
    index: int  # tracker frame index
    frame: np.ndarray  # H×W×3 uint8 RGB
    stamp_ns: int


@dataclass
class _Grounded:
    job: _Job
    keyframe_indices: list[int]
    embeddings: torch.Tensor  # [N, 256]
    targets: list[_Target]  # one per accepted [SEG] (re-grounding: the target itself)


class Pipeline:
    """Streaming grounding + tracking: ``submit_command`` from any thread, ``push_frame`` from one camera thread.

    ``model`` grounds text on frames (``Grounder``); ``tracker`` defaults to a ``StreamingTracker`` on
    ``model.grounding_encoder`` whose SAM-2 parts run on ``backend`` (torch, onnxruntime or tensorrt).
    ``on_answer`` is called (from the worker or the caller's thread) as soon as an answer exists; the same answers
    are also listed once in the next ``FrameResult``. Call ``close()`` (or use the pipeline as a context manager)
    to stop the worker.
    """

    def __init__(
        self,
        model: Grounder,
        tracker: StreamingTracker | None = None,
        config: PipelineConfig | None = None,
        on_answer: Callable[[Answer], None] | None = None,
        backend: str | None = None,
    ) -> None:
        if tracker is not None and backend is not None:
            raise ValueError("give a tracker or a backend for the default one, not both (the tracker has its own)")
        self.model = model
        if tracker is None:
            tracker = StreamingTracker(model.grounding_encoder, TrackerConfig(backend=backend or "torch"))
        self.tracker = tracker
        self.config = config or PipelineConfig()
        self.on_answer = on_answer
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the worker waits here for a job and a frame
        self._frame_lock = threading.Lock()  # push_frame and control commands: the only tracker mutations
        self._commands: deque[_Job] = deque()
        self._controls: deque[tuple[_Job, ControlCommand]] = deque(maxlen=MAX_QUEUED_CONTROLS)
        self._regrounds: dict[int, _Job] = {}
        self._ready: deque[_Grounded] = deque()
        self._outbox: deque[Answer] = deque(maxlen=MAX_UNLISTED_ANSWERS)
        self._keyframes: deque[_Keyframe] = deque(maxlen=self.config.keyframes)
        self._targets: dict[int, _Target] = {}
        self._next_command_id = 1
        self._next_target_id = 1
        self._cancelled_up_to = 0  # groundings of commands up to this id are dropped (a "clear" came after)
        self._in_flight: _Job | None = None
        self._last_stamp_ns: int | None = None
        self._counters: Counter[str] = Counter()
        window = self.config.latency_window
        self._latency = {
            name: LatencyWindow(window) for name in ("frame", "track", "catch_up", "grounding", "answer", "first_mask")
        }
        self._stopping = False
        self._worker = threading.Thread(target=self._worker_loop, name="sa2va-grounding", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ public API

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the grounding worker (a grounding in progress finishes first, up to ``timeout`` s)."""
        with self._work:
            self._stopping = True
            self._work.notify_all()
        self._worker.join(timeout)

    def submit_command(self, text: str, stamp_ns: int | None = None) -> int:
        """Queue a command; returns its id. Raises CommandError for empty, too long or binary text.

        Control words apply at once when no frame is being processed, else right after that frame.
        """
        now = time.monotonic()
        try:
            command = clean_command(text, self.config.max_command_chars)
        except CommandError as error:
            with self._lock:
                self._counters[f"commands_rejected_{error.kind}"] += 1
            raise
        control = parse_control(command)
        with self._work:
            command_id = self._next_command_id
            self._next_command_id += 1
            self._counters["commands_received"] += 1
            job = _Job(command_id, command, command, stamp_ns, now)
            if control is not None:
                if len(self._controls) == MAX_QUEUED_CONTROLS:
                    self._counters["commands_dropped"] += 1
                self._controls.append((job, control))
            else:
                if len(self._commands) >= self.config.command_queue_size:
                    self._commands.popleft()
                    self._counters["commands_dropped"] += 1
                self._commands.append(job)
                self._work.notify_all()
        if control is not None:
            self._apply_controls_if_idle()
        return command_id

    def push_frame(self, frame: np.ndarray, stamp_ns: int) -> FrameResult:
        """Track every target on the next camera frame (H×W×3 uint8 RGB, or mono) and return the result.

        Raises FrameRejectedError when the stamp is older than the previous frame's (by less than
        ``stale_stamp_tolerance_s``; a bigger jump back is a restarted clock and is tracked) or the frame
        is not a valid image; the pipeline's state is unchanged then. The frame is kept (not copied) as a
        possible keyframe for the grounder: do not write into it afterwards.
        """
        started = time.perf_counter()
        with self._frame_lock:
            self._apply_pending_controls()
            self._check_stamp(stamp_ns)
            try:
                track = self.tracker.step(frame)
            except ValueError as error:
                with self._lock:
                    self._counters["frames_rejected"] += 1
                raise FrameRejectedError("bad_frame", f"frame refused: {error}") from error
            tracked = time.perf_counter()
            rgb = as_rgb_frame(frame, min_side=1, max_side=self.tracker.config.max_frame_side)  # H×W×3 (no copy)
            with self._work:
                self._last_stamp_ns = stamp_ns
                self._keyframes.append(_Keyframe(track.frame_index, rgb, stamp_ns))
                ready = list(self._ready)
                self._ready.clear()
                self._work.notify_all()
            for grounded in ready:
                track = self._apply_grounding(grounded, track)
            caught_up = time.perf_counter()
            result = self._frame_result(track, stamp_ns, started, tracked, caught_up)
        self._apply_controls_if_idle()
        return result

    def wait_until_idle(self, timeout: float) -> bool:
        """Wait until no grounding is queued or running (results may wait for the next frame); False on timeout."""
        with self._work:
            return self._work.wait_for(
                lambda: not self._commands and not self._regrounds and self._in_flight is None, timeout
            )

    def stats(self) -> dict[str, Any]:
        """Counters, queue depths and latency percentiles (``<name>_ms_p50`` / ``_p99``), JSON-friendly.

        Latencies: ``frame`` (push_frame), ``track`` (its tracker step), ``catch_up`` (groundings entering the
        tracker), ``grounding`` (one LLM call), ``answer`` (command -> answer), ``first_mask`` (command -> the
        first frame result holding its target).
        """
        with self._lock:
            stats: dict[str, Any] = dict(self._counters)
            stats.update(
                targets=len([t for t in self._targets.values() if t.applied]),
                targets_lost=len([t for t in self._targets.values() if t.applied and t.state == LOST]),
                commands_queued=len(self._commands),
                regrounds_queued=len(self._regrounds),
                grounding_in_progress=self._in_flight is not None,
            )
            for name, window in self._latency.items():
                stats[f"{name}_ms_p50"] = window.percentile_ms(50)
                stats[f"{name}_ms_p99"] = window.percentile_ms(99)
            return stats

    # ------------------------------------------------------------------ frames

    def _check_stamp(self, stamp_ns: int) -> None:
        last = self._last_stamp_ns
        if last is None or stamp_ns >= last:
            return
        behind_s = (last - stamp_ns) / 1e9
        with self._lock:
            if behind_s <= self.config.stale_stamp_tolerance_s:
                self._counters["frames_stale"] += 1
                raise FrameRejectedError(
                    "stale_stamp",
                    f"frame stamped {behind_s * 1000:.1f} ms before the previous one dropped (out of order)",
                )
            self._counters["time_jumps_back"] += 1

    def _apply_grounding(self, grounded: _Grounded, track: TrackResult) -> TrackResult:
        """Condition each accepted target on the grounding's keyframes and catch it up to the present frame."""
        with self._lock:
            live = [(n, t) for n, t in enumerate(grounded.targets) if self._targets.get(t.id) is t]
        for n, target in live:
            embedding = grounded.embeddings[n]  # [256]
            try:
                track = self._condition(target.id, embedding, grounded.keyframe_indices, track)
            except ValueError as error:  # e.g. an embedding of the wrong width from a mismatched model
                with self._lock:
                    self._counters["groundings_failed"] += 1
                    if not target.applied:
                        del self._targets[target.id]
                LOGGER.error("target %d (%r) could not be tracked: %s", target.id, target.phrase, error)
                continue
            with self._lock:
                target.applied = True
                self._counters["regrounds_succeeded" if grounded.job.reground_of else "targets_created"] += 1
        return track

    def _condition(
        self, target_id: int, embedding: torch.Tensor, keyframes: list[int], track: TrackResult
    ) -> TrackResult:
        """Prompt a target on each keyframe still buffered (oldest first), caught up to the present frame."""
        conditioned = False
        for index in keyframes:
            try:
                track = self.tracker.add_target(target_id, embedding=embedding, at=index)
                conditioned = True
            except FrameNotBufferedError:
                continue
        if not conditioned:  # the keyframes left the feature buffer: prompt the present frame instead
            track = self.tracker.add_target(target_id, embedding=embedding, at=track.frame_index)
            with self._lock:
                self._counters["keyframes_expired"] += 1
        return track

    def _frame_result(
        self, track: TrackResult, stamp_ns: int, started: float, tracked: float, caught_up: float
    ) -> FrameResult:
        now = time.monotonic()
        height, width = track.frame_size
        empty = np.zeros((height, width), dtype=bool)
        states = []
        with self._lock:
            for target_id in sorted(track.masks):
                target = self._targets.get(target_id)
                if target is None:
                    continue
                target.state = track.states[target_id]
                tracking = target.state == TRACKING
                mask = track.masks[target_id] if tracking else empty
                box = track.boxes[target_id] if tracking else None
                states.append(
                    TargetState(target_id, target.phrase, target.state, track.scores[target_id], box, mask,
                                target.command_id)
                )
                if not target.first_mask_seen:
                    target.first_mask_seen = True
                    self._latency["first_mask"].add(now - target.submitted_at)
                if not tracking:
                    self._request_reground(target, now)
            answers = tuple(self._outbox)
            self._outbox.clear()
        labels = label_image_from_masks(
            {t.id: t.mask for t in states if t.state == TRACKING},
            (height, width),
            scores={t.id: t.score for t in states},
        )  # uint16 H×W
        finished = time.perf_counter()
        timings = {"track_s": tracked - started, "catch_up_s": caught_up - tracked, "total_s": finished - started}
        with self._lock:
            self._counters["frames_processed"] += 1
            self._latency["frame"].add(timings["total_s"])
            self._latency["track"].add(timings["track_s"])
            if caught_up - tracked > 1e-4:
                self._latency["catch_up"].add(timings["catch_up_s"])
        return FrameResult(stamp_ns, track.frame_index, labels, tuple(states), answers, timings)

    def _request_reground(self, target: _Target, now: float) -> None:
        """Queue a re-grounding of a lost target with its phrase, at most once per interval (lock held)."""
        if not self.config.reground_lost or target.id in self._regrounds:
            return
        if self._in_flight is not None and self._in_flight.reground_of is target:
            return
        if now - target.last_reground_at < self.config.reground_interval_s:
            return
        target.last_reground_at = now
        prompt = REGROUND_PROMPT.format(phrase=target.phrase)
        self._regrounds[target.id] = _Job(0, prompt, "", None, now, reground_of=target)
        self._counters["regrounds_requested"] += 1
        self._work.notify_all()

    # ------------------------------------------------------------------ control commands

    def _apply_controls_if_idle(self) -> None:
        """Apply queued control commands now unless a frame is being processed (it applies them itself)."""
        if not self._controls or not self._frame_lock.acquire(blocking=False):
            return
        try:
            self._apply_pending_controls()
        finally:
            self._frame_lock.release()

    def _apply_pending_controls(self) -> None:
        """Apply every queued control command in order (frame lock held)."""
        while True:
            with self._work:
                if not self._controls:
                    return
                job, control = self._controls.popleft()
                if control.action == "clear":
                    text = self._clear(job.command_id)
                else:
                    text = self._forget(control)
                self._counters["controls_applied"] += 1
                answer = self._answer(job, text, ())
            self._deliver(answer)

    def _clear(self, command_id: int) -> str:
        """Forget every target, drop queued groundings and cancel the one in progress (locks held)."""
        count = len(self._targets)
        for target_id in list(self._targets):
            self._remove_target(target_id)
        self._counters["groundings_cancelled"] += len(self._commands) + len(self._ready)  # the running one: _finish
        self._commands.clear()
        self._ready.clear()
        self._cancelled_up_to = command_id
        return f"Cleared {count} target{'s' if count != 1 else ''}."

    def _forget(self, control: ControlCommand) -> str:
        """Forget the target named by id or phrase (locks held)."""
        if control.target_id is not None:
            matches = [control.target_id] if control.target_id in self._targets else []
            wanted = f"target {control.target_id}"
        else:
            words = _normalise_phrase(control.phrase or "")
            exact = [i for i, t in self._targets.items() if _normalise_phrase(t.phrase) == words]
            partial = [i for i, t in self._targets.items() if words and set(words) <= set(_normalise_phrase(t.phrase))]
            matches = exact or partial
            wanted = repr(control.phrase)
        if not matches:
            known = ", ".join(f"{i} ({t.phrase})" for i, t in sorted(self._targets.items())) or "none"
            return f"No target matches {wanted}; current targets: {known}."
        described = ", ".join(f"{i} ({self._targets[i].phrase})" for i in sorted(matches))
        for target_id in matches:
            self._remove_target(target_id)
        return f"Forgot target{'s' if len(matches) > 1 else ''} {described}."

    def _remove_target(self, target_id: int) -> None:
        target = self._targets.pop(target_id)
        self._regrounds.pop(target_id, None)
        if target.applied:
            self.tracker.remove_target(target_id)

    # ------------------------------------------------------------------ grounding worker

    def _worker_loop(self) -> None:
        while True:
            with self._work:
                self._work.wait_for(lambda: self._stopping or self._can_start_job())
                if self._stopping:
                    return
                job = self._commands.popleft() if self._commands else self._pop_reground()
                keyframes = list(self._keyframes)
                self._in_flight = job
            started = time.monotonic()
            try:
                result = self.model.ground(
                    [k.frame for k in keyframes], job.text, max_new_tokens=self.config.max_new_tokens
                )
                error = None
            except Exception as exc:  # a model failure must not stop the stream; it is answered and counted
                LOGGER.exception("grounding %r failed", job.text[:80])
                result, error = None, exc
            answer = self._finish(job, keyframes, result, error, time.monotonic() - started)
            if answer is not None:
                self._deliver(answer)

    def _can_start_job(self) -> bool:
        """A job is queued, a frame exists, and results are not piling up unapplied (no frames coming)."""
        has_job = bool(self._commands) or bool(self._regrounds)
        return has_job and bool(self._keyframes) and len(self._ready) < self.config.command_queue_size

    def _pop_reground(self) -> _Job:
        target_id = min(self._regrounds, key=lambda i: self._regrounds[i].submitted_at)
        return self._regrounds.pop(target_id)

    def _finish(
        self, job: _Job, keyframes: list[_Keyframe], result: Any, error: Exception | None, elapsed: float
    ) -> Answer | None:
        """Turn a grounding into targets waiting for the next frame, and the answer to deliver (None if none)."""
        with self._work:
            self._in_flight = None
            self._work.notify_all()
            self._latency["grounding"].add(elapsed)
            target = job.reground_of
            if error is not None:
                self._counters["groundings_failed"] += 1
                if target is not None:
                    return None
                return self._answer(job, f"Grounding failed: {type(error).__name__}: {error}", ())
            self._counters["groundings_done"] += 1
            if target is None and job.command_id <= self._cancelled_up_to:
                self._counters["groundings_cancelled"] += 1
                return None
            embeddings = torch.as_tensor(result.seg_embeddings).detach().float()  # [N, 256]
            indices = [k.index for k in keyframes]
            if target is not None:
                scores = np.asarray(result.scores, dtype=np.float32).reshape(-1)  # [N]
                found = len(embeddings) > 0 and float(scores[0]) >= self.config.reground_min_score
                if found and self._targets.get(target.id) is target:
                    self._ready.append(_Grounded(job, indices, embeddings[:1], [target]))
                return None
            count = len(embeddings)
            phrases = target_phrases(result.text, list(result.phrases or []), job.command, count)
            room = self.config.max_targets - len(self._targets)
            accepted = min(count, max(room, 0))
            if accepted < count:
                self._counters["targets_refused"] += count - accepted
            new_targets = [
                self._new_target(phrases[n], job) for n in range(accepted)
            ]
            if new_targets:
                self._ready.append(_Grounded(job, indices, embeddings[:accepted], new_targets))
            return self._answer(job, result.text, tuple(t.id for t in new_targets))

    def _new_target(self, phrase: str, job: _Job) -> _Target:
        """Register a target under the next free id (ids wrap around below max_target_id) (lock held)."""
        limit = self.config.max_target_id
        target_id = self._next_target_id
        while target_id in self._targets:
            target_id = target_id % limit + 1
        self._next_target_id = target_id % limit + 1
        target = _Target(target_id, phrase, job.command_id, job.submitted_at)
        self._targets[target_id] = target
        return target

    def _answer(self, job: _Job, text: str, target_ids: tuple[int, ...]) -> Answer:
        """Record an answer for the next FrameResult (lock held) and return it for delivery."""
        latency = time.monotonic() - job.submitted_at
        answer = Answer(job.command_id, job.command, text, target_ids, job.stamp_ns, latency)
        if len(self._outbox) == MAX_UNLISTED_ANSWERS:
            self._counters["answers_unlisted"] += 1  # still delivered through on_answer
        self._outbox.append(answer)
        self._counters["answers"] += 1
        self._latency["answer"].add(latency)
        return answer

    def _deliver(self, answer: Answer) -> None:
        if self.on_answer is not None:
            self.on_answer(answer)

