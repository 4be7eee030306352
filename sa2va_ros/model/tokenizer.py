"""Tokenizers: loading a checkpoint's tokenizer, and building a small one for tiny models."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .config import SPECIAL_TOKENS

# Qwen-style chat and vision markers, then Sa2VA's own tokens. Order fixes their ids in tiny tokenizers.
CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

_BASE_CORPUS = """
Please segment the object in this image. Please respond with a segmentation mask.
Sure, [SEG]. It is [SEG]. There is no such object. What is in the picture? Describe the image.
The quick brown fox jumps over the lazy dog. A robot picks the blue mug from the table.
red green blue yellow purple orange white black mug ball box bottle can book banana cup plate
left right top bottom biggest smallest first second third rolling moving pick grab take find where
"""


def build_tiny_tokenizer(corpus: Iterable[str] = (), vocab_size: int = 640) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in well under a second, with every special token Sa2VA needs."""
    specials = [*CHAT_TOKENS, *QWEN_VISION_TOKENS, *SPECIAL_TOKENS.values()]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([_BASE_CORPUS, *corpus], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in specials if t not in ("<|im_end|>", "<|endoftext|>")],
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A checkpoint directory's tokenizer, without ``trust_remote_code``; every Sa2VA token must exist."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    check_special_tokens(tokenizer, where=path)
    return tokenizer


def check_special_tokens(
    tokenizer: PreTrainedTokenizerBase,
    required: Sequence[str] = (SPECIAL_TOKENS["seg"],),
    where: str | Path = "tokenizer",
) -> None:
    """Raise ``ValueError`` naming the Sa2VA special tokens the tokenizer lacks."""
    vocab = tokenizer.get_vocab()
    missing = [tok for tok in required if tok not in vocab]
    if missing:
        raise ValueError(f"{where}: tokenizer lacks Sa2VA special tokens {missing}")
