"""Shared helpers for model tests: tiny models and scripted generation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from sa2va_ros.model import Sa2VA


@contextmanager
def scripted_answer(model: Sa2VA, text: str) -> Iterator[list[int]]:
    """Make greedy decoding produce ``text`` then eos, whatever the random weights say.

    The lm_head's logits get a large bonus on the next scripted token, chosen from how many tokens the model
    has produced so far (counted by calls after the prompt). Yields the scripted token ids.
    """
    script = [*model.tokenizer.encode(text, add_special_tokens=False), model.tokenizer.eos_token_id]
    head = model.mllm.lm_head
    original = head.forward
    produced = {"count": 0}

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        logits = original(hidden)
        step = min(produced["count"], len(script) - 1)
        logits[..., script[step]] += 1e4  # [..., V]: only the last position's logits decide the next token
        produced["count"] += 1
        return logits

    head.forward = forward
    try:
        yield script
    finally:
        head.forward = original


def random_frames(count: int, height: int = 45, width: int = 70, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
