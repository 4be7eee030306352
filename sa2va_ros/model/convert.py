"""Official ByteDance Sa2VA checkpoints -> the project's format (config, weights, tokenizer), no remote code.

Official key names map onto the native transformers classes + ``SAM2Base`` through one written two-way table
(``KeyRule``: an official name template <-> the project name template(s)); fused official tensors
(InternViT ``attn.qkv``, InternLM2 ``attention.wqkv``) are split here and packed back by ``official_layout``.
Every source key must find its place and every target key must be filled, or one ``ConversionError`` lists
them all. The official config has no SAM-2 field (the official code hard-codes SAM 2.0 Hiera-L), so the
variant is inferred from tensor shapes against ``sam2``'s bundled configs.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import (
    CONFIG_MAPPING,
    AutoModelForImageTextToText,
    AutoTokenizer,
    InternVLConfig,
    InternVLVisionConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen3VLConfig,
)

from .checkpoint import CheckpointError, read_state_dict
from .config import SPECIAL_TOKENS, Sa2VAConfig
from .modeling import Sa2VA, load_processor
from .sam2_grounding import SAM2_VARIANTS, build_sam2, bundled_sam2_config
from .tokenizer import check_special_tokens

OFFICIAL_MODEL_TYPE = "sa2va_chat"
# Never in a real official config: ``official_layout`` writes it for settings the official code hard-codes
# (SAM 2.0 Hiera-L, Qwen pixel budgets) when a model differs from them (tiny test models), so such
# checkpoints stay self-describing. Keys: sam2_variant + sam2_config, qwen_min_pixels, qwen_max_pixels.
SA2VA_ROS_FIELD = "sa2va_ros"
HARD_CODED_FIELDS = ("qwen_min_pixels", "qwen_max_pixels")
MAX_LISTED = 20

# Official ``llm_config.architectures[0]`` -> native transformers model_type whose key names are identical.
PASSTHROUGH_LLMS = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
}
INTERNLM2 = "InternLM2ForCausalLM"
# Fields of a config dict that describe the remote-code wrapper, not the model.
_WRAPPER_FIELDS = {
    "model_type",
    "architectures",
    "auto_map",
    "template",
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "attn_implementation",
    "_attn_implementation",
    "use_flash_attn",
    SA2VA_ROS_FIELD,
}
_SPM_BPE, _SPM_NORMAL, _SPM_UNKNOWN, _SPM_CONTROL = 2, 1, 2, 3  # trainer_spec.model_type / piece types


class ConversionError(CheckpointError):
    """An official checkpoint that does not fit the expected layout; lists every offending key at once."""

    def __init__(
        self,
        message: str,
        unmatched: Iterable[str] = (),
        missing: Iterable[str] = (),
        wrong_shapes: Iterable[str] = (),
    ) -> None:
        super().__init__(message)
        self.unmatched = list(unmatched)
        self.missing = list(missing)
        self.wrong_shapes = list(wrong_shapes)


# ---------------------------------------------------------------------------------------------- key table
_PLACEHOLDERS = {"i": r"\d+", "p": r"weight|bias", "rest": r".+"}


@functools.cache
def _template_regex(template: str) -> re.Pattern[str]:
    """``a.{i}.b.{p}`` -> a regex with named groups; ``{i}`` layer index, ``{p}`` weight|bias, ``{rest}`` any."""
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile(
        "".join(
            re.escape(part) if n % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})" for n, part in enumerate(parts)
        )
    )


@dataclass(frozen=True)
class KeyRule:
    """One official name template and the project name template(s) it becomes.

    ``fused`` names how one official tensor holds several project tensors: ``"qkv"`` (equal thirds along
    dim 0, InternViT) or ``"wqkv"`` (InternLM2's grouped packing per KV head).
    """

    official: str
    project: tuple[str, ...]
    fused: str | None = None

    def match_official(self, key: str) -> dict[str, str] | None:
        match = _template_regex(self.official).fullmatch(key)
        return match.groupdict() if match else None

    def match_project(self, key: str) -> tuple[dict[str, str], int] | None:
        for part, template in enumerate(self.project):
            if match := _template_regex(template).fullmatch(key):
                return match.groupdict(), part
        return None


def _rule(official: str, *project: str, fused: str | None = None) -> KeyRule:
    return KeyRule(official, project, fused)


_VIT, _OVIT = "mllm.model.vision_tower.", "vision_model."
_VL, _OVL = _VIT + "encoder.layer.{i}.", _OVIT + "encoder.layers.{i}."
INTERNVIT_RULES = (
    _rule(_OVIT + "embeddings.class_embedding", _VIT + "embeddings.cls_token"),
    _rule(_OVIT + "embeddings.position_embedding", _VIT + "embeddings.position_embeddings"),
    _rule(_OVIT + "embeddings.patch_embedding.{p}", _VIT + "embeddings.patch_embeddings.projection.{p}"),
    _rule(_OVL + "attn.qkv.{p}", *(f"{_VL}attention.{x}_proj.{{p}}" for x in "qkv"), fused="qkv"),
    _rule(_OVL + "attn.proj.{p}", _VL + "attention.projection_layer.{p}"),
    _rule(_OVL + "attn.q_norm.weight", _VL + "attention.q_norm.weight"),
    _rule(_OVL + "attn.k_norm.weight", _VL + "attention.k_norm.weight"),
    _rule(_OVL + "ls1", _VL + "lambda_1"),
    _rule(_OVL + "ls2", _VL + "lambda_2"),
    _rule(_OVL + "norm1.{p}", _VL + "layernorm_before.{p}"),
    _rule(_OVL + "norm2.{p}", _VL + "layernorm_after.{p}"),
    _rule(_OVL + "mlp.fc1.{p}", _VL + "mlp.fc1.{p}"),
    _rule(_OVL + "mlp.fc2.{p}", _VL + "mlp.fc2.{p}"),
)
_PROJ = "mllm.model.multi_modal_projector."
INTERNVL_PROJECTOR_RULES = (  # mlp1 = LayerNorm, Linear, GELU, Linear
    _rule("mlp1.0.{p}", _PROJ + "layer_norm.{p}"),
    _rule("mlp1.1.{p}", _PROJ + "linear_1.{p}"),
    _rule("mlp1.3.{p}", _PROJ + "linear_2.{p}"),
)
_LM = "mllm.model.language_model."
PASSTHROUGH_LLM_RULES = (  # Qwen2 / Llama / Qwen3 / Phi3: the official LLM is the stock transformers class
    _rule("language_model.model.{rest}", _LM + "{rest}"),
    _rule("language_model.lm_head.weight", "mllm.lm_head.weight"),
)
_LL, _OLL = _LM + "layers.{i}.", "language_model.model.layers.{i}."
INTERNLM2_RULES = (  # InternLM2 -> the Llama layout
    _rule("language_model.model.tok_embeddings.weight", _LM + "embed_tokens.weight"),
    _rule(_OLL + "attention.wqkv.{p}", *(f"{_LL}self_attn.{x}_proj.{{p}}" for x in "qkv"), fused="wqkv"),
    _rule(_OLL + "attention.wo.{p}", _LL + "self_attn.o_proj.{p}"),
    _rule(_OLL + "feed_forward.w1.weight", _LL + "mlp.gate_proj.weight"),
    _rule(_OLL + "feed_forward.w3.weight", _LL + "mlp.up_proj.weight"),
    _rule(_OLL + "feed_forward.w2.weight", _LL + "mlp.down_proj.weight"),
    _rule(_OLL + "attention_norm.weight", _LL + "input_layernorm.weight"),
    _rule(_OLL + "ffn_norm.weight", _LL + "post_attention_layernorm.weight"),
    _rule("language_model.model.norm.weight", _LM + "norm.weight"),
    _rule("language_model.output.weight", "mllm.lm_head.weight"),
)
QWEN_RULES = (  # Sa2VAChatModelQwen.model = Qwen*VLForConditionalGeneration, saved by transformers >= 4.52
    _rule("model.model.visual.{rest}", "mllm.model.visual.{rest}"),
    _rule("model.model.language_model.{rest}", _LM + "{rest}"),
    _rule("model.lm_head.weight", "mllm.lm_head.weight"),
)
QWEN_LEGACY_RULES = (  # the same, saved by transformers < 4.52 (visual beside the language model)
    _rule("model.visual.{rest}", "mllm.model.visual.{rest}"),
    _rule("model.model.{rest}", _LM + "{rest}"),
    _rule("model.lm_head.weight", "mllm.lm_head.weight"),
)
GROUNDING_RULES = (  # the official SAM-2 stores layer-scale ``gamma`` as ``g_weight``
    _rule("grounding_encoder.sam2_model.{rest}.g_weight", "grounding_encoder.{rest}.gamma"),
    _rule("grounding_encoder.sam2_model.{rest}", "grounding_encoder.{rest}"),
    _rule("text_hidden_fcs.{i}.{p}", "text_hidden_fcs.{i}.{p}"),
)


def official_family(official: Mapping[str, Any]) -> str:
    """``internvl``, ``qwen2_5_vl`` or ``qwen3_vl``, from an official ``config.json``."""
    if "llm_config" in official:
        return "internvl"
    vision = official.get("vision_config") or {}
    vision_type = str(vision.get("model_type", ""))
    if vision_type.startswith("qwen3_vl") or "deepstack_visual_indexes" in vision:
        return "qwen3_vl"
    if vision_type.startswith("qwen2_5_vl") or "fullatt_block_indexes" in vision:
        return "qwen2_5_vl"
    raise ConversionError(
        "official config.json has neither llm_config (InternVL-based) nor a Qwen2.5-VL / Qwen3-VL vision_config"
    )


def llm_architecture(official: Mapping[str, Any]) -> str:
    """The official InternVL-based checkpoint's LLM class name, e.g. ``Qwen2ForCausalLM``."""
    architectures = official["llm_config"].get("architectures") or []
    if not architectures or architectures[0] not in (*PASSTHROUGH_LLMS, INTERNLM2):
        raise ConversionError(
            f"unsupported llm_config.architectures {architectures}; "
            f"supported: {', '.join((*PASSTHROUGH_LLMS, INTERNLM2))}"
        )
    return architectures[0]


def key_rules(official: Mapping[str, Any], legacy_qwen_keys: bool = False) -> tuple[KeyRule, ...]:
    """The key table of one official checkpoint (first matching rule wins, in both directions)."""
    if official_family(official) == "internvl":
        llm = INTERNLM2_RULES if llm_architecture(official) == INTERNLM2 else PASSTHROUGH_LLM_RULES
        return INTERNVIT_RULES + INTERNVL_PROJECTOR_RULES + llm + GROUNDING_RULES
    return (QWEN_LEGACY_RULES if legacy_qwen_keys else QWEN_RULES) + GROUNDING_RULES


def uses_legacy_qwen_keys(keys: Iterable[str]) -> bool:
    """Whether Qwen keys use the transformers < 4.52 nesting (``model.visual.*``, ``model.model.*`` = LLM)."""
    return not any(k.startswith(("model.model.visual.", "model.model.language_model.")) for k in keys)


@dataclass(frozen=True)
class Fusion:
    """Splits and joins fused official tensors; ``wqkv`` needs the InternLM2 attention geometry."""

    kv_heads: int = 0
    groups: int = 0  # query heads per KV head
    head_dim: int = 0

    @classmethod
    def for_config(cls, official: Mapping[str, Any]) -> Fusion:
        llm = official.get("llm_config") or {}
        if llm.get("architectures", [None])[0] != INTERNLM2:
            return cls()
        heads = llm["num_attention_heads"]
        kv_heads = llm.get("num_key_value_heads") or heads
        return cls(kv_heads, heads // kv_heads, llm["hidden_size"] // heads)

    def split(self, kind: str, tensor: torch.Tensor) -> list[torch.Tensor]:
        """One official tensor ``[rows, *rest]`` -> the project's q, k, v; ``ValueError`` on a wrong shape."""
        rest = tensor.shape[1:]
        if kind == "qkv":
            if tensor.shape[0] % 3:
                raise ValueError(f"{tuple(tensor.shape)} does not split into three equal q/k/v parts")
            return [part.clone() for part in tensor.chunk(3, dim=0)]
        h, g, d = self.kv_heads, self.groups, self.head_dim
        if tensor.shape[0] != h * (g + 2) * d:
            raise ValueError(
                f"{tuple(tensor.shape)} does not unpack as {h} KV heads × ({g} queries + k + v) × head_dim {d}"
            )
        grouped = tensor.reshape(h, g + 2, d, *rest)  # per KV head: its g query heads, then k, then v
        return [
            grouped[:, :g].reshape(h * g * d, *rest).clone(),
            grouped[:, g].reshape(h * d, *rest).clone(),
            grouped[:, g + 1].reshape(h * d, *rest).clone(),
        ]

    def join(self, kind: str, parts: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of ``split``: project q, k, v -> the official fused tensor."""
        if kind == "qkv":
            return torch.cat(parts, dim=0)
        h, g, d = self.kv_heads, self.groups, self.head_dim
        q, k, v = parts
        rest = q.shape[1:]
        grouped = torch.cat(
            [q.reshape(h, g, d, *rest), k.reshape(h, 1, d, *rest), v.reshape(h, 1, d, *rest)], dim=1
        )
        return grouped.reshape(h * (g + 2) * d, *rest)


def official_name(rules: Iterable[KeyRule], project_key: str) -> str | None:
    """The official key that holds a project key (for fused tensors: the fused official key)."""
    for rule in rules:
        if found := rule.match_project(project_key):
            return rule.official.format(**found[0])
    return None


# ---------------------------------------------------------------------------------------------- configs
def _config_fields(model_type: str) -> set[str]:
    """The named constructor fields of a transformers config class (plus rope fields older configs use)."""
    params = inspect.signature(CONFIG_MAPPING[model_type].__init__).parameters
    return {name for name, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} | {
        "rope_theta",
        "rope_scaling",
    }


def _rope_scaling(scaling: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Legacy ``rope_scaling`` (``type``) -> the ``rope_type`` spelling; Phi-3's old ``su`` is ``longrope``."""
    if not scaling:
        return None
    scaling = dict(scaling)
    rope_type = scaling.pop("type", None) or scaling.pop("rope_type", None)
    return {"rope_type": "longrope" if rope_type == "su" else rope_type, **scaling}


def _text_config(llm: Mapping[str, Any]) -> PretrainedConfig:
    """Official ``llm_config`` -> the native text config (InternLM2 becomes Llama)."""
    arch = llm["architectures"][0]
    if arch == INTERNLM2:  # defaults are InternLM2Config's
        heads = llm["num_attention_heads"]
        return CONFIG_MAPPING["llama"](
            vocab_size=llm["vocab_size"],
            hidden_size=llm["hidden_size"],
            intermediate_size=llm["intermediate_size"],
            num_hidden_layers=llm["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=llm.get("num_key_value_heads") or heads,
            hidden_act=llm.get("hidden_act", "silu"),
            max_position_embeddings=llm.get("max_position_embeddings", 2048),
            initializer_range=llm.get("initializer_range", 0.02),
            rms_norm_eps=llm.get("rms_norm_eps", 1e-6),
            pad_token_id=llm.get("pad_token_id", 0),
            bos_token_id=llm.get("bos_token_id", 1),
            eos_token_id=llm.get("eos_token_id", 2),
            tie_word_embeddings=llm.get("tie_word_embeddings", False),
            attention_bias=llm.get("bias", True),
            mlp_bias=False,
            rope_theta=llm.get("rope_theta", 10000),
            rope_scaling=_rope_scaling(llm.get("rope_scaling")),
        )
    model_type = PASSTHROUGH_LLMS[arch]
    allowed = _config_fields(model_type) - _WRAPPER_FIELDS
    fields = {k: v for k, v in llm.items() if k in allowed}
    if "rope_scaling" in fields:
        fields["rope_scaling"] = _rope_scaling(fields["rope_scaling"])
    return CONFIG_MAPPING[model_type](**fields)


def _vision_config(vision: Mapping[str, Any]) -> InternVLVisionConfig:
    """Official ``InternVisionConfig`` fields -> ``InternVLVisionConfig`` (defaults are InternVisionConfig's)."""
    dropout = vision.get("dropout", 0.0)
    return InternVLVisionConfig(
        hidden_size=vision.get("hidden_size", 3200),
        num_hidden_layers=vision.get("num_hidden_layers", 48),
        num_attention_heads=vision.get("num_attention_heads", 25),
        intermediate_size=vision.get("intermediate_size", 12800),
        hidden_act=vision.get("hidden_act", "gelu"),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        norm_type=vision.get("norm_type", "rms_norm"),
        attention_bias=vision.get("qkv_bias", False),
        use_qk_norm=vision.get("qk_normalization", True),
        image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", 14),
        num_channels=vision.get("num_channels", 3),
        attention_dropout=vision.get("attention_dropout", 0.0),
        projection_dropout=dropout,
        hidden_dropout_prob=dropout,
        initializer_range=vision.get("initializer_range", 0.02),
        layer_scale_init_value=vision.get("initializer_factor", 0.1),
        use_mean_pooling=True,  # InternViT has no final LayerNorm: keep it an Identity
        use_absolute_position_embeddings=True,
        use_mask_token=False,
    )


def _internvl_mllm_config(official: Mapping[str, Any], image_token_id: int | None) -> dict[str, Any]:
    llm_architecture(official)  # a supported LLM, or a clear error
    if image_token_id is None:
        raise ConversionError("an InternVL-based checkpoint needs the tokenizer's <IMG_CONTEXT> id")
    text = _text_config(official["llm_config"])
    vision = _vision_config(official["vision_config"])
    tile = official.get("force_image_size") or vision.image_size[0]
    ratio = official.get("downsample_ratio", 0.5)
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=int((tile // vision.patch_size[0]) ** 2 * ratio**2),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",  # mlp1's nn.GELU()
        vision_feature_layer=official.get("select_layer", -1),
        vision_feature_select_strategy="default",  # drop CLS
        tie_word_embeddings=text.tie_word_embeddings,  # transformers 5 ties on the top-level flag
    ).to_dict()


def _qwen_mllm_config(official: Mapping[str, Any], family: str) -> dict[str, Any]:
    """The official config is the stock Qwen*VL config plus ``template``: drop the wrapper fields."""
    fields = {k: v for k, v in official.items() if k not in _WRAPPER_FIELDS}
    config_class = Qwen2_5_VLConfig if family == "qwen2_5_vl" else Qwen3VLConfig
    return config_class(**fields).to_dict()


def convert_official_config(
    official: Mapping[str, Any],
    sam2_variant: str | None,
    sam2_config: Mapping[str, Any],
    image_token_id: int | None = None,
) -> Sa2VAConfig:
    """Official ``config.json`` (+ the SAM-2 found in the weights) -> ``Sa2VAConfig``.

    ``image_token_id`` (the tokenizer's ``<IMG_CONTEXT>``) is needed for InternVL-based checkpoints. Defaults
    of absent fields are those of the official ``Sa2VAChatConfig``.
    """
    family = official_family(official)
    template = official.get("template")
    if not template:
        raise ConversionError("official config.json has no chat 'template'")
    try:
        if family == "internvl":
            mllm = _internvl_mllm_config(official, image_token_id)
            vision = official["vision_config"]
            extra = {
                "ps_version": official.get("ps_version", "v1"),
                "force_image_size": official.get("force_image_size") or vision.get("image_size", 224),
                "min_dynamic_patch": official.get("min_dynamic_patch", 1),
                "max_dynamic_patch": official.get("max_dynamic_patch", 6),
                "use_thumbnail": official.get("use_thumbnail", False),
            }
        else:
            marker = official.get(SA2VA_ROS_FIELD) or {}
            mllm, extra = _qwen_mllm_config(official, family), {k: marker[k] for k in HARD_CODED_FIELDS if k in marker}
        config = Sa2VAConfig(
            mllm_config=mllm,
            sam2_config=dict(sam2_config),
            sam2_variant=sam2_variant,
            template=template,
            max_llm_frames=5,
            **extra,
        )
        config.validate()
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"official config.json cannot be converted: {exc!r}") from exc
    return config


# ---------------------------------------------------------------------------------------------- SAM-2
def sam2_shapes(model_cfg: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``SAM2Base``'s state dict for a hydra model config (parameters on meta: no memory)."""
    with init_empty_weights(include_buffers=False):
        sam = build_sam2(dict(model_cfg), sa2va=False)
    return {key: tuple(value.shape) for key, value in sam.state_dict().items()}


@functools.cache
def _variant_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    return sam2_shapes(bundled_sam2_config(variant))


def describe_sam2(shapes: Mapping[str, Iterable[int]]) -> str:
    """What a SAM-2 state dict looks like: trunk width, blocks per Hiera stage, SAM 2.1-only keys."""
    if not shapes:
        return "no SAM-2 weights"
    patch = shapes.get("image_encoder.trunk.patch_embed.proj.weight")
    blocks = sorted(
        {int(m.group(1)) for key in shapes if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", key))}
    )
    # a block with a ``proj`` changes width: it opens a new stage
    starts = [0] + [b for b in blocks if b and f"image_encoder.trunk.blocks.{b}.proj.weight" in shapes]
    stages = [end - start for start, end in zip(starts, [*starts[1:], len(blocks)], strict=True)]
    v21 = sorted(k for k in ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight") if k in shapes)
    return (
        f"trunk embed_dim {next(iter(patch)) if patch else '?'}, {len(blocks)} blocks in stages {stages}, "
        f"SAM 2.1-only keys: {v21 or 'none'}, {len(shapes)} tensors"
    )


def infer_sam2_variant(shapes: Mapping[str, Iterable[int]]) -> str:
    """The bundled SAM-2 variant (e.g. ``sam2_hiera_l``) whose state dict has exactly these keys and shapes."""
    found = {key: tuple(shape) for key, shape in shapes.items()}
    tables = {variant: _variant_shapes(variant) for variant in SAM2_VARIANTS}
    matches = [variant for variant, table in tables.items() if table == found]
    if len(matches) == 1:
        return matches[0]

    def distance(table: Mapping[str, tuple[int, ...]]) -> int:
        return len(table.keys() ^ found.keys()) + sum(table[k] != found[k] for k in table.keys() & found.keys())

    closest = min(tables, key=lambda variant: distance(tables[variant]))
    table = tables[closest]
    differences = sorted(
        [f"missing {k}" for k in table.keys() - found.keys()]
        + [f"extra {k}" for k in found.keys() - table.keys()]
        + [f"{k}: {found[k]} != {table[k]}" for k in table.keys() & found.keys() if table[k] != found[k]]
    )
    raise ConversionError(
        f"SAM-2 weights match none of sam2's bundled variants ({', '.join(SAM2_VARIANTS)}); found: "
        f"{describe_sam2(found)}; closest is {closest} ({describe_sam2(table)}) with {len(differences)} "
        f"differences, e.g. {differences[:5]}"
    )


# ---------------------------------------------------------------------------------------------- weights
def project_shapes(config: Sa2VAConfig) -> dict[str, torch.Size]:
    """Every key of the project's state dict for ``config`` and its shape (built with parameters on meta)."""
    with init_empty_weights(include_buffers=False):
        mllm = AutoModelForImageTextToText.from_config(config.build_mllm_config())
        sam = build_sam2(config.sam2_config)
    hidden, prompt = mllm.config.get_text_config().hidden_size, sam.hidden_dim
    shapes = {f"mllm.{k}": v.shape for k, v in mllm.state_dict().items()}
    shapes.update({f"grounding_encoder.{k}": v.shape for k, v in sam.state_dict().items()})
    fcs = {"0.weight": (hidden, hidden), "0.bias": (hidden,), "2.weight": (prompt, hidden), "2.bias": (prompt,)}
    shapes.update({f"text_hidden_fcs.{k}": torch.Size(v) for k, v in fcs.items()})  # Linear, ReLU, Linear
    return shapes


def ties_word_embeddings(config: Sa2VAConfig) -> bool:
    """Whether the MLLM's lm_head is its input embedding (then the project state dict omits ``lm_head``)."""
    mllm = config.build_mllm_config()
    text = mllm.get_text_config()
    return bool(getattr(mllm, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False))


def _sam2_from(official: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> tuple[str | None, dict]:
    """The SAM-2 the checkpoint holds: from our own marker field if present, else inferred from shapes."""
    marker = official.get(SA2VA_ROS_FIELD) or {}
    if "sam2_config" in marker:
        return marker.get("sam2_variant"), dict(marker["sam2_config"])
    shapes = {}
    for key, tensor in state.items():
        for rule in GROUNDING_RULES[:2]:
            if (groups := rule.match_official(key)) is not None:
                shapes[rule.project[0].format(**groups).removeprefix("grounding_encoder.")] = tensor.shape
                break
    variant = infer_sam2_variant(shapes)
    return variant, bundled_sam2_config(variant)


def convert_official_state_dict(
    official_config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    image_token_id: int | None = None,
    source: str | Path = "official checkpoint",
) -> tuple[Sa2VAConfig, dict[str, torch.Tensor]]:
    """Official config + weights -> ``Sa2VAConfig`` and the project's state dict (tensors may be on meta).

    Raises ``ConversionError`` listing every source key with no place in the model, every model key left
    empty (by its official name) and every shape mismatch.
    """
    variant, sam2_config = _sam2_from(official_config, state_dict)
    config = convert_official_config(official_config, variant, sam2_config, image_token_id)
    rules = key_rules(official_config, uses_legacy_qwen_keys(state_dict))
    fusion = Fusion.for_config(official_config)
    expected = project_shapes(config)
    converted: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    wrong: list[str] = []
    hints: list[str] = []
    present: set[str] = set()
    for key in sorted(state_dict):
        tensor = state_dict[key]
        rule, groups = next(((r, g) for r in rules if (g := r.match_official(key)) is not None), (None, None))
        targets = [t.format(**groups) for t in rule.project] if rule else []
        if not targets or any(t not in expected for t in targets):
            unmatched.append(key)
            if targets:
                hints.append(f"{key} -> {targets[0]}")
            continue
        try:
            parts = fusion.split(rule.fused, tensor) if rule.fused else [tensor]
        except ValueError as exc:
            wrong.append(f"{key}: {exc}")
            present.update(targets)  # there, but the wrong shape: not also "missing"
            continue
        for target, part in zip(targets, parts, strict=True):
            if part.shape != expected[target]:
                wrong.append(f"{key}: {tuple(part.shape)} != expected {tuple(expected[target])} ({target})")
            converted[target] = part
    if ties_word_embeddings(config):
        _drop_tied_lm_head(converted)
        expected.pop("mllm.lm_head.weight", None)
    missing = sorted({official_name(rules, k) or k for k in expected.keys() - converted.keys() - present})
    if unmatched or missing or wrong:
        raise ConversionError(
            _mismatch_message(source, official_family(official_config), unmatched, missing, wrong, hints),
            unmatched,
            missing,
            wrong,
        )
    return config, converted


def _drop_tied_lm_head(converted: dict[str, torch.Tensor]) -> None:
    """Tied LLM: the input embedding is the lm_head (as in the official model), a stored copy is dropped."""
    head = converted.pop("mllm.lm_head.weight", None)
    embed = converted.get(_LM + "embed_tokens.weight")
    if head is not None and embed is not None and not head.is_meta and not torch.equal(head, embed):
        warnings.warn(
            "the checkpoint ties word embeddings but stores a different lm_head; using the input embedding "
            "as the official model does",
            stacklevel=3,
        )


def _mismatch_message(
    source: str | Path,
    family: str,
    unmatched: list[str],
    missing: list[str],
    wrong: list[str],
    hints: list[str],
) -> str:
    def listed(title: str, items: list[str]) -> str:
        shown = "\n".join(f"    {item}" for item in items[:MAX_LISTED])
        more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
        return f"\n  {title} ({len(items)}):\n{shown}{more}"

    message = (
        f"{source}: the weights do not fit the official {family} Sa2VA layout: {len(unmatched)} unmatched "
        f"source keys, {len(missing)} missing keys, {len(wrong)} shape mismatches"
    )
    if unmatched:
        message += listed("source keys with no place in the model", unmatched)
    if hints:
        message += listed("of which renamed to keys the model does not have", hints)
    if missing:
        message += listed("missing keys (official names)", missing)
    if wrong:
        message += listed("shape mismatches", wrong)
    return message


# ---------------------------------------------------------------------------------------------- tokenizer
def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{file}: cannot read JSON ({exc})") from exc


def declared_added_tokens(path: Path) -> dict[int, AddedToken]:
    """Id -> added token, as ``tokenizer_config.json`` (``added_tokens_decoder``) and ``added_tokens.json``
    declare them."""
    declared: dict[int, AddedToken] = {}
    legacy = path / "added_tokens.json"
    if legacy.is_file():
        for content, token_id in _read_json(legacy).items():
            declared[int(token_id)] = AddedToken(content, special=True, normalized=False)
    config_file = path / "tokenizer_config.json"
    decoder = _read_json(config_file).get("added_tokens_decoder", {}) if config_file.is_file() else {}
    for token_id, token in decoder.items():
        fields = {k: token[k] for k in ("lstrip", "rstrip", "single_word", "normalized", "special") if k in token}
        declared[int(token_id)] = AddedToken(token["content"], **fields)
    return dict(sorted(declared.items()))


def _spm_bpe_merges(proto: Any, vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    """BPE merges of a sentencepiece BPE model: every split of a normal piece into two vocabulary pieces,
    ranked by the merged piece's score (sentencepiece merges the best-scoring pair first)."""
    ranked = []
    for piece in proto.pieces:
        if piece.type != _SPM_NORMAL:
            continue
        for cut in range(1, len(piece.piece)):
            left, right = piece.piece[:cut], piece.piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-piece.score, vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def build_sentencepiece_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """InternLM2's tokenizer (``tokenizer.model``, sentencepiece BPE) as a native fast tokenizer.

    Same semantics as the official ``InternLM2Tokenizer``: pieces renamed by ``added_tokens_decoder`` keep
    their ids, added tokens are split off before the BPE (each text chunk gets sentencepiece's dummy prefix),
    unknown characters fall back to bytes, ``<s>`` is prepended when ``add_bos_token``.
    """
    from sentencepiece import sentencepiece_model_pb2  # only InternLM2-based checkpoints need sentencepiece

    model_file = path / "tokenizer.model"
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise ConversionError(f"{model_file}: not a sentencepiece model ({exc})") from exc
    if proto.trainer_spec.model_type != _SPM_BPE:
        raise ConversionError(f"{model_file}: a sentencepiece BPE model is expected (InternLM2)")
    spec = proto.normalizer_spec
    if spec.remove_extra_whitespaces:
        raise ConversionError(f"{model_file}: remove_extra_whitespaces is not supported")
    config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    added = declared_added_tokens(path)
    pieces = [added[i].content if i in added else p.piece for i, p in enumerate(proto.pieces)]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    unk_id = proto.trainer_spec.unk_id
    backend = Tokenizer(
        BPE(
            vocab,
            _spm_bpe_merges(proto, vocab),
            unk_token=pieces[unk_id] if unk_id >= 0 else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = {
        i: AddedToken(pieces[i], special=True, normalized=False)
        for i, piece in enumerate(proto.pieces)
        if piece.type in (_SPM_UNKNOWN, _SPM_CONTROL)
    }
    for token_id, token in sorted({**specials, **added}.items()):
        (backend.add_special_tokens if token.special else backend.add_tokens)([token])
        if backend.token_to_id(token.content) != token_id:
            raise ConversionError(
                f"{path}: added token {token.content!r} is declared with id {token_id} but would get "
                f"{backend.token_to_id(token.content)} (ids after the sentencepiece vocabulary must be contiguous)"
            )
    bos = config.get("bos_token", "<s>")
    eos = config.get("eos_token", "</s>")
    add_bos, add_eos = bool(config.get("add_bos_token", True)), bool(config.get("add_eos_token", False))
    if add_bos or add_eos:  # as InternLM2Tokenizer.build_inputs_with_special_tokens: <s> A (B) (</s>)
        single = [bos] * add_bos + ["$A"] + [eos] * add_eos
        pair = [bos] * add_bos + ["$A", "$B"] + [eos] * add_eos
        ids = sorted({(tok, vocab[tok]) for tok in (bos, eos) if tok in vocab})
        backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=config.get("unk_token", "<unk>"),
        pad_token=config.get("pad_token", eos),
        additional_special_tokens=[t.content for t in added.values() if t.special and t.content not in (bos, eos)],
        clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces", False),
        model_max_length=config.get("model_max_length", 8192),
        chat_template=config.get("chat_template"),
    )


def load_official_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """An official checkpoint's tokenizer without remote code; every declared added-token id is checked."""
    path = Path(path)
    config_file = path / "tokenizer_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    sentencepiece = (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file()
    if str(config.get("tokenizer_class", "")).startswith("InternLM2") or sentencepiece:
        tokenizer = build_sentencepiece_tokenizer(path)
    else:
        try:
            # an empty config: the official config.json describes remote code, tokenizer_config names the class
            tokenizer = AutoTokenizer.from_pretrained(str(path), config=PretrainedConfig(), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{path}: cannot load the tokenizer without remote code ({exc})") from exc
    wrong = [
        f"{token.content!r}: {tokenizer.convert_tokens_to_ids(token.content)} != declared {token_id}"
        for token_id, token in declared_added_tokens(path).items()
        if tokenizer.convert_tokens_to_ids(token.content) != token_id
    ]
    if wrong:
        raise ConversionError(f"{path}: tokenizer ids differ from the declared added tokens: {wrong[:MAX_LISTED]}")
    return tokenizer


def _check_token_ids(config: Sa2VAConfig, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Every token has an embedding row, and a Qwen checkpoint's image token is the tokenizer's."""
    rows = config.build_mllm_config().get_text_config().vocab_size
    beyond = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i >= rows)
    if beyond:
        raise ConversionError(f"{path}: token ids beyond the LLM's {rows} embeddings: {beyond[:MAX_LISTED]}")
    if config.family != "internvl":
        image_token_id = config.mllm_config.get("image_token_id")
        if tokenizer.convert_tokens_to_ids("<|image_pad|>") != image_token_id:
            raise ConversionError(
                f"{path}: config image_token_id {image_token_id} is not the tokenizer's <|image_pad|> "
                f"({tokenizer.convert_tokens_to_ids('<|image_pad|>')})"
            )


# ---------------------------------------------------------------------------------------------- entry points
def load_official(path: str | Path) -> tuple[Sa2VAConfig, dict[str, torch.Tensor], PreTrainedTokenizerBase]:
    """Read an official Sa2VA checkpoint directory: (project config, project state dict, tokenizer)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConversionError(f"{path}: not a checkpoint directory (no config.json)")
    official = _read_json(path / "config.json")
    if official.get("model_type") != OFFICIAL_MODEL_TYPE:
        raise ConversionError(
            f"{path / 'config.json'}: model_type {official.get('model_type')!r} is not {OFFICIAL_MODEL_TYPE!r}"
        )
    tokenizer = load_official_tokenizer(path)
    family = official_family(official)
    required = [SPECIAL_TOKENS["seg"]] + ([SPECIAL_TOKENS["img_context"]] if family == "internvl" else [])
    try:
        check_special_tokens(tokenizer, required=required, where=path)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc
    state = read_state_dict(path)
    image_token_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["img_context"])
    config, converted = convert_official_state_dict(official, state, image_token_id, source=path)
    _check_token_ids(config, tokenizer, path)
    return config, converted, tokenizer


def convert_checkpoint(src: str | Path, dst: str | Path, max_shard_bytes: int | None = None) -> Sa2VAConfig:
    """Convert an official checkpoint directory into the project's format (weights keep their dtype)."""
    src, dst = Path(src), Path(dst)
    if (dst / "config.json").exists():
        raise ConversionError(f"{dst}: already holds a checkpoint; choose an empty directory")
    config, state, tokenizer = load_official(src)
    processor = load_processor(src, tokenizer) if config.family != "internvl" else None
    with init_empty_weights(include_buffers=False):
        model = Sa2VA(config, tokenizer, processor)
    model.load_weights(state, source=src)
    model.save_pretrained(dst, max_shard_bytes=max_shard_bytes)
    return config
