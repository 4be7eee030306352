"""Per-stage latency of the Sa2VA model core: vision tower, LLM prefill and decode, SAM-2 encoder, mask decoder,
memory propagation, and end-to-end ``ground()`` on one frame.

Real-size presets are the official ARCHITECTURES with random weights (no checkpoint can be downloaded here), so
the numbers are compute cost only; the answers are meaningless. ``ground()`` is scripted to answer with one
``[SEG]`` so that its SAM-2 half runs, as it does with a trained model.

Example::

    python bench/bench_model.py --preset tiny --threads 2 --repeats 20
    python bench/bench_model.py --preset sam2.1_t+1b --device cuda --repeats 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import transformers
from accelerate import init_empty_weights
from transformers import DynamicCache

from sa2va_ros.model import Sa2VA
from sa2va_ros.model.config import Sa2VAConfig
from sa2va_ros.model.preprocess import dynamic_tiles, tiles_to_tensor, to_pil
from sa2va_ros.model.presets import tiny_model
from sa2va_ros.model.sam2_grounding import bundled_sam2_config
from sa2va_ros.model.tokenizer import build_tiny_tokenizer

# Qwen2.5 text models of the InternVL3 family (InternVL3-1B: Qwen2.5-0.5B, InternVL3-2B: Qwen2.5-1.5B).
LLM_SIZES: dict[str, dict[str, int]] = {
    "1b": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "intermediate_size": 4864},
    "2b": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "intermediate_size": 8960},
}
QWEN25_VOCAB = 151674  # InternVL3's tokenizer (Qwen2.5 + InternVL's image and box tokens)
INTERNVIT_300M = {  # InternViT-300M-448px-V2.5, the vision tower of InternVL3-1B/2B
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "image_size": [448, 448],
    "patch_size": [14, 14],
    "use_qk_norm": False,
    "attention_bias": True,
    "norm_type": "layer_norm",
    "layer_scale_init_value": 0.1,
}
SAM2_SHORT_NAMES = {"sam2.1_t": "sam2.1_hiera_t", "sam2.1_l": "sam2.1_hiera_l", "sam2_l": "sam2_hiera_l"}
PRESETS = ("tiny", *(f"{sam}+{llm}" for sam in SAM2_SHORT_NAMES for llm in LLM_SIZES))

STAGES = ("vision", "llm", "sam_encoder", "sam_decoder", "propagation", "ground")
PROMPT = "<image>\nPlease segment the blue mug."
SCRIPTED_ANSWER = "Sure, [SEG]."


@dataclass
class Timings:
    """Wall-clock and process CPU time (all threads) per sample, in milliseconds.

    On an oversubscribed machine wall time includes waiting for a core; CPU time of a one-thread run does not.
    """

    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def add(self, start: tuple[float, float], end: tuple[float, float], per: int = 1) -> None:
        """One sample between two ``clock()`` readings, divided by ``per`` (e.g. tokens)."""
        self.wall_ms.append((end[0] - start[0]) * 1e3 / per)
        self.cpu_ms.append((end[1] - start[1]) * 1e3 / per)


@dataclass
class StageResult:
    """Timings of one stage, their summary, and what one sample covers."""

    name: str
    timings: Timings
    note: str = ""
    median_ms: float = field(init=False)
    p90_ms: float = field(init=False)
    cpu_median_ms: float = field(init=False)

    def __post_init__(self) -> None:
        self.median_ms = statistics.median(self.timings.wall_ms)
        self.p90_ms = float(np.percentile(self.timings.wall_ms, 90))
        self.cpu_median_ms = statistics.median(self.timings.cpu_ms)


# ---------------------------------------------------------------------------------------------- model building
def internvl3_mllm_config(llm_size: str, image_token_id: int) -> dict[str, Any]:
    """The native transformers ``internvl`` config of an InternVL3-1B/2B-like MLLM."""
    text = {
        "model_type": "qwen2",
        "vocab_size": QWEN25_VOCAB,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": None,
        **LLM_SIZES[llm_size],
    }
    return {
        "model_type": "internvl",
        "vision_config": dict(INTERNVIT_300M),
        "text_config": text,
        "downsample_ratio": 0.5,
        "vision_feature_layer": -1,
        "projector_hidden_act": "gelu",
        "image_token_id": image_token_id,
    }


def build_real_size_model(
    sam_variant: str, llm_size: str, max_tiles: int, device: torch.device, dtype: torch.dtype
) -> Sa2VA:
    """A real-size Sa2VA architecture with cheap random weights: parameters are allocated empty on ``device``
    and filled in place (normal, std 0.02; norm scales 1, biases 0) instead of running every initialiser."""
    tokenizer = build_tiny_tokenizer()  # ids beyond its vocabulary are simply never used
    config = Sa2VAConfig(
        mllm_config=internvl3_mllm_config(llm_size, tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")),
        sam2_config=bundled_sam2_config(sam_variant),
        sam2_variant=sam_variant,
        template="qwen_chat",
        force_image_size=448,
        max_dynamic_patch=max_tiles,
    )
    with init_empty_weights(include_buffers=False):
        model = Sa2VA(config, tokenizer)
    buffers = {name: buf.clone() for name, buf in model.named_buffers()}  # computed at init, kept
    model.to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                torch.nn.init.normal_(param, std=0.02)
            elif name.endswith("bias"):
                param.zero_()
            else:  # norm scales, layer scales, learned embeddings of one dim
                param.fill_(1.0)
        for name, buf in buffers.items():
            model.get_buffer(name).copy_(buf)
    return model.to(dtype=dtype).eval()


def build_model(preset: str, max_tiles: int, device: torch.device, dtype: torch.dtype) -> Sa2VA:
    """The preset's model on ``device`` in ``dtype``."""
    if preset == "tiny":
        return tiny_model("internvl-qwen2", seed=0, max_dynamic_patch=max_tiles).to(device=device, dtype=dtype)
    sam, llm = preset.split("+")
    return build_real_size_model(SAM2_SHORT_NAMES[sam], llm, max_tiles, device, dtype)


def parameter_counts(model: Sa2VA) -> dict[str, int]:
    """Parameters per component (the lm_head is counted with the LLM)."""

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    mllm = model.mllm
    return {
        "vision_tower": count(mllm.model.vision_tower) + count(mllm.model.multi_modal_projector),
        "llm": count(mllm.model.language_model) + count(mllm.lm_head),
        "sam2": count(model.grounding_encoder),
        "text_hidden_fcs": count(model.text_hidden_fcs),
    }


# ---------------------------------------------------------------------------------------------- timing
def clock(device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds), once queued GPU work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> Timings:
    """``warmup`` untimed calls, then ``repeats`` timed calls."""
    for _ in range(warmup):
        fn()
    timings = Timings()
    for _ in range(repeats):
        start = clock(device)
        fn()
        timings.add(start, clock(device))
    return timings


@contextmanager
def scripted_lm_head(model: Sa2VA, answer: str) -> Iterator[int]:
    """Make greedy decoding answer ``answer`` then eos (random weights would never emit ``[SEG]``).

    Adds a large bonus to the next scripted token's logit; yields the number of scripted tokens.
    """
    script = [*model.tokenizer.encode(answer, add_special_tokens=False), model.tokenizer.eos_token_id]
    head = model.mllm.lm_head
    original = head.forward
    calls = {"count": 0}

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        logits = original(hidden)  # [1, V]: the last position's logits
        logits[..., script[calls["count"] % len(script)]] += 1e4  # each ground() call consumes the whole script
        calls["count"] += 1
        return logits

    head.forward = forward
    try:
        yield len(script)
    finally:
        head.forward = original


class Benchmark:
    """Times each stage of one model on one synthetic camera frame."""

    def __init__(self, model: Sa2VA, frame: np.ndarray, args: argparse.Namespace) -> None:
        self.model, self.frame, self.args = model, frame, args
        self.device = model.device
        self.sam = model.grounding_encoder
        self.lm = model.mllm.model.language_model
        self.text_config = model.mllm.config.get_text_config()
        cfg = model.config
        tiles = dynamic_tiles(
            to_pil(frame), cfg.min_dynamic_patch, cfg.max_dynamic_patch, cfg.force_image_size, cfg.use_thumbnail
        )
        self.tile_pixels = tiles_to_tensor(tiles, cfg.force_image_size)  # [n, 3, tile, tile]
        self.sam_pixels = self.sam.preprocess([frame]).to(self.device, model._sam_dtype())  # [1, 3, S, S]

    def run(self, stages: Sequence[str]) -> list[StageResult]:
        """Time the chosen stages (names from ``STAGES``) in pipeline order."""
        seg_embedding = self.seg_embedding()
        timers: dict[str, Callable[[], list[StageResult]]] = {
            "vision": lambda: [self.vision_tower()],
            "llm": self.llm_prefill_and_decode,
            "sam_encoder": lambda: [self.sam_image_encoder()],
            "sam_decoder": lambda: [self.sam_mask_decoder(seg_embedding)],
            "propagation": lambda: [self.memory_propagation(seg_embedding)],
            "ground": lambda: [self.ground()],
        }
        results = []
        for stage in STAGES:
            if stage in stages:
                with torch.inference_mode():
                    results += timers[stage]()
        return results

    def _time(self, fn: Callable[[], Any]) -> Timings:
        return time_call(fn, self.device, self.args.warmup, self.args.repeats)

    def vision_tower(self) -> StageResult:
        features = self.model._internvl_tile_features(self.tile_pixels)  # [n, tokens, D]
        timings = self._time(lambda: self.model._internvl_tile_features(self.tile_pixels))
        tiles, tokens = features.shape[:2]
        return StageResult("vision tower (InternViT + mlp1)", timings, f"{tiles} tile(s) -> {tiles * tokens} tokens")

    def llm_prefill_and_decode(self) -> list[StageResult]:
        """Prefill the prompt (with its image tokens), then decode N tokens from its KV cache, per repeat."""
        embeds = self.model._internvl_prompt_embeds(PROMPT, to_pil(self.frame), None)  # [1, L, D]
        head = self.model.mllm.lm_head
        prefill, decode = Timings(), Timings()
        for i in range(self.args.warmup + self.args.repeats):
            cache = DynamicCache(config=self.text_config)
            start = clock(self.device)
            hidden = self.lm(inputs_embeds=embeds, cache=cache, use_cache=True).last_hidden_state
            next_id = head(hidden[:, -1]).argmax(-1, keepdim=True)  # [1, 1]
            middle = clock(self.device)
            for _ in range(self.args.decode_tokens):
                hidden = self.lm(input_ids=next_id, cache=cache, use_cache=True).last_hidden_state  # [1, 1, D]
                next_id = head(hidden[:, -1]).argmax(-1, keepdim=True)
            end = clock(self.device)
            if i >= self.args.warmup:
                prefill.add(start, middle)
                decode.add(middle, end, per=self.args.decode_tokens)
        length = embeds.size(1)
        return [
            StageResult("LLM prefill", prefill, f"{length} prompt tokens"),
            StageResult(
                "LLM decode, per token",
                decode,
                f"mean of {self.args.decode_tokens} tokens after a {length}-token prompt",
            ),
        ]

    @torch.inference_mode()
    def seg_embedding(self) -> torch.Tensor:
        """A ``[1, 256]`` language prompt: a random LLM hidden state through ``text_hidden_fcs``."""
        generator = torch.Generator().manual_seed(0)
        hidden = torch.randn(1, self.text_config.hidden_size, generator=generator)
        return self.model.text_hidden_fcs(hidden.to(self.device, next(self.model.text_hidden_fcs.parameters()).dtype))

    def sam_image_encoder(self) -> StageResult:
        with self.model._sam_autocast():
            timings = self._time(lambda: self.sam.encode_frame(self.sam_pixels))
        size = self.sam.image_size
        return StageResult("SAM-2 image encoder", timings, f"{size}x{size}")

    def sam_mask_decoder(self, seg_embedding: torch.Tensor) -> StageResult:
        with self.model._sam_autocast():
            feats, pos, sizes = self.sam.encode_frame(self.sam_pixels)
            timings = self._time(
                lambda: self.sam.decode_conditioning_frame(feats, pos, sizes, seg_embedding[:, None, :])
            )
        return StageResult("SAM-2 mask decoder + [SEG] prompt", timings, "conditioning frame, 1 target")

    def memory_propagation(self, seg_embedding: torch.Tensor) -> StageResult:
        """Per-frame cost of ``language_video_inference`` after the conditioning frames, memory bank full.

        The image features are computed once and reused for every frame, so a sample is memory attention +
        mask decoder + memory encoder only (add the image encoder for a full tracking step).
        """
        cond = self.args.cond_frames
        fill = self.sam.num_maskmem - 1  # frames until the bank holds num_maskmem - 1 recent memories
        skip = cond + max(fill, self.args.warmup)
        frames = [self.sam_pixels[0]] * (skip + self.args.repeats)
        with self.model._sam_autocast():
            cached = self.sam.encode_frame(self.sam_pixels)
            self.sam.encode_frame = lambda image: cached  # instance attribute shadows the method
            try:
                stream = self.sam.language_video_inference(frames, seg_embedding, cond)
                timings = Timings()
                for t in range(len(frames)):
                    start = clock(self.device)
                    next(stream)
                    end = clock(self.device)
                    if t >= skip:
                        timings.add(start, end)
            finally:
                del self.sam.encode_frame
        note = f"{cond} cond frame(s) + {self.sam.num_maskmem - 1} memories, excl. image encoder"
        return StageResult("SAM-2 memory propagation, per frame", timings, note)

    def ground(self) -> StageResult:
        last: dict[str, Any] = {}
        with scripted_lm_head(self.model, SCRIPTED_ANSWER) as answer_tokens:
            timings = self._time(
                lambda: last.update(result=self.model.ground([self.frame], PROMPT, max_new_tokens=answer_tokens))
            )
        if last["result"].masks.shape[0] != 1:  # otherwise SAM-2 never ran and the timing would mislead
            raise RuntimeError(f"scripted ground() answered {last['result'].text!r} without one [SEG]")
        return StageResult("end-to-end ground(), 1 frame", timings, f"{answer_tokens} generated tokens, 1 [SEG]")


# ---------------------------------------------------------------------------------------------- reporting
def machine_description(device: torch.device) -> dict[str, Any]:
    """CPU (or GPU) model, library versions and thread count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown_table(results: list[StageResult]) -> str:
    """The results as a markdown table (wall-clock median and p90, process CPU time median)."""
    rows = [
        "| stage | median ms | p90 ms | CPU ms (median) | n | what one sample is |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        count = len(r.timings.wall_ms)
        rows.append(f"| {r.name} | {r.median_ms:.1f} | {r.p90_ms:.1f} | {r.cpu_median_ms:.1f} | {count} | {r.note} |")
    return "\n".join(rows)


def frame_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"frame size must be positive, got {text!r}")
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="<SAM-2 variant>+<InternVL3 size>, or tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=10, help="timed samples per stage")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per stage before timing")
    parser.add_argument("--decode-tokens", type=int, default=16, help="tokens per decode sample")
    parser.add_argument("--cond-frames", type=int, default=1, help="language-prompted frames before propagation")
    parser.add_argument("--max-tiles", type=int, default=1, help="InternVL dynamic tiles (1: 256 image tokens)")
    parser.add_argument("--frame-size", type=frame_size, default=(640, 480), help="camera frame WxH")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)} (default: all)"
    )
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    args.stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown or not args.stages:
        parser.error(f"--stages: unknown {unknown}; choose from {','.join(STAGES)}")
    if args.repeats < 1 or args.decode_tokens < 1 or args.cond_frames < 1 or args.warmup < 0:
        parser.error("--repeats, --decode-tokens and --cond-frames must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    width, height = args.frame_size
    machine = machine_description(device)
    print(f"machine: {json.dumps(machine)}", flush=True)

    start = time.perf_counter()
    model = build_model(args.preset, args.max_tiles, device, dtype)
    build_s = time.perf_counter() - start
    params = parameter_counts(model)
    print(f"preset {args.preset}: built in {build_s:.1f} s, dtype {dtype}, parameters {params}", flush=True)

    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)  # [H, W, 3] RGB
    results = Benchmark(model, frame, args).run(args.stages)
    print(
        f"\npreset {args.preset}, {device}, {dtype}, {machine['torch_threads']} threads, frame {width}x{height}, "
        f"warmup {args.warmup}, repeats {args.repeats}\n"
    )
    print(markdown_table(results))
    if args.json_path:
        report = {
            "preset": args.preset,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "machine": machine,
            "dtype": str(dtype),
            "build_s": build_s,
            "parameters": params,
            "args": vars(args),
            "stages": [asdict(r) for r in results],
        }
        with open(args.json_path, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
