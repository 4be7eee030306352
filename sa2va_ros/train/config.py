"""Training configuration: one YAML file per run (``sa2va-train CONFIG``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sa2va_ros.synthetic.vocabulary import EXPRESSION_KINDS


@dataclass
class LoraSettings:
    """LoRA on the LLM (official: r 128 / alpha 256, or 256 / 512 for InternVL3)."""

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TrainConfig:
    """Everything a training run needs; unknown keys in the YAML are an error."""

    output_dir: str
    # Start point: a checkpoint directory (project or official format) or a tiny preset family.
    init_checkpoint: str | None = None
    init_preset: str | None = "internvl-qwen2"
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # Data: the synthetic tabletop world.
    image_size: tuple[int, int] = (240, 320)
    video_frames: int = 5
    mix: dict[str, float] = field(default_factory=lambda: {"image": 0.7, "video": 0.3})
    # Optimisation (official: AdamW lr 4e-5, wd 0.05, 5% warmup then cosine, grad clip 1).
    steps: int = 1000
    batch_size: int = 4  # samples accumulated per optimiser step
    lr: float = 4e-5
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    # Losses: next-token CE + 2.0 x BCE + 0.5 x Dice on the best-IoU low-res mask (+ SAM-2 object score).
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    object_score_weight: float = 1.0
    train_memory: bool = False  # also supervise frames propagated through SAM-2 memory (not in the official recipe)
    # From-scratch aid (not in the official recipe, whose SAM-2 is pretrained): SAM-2 also segments up to
    # ``point_prompts`` visible objects of frame 0 from one random point each; only that loss for the first
    # ``sam_warmup_steps`` steps (no LLM), then weighted by ``point_prompt_weight`` beside the Sa2VA losses.
    point_prompts: int = 0
    point_prompt_weight: float = 1.0
    sam_warmup_steps: int = 0
    # From-scratch aid: a dense alignment loss teaches SAM-2's image embedding (+ its positional encoding) to
    # light up where the projected ``[SEG]`` vector's target is (softmax over locations, cosine x temperature),
    # so the decoder's token-to-image attention has a signal to find *which* object the phrase means.
    align_weight: float = 0.0
    align_temperature: float = 10.0
    # From-scratch aid: per sample, one more phrase naming up to ``object_prompts`` objects of frame 0 that colour
    # and class identify, each with its mask (+ alignment), weighted by ``object_prompt_weight``.
    object_prompts: int = 0
    object_prompt_weight: float = 1.0
    # From-scratch aid: per sample, ``presence_prompts`` more requests on frame 0, half for an object that is there and
    # half for one that is not (answer "There is no ..."), CE weighted by ``presence_prompt_weight``.
    presence_prompts: int = 0
    presence_prompt_weight: float = 1.0
    # From-scratch aid: training-only colour/class prototypes shared by SAM-2's image embedding (per location) and
    # the object prompts' [SEG] vectors (see ``SemanticPrototypes``); 0 turns it off.
    semantic_weight: float = 0.0
    # From-scratch aid: the same read-out (own prototypes) on the LLM's image tokens of frame 0, per cell of each
    # tile and of the thumbnail, so the vision tower carries colour and class to the LLM; 0 turns it off.
    image_token_semantic_weight: float = 0.0
    # Expression-kind weights of the synthetic world overriding its defaults (e.g. more absent targets).
    kind_weights: dict[str, float] = field(default_factory=dict)
    # What trains: "full" (tiny models from scratch) or "official" (freeze encoders + LLM base, LoRA on the LLM,
    # train LoRA, text_hidden_fcs, the SAM-2 mask decoder and the projector).
    policy: str = "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    # Bookkeeping.
    checkpoint_every: int = 500
    log_every: int = 10
    threads: int | None = None

    def validate(self) -> None:
        problems = []
        if (self.init_checkpoint is None) == (self.init_preset is None):
            problems.append("set exactly one of init_checkpoint and init_preset")
        if self.policy not in ("full", "official"):
            problems.append(f"policy must be 'full' or 'official', got {self.policy!r}")
        if self.steps < 1 or self.batch_size < 1:
            problems.append("steps and batch_size must be >= 1")
        if not self.mix or any(v < 0 for v in self.mix.values()) or set(self.mix) - {"image", "video"}:
            problems.append(f"mix must weight 'image' and/or 'video' with non-negative numbers, got {self.mix}")
        if min(self.point_prompts, self.point_prompt_weight, self.sam_warmup_steps, self.object_prompts,
               self.object_prompt_weight, self.presence_prompts, self.presence_prompt_weight) < 0:
            problems.append("point_prompts, object_prompts, presence_prompts, their weights and sam_warmup_steps "
                            "must be >= 0")
        if self.sam_warmup_steps and not self.point_prompts:
            problems.append("sam_warmup_steps needs point_prompts > 0")
        if self.sam_warmup_steps >= self.steps:
            problems.append("sam_warmup_steps must be smaller than steps")
        if self.semantic_weight < 0 or self.image_token_semantic_weight < 0:
            problems.append("semantic_weight and image_token_semantic_weight must be >= 0")
        if self.align_weight < 0 or self.align_temperature <= 0:
            problems.append("align_weight must be >= 0 and align_temperature > 0")
        if unknown := set(self.kind_weights) - set(EXPRESSION_KINDS):
            problems.append(f"kind_weights: unknown kinds {sorted(unknown)}; known: {', '.join(EXPRESSION_KINDS)}")
        if any(v < 0 for v in self.kind_weights.values()):
            problems.append("kind_weights must be >= 0")
        if self.video_frames < 2 and self.mix.get("video", 0) > 0:
            problems.append("video_frames must be >= 2 when videos are mixed in")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a YAML training config; relative ``output_dir`` is relative to the current directory."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in fields(TrainConfig)}
    if unknown := sorted(set(raw) - known):
        raise ValueError(f"{path}: unknown training config keys {unknown}")
    if "lora" in raw:
        raw["lora"] = LoraSettings(**raw["lora"])
    if "image_size" in raw:
        raw["image_size"] = tuple(raw["image_size"])
    config = TrainConfig(**raw)
    config.validate()
    return config
