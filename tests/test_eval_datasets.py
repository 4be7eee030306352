"""Dataset readers on tiny fixtures written in each public layout at test time."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from sa2va_ros.eval.datasets import (
    RefCocoDataset,
    ReferringVideoDataset,
    convert_pickle_to_json,
    decode_rle,
    load_dataset,
    load_plain_pickle,
)
from sa2va_ros.eval.metrics import VideoMeter
from tests.dataset_fixtures import (
    FRAME_SHAPE,
    IMAGE_SHAPE,
    RLE_MASK,
    box_mask,
    encode_rle,
    refs_fixture,
    video_fixture,
    write_refcoco,
    write_video_benchmark,
)


class ShellCommand:
    """Unpickling this would run a shell command: what a hostile annotation file looks like."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# ---------------------------------------------------------------- RefCOCO


def test_refcoco_val_samples_expressions_and_masks(tmp_path: Path) -> None:
    dataset = load_dataset(write_refcoco(tmp_path))
    assert isinstance(dataset, RefCocoDataset)
    assert dataset.split_by == "unc" and dataset.name == "refcoco"
    # every sentence of every val ref is one sample, in refs order
    assert [s.expression for s in dataset] == ["left box", "the box on the left", "right box"]
    assert [s.ann_id for s in dataset] == [10, 10, 11]
    assert len({s.key for s in dataset}) == 3
    polygon = dataset[0].load_mask()
    np.testing.assert_array_equal(polygon, box_mask(IMAGE_SHAPE, 1, 1, 3, 4))
    np.testing.assert_array_equal(dataset[2].load_mask(), RLE_MASK)
    image = dataset[0].load_image()
    assert image.shape == (8, 10, 3) and abs(int(image[0, 0, 0]) - 50) <= 3
    assert dataset[0].image_path == tmp_path / "images/mscoco/images/train2014/COCO_train2014_000000000001.jpg"


def test_refcoco_split_selection_follows_refer(tmp_path: Path) -> None:
    data_dir = write_refcoco(tmp_path)
    test_a = RefCocoDataset(data_dir, split="testA")
    # refer's testA also takes testAB refs
    assert [s.expression for s in test_a] == ["the person", "person again"]
    # uncompressed RLE (counts [9, 3, 68], column-major): column 1, rows 1..3
    np.testing.assert_array_equal(test_a[0].load_mask(), box_mask(IMAGE_SHAPE, 1, 1, 3, 1))
    assert [s.expression for s in RefCocoDataset(data_dir, split="test")] == ["the person", "person again"]
    assert [s.expression for s in RefCocoDataset(data_dir, split="train")] == ["training sentence"]
    assert [s.expression for s in RefCocoDataset(data_dir, split="testB")] == ["person again"]
    with pytest.raises(ValueError, match=r"splits: \['testA', 'testAB', 'train', 'val'\]"):
        RefCocoDataset(data_dir, split="testC")


def test_refcocog_prefers_umd_and_honours_image_root(tmp_path: Path) -> None:
    data_dir = write_refcoco(tmp_path, name="refcocog", split_by="umd")
    (data_dir / "refs(google).p").write_bytes(pickle.dumps(refs_fixture()[:1]))
    dataset = load_dataset(data_dir, image_root=tmp_path / "elsewhere")
    assert dataset.split_by == "umd" and len(dataset) == 3
    assert dataset[0].image_path.parent == tmp_path / "elsewhere"
    assert len(load_dataset(data_dir, split_by="google")) == 2


def test_refs_pickle_converts_to_json_once(tmp_path: Path) -> None:
    data_dir = write_refcoco(tmp_path)
    before = [(s.key, s.expression) for s in RefCocoDataset(data_dir)]
    json_path = convert_pickle_to_json(data_dir / "refs(unc).p")
    assert json_path == data_dir / "refs(unc).json"
    assert json.loads(json_path.read_text()) == refs_fixture()
    (data_dir / "refs(unc).p").unlink()  # the JSON alone is enough now
    assert [(s.key, s.expression) for s in load_dataset(data_dir)] == before


def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    data_dir = write_refcoco(tmp_path)
    marker = tmp_path / "pwned"
    (data_dir / "refs(unc).p").write_bytes(pickle.dumps([ShellCommand(f"touch {marker}")]))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '(posix|nt|os)\.system'"):
        RefCocoDataset(data_dir)
    with pytest.raises(pickle.UnpicklingError, match="refs"):
        convert_pickle_to_json(data_dir / "refs(unc).p")
    assert not marker.exists()


def test_plain_pickles_load_including_python2_strings(tmp_path: Path) -> None:
    path = tmp_path / "plain.p"
    data = {"a": [1, 2.5, None, True], "b": ("t", b"\x00x"), "c": {3, 4}}
    path.write_bytes(pickle.dumps(data))
    assert load_plain_pickle(path) == data
    # Protocol 2 with SHORT_BINSTRING ('U'), how Python 2 wrote the refer pickles' str values.
    path.write_bytes(b"\x80\x02]q\x00U\x05hello" + b"q\x01a.")
    assert load_plain_pickle(path) == ["hello"]


# ---------------------------------------------------------------- referring video


EXPECTED_ORDER = [
    ("vid_b", "0", "the cat"),
    ("vid_a", "0", "the red ball"),
    ("vid_a", "1", "both objects"),
    ("vid_a", "2", "nothing here"),
]


@pytest.mark.parametrize("layout", ["mevis", "revos", "ref-sav", "ref-davis17"])
def test_video_layouts_give_expressions_frames_and_masks(tmp_path: Path, layout: str) -> None:
    dataset = load_dataset(write_video_benchmark(tmp_path, layout))
    assert isinstance(dataset, ReferringVideoDataset)
    assert dataset.format_name == layout
    # videos in file order, expression ids sorted per video (as Sa2VA's RefVOSDataset)
    assert [(s.video_id, s.expression_id, s.expression) for s in dataset] == EXPECTED_ORDER
    assert dataset.video_ids == ["vid_b", "vid_a"]
    _, masks = video_fixture()
    by_key = {s.key: s for s in dataset}

    ball = by_key["vid_a_0"]
    assert ball.frame_names == ("00000", "00001", "00002") and ball.num_frames == 3
    assert all(path.is_file() for path in ball.frame_paths)
    frames = list(ball.iter_frames())
    assert [f.shape for f in frames] == [(6, 8, 3)] * 3
    assert [round(float(f.mean()) / 40) for f in frames] == [1, 2, 3]  # file order kept
    gt_ball = ball.load_masks()
    assert gt_ball.shape == (3, 6, 8) and gt_ball.dtype == bool
    np.testing.assert_array_equal(gt_ball[0], masks["0"][0])
    assert not gt_ball[2].any()  # null RLE -> empty frame

    both = by_key["vid_a_1"]
    np.testing.assert_array_equal(both.load_mask(1), masks["0"][1] | masks["1"][1])  # union of objects
    np.testing.assert_array_equal(both.load_mask(2), masks["1"][2])
    # all-null track: the size comes from the file's height/width or from the frame header
    np.testing.assert_array_equal(by_key["vid_a_2"].load_masks(), np.zeros((3, 6, 8), dtype=bool))

    cat = by_key["vid_b_0"]
    assert cat.frame_paths[1].name == "00005.jpg"
    np.testing.assert_array_equal(cat.load_masks(), np.stack(masks["2"]))


def test_ref_davis_numbering_and_split_folder(tmp_path: Path) -> None:
    write_video_benchmark(tmp_path, "ref-davis17")
    from_split = load_dataset(tmp_path / "valid")
    assert from_split.format_name == "ref-davis17"
    # numbered over sorted video ids, then sorted expression ids
    assert {s.key: s.anno_ids for s in from_split} == {
        "vid_a_0": ("0",),
        "vid_a_1": ("1",),
        "vid_a_2": ("2",),
        "vid_b_0": ("3",),
    }
    assert from_split[0].obj_ids == ("1",)
    from_pickle = [sample.load_masks() for sample in from_split]
    convert_pickle_to_json(tmp_path / "valid/mask_dict.pkl")
    (tmp_path / "valid/mask_dict.pkl").unlink()
    reread = load_dataset(tmp_path)
    assert reread.mask_file == tmp_path / "valid/mask_dict.json"
    for sample, expected in zip(reread, from_pickle, strict=True):
        np.testing.assert_array_equal(sample.load_masks(), expected)


def test_ref_sav_keeps_type_id(tmp_path: Path) -> None:
    dataset = load_dataset(write_video_benchmark(tmp_path, "ref-sav"))
    assert all(s.metadata == {"type_id": 1} and s.size == FRAME_SHAPE for s in dataset)


def test_video_readers_are_lazy(tmp_path: Path) -> None:
    root = write_video_benchmark(tmp_path, "mevis")
    (root / "mask_dict.json").write_text("{ not json")  # only parsed when a mask is asked for
    (root / "JPEGImages/vid_a/00001.jpg").unlink()  # only read when that frame is asked for
    dataset = load_dataset(root)
    assert len(dataset) == 4
    sample = dataset[1]
    assert sample.load_frame(0).shape == (6, 8, 3)
    with pytest.raises(FileNotFoundError, match="00001"):
        sample.load_frame(1)
    with pytest.raises(json.JSONDecodeError):
        sample.load_masks()


def test_split_without_masks_has_no_ground_truth(tmp_path: Path) -> None:
    root = write_video_benchmark(tmp_path, "mevis")
    (root / "mask_dict.json").unlink()
    sample = load_dataset(root)[0]
    assert not sample.has_ground_truth
    with pytest.raises(ValueError, match="no mask file"):
        sample.load_masks()


def test_ground_truth_scored_against_itself_is_perfect(tmp_path: Path) -> None:
    meter = VideoMeter()
    for sample in load_dataset(write_video_benchmark(tmp_path, "mevis")):
        gt = sample.load_masks()
        meter.update(sample.key, gt, gt)
    assert meter.summary() == {"j": 1.0, "f": 1.0, "j_and_f": 1.0, "count": 4}


def test_decode_rle_accepts_str_bytes_and_uncompressed_counts() -> None:
    mask = box_mask((5, 4), 1, 2, 3, 1)
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)
    np.testing.assert_array_equal(decode_rle(encode_rle(mask, counts_as_bytes=True)), mask)
    # column-major runs over 5 x 4: 11 background, then 3 foreground (column 2, rows 1..3), 6 background
    np.testing.assert_array_equal(decode_rle({"size": [5, 4], "counts": [11, 3, 6]}), mask)


def test_unknown_folder_lists_expected_layouts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_dataset(tmp_path)
    message = str(error.value)
    for expected in (
        "instances.json",
        "meta_expressions.json",
        "meta_expressions_valid_.json",
        "ref-davis17",
    ):
        assert expected in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "missing")


def test_missing_frame_folder_is_a_clear_error(tmp_path: Path) -> None:
    root = write_video_benchmark(tmp_path, "mevis")
    (root / "JPEGImages").rename(root / "frames")
    with pytest.raises(FileNotFoundError, match="no frame folder for video 'vid_b'"):
        load_dataset(root)
