"""Tiny Sa2VA presets: random models (and their tokenizers) that build in seconds on a CPU.

Families mirror the official checkpoints: ``internvl-qwen2`` (Sa2VA-1B/4B, InternVL3-*), ``internvl-llama``
(InternLM2-based 8B/26B after conversion to the Llama layout), ``qwen2_5_vl`` (Sa2VA-Qwen2.5-VL-*).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .config import Sa2VAConfig
from .modeling import Sa2VA
from .sam2_grounding import tiny_sam2_config
from .tokenizer import build_tiny_tokenizer

FAMILIES = ("internvl-qwen2", "internvl-llama", "qwen2_5_vl")


def _text_config(model_type: str, vocab_size: int, hidden: int, layers: int, **extra: Any) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": None,
        **extra,
    }


def tiny_config(
    family: str = "internvl-qwen2",
    vocab_size: int = 640,
    hidden: int = 64,
    layers: int = 2,
    tile_size: int = 56,
    sam_image_size: int = 128,
    vision_hidden: int = 32,
    vision_layers: int = 1,
    sam_trunk_dim: int = 16,
    **overrides: Any,
) -> Sa2VAConfig:
    """A tiny random-weight configuration of one family (special token ids come from the tiny tokenizer)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    sam2 = tiny_sam2_config(sam_image_size, sam_trunk_dim)
    if family.startswith("internvl"):
        text_type = "qwen2" if family == "internvl-qwen2" else "llama"
        mllm = {
            "model_type": "internvl",
            "vision_config": {
                "hidden_size": vision_hidden,
                "num_hidden_layers": vision_layers,
                "num_attention_heads": 2,
                "intermediate_size": 2 * vision_hidden,
                "image_size": [tile_size, tile_size],
                "patch_size": [14, 14],
                "use_qk_norm": family == "internvl-llama",
                "attention_bias": True,
                "norm_type": "layer_norm",
            },
            "text_config": _text_config(text_type, vocab_size, hidden, layers),
            "downsample_ratio": 0.5,
            "vision_feature_layer": -1,
            "image_token_id": 0,  # set from the tokenizer by tiny_model()
        }
        template = "qwen_chat" if family == "internvl-qwen2" else "internlm2_chat"
    else:
        mllm = {
            "model_type": "qwen2_5_vl",
            "vision_config": {
                "depth": 1,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": hidden,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 56,
                "fullatt_block_indexes": [0],
            },
            "text_config": _text_config(
                "qwen2_5_vl_text",
                vocab_size,
                hidden,
                layers,
                rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]},
            ),
        }
        template = "qwen_chat"
    fields = {
        "mllm_config": mllm,
        "sam2_config": sam2,
        "sam2_variant": "tiny",
        "template": template,
        "force_image_size": tile_size,
        "max_dynamic_patch": 4,
        "qwen_min_pixels": 4 * 28 * 28,
        "qwen_max_pixels": 16 * 28 * 28,
    }
    fields.update(overrides)
    return Sa2VAConfig(**fields)


def tiny_model(
    family: str = "internvl-qwen2",
    seed: int = 0,
    corpus: Iterable[str] = (),
    reinit: bool = True,
    **config_overrides: Any,
) -> Sa2VA:
    """A tiny random Sa2VA with a matching tokenizer (and processor for Qwen families), deterministic by seed.

    ``reinit`` gives every parameter a non-trivial value (tests: no zero-init shortcuts); training from scratch
    keeps each module's own initialisation (``reinit=False``), whose scale keeps SAM-2's mask logits trainable.
    """
    tokenizer = build_tiny_tokenizer(corpus)
    config = tiny_config(family, vocab_size=len(tokenizer), **config_overrides)
    mllm = config.mllm_config
    if family.startswith("internvl"):
        mllm["image_token_id"] = tokenizer.convert_tokens_to_ids(config.special_tokens["img_context"])
    else:
        vocab = tokenizer.get_vocab()
        mllm.update(
            image_token_id=vocab["<|image_pad|>"],
            video_token_id=vocab["<|video_pad|>"],
            vision_start_token_id=vocab["<|vision_start|>"],
            vision_end_token_id=vocab["<|vision_end|>"],
        )
        mllm["text_config"].update(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
        )
    processor = tiny_qwen_processor(tokenizer, config) if family == "qwen2_5_vl" else None
    torch.manual_seed(seed)
    model = Sa2VA(config, tokenizer, processor)
    if reinit:
        reinit_parameters(model, seed)
    return model


def reinit_parameters(model: Sa2VA, seed: int) -> None:
    """Give every parameter a deterministic, non-trivial random value (no zero-init shortcuts)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            elif "norm" in name or name.endswith(("lambda_1", "lambda_2", "gamma", "weight")):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))


# A Qwen2.5-VL-style chat template (the real one ships with each checkpoint's processor files).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen_processor(tokenizer: Any, config: Sa2VAConfig) -> Any:
    """A Qwen2.5-VL processor built offline around the tiny tokenizer."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=config.qwen_min_pixels, max_pixels=config.qwen_max_pixels, patch_size=14, merge_size=2
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
