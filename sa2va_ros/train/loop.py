"""The training loop: accelerate (one CPU or many GPUs, DDP via ``accelerate launch``), progress bar,
periodic checkpoints with resume, and a JSON-lines loss log."""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from sa2va_ros.model import Sa2VA
from sa2va_ros.model.presets import tiny_model

from .config import TrainConfig
from .data import sample_stream
from .objective import Sa2VAObjective
from .policy import apply_policy

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


def build_model(config: TrainConfig) -> Sa2VA:
    """The start point: a checkpoint (project or official) or a tiny preset with the world's vocabulary."""
    if config.init_checkpoint:
        return Sa2VA.from_pretrained(config.init_checkpoint)
    from sa2va_ros.synthetic.vocabulary import CLASSES, COLOURS

    corpus = [" ".join(CLASSES), " ".join(COLOURS)]
    return tiny_model(config.init_preset, seed=config.seed, corpus=corpus, reinit=False, **config.preset_overrides)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` directory that finished writing (it has a trainer state)."""
    done = [p for p in output_dir.glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def train(config: TrainConfig, resume: bool = True) -> Path:
    """Run (or resume) a training run; returns the directory of the final model."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    output_dir = Path(config.output_dir)
    # Without a GPU accelerate must be told, or it takes torchrun's processes for independent single runs. A sample
    # leaves parts unused (the LLM in SAM-2's warm-up, the memory path on images): DDP must look for them.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    start_step = 0
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        model = Sa2VA.from_pretrained(checkpoint)
        start_step = json.loads((checkpoint / STATE_FILE).read_text())["step"]
    else:
        model = build_model(config)
    torch.manual_seed(config.seed + start_step)
    trainable = apply_policy(model, config)
    objective = Sa2VAObjective(model, config).train()
    trainable = [*trainable, *objective.aids.parameters()]  # training-only: in the optimizer file, not the model
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * config.steps), config.steps
    )
    if checkpoint is not None and config.policy == "full":  # LoRA restarts on merged weights: fresh optimiser
        state = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        objective.aids.load_state_dict(state["aids"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
    # The scheduler stays ours: accelerate's wrapper would advance it once per rank at every optimiser step.
    objective, optimizer = accelerator.prepare(objective, optimizer)
    samples = sample_stream(
        start_step * config.batch_size,
        config.seed,
        config.mix,
        config.image_size,
        config.video_frames,
        stride=accelerator.num_processes,
        offset=accelerator.process_index,
        kind_weights=config.kind_weights,
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    log = (output_dir / "loss_log.jsonl").open("a") if accelerator.is_main_process else None
    progress = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps,
                    disable=not accelerator.is_main_process, desc="train")
    started = time.monotonic()
    for step in progress:
        totals: dict[str, float] = {}
        for index in range(config.batch_size):  # gradients accumulate locally; ranks average on the last sample
            last = index == config.batch_size - 1
            with nullcontext() if last else accelerator.no_sync(objective):
                losses = objective(next(samples), language=step >= config.sam_warmup_steps)
                accelerator.backward(losses["total"] / config.batch_size)
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value.item() / config.batch_size
        accelerator.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{totals['total']:.3f}", ce=f"{totals['ce']:.3f}", dice=f"{totals['dice']:.3f}")
        done = step + 1
        if log is not None and (done % config.log_every == 0 or done == config.steps):
            record = {"step": done, "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.monotonic() - started, 1)}
            log.write(json.dumps({**record, **{k: round(v, 5) for k, v in totals.items()}}) + "\n")
            log.flush()
        if done % config.checkpoint_every == 0 and done < config.steps:
            _save(accelerator, objective, optimizer, scheduler, output_dir / f"checkpoint-{done}", done)
    final = output_dir / "final"
    _save(accelerator, objective, optimizer, scheduler, final, config.steps)
    if log is not None:
        log.close()
    return final


def _save(accelerator: Accelerator, objective, optimizer, scheduler, path: Path, step: int) -> None:
    """Model as safetensors (project format), optimizer/scheduler tensors for ``weights_only`` loading."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    objective = accelerator.unwrap_model(objective)
    model = objective.model
    if isinstance(model.mllm.model.language_model, PeftModel):  # release format: LoRA merged, no adapter keys
        model = copy.deepcopy(model)
        model.mllm.model.language_model = model.mllm.model.language_model.merge_and_unload()
    model.save_pretrained(path)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
             "aids": objective.aids.state_dict()}
    torch.save(state, path / OPTIMIZER_FILE)
    (path / STATE_FILE).write_text(json.dumps({"step": step}))
