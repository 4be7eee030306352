"""The project's checkpoint format: round trips, sharding, and clear errors for bad checkpoints."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from model_helpers import random_frames, scripted_answer
from safetensors.torch import load_file, save_file

from sa2va_ros.model import CheckpointError, Sa2VA
from sa2va_ros.model.checkpoint import INDEX_FILE, read_state_dict, write_state_dict
from sa2va_ros.model.presets import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model("internvl-qwen2", seed=5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(path)
    return model, path


def _ground(model: Sa2VA):
    with scripted_answer(model, "It is [SEG]."):
        return model.ground(random_frames(1, 33, 47, seed=9), "the red ball")


def test_round_trip_is_exact(saved):
    model, path = saved
    loaded = Sa2VA.from_pretrained(path)
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    assert all(torch.equal(original_state[k], loaded_state[k]) for k in original_state)
    a, b = _ground(model), _ground(loaded)
    assert a.text == b.text
    assert torch.equal(a.seg_embeddings, b.seg_embeddings)
    assert np.array_equal(a.masks, b.masks)


def test_sharded_round_trip(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path, max_shard_bytes=2_000_000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = Sa2VA.from_pretrained(tmp_path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        Sa2VA.from_pretrained(tmp_path)


def test_truncated_safetensors_names_the_file(saved, tmp_path):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupted or truncated"):
        read_state_dict(tmp_path)


def test_missing_shard_names_the_file(saved, tmp_path):
    model, _ = saved
    files = write_state_dict(model.state_dict(), tmp_path, max_shard_bytes=2_000_000)
    files[-1].unlink()
    with pytest.raises(CheckpointError, match=files[-1].name + ": shard named in"):
        read_state_dict(tmp_path)


def _copy_checkpoint(src, dst):
    dst.mkdir()
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())


def test_partial_checkpoint_lists_missing_and_unexpected_keys(saved, tmp_path):
    _, path = saved
    target = tmp_path / "partial"
    _copy_checkpoint(path, target)
    state = load_file(str(target / "model.safetensors"))
    del state["text_hidden_fcs.2.weight"]
    state["text_hidden_fcs.9.weight"] = torch.zeros(1)
    save_file(state, str(target / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        Sa2VA.from_pretrained(target)
    message = str(error.value)
    assert "1 missing: ['text_hidden_fcs.2.weight']" in message
    assert "1 unexpected: ['text_hidden_fcs.9.weight']" in message


def test_wrong_shape_is_reported(saved, tmp_path):
    _, path = saved
    target = tmp_path / "shape"
    _copy_checkpoint(path, target)
    state = load_file(str(target / "model.safetensors"))
    state["text_hidden_fcs.0.bias"] = torch.zeros(3)
    save_file(state, str(target / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"wrong shape: \['text_hidden_fcs.0.bias: \(3,\)"):
        Sa2VA.from_pretrained(target)


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Exploit()}))
    with pytest.raises(CheckpointError, match="cannot read as plain tensors"):
        read_state_dict(tmp_path)
    assert not marker.exists()


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="neither 'sa2va_ros' nor 'sa2va_chat'"):
        Sa2VA.from_pretrained(tmp_path)
