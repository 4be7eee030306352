"""Behaviour of the streaming tracker on tiny random-weight SAM-2 models (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sa2va_ros.model.sam2_grounding import build_sam2, bundled_sam2_config, tiny_sam2_config
from sa2va_ros.tracking import LOST, TRACKING, FrameNotBufferedError, StreamingTracker, TrackerConfig
from sa2va_ros.tracking import tracker as tracker_module
from sa2va_ros.tracking.reference import build_reference_predictor
from sa2va_ros.tracking.tracker import LazyLogits, mask_boxes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEIGHT, WIDTH = 96, 128
ATOL = 1e-5


@pytest.fixture(scope="module")
def sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam2(tiny_sam2_config(128), sa2va=False)


@pytest.fixture(scope="module")
def sa2va_sam() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_sam2(tiny_sam2_config(128), sa2va=True)


def clip(num_frames: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> list[np.ndarray]:
    """Noisy frames with a bright square moving right."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(num_frames):
        frame = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        frame[height // 4 : height // 4 + 30, 10 + 2 * t : 40 + 2 * t] = (220, 200, 40)
        frames.append(frame)
    return frames


def numpy_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Reference tight box (x0, y0, x1, y1), x1/y1 exclusive, of a bool mask; None if empty."""
    ys, xs = np.nonzero(mask)
    return None if ys.size == 0 else (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def square_mask(t: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 4 + 30, 10 + 2 * t : 40 + 2 * t] = True
    return mask


def test_results_cover_every_target_at_the_frame_size(sam: torch.nn.Module) -> None:
    frames = clip(4)
    tracker = StreamingTracker(sam)
    first = tracker.add_target(1, frames[0], mask=square_mask(0))
    assert first.frame_index == 0 and list(first.masks) == [1]
    second = tracker.add_target(2, frames[1], box=(60, 10, 120, 80))
    assert second.frame_index == 1 and tracker.target_ids == [1, 2]
    for frame in frames[2:]:
        result = tracker.step(frame)
    assert result.frame_index == 3 and result.frame_size == (HEIGHT, WIDTH)
    for target_id in (1, 2):
        assert result.masks[target_id].dtype == bool and result.masks[target_id].shape == (HEIGHT, WIDTH)
        assert result.logits[target_id].dtype == np.float32 and result.logits[target_id].shape == (HEIGHT, WIDTH)
        assert np.array_equal(result.masks[target_id], result.logits[target_id] > 0)
        assert isinstance(result.scores[target_id], float)
        assert result.states[target_id] in (TRACKING, LOST)
        assert result.boxes[target_id] == numpy_box(result.masks[target_id])


def test_mask_boxes_are_tight_with_exclusive_corner() -> None:
    masks = torch.zeros(4, 10, 20, dtype=torch.bool)
    masks[0, 2:5, 7:12] = True
    masks[2, 9, 19] = True  # one pixel in the last row and column
    masks[3, 0, 0] = masks[3, 6, 3] = True  # two separate pixels
    assert mask_boxes(masks) == [(7, 2, 12, 5), None, (19, 9, 20, 10), (0, 0, 4, 7)]
    assert mask_boxes(masks) == [numpy_box(mask) for mask in masks.numpy()]


def test_lazy_logits_equal_the_eager_batched_upsampling(monkeypatch: pytest.MonkeyPatch) -> None:
    low_res = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    ids, size = [4, 1, 9, 2, 7], (97, 131)
    eager = F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    lazy = LazyLogits(low_res, ids, size)
    original, upsampled = tracker_module.upsample_logits, []
    monkeypatch.setattr(tracker_module, "upsample_logits", lambda *args: upsampled.append(1) or original(*args))
    assert list(lazy) == ids and len(lazy) == 5 and 3 not in lazy and 9 in lazy
    assert not upsampled  # listing the ids and testing membership read no map
    for n, target_id in reversed(list(enumerate(ids))):
        assert lazy[target_id].dtype == np.float32 and np.array_equal(lazy[target_id], eager[n])
    assert lazy[9] is lazy[9] and len(upsampled) == 5  # read once, then kept
    with pytest.raises(KeyError):
        lazy[3]
    with pytest.raises(TypeError):
        lazy[4] = eager[0]  # type: ignore[index]


def test_a_result_upsamples_logits_only_when_read(sam: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """One batched upsampling gives every mask and box; a float map is made (once) only for a target read."""
    frames = clip(4)
    tracker = StreamingTracker(sam)
    tracker.add_target(1, frames[0], mask=square_mask(0))
    tracker.add_target(2, frames[1], box=(60, 10, 120, 80))
    tracker.add_target(3, frames[2], points=[[80, 60]], labels=[1])
    upsampled: list[int] = []  # batch size of every upsampling to the frame size
    original = tracker_module.upsample_logits

    def counting(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        upsampled.append(low_res.size(0))
        return original(low_res, size)

    monkeypatch.setattr(tracker_module, "upsample_logits", counting)
    result = tracker.step(frames[3])
    assert upsampled == [3]
    for target_id in (1, 2, 3):
        assert result.masks[target_id].shape == (HEIGHT, WIDTH) and result.boxes[target_id] == numpy_box(
            result.masks[target_id]
        )
    assert upsampled == [3]  # masks and boxes need no float map on the host
    logits = result.logits[2]
    assert upsampled == [3, 1] and np.array_equal(result.masks[2], logits > 0)
    assert result.logits[2] is logits and upsampled == [3, 1]
    assert list(result.logits) == [1, 2, 3]


def test_mask_prompt_frame_returns_the_prompt(sam: torch.nn.Module) -> None:
    """With use_mask_input_as_output_without_sam the conditioning frame's mask is the prompt itself."""
    mask = square_mask(0)
    result = StreamingTracker(sam).add_target(5, clip(1)[0], mask=mask)
    iou = (result.masks[5] & mask).sum() / (result.masks[5] | mask).sum()
    assert iou > 0.9
    assert result.boxes[5] is not None and result.scores[5] > 0


def test_every_prompt_kind_conditions_differently(sam: torch.nn.Module) -> None:
    frame = clip(1)[0]
    prompts = {
        "box": {"box": (10, 24, 40, 54)},
        "points": {"points": [[25, 39], [100, 80]], "labels": [1, 0]},
        "box_and_point": {"box": (10, 24, 40, 54), "points": [[25, 39]], "labels": [1]},
        "embedding": {"embedding": torch.randn(256, generator=torch.Generator().manual_seed(0))},
    }
    logits = {name: StreamingTracker(sam).add_target(1, frame, **kw).logits[1] for name, kw in prompts.items()}
    names = list(logits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(logits[a] - logits[b]).max() > 1e-3, f"{a} and {b} prompts gave the same logits"


def test_embedding_prompt_matches_official_sa2va_video_inference(sa2va_sam: torch.nn.Module) -> None:
    """[SEG] on frame 0, then memory only: the same logits as Sa2VASam2.language_video_inference (K = 1)."""
    frames = clip(17)
    embedding = torch.randn(256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        images = sa2va_sam.preprocess(frames)
        official = [out["pred_masks"] for out in sa2va_sam.language_video_inference(images, embedding, 1)]
    tracker = StreamingTracker(sa2va_sam)
    results = [tracker.add_target(1, frames[0], embedding=embedding)] + [tracker.step(f) for f in frames[1:]]
    for low_res, result in zip(official, results, strict=True):
        expected = F.interpolate(low_res.float(), size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
        assert np.abs(result.logits[1] - expected[0, 0].numpy()).max() <= ATOL


def test_batched_targets_match_targets_tracked_alone(sam: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets of different ages are grouped by memory shape; batching never changes a target's logits."""
    frames = clip(27)
    added_at = {
        1: (0, {"mask": square_mask(0)}),
        2: (3, {"box": (60, 10, 120, 80)}),
        3: (9, {"points": [[80, 60]], "labels": [1]}),
    }
    batches: list[int] = []  # batch size of every memory-attention call
    original = sam.memory_attention.forward

    def counting_forward(*args: object, **kwargs: torch.Tensor) -> torch.Tensor:
        batches.append(kwargs["memory"].size(1))
        return original(*args, **kwargs)

    def run(target_ids: list[int]) -> tuple[list, list[list[int]]]:
        tracker, results, per_frame = StreamingTracker(sam), [], []
        for t, frame in enumerate(frames):
            new = [i for i in target_ids if added_at[i][0] == t]
            before = len(batches)
            results.append(tracker.add_target(new[0], frame, **added_at[new[0]][1]) if new else tracker.step(frame))
            per_frame.append(sorted(batches[before:]))
        return results, per_frame

    monkeypatch.setattr(sam.memory_attention, "forward", counting_forward)
    alone = {i: run([i])[0] for i in added_at}
    together, per_frame = run([1, 2, 3])
    for t in range(len(frames)):
        for i, (start, _) in added_at.items():
            if t >= start:
                assert np.abs(together[t].logits[i] - alone[i][t].logits[i]).max() <= ATOL
    assert per_frame[10] == [1, 1, 1]  # three ages, three memory shapes
    assert per_frame[26] == [3]  # every pointer window full: one batch


def test_catch_up_equals_conditioning_live(sam: torch.nn.Module) -> None:
    frames = clip(16)
    box = (30, 20, 90, 70)
    live, late = StreamingTracker(sam), StreamingTracker(sam)
    live_results = [live.add_target(1, frames[0], mask=square_mask(0))]
    for t in range(1, 16):
        if t == 5:
            live_results.append(live.add_target(2, frames[t], mask=square_mask(t)))
        elif t == 8:
            live_results.append(live.add_target(3, frames[t], box=box))
        else:
            live_results.append(live.step(frames[t]))
    late.add_target(1, frames[0], mask=square_mask(0))
    for frame in frames[1:10]:
        late.step(frame)
    # the grounding result for keyframe 5 arrives after frame 9
    caught_up = late.add_target(2, at=5, mask=square_mask(5))
    assert caught_up.frame_index == 9 and list(caught_up.masks) == [1, 2]
    for target_id in (1, 2):
        assert np.abs(caught_up.logits[target_id] - live_results[9].logits[target_id]).max() <= ATOL
    # frame 10 arrives together with a result for keyframe 8: the frame is pushed, target 3 catches up through it
    caught_up = late.add_target(3, frames[10], at=8, box=box)
    assert caught_up.frame_index == 10
    for target_id in (1, 2, 3):
        assert np.abs(caught_up.logits[target_id] - live_results[10].logits[target_id]).max() <= ATOL
    for frame in frames[11:]:
        late_result = late.step(frame)
    for target_id in (1, 2, 3):  # the caught-up memories keep tracking exactly like the live ones
        assert np.abs(late_result.logits[target_id] - live_results[15].logits[target_id]).max() <= ATOL


def test_catch_up_outside_the_buffer_is_one_clear_error(sam: torch.nn.Module) -> None:
    frames = clip(12)
    tracker = StreamingTracker(sam, TrackerConfig(feature_buffer=4))
    with pytest.raises(FrameNotBufferedError, match="no frames"):
        tracker.add_target(1, at=0, mask=square_mask(0))
    tracker.add_target(1, frames[0], mask=square_mask(0))
    for frame in frames[1:10]:
        tracker.step(frame)
    for k in (5, 10, -1):  # evicted, not seen yet, nonsense
        with pytest.raises(FrameNotBufferedError, match=r"buffer holds frames 6\.\.9"):
            tracker.add_target(2, at=k, mask=square_mask(k))
    with pytest.raises(ValueError, match="frame, or at="):
        tracker.add_target(2, mask=square_mask(0))
    # pushing a frame evicts frame 6: at=6 is refused before anything changes
    with pytest.raises(FrameNotBufferedError):
        tracker.add_target(2, frames[10], at=6, mask=square_mask(6))
    assert tracker.frames_seen == 10 and tracker.target_ids == [1]
    result = tracker.add_target(2, at=6, mask=square_mask(6))
    assert result.frame_index == 9 and tracker.target_ids == [1, 2]
    assert tracker.step(frames[10]).frame_index == 10


def test_memory_stays_bounded_over_a_long_stream(sam: torch.nn.Module) -> None:
    config = TrackerConfig(feature_buffer=6, max_conditioning_frames=3)
    tracker = StreamingTracker(sam, config)
    frames = clip(8)
    tracker.add_target(1, frames[0], mask=square_mask(0))
    tracker.add_target(2, frames[1], points=[[30, 40]], labels=[1])
    stats_at = {}
    for t in range(2, 200):
        if t in (20, 40, 60, 80):  # re-condition target 1 four times: the cap keeps the first + newest
            tracker.add_target(1, frames[t % 8], box=(10, 24, 40, 54))
        else:
            tracker.step(frames[t % 8])
        if t in (120, 199):
            stats_at[t] = tracker.memory_stats()
    assert stats_at[120] == stats_at[199]
    stats = stats_at[199]
    assert stats["buffered_frames"] == 6
    assert stats["targets"][1]["conditioning_frames"] == [0, 60, 80]
    assert stats["targets"][2]["conditioning_frames"] == [1]
    for target in stats["targets"].values():
        assert target["spatial_memories"] == sam.num_maskmem - 1
        assert target["recent_pointers"] == sam.max_obj_ptrs_in_encoder - 1


def test_lost_after_m_absent_frames_and_reconditioning_resumes(sam: torch.nn.Module) -> None:
    # Random weights give tracked-frame scores ~0.2 (a mask prompt gives +10): a threshold of 1 makes every
    # tracked frame "absent", which drives the state machine deterministically.
    tracker = StreamingTracker(sam, TrackerConfig(lost_score_threshold=1.0, lost_after_frames=3))
    frames = clip(10)
    assert tracker.add_target(7, frames[0], mask=square_mask(0)).states[7] == TRACKING
    states = [tracker.step(frame).states[7] for frame in frames[1:6]]
    assert states == [TRACKING, TRACKING, LOST, LOST, LOST]
    resumed = tracker.add_target(7, frames[6], mask=square_mask(6))
    assert resumed.states[7] == TRACKING and tracker.target_ids == [7]
    assert tracker.memory_stats()["targets"][7]["conditioning_frames"] == [0, 6]
    assert tracker.memory_stats()["targets"][7]["recent_pointers"] == 0  # tracked memory dropped on re-prompt
    assert [tracker.step(frame).states[7] for frame in frames[7:10]] == [TRACKING, TRACKING, LOST]


def test_frame_policy_mono_size_changes_and_bad_frames(sam: torch.nn.Module) -> None:
    rgb = clip(1)[0]
    gray = rgb[:, :, 1].copy()
    reference = StreamingTracker(sam).add_target(1, np.repeat(gray[:, :, None], 3, axis=2), mask=square_mask(0))
    for mono in (gray, gray[:, :, None]):
        result = StreamingTracker(sam).add_target(1, mono, mask=square_mask(0))
        assert np.array_equal(result.logits[1], reference.logits[1])

    tracker = StreamingTracker(sam, TrackerConfig(max_frame_side=300))
    tracker.add_target(1, rgb, mask=square_mask(0))
    small = tracker.step(clip(1, 50, 70)[0])
    assert small.masks[1].shape == (50, 70) and small.logits[1].shape == (50, 70)
    bad_frames = [
        np.zeros((7, 100, 3), np.uint8),  # too small
        np.zeros((40, 301, 3), np.uint8),  # larger than max_frame_side
        np.zeros((40, 40, 3), np.float32),  # not uint8
        np.zeros((40, 40, 4), np.uint8),  # not RGB or mono
        [[0, 0], [0, 0]],  # not an array
    ]
    for bad in bad_frames:
        with pytest.raises(ValueError):
            tracker.step(bad)  # type: ignore[arg-type]
    assert tracker.frames_seen == 2
    back = tracker.step(rgb)
    assert back.frame_index == 2 and back.masks[1].shape == (HEIGHT, WIDTH)
    # a prompt refers to the keyframe's own size; the result is at the present frame's size
    tracker.step(clip(1, 60, 60)[0])
    caught_up = tracker.add_target(2, at=2, mask=square_mask(0))
    assert caught_up.masks[2].shape == (60, 60)


def test_bad_prompts_are_refused_before_anything_changes(sam: torch.nn.Module) -> None:
    frame = clip(1)[0]
    tracker = StreamingTracker(sam)
    bad_prompts = [
        {},
        {"mask": square_mask(0), "box": (0, 0, 5, 5)},
        {"points": [[1, 2]]},
        {"mask": np.ones((10, 10), bool)},
        {"points": [[1, 2]], "labels": [2]},
        {"box": (1, 2, 3)},
        {"embedding": torch.zeros(128)},
    ]
    for prompt in bad_prompts:
        with pytest.raises(ValueError):
            tracker.add_target(1, frame, **prompt)
    assert tracker.frames_seen == 0 and tracker.target_ids == []


def test_remove_reset_and_eval_mode(sam: torch.nn.Module) -> None:
    frames = clip(3)
    tracker = StreamingTracker(sam)
    tracker.add_target(1, frames[0], mask=square_mask(0))
    tracker.add_target(2, frames[1], box=(60, 10, 120, 80))
    tracker.remove_target(1)
    assert list(tracker.step(frames[2]).masks) == [2]
    with pytest.raises(KeyError):
        tracker.remove_target(1)
    tracker.reset()
    assert tracker.target_ids == [] and tracker.frames_seen == 0
    assert tracker.step(frames[0]).frame_index == 0
    with pytest.raises(ValueError, match="eval mode"):
        StreamingTracker(build_sam2(tiny_sam2_config(128), sa2va=False).train())


@pytest.mark.parametrize(
    "bad", [{"feature_buffer": 0}, {"max_conditioning_frames": 1}, {"lost_after_frames": 0}, {"max_frame_side": 4}]
)
def test_config_is_validated(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrackerConfig(**bad)


@pytest.mark.parametrize("clear_memory", [True, False])
def test_reconditioning_rewrites_the_history_after_the_keyframe(sam: torch.nn.Module, clear_memory: bool) -> None:
    frames = clip(10)
    tracker = StreamingTracker(sam, TrackerConfig(clear_memory_on_reprompt=clear_memory))
    tracker.add_target(1, frames[0], mask=square_mask(0))
    for t in range(1, 9):
        tracker.add_target(1, frames[t], box=(10, 24, 40, 54)) if t == 6 else tracker.step(frames[t])
    # a late grounding result for keyframe 4 replaces what target 1 remembered after frame 4 (its frame-6 prompt too)
    result = tracker.add_target(1, at=4, mask=square_mask(4))
    assert result.frame_index == 8 and tracker.target_ids == [1]
    stats = tracker.memory_stats()["targets"][1]
    assert stats["conditioning_frames"] == [0, 4]
    # tracked frames kept: 5..8 from the catch-up, plus 1..3 unless the re-prompt clears them
    assert stats["recent_pointers"] == (4 if clear_memory else 7)


def test_batched_pointer_encodings_match_the_video_predictor_per_object(tmp_path: Path) -> None:
    """SAM 2.1's pointer settings (temporal encodings of object pointers through ``obj_ptr_tpos_proj``, signed
    distances; the tiny config has none) on a tiny model: three targets batched, each bit-identical to Meta's
    ``SAM2VideoPredictor``, which tracks every object on its own."""
    config = tiny_sam2_config(128)
    config.update(  # sam2.1_hiera_t's settings that sam2_hiera_t lacks
        add_tpos_enc_to_obj_ptrs=True,
        proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True,
        no_obj_embed_spatial=True,
    )
    torch.manual_seed(2)
    predictor = build_reference_predictor("sam2.1_hiera_t", config)
    model = build_sam2(config, sa2va=False)
    model.load_state_dict(predictor.state_dict())
    assert isinstance(model.obj_ptr_tpos_proj, torch.nn.Linear)
    frames = []
    for t, frame in enumerate(clip(18, 128, 128)):
        Image.fromarray(frame).save(tmp_path / f"{t:05d}.jpg", quality=95)  # the predictor reads JPEGs only
        frames.append(np.array(Image.open(tmp_path / f"{t:05d}.jpg")))  # both sides get the decoded pixels
    prompts = {1: square_mask(0, 128, 128), 2: np.zeros((128, 128), bool), 3: np.zeros((128, 128), bool)}
    prompts[2][70:110, 60:120] = True
    prompts[3][5:30, 90:125] = True
    state = predictor.init_state(str(tmp_path), offload_video_to_cpu=True)
    for target_id, mask in prompts.items():
        predictor.add_new_mask(state, frame_idx=0, obj_id=target_id, mask=mask)
    reference = [logits[:, 0].numpy() for _, _, logits in predictor.propagate_in_video(state)]  # [3, H, W] each
    tracker = StreamingTracker(model)
    tracker.add_target(1, frames[0], mask=prompts[1])
    tracker.add_target(2, at=0, mask=prompts[2])
    results = [tracker.add_target(3, at=0, mask=prompts[3])] + [tracker.step(frame) for frame in frames[1:]]
    for expected, result in zip(reference, results, strict=True):
        for n, target_id in enumerate(prompts):
            assert np.abs(result.logits[target_id] - expected[n]).max() <= 2e-6
    assert max(float(np.abs(r.logits[2] - r.logits[3]).max()) for r in results[1:]) > 1e-3  # targets differ


def _graph_vs_eager_runs(sam: torch.nn.Module, frames: list[np.ndarray]) -> list[tuple]:
    """The same stream with and without CUDA graphs: a mask target, one caught up from 3 frames back by a box,
    then one prompted by a [SEG] embedding."""
    embedding = torch.randn(256, generator=torch.Generator().manual_seed(3))
    runs = []
    for cuda_graphs in (False, True):
        tracker = StreamingTracker(sam, TrackerConfig(cuda_graphs=cuda_graphs))
        results = [tracker.add_target(1, frames[0], mask=square_mask(0))]
        for t, frame in enumerate(frames[1:], start=1):
            if t == 12:
                results.append(tracker.add_target(3, frame, embedding=embedding))
                continue
            results.append(tracker.step(frame))
            if t == 8:  # features of frame 5 were buffered before three more replays of the encoder's graph
                results.append(tracker.add_target(2, at=5, box=(60, 10, 120, 80)))
        runs.append((tracker, results))
    return runs


def test_cuda_graphs_setting_leaves_cpu_tracking_unchanged(sam: torch.nn.Module) -> None:
    (_, eager_results), (graphed, graphed_results) = _graph_vs_eager_runs(sam, clip(10))
    assert graphed.parts.cuda_graphs  # on a CPU the parts simply run eagerly
    assert all(stats == {"graphs": 0, "replays": 0} for stats in graphed.parts.graph_stats().values())
    for ours, theirs in zip(graphed_results, eager_results, strict=True):
        assert all(np.array_equal(ours.logits[i], theirs.logits[i]) for i in theirs.masks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("config", ["tiny", "tiny Sa2VA", "sam2.1_hiera_t"])
def test_cuda_graphs_replay_the_eager_parts(config: str) -> None:
    """Every part captured and replayed (memory attention once a memory is full), outputs copied out of the
    graphs' shared pool: the same tracking as eager, for two targets of different ages and then in one batch, up
    to bfloat16 rounding (under autocast a replay may differ from an eager call in the last bit of some values)."""
    torch.manual_seed(0)
    model_cfg = bundled_sam2_config(config) if config.startswith("sam2") else tiny_sam2_config(128)
    sam_cuda = build_sam2(model_cfg, sa2va=config == "tiny Sa2VA").cuda().eval()
    (_, eager_results), (graphed, graphed_results) = _graph_vs_eager_runs(sam_cuda, clip(30))
    stats = graphed.parts.graph_stats()
    assert stats["image encoder"] == {"graphs": 1, "replays": 30}, stats
    assert all(stats[part]["graphs"] >= 1 and stats[part]["replays"] >= 8 for part in stats), stats
    worst = max(
        float(np.abs(ours.logits[i] - theirs.logits[i]).max())
        for ours, theirs in zip(graphed_results, eager_results, strict=True)
        for i in theirs.masks
    )
    assert worst <= 2e-2, worst  # logits reach ~10 here
    differing = max(
        float((ours.masks[i] != theirs.masks[i]).mean())
        for ours, theirs in zip(graphed_results, eager_results, strict=True)
        for i in theirs.masks
    )
    assert differing <= 5e-3, differing  # pixels at a mask's edge, where the logit is ~0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_a_refused_capture_falls_back_to_eager_parts(
    sam: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sa2va_ros.runtime.torch_parts import PARTS, TorchParts

    def refuse(*args: object) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(TorchParts, "_capture", refuse)
    sam_cuda = build_sam2(tiny_sam2_config(128), sa2va=False).cuda().eval()
    tracker = StreamingTracker(sam_cuda, TrackerConfig(cuda_graphs=True))
    frames = clip(22)  # memory attention's steady shape is met for the third time on frame 18
    tracker.add_target(1, frames[0], mask=square_mask(0))
    results = [tracker.step(frame) for frame in frames[1:]]
    assert results[-1].masks[1].any()
    assert all(stats == {"graphs": 0, "replays": 0} for stats in tracker.parts.graph_stats().values())
    for part in PARTS:  # one warning per part, then it runs eagerly
        assert sum(f"CUDA graph capture of the {part} failed" in r.message for r in caplog.records) == 1, part
