"""Write a Sa2VA model in the official ByteDance layout: config.json fields, key names and tokenizer files.

The inverse of ``convert`` (it walks the same key table backwards), used to produce official-format
checkpoints of tiny models for tests. Families: ``internvl-qwen2`` (Sa2VA-1B/4B, InternVL3 style),
``internvl-internlm2`` (Sa2VA-8B/26B style: InternLM2 LLM with packed ``wqkv``, sentencepiece tokenizer) and
``qwen2_5_vl`` (Sa2VA-Qwen2.5-VL).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from .checkpoint import write_state_dict
from .config import Sa2VAConfig
from .convert import (
    HARD_CODED_FIELDS,
    OFFICIAL_MODEL_TYPE,
    SA2VA_ROS_FIELD,
    Fusion,
    key_rules,
    ties_word_embeddings,
)
from .modeling import Sa2VA
from .sam2_grounding import SAM2_VARIANTS, bundled_sam2_config

FAMILIES = ("internvl-qwen2", "internvl-internlm2", "qwen2_5_vl")

_INTERNVL_AUTO_MAP = {
    "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
    "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
    "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel",
}
_QWEN_AUTO_MAP = {
    "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfigQwen",
    "AutoModel": "modeling_sa2va_qwen.Sa2VAChatModelQwen",
    "AutoModelForCausalLM": "modeling_sa2va_qwen.Sa2VAChatModelQwen",
}
_INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}
# transformers-5-only or bookkeeping fields that a transformers-4 official config does not carry
_DROPPED_TEXT_FIELDS = ("dtype", "transformers_version", "model_type", "architectures", "_name_or_path")


def _legacy_text_fields(text: PretrainedConfig) -> dict[str, Any]:
    """A native text config as transformers 4 wrote it: ``rope_theta`` + ``rope_scaling`` (``type``)."""
    fields = text.to_dict()
    for name in _DROPPED_TEXT_FIELDS:
        fields.pop(name, None)
    rope = dict(fields.pop("rope_parameters", None) or {})
    fields["rope_theta"] = rope.pop("rope_theta", 10000.0)
    rope_type = rope.pop("type", None) or rope.get("rope_type", "default")
    rope.pop("rope_type", None)
    fields["rope_scaling"] = {"type": rope_type, **rope} if rope_type != "default" or rope else None
    return fields


def _square(size: Any) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"InternViT needs square sizes, got {size}")
        return int(size[0])
    return int(size)


def _intern_vit_config(vision: PretrainedConfig) -> dict[str, Any]:
    """``InternVLVisionConfig`` -> the official ``InternVisionConfig`` fields."""
    if not vision.use_mean_pooling or vision.use_mask_token or not vision.use_absolute_position_embeddings:
        raise ValueError("InternViT has absolute position embeddings, no mask token and no final LayerNorm")
    return {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": vision.hidden_size,
        "num_hidden_layers": vision.num_hidden_layers,
        "num_attention_heads": vision.num_attention_heads,
        "intermediate_size": vision.intermediate_size,
        "hidden_act": vision.hidden_act,
        "layer_norm_eps": vision.layer_norm_eps,
        "norm_type": vision.norm_type,
        "qkv_bias": vision.attention_bias,
        "qk_normalization": vision.use_qk_norm,
        "image_size": _square(vision.image_size),
        "patch_size": _square(vision.patch_size),
        "num_channels": vision.num_channels,
        "dropout": vision.projection_dropout,
        "attention_dropout": vision.attention_dropout,
        "drop_path_rate": 0.0,
        "initializer_range": vision.initializer_range,
        "initializer_factor": vision.layer_scale_init_value,
        "use_flash_attn": True,
    }


def _internlm2_config(text: PretrainedConfig) -> dict[str, Any]:
    """A native Llama text config -> the official ``InternLM2Config`` fields."""
    if text.model_type != "llama" or text.mlp_bias or text.head_dim * text.num_attention_heads != text.hidden_size:
        raise ValueError("InternLM2 is a Llama without MLP bias and with head_dim = hidden_size / heads")
    legacy = _legacy_text_fields(text)
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "auto_map": _INTERNLM2_AUTO_MAP,
        **{
            name: legacy[name]
            for name in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "hidden_act",
                "max_position_embeddings",
                "initializer_range",
                "rms_norm_eps",
                "pad_token_id",
                "bos_token_id",
                "eos_token_id",
                "tie_word_embeddings",
                "rope_theta",
                "rope_scaling",
            )
        },
        "bias": text.attention_bias,
        "use_cache": True,
        "attn_implementation": "eager",
    }


def official_config(config: Sa2VAConfig, family: str, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """The official ``config.json`` of a model of one family."""
    if family not in FAMILIES:
        raise ValueError(f"unknown official family {family!r}; known: {', '.join(FAMILIES)}")
    mllm = config.build_mllm_config()
    if config.family != ("qwen2_5_vl" if family == "qwen2_5_vl" else "internvl"):
        raise ValueError(f"a {config.family} model cannot be written as the official {family} layout")
    dtype_name = str(dtype).removeprefix("torch.")
    tied = ties_word_embeddings(config)  # what the model does, whichever config level says it
    if family == "qwen2_5_vl":
        fields = mllm.to_dict()
        text = _legacy_text_fields(mllm.text_config)
        fields.pop("text_config")
        for name in _DROPPED_TEXT_FIELDS:
            fields.pop(name, None)
        official = {**text, **fields, "architectures": ["Sa2VAChatModelQwen"], "auto_map": _QWEN_AUTO_MAP}
        official["tie_word_embeddings"] = tied
    else:
        text = mllm.text_config
        if family == "internvl-internlm2":
            llm = _internlm2_config(text)
        elif text.model_type == "qwen2":
            llm = {**_legacy_text_fields(text), "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
        else:
            raise ValueError(f"the internvl-qwen2 layout needs a qwen2 LLM, got {text.model_type}")
        llm["tie_word_embeddings"] = tied
        if mllm.vision_feature_select_strategy != "default" or mllm.projector_hidden_act != "gelu":
            raise ValueError("official InternVL drops the CLS token and uses a GELU projector")
        official = {
            "architectures": ["Sa2VAChatModel"],
            "auto_map": _INTERNVL_AUTO_MAP,
            "vision_config": _intern_vit_config(mllm.vision_config),
            "llm_config": llm,
            "select_layer": mllm.vision_feature_layer,
            "force_image_size": config.force_image_size,
            "downsample_ratio": mllm.downsample_ratio,
            "ps_version": config.ps_version,
            "dynamic_image_size": True,
            "use_thumbnail": config.use_thumbnail,
            "min_dynamic_patch": config.min_dynamic_patch,
            "max_dynamic_patch": config.max_dynamic_patch,
            "use_backbone_lora": 0,
            "use_llm_lora": 0,
            "pad2square": False,
            "hidden_size": text.hidden_size,
            "tie_word_embeddings": False,
        }
    official.update(model_type=OFFICIAL_MODEL_TYPE, template=config.template, torch_dtype=dtype_name)
    marker: dict[str, Any] = {}
    variant = config.sam2_variant
    if variant not in SAM2_VARIANTS or config.sam2_config != bundled_sam2_config(variant):
        marker.update(sam2_variant=variant, sam2_config=config.sam2_config)
    if family == "qwen2_5_vl":
        hard_coded = Sa2VAConfig()  # its defaults are the pixel budgets the official predict_forward hard-codes
        marker.update(
            {k: getattr(config, k) for k in HARD_CODED_FIELDS if getattr(config, k) != getattr(hard_coded, k)}
        )
    if marker:
        official[SA2VA_ROS_FIELD] = marker
    return official


def to_official_state_dict(
    official: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    legacy_qwen_keys: bool = False,
    tied: bool = False,
) -> dict[str, torch.Tensor]:
    """Project state dict -> official key names (q/k/v packed back into ``attn.qkv`` / ``wqkv``).

    With ``tied`` the lm_head is left out, as ``save_pretrained`` does for tied embeddings.
    """
    rules = key_rules(official, legacy_qwen_keys)
    fusion = Fusion.for_config(official)
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], dict[int, torch.Tensor]] = defaultdict(dict)
    for key, tensor in state.items():
        if tied and key == "mllm.lm_head.weight":
            continue
        found = next(((rule, m) for rule in rules if (m := rule.match_project(key)) is not None), None)
        if found is None:
            raise ValueError(f"{key} has no name in the official layout")
        rule, (groups, part) = found
        name = rule.official.format(**groups)
        if rule.fused:
            fused[(name, rule.fused)][part] = tensor
        else:
            out[name] = tensor
    for (name, kind), parts in fused.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"{name}: q, k and v are not all present")
        out[name] = fusion.join(kind, [parts[i] for i in range(3)])
    return out


def _added_tokens_decoder(tokenizer: PreTrainedTokenizerBase) -> dict[str, dict[str, Any]]:
    return {
        str(token_id): {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
    }


def _write_json(file: Path, data: Any) -> None:
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_bpe_files(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """``vocab.json`` + ``merges.txt`` of a byte-level BPE tokenizer (the files ``Qwen2Tokenizer`` reads)."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model["type"] != "BPE":
        raise ValueError(f"a Qwen2-style tokenizer is a byte-level BPE, got {model['type']}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    _write_json(out / "vocab.json", model["vocab"])
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def write_official_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    family: str,
    sentencepiece_model: bytes | Path | None = None,
    processor: Any = None,
) -> None:
    """Tokenizer files as the official repositories ship them for ``family``.

    ``internvl-qwen2``: ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` (``Qwen2Tokenizer``), no
    ``tokenizer.json``; ``internvl-internlm2``: the sentencepiece ``tokenizer.model`` (``sentencepiece_model``)
    with ``tokenizer_class: InternLM2Tokenizer`` and remote-code ``auto_map``; ``qwen2_5_vl``: the processor's
    own files (``tokenizer.json``, chat template, image processor config).
    """
    if family == "qwen2_5_vl":
        if processor is None:
            raise ValueError("the qwen2_5_vl layout needs the model's processor")
        processor.save_pretrained(str(out))
        return
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    named = {
        name: getattr(tokenizer, name)
        for name in ("bos_token", "eos_token", "pad_token", "unk_token")
        if getattr(tokenizer, name) is not None
    }
    config = {
        "added_tokens_decoder": _added_tokens_decoder(tokenizer),
        "additional_special_tokens": [t for t in specials if t not in named.values()],
        **named,
        "clean_up_tokenization_spaces": False,
        "model_max_length": min(tokenizer.model_max_length, 2**31 - 1),
    }
    if family == "internvl-internlm2":
        if sentencepiece_model is None:
            raise ValueError("the internvl-internlm2 layout needs the sentencepiece tokenizer.model")
        data = sentencepiece_model if isinstance(sentencepiece_model, bytes) else sentencepiece_model.read_bytes()
        (out / "tokenizer.model").write_bytes(data)
        probe = tokenizer.encode("a")
        config.update(
            tokenizer_class="InternLM2Tokenizer",
            auto_map={"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
            add_bos_token=bool(probe) and probe[0] == tokenizer.bos_token_id,
            add_eos_token=bool(probe) and probe[-1] == tokenizer.eos_token_id,
            decode_with_prefix_space=False,
        )
    else:
        _write_bpe_files(tokenizer, out)
        config.update(tokenizer_class="Qwen2Tokenizer", errors="replace", split_special_tokens=False)
    _write_json(out / "tokenizer_config.json", config)
    special_map = {"additional_special_tokens": config["additional_special_tokens"], **named}
    _write_json(out / "special_tokens_map.json", special_map)
    _write_json(out / "added_tokens.json", {t.content: i for i, t in sorted(tokenizer.added_tokens_decoder.items())})


def write_official_checkpoint(
    model: Sa2VA,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    family: str,
    shard_size: int | None = None,
    sentencepiece_model: bytes | Path | None = None,
    legacy_qwen_keys: bool = False,
) -> Path:
    """Write ``model`` as an official ByteDance checkpoint of ``family`` (sharded above ``shard_size`` bytes).

    ``legacy_qwen_keys`` writes Qwen keys in the transformers < 4.52 nesting (``model.visual.*``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    dtype = next(t.dtype for t in state.values() if t.is_floating_point())
    official = official_config(model.config, family, dtype)
    tied = ties_word_embeddings(model.config)
    _write_json(out / "config.json", official)
    write_state_dict(to_official_state_dict(official, state, legacy_qwen_keys, tied), out, shard_size)
    write_official_tokenizer(tokenizer, out, family, sentencepiece_model, model.processor)
    return out
