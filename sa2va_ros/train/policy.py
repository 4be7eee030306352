"""What trains: everything (tiny models from scratch) or the official Sa2VA freeze/LoRA policy (via peft)."""

from __future__ import annotations

from torch import nn

from sa2va_ros.model import Sa2VA

from .config import TrainConfig


def apply_policy(model: Sa2VA, config: TrainConfig) -> list[nn.Parameter]:
    """Freeze / wrap the model as the policy says; return the parameters the optimiser updates.

    ``official``: vision tower, LLM base and SAM-2 frozen; LoRA on the LLM; trained: LoRA, ``text_hidden_fcs``,
    the SAM-2 mask decoder and the projector.
    """
    if config.policy == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return [p for p in model.parameters() if p.requires_grad]
    from peft import LoraConfig, get_peft_model

    for param in model.parameters():
        param.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
    )
    model.mllm.model.language_model = get_peft_model(model.mllm.model.language_model, lora)
    for module in (model.text_hidden_fcs, model.grounding_encoder.sam_mask_decoder, _projector(model)):
        for param in module.parameters():
            param.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def _projector(model: Sa2VA) -> nn.Module:
    inner = model.mllm.model
    return inner.multi_modal_projector if hasattr(inner, "multi_modal_projector") else inner.visual.merger
