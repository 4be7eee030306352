"""Reading and writing weights safely: safetensors (single or sharded), never pickles."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (or one ``.safetensors`` file).

    Sharded checkpoints are read through ``model.safetensors.index.json``; every shard it names must exist and
    hold exactly the keys the index assigns to it. ``pytorch_model.bin`` is read with ``weights_only=True``.
    """
    path = Path(path)
    if path.is_file():
        return _read_file(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory or file")
    index = path / INDEX_FILE
    if index.is_file():
        return _read_sharded(index)
    if (path / SINGLE_FILE).is_file():
        return _read_file(path / SINGLE_FILE)
    shards = sorted(path.glob("*.safetensors"))
    if len(shards) == 1:
        return _read_file(shards[0])
    if shards:
        raise CheckpointError(f"{path}: {len(shards)} .safetensors files but no {INDEX_FILE}")
    if (path / "pytorch_model.bin").is_file():
        return _read_file(path / "pytorch_model.bin")
    raise CheckpointError(f"{path}: no weights found (expected {SINGLE_FILE} or {INDEX_FILE})")


def _read_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".bin":
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickled code: report it, never retry unsafely
            raise CheckpointError(f"{file}: cannot read as plain tensors ({exc})") from exc
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: corrupted or truncated safetensors file ({exc})") from exc


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc
    state: dict[str, torch.Tensor] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard = index.parent / shard_name
        if not shard.is_file():
            raise CheckpointError(f"{shard}: shard named in {index.name} is missing")
        tensors = _read_file(shard)
        expected = {k for k, v in weight_map.items() if v == shard_name}
        if missing := sorted(expected - tensors.keys()):
            raise CheckpointError(
                f"{shard}: lacks {len(missing)} keys its index assigns to it, e.g. {missing[:5]}"
            )
        state.update(tensors)
    return state


def write_state_dict(
    state: dict[str, torch.Tensor], directory: str | Path, max_shard_bytes: int | None = None
) -> list[Path]:
    """Write tensors as ``model.safetensors``, or as shards plus an index when larger than ``max_shard_bytes``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        if value.data_ptr() in seen:  # tied weights: safetensors refuses shared storage
            value = value.clone()
        seen.add(value.data_ptr())
        tensors[key] = value
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        file = directory / SINGLE_FILE
        save_file(shards[0], str(file), metadata={"format": "pt"})
        return [file]
    files, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        file = directory / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(file), metadata={"format": "pt"})
        files.append(file)
        weight_map.update(dict.fromkeys(shard, file.name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
    return files
