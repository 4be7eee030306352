"""Configuration of the project's Sa2VA checkpoints (``config.json`` with ``model_type: sa2va_ros``)."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

# MLLM families: the transformers class that implements each one natively.
FAMILY_BY_MODEL_TYPE = {
    "internvl": "internvl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
}

SPECIAL_TOKENS = {
    "img_start": "<img>",
    "img_end": "</img>",
    "img_context": "<IMG_CONTEXT>",
    "seg": "[SEG]",
    "phrase_start": "<p>",
    "phrase_end": "</p>",
    "vp_start": "<vp>",
    "vp_end": "</vp>",
}


class Sa2VAConfig(PretrainedConfig):
    """Sa2VA = a native transformers MLLM + SAM-2 (hydra ``model`` node) + the ``[SEG]`` projection.

    ``mllm_config`` is the MLLM's own config dict (``model_type`` internvl / qwen2_5_vl / qwen3_vl);
    ``sam2_config`` is the SAM-2 hydra ``model`` node, so any SAM-2 variant (or a tiny test one) is
    described by the checkpoint itself. InternVL fields mirror the official ``Sa2VAChatConfig``.
    """

    model_type = "sa2va_ros"

    def __init__(
        self,
        mllm_config: dict[str, Any] | None = None,
        sam2_config: dict[str, Any] | None = None,
        sam2_variant: str | None = None,
        template: str = "qwen_chat",
        ps_version: str = "v2",
        force_image_size: int = 448,
        min_dynamic_patch: int = 1,
        max_dynamic_patch: int = 12,
        use_thumbnail: bool = True,
        max_llm_frames: int = 5,
        qwen_min_pixels: int = 512 * 28 * 28,
        qwen_max_pixels: int = 2048 * 28 * 28,
        special_tokens: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mllm_config = dict(mllm_config or {})
        self.sam2_config = dict(sam2_config or {})
        self.sam2_variant = sam2_variant
        self.template = template
        self.ps_version = ps_version
        self.force_image_size = force_image_size
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        self.use_thumbnail = use_thumbnail
        self.max_llm_frames = max_llm_frames
        self.qwen_min_pixels = qwen_min_pixels
        self.qwen_max_pixels = qwen_max_pixels
        self.special_tokens = {**SPECIAL_TOKENS, **(special_tokens or {})}

    @property
    def family(self) -> str:
        """``internvl``, ``qwen2_5_vl`` or ``qwen3_vl``."""
        model_type = self.mllm_config.get("model_type")
        if model_type not in FAMILY_BY_MODEL_TYPE:
            raise ValueError(
                f"unsupported MLLM model_type {model_type!r}; expected one of {sorted(FAMILY_BY_MODEL_TYPE)}"
            )
        return FAMILY_BY_MODEL_TYPE[model_type]

    def build_mllm_config(self) -> PretrainedConfig:
        """The transformers config object of the MLLM."""
        fields = dict(self.mllm_config)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)

    def validate(self) -> None:
        """Raise ``ValueError`` with one clear line per problem."""
        problems = []
        try:
            self.family  # noqa: B018 - raises on an unknown family
        except ValueError as exc:
            problems.append(str(exc))
        if not self.sam2_config.get("image_encoder"):
            problems.append("sam2_config has no image_encoder: not a SAM-2 hydra model node")
        if self.ps_version not in ("v1", "v2"):
            problems.append(f"ps_version must be 'v1' or 'v2', got {self.ps_version!r}")
        if not 1 <= self.min_dynamic_patch <= self.max_dynamic_patch:
            problems.append("need 1 <= min_dynamic_patch <= max_dynamic_patch")
        if self.max_llm_frames < 1:
            problems.append("max_llm_frames must be >= 1")
        if problems:
            raise ValueError("invalid Sa2VA config: " + "; ".join(problems))


AutoConfig.register(Sa2VAConfig.model_type, Sa2VAConfig, exist_ok=True)
