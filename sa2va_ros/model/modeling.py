"""Sa2VA on native transformers MLLMs + Meta's SAM-2: the official inference semantics, ROS-free."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import init_empty_weights
from PIL import Image
from torch import nn
from transformers import AutoModelForImageTextToText, DynamicCache, PreTrainedTokenizerBase

from .checkpoint import CheckpointError, read_state_dict, write_state_dict
from .config import Sa2VAConfig
from .preprocess import dynamic_tiles, pixel_shuffle, tiles_to_tensor, to_pil
from .sam2_grounding import Sa2VASam2, build_sam2, upsample_logits
from .templates import get_template
from .tokenizer import check_special_tokens, load_tokenizer

DEFAULT_MAX_NEW_TOKENS = 2048
_PHRASE = re.compile(r"<p>(.*?)</p>", re.S)


@dataclass
class GroundingResult:
    """What one grounding call produced: the answer and, per ``[SEG]``, its prompt vector and masks."""

    text: str  # the answer, [SEG] kept, stop words removed
    seg_embeddings: torch.Tensor  # [N, 256] projected [SEG] hidden states
    masks: np.ndarray  # bool [N, T, H, W] over the given frames
    scores: np.ndarray  # [N] SAM-2 object-score logits on the last given frame (> 0: object present)
    phrases: list[str | None] = field(default_factory=list)  # the <p>phrase</p> tied to each [SEG], if any


@dataclass
class _Generation:
    token_ids: list[int]  # generated tokens, stop word / eos included (as the official output)
    seg_hidden: torch.Tensor  # [N, D] last-layer hidden states where [SEG] is the input token


class Sa2VA(nn.Module):
    """Sa2VA: an MLLM whose ``[SEG]`` hidden states prompt SAM-2's mask decoder through ``text_hidden_fcs``."""

    def __init__(
        self, config: Sa2VAConfig, tokenizer: PreTrainedTokenizerBase, processor: Any = None
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.tokenizer = tokenizer
        self.processor = processor
        self.family = config.family
        self.mllm = AutoModelForImageTextToText.from_config(config.build_mllm_config())
        self.grounding_encoder: Sa2VASam2 = build_sam2(config.sam2_config)
        hidden = self._text_config().hidden_size
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, self.grounding_encoder.hidden_dim),
            nn.Dropout(0.0),
        )
        self.template = get_template(config.template)
        tokens = config.special_tokens
        required = [tokens["seg"]] + ([tokens["img_context"]] if self.family == "internvl" else [])
        check_special_tokens(tokenizer, required=required)
        self.seg_token_id = tokenizer.convert_tokens_to_ids(tokens["seg"])
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(tokens["img_context"])
        self.eval()

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Sa2VA:
        """Load the project's checkpoint directory or an official ByteDance one (detected from ``config.json``).

        With no path, the bundled tiny demo model. ``dtype`` defaults to fp32 on CPU and bf16 on CUDA.
        """
        path = Path(path) if path is not None else default_model_path()
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{path}: not a checkpoint directory (no config.json)")
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config_file}: invalid JSON ({exc})") from exc
        processor = None
        if model_type == Sa2VAConfig.model_type:
            config = Sa2VAConfig.from_pretrained(str(path))
            tokenizer = load_tokenizer(path)
            state = read_state_dict(path)
            if config.family != "internvl":
                processor = load_processor(path, tokenizer)
        elif model_type == "sa2va_chat":
            from .convert import load_official

            config, state, tokenizer = load_official(path)
            if config.family != "internvl":
                processor = load_processor(path, tokenizer)
        else:
            raise CheckpointError(
                f"{config_file}: model_type {model_type!r} is neither 'sa2va_ros' nor 'sa2va_chat'"
            )
        with init_empty_weights(include_buffers=False):  # parameters allocated by the checkpoint, not twice
            model = cls(config, tokenizer, processor)
        model.load_weights(state, source=path)
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return model.to(device=device, dtype=dtype)

    def load_weights(self, state: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> None:
        """Load a full state dict; every missing or unexpected key is listed in one clear error."""
        expected = self.state_dict()
        tied = self._tied_keys()
        missing = sorted(k for k in expected.keys() - state.keys() if k not in tied)
        unexpected = sorted(state.keys() - expected.keys())
        wrong_shape = sorted(
            f"{k}: {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
            for k in expected.keys() & state.keys()
            if state[k].shape != expected[k].shape
        )
        if missing or unexpected or wrong_shape:
            parts = [
                f"{len(items)} {what}: {items[:20]}"
                for what, items in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("wrong shape", wrong_shape),
                )
                if items
            ]
            raise CheckpointError(f"{source}: weights do not match the model: " + "; ".join(parts))
        self.load_state_dict(state, strict=False, assign=True)
        if tied:
            self.mllm.tie_weights()

    def _tied_keys(self) -> set[str]:
        if not getattr(self._text_config(), "tie_word_embeddings", False) and not getattr(
            self.mllm.config, "tie_word_embeddings", False
        ):
            return set()
        return {"mllm.lm_head.weight"}

    def save_pretrained(self, path: str | Path, max_shard_bytes: int | None = None) -> None:
        """Write the project's format: ``config.json``, safetensors weights, tokenizer (and processor) files."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(path))
        state = {k: v for k, v in self.state_dict().items() if k not in self._tied_keys()}
        write_state_dict(state, path, max_shard_bytes)
        self.tokenizer.save_pretrained(str(path))
        if self.processor is not None:
            self.processor.save_pretrained(str(path))

    # ------------------------------------------------------------------ public inference API
    @torch.inference_mode()
    def ground(self, frames: Sequence[np.ndarray], text: str, max_new_tokens: int = 64) -> GroundingResult:
        """Ground ``text`` on one image or a few recent frames (keyframes).

        One frame: the official image path (dynamic tiling). Several: up to ``max_llm_frames`` of them
        (uniformly sampled, the last always included) go to the LLM as single tiles; every given frame is a
        conditioning frame of SAM-2 prompted by each ``[SEG]``. ``text`` is the user turn; ``<image>`` is
        prepended when absent.
        """
        if not frames:
            raise ValueError("ground() needs at least one frame")
        images = [to_pil(frame) for frame in frames]
        prompt = text if "<image>" in text else "<image>\n" + text
        if len(images) == 1:
            generation = self._generate(prompt, image=images[0], max_new_tokens=max_new_tokens)
        else:
            llm_frames = [images[i] for i in _keyframe_indices(len(images), self.config.max_llm_frames)]
            generation = self._generate(prompt, video=llm_frames, max_new_tokens=max_new_tokens)
        embeddings = self.text_hidden_fcs(generation.seg_hidden)  # [N, 256]
        height, width = images[0].height, images[0].width
        num = embeddings.size(0)
        masks = np.zeros((num, len(images), height, width), dtype=bool)
        scores = np.zeros((num,), dtype=np.float32)
        if num:
            sam = self.grounding_encoder
            pixels = sam.preprocess([np.asarray(img) for img in images]).to(self.device, self._sam_dtype())
            for t in range(len(images)):
                with self._sam_autocast():
                    feats, pos, sizes = sam.encode_frame(pixels[t : t + 1])
                    out = sam.decode_conditioning_frame(feats, pos, sizes, embeddings[:, None, :])
                logits = upsample_logits(out["pred_masks"].float(), sam.image_size, height, width)
                masks[:, t] = (logits[:, 0] > 0).cpu().numpy()
                if t == len(images) - 1:
                    scores = out["object_score_logits"].float().reshape(num).cpu().numpy()
        answer = self._decode(generation.token_ids, strip_stop=True)
        return GroundingResult(answer, embeddings.float(), masks, scores, seg_phrases(answer)[:num])

    @torch.inference_mode()
    def predict_forward(
        self,
        image: Image.Image | np.ndarray | None = None,
        video: Sequence[Image.Image | np.ndarray] | None = None,
        text: str = "",
        past_text: str = "",
        mask_prompts: Any = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> dict[str, Any]:
        """The official offline inference: ``{"prediction": str, "prediction_masks": [bool (T, H, W) per [SEG]]}``.

        Video: the first ``max_llm_frames`` frames go to the LLM; every frame goes through SAM-2, the first
        K = min(5, T) as language-prompted conditioning frames and the rest propagated with memory.
        """
        if image is None and video is None and "<image>" not in past_text:
            generation = self._generate(
                text.replace("<image>", ""), past_text=past_text, max_new_tokens=max_new_tokens
            )
            return {"prediction": self._decode(generation.token_ids), "prediction_masks": []}
        if video is not None:
            frames = [to_pil(frame) for frame in video]
            llm_frames = frames[: self.config.max_llm_frames]
            generation = self._generate(
                text, video=llm_frames, past_text=past_text, max_new_tokens=max_new_tokens
            )
            num_cond = len(llm_frames)
        else:
            frames = [to_pil(image)]
            generation = self._generate(
                text,
                image=frames[0],
                past_text=past_text,
                mask_prompts=mask_prompts,
                max_new_tokens=max_new_tokens,
            )
            num_cond = 1
        prediction = self._decode(generation.token_ids)
        masks = []
        if generation.seg_hidden.size(0):
            embeddings = self.text_hidden_fcs(generation.seg_hidden)  # [N, 256]
            masks = self._video_masks(frames, embeddings, num_cond)
        return {"prediction": prediction, "prediction_masks": masks}

    # ------------------------------------------------------------------ SAM-2 side
    def _video_masks(
        self, frames: list[Image.Image], embeddings: torch.Tensor, num_cond: int
    ) -> list[np.ndarray]:
        """Per [SEG]: bool ``(T, H, W)`` masks, conditioning frames then memory propagation (official)."""
        sam = self.grounding_encoder
        width, height = frames[0].size
        pixels = _LazyPixels(sam, frames, self.device, self._sam_dtype())
        out = np.zeros((embeddings.size(0), len(frames), height, width), dtype=bool)
        with self._sam_autocast():
            for t, frame_out in enumerate(sam.language_video_inference(pixels, embeddings, num_cond)):
                logits = upsample_logits(frame_out["pred_masks"].float(), sam.image_size, height, width)
                out[:, t] = (logits[:, 0] > 0).cpu().numpy()
        return list(out)

    def _sam_dtype(self) -> torch.dtype:
        return next(self.grounding_encoder.parameters()).dtype

    def _sam_autocast(self) -> Any:
        enabled = self.device.type == "cuda" and self._sam_dtype() == torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ LLM side
    def _text_config(self) -> Any:
        return self.mllm.config.get_text_config()

    def _generate(
        self,
        text: str,
        image: Image.Image | None = None,
        video: list[Image.Image] | None = None,
        past_text: str = "",
        mask_prompts: Any = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> _Generation:
        if self.family == "internvl":
            embeds = self._internvl_prompt_embeds(text, image, video, past_text, mask_prompts)
            return self._greedy_decode(embeds, max_new_tokens)
        if mask_prompts is not None:
            raise NotImplementedError("visual prompts (mask_prompts) exist only for InternVL-based Sa2VA")
        return self._generate_qwen(text, image, video, past_text, max_new_tokens)

    def _internvl_prompt_embeds(
        self,
        text: str,
        image: Image.Image | None,
        video: list[Image.Image] | None,
        past_text: str = "",
        mask_prompts: Any = None,
    ) -> torch.Tensor:
        """The prompt as LLM input embeddings ``[1, L, D]``: tokens, with image (and region) features in the
        ``<IMG_CONTEXT>`` slots."""
        cfg, tokens = self.config, self.config.special_tokens
        tile = cfg.force_image_size
        tiles: list[Image.Image] = []
        if video is not None:
            tiles = list(video)  # one tile per frame, no tiling, no thumbnail
        elif image is not None:
            tiles = dynamic_tiles(
                image, cfg.min_dynamic_patch, cfg.max_dynamic_patch, tile, cfg.use_thumbnail
            )
        visual = None
        if tiles:
            visual = self._internvl_tile_features(tiles_to_tensor(tiles, tile))  # [n, tokens, D]
            per_tile = visual.size(1)

            def block(count: int) -> str:
                return tokens["img_start"] + tokens["img_context"] * count + tokens["img_end"]

            if video is not None:  # one <img> block per frame, joined by newlines
                image_str = "\n".join(block(per_tile) for _ in tiles)
            else:  # all tiles of the image in one block
                image_str = block(per_tile * len(tiles))
            vp_str = ""
            region_embeds = None
            if mask_prompts is not None:
                region_masks = _region_cells(mask_prompts, round(per_tile**0.5))  # [R, g, g] bool
                region_embeds = torch.cat([visual[-1][m.flatten()] for m in region_masks])
                vp_str = (
                    f"\nThere are {len(region_masks)} part regions in the picture: "
                    + ", ".join(
                        f"region{i + 1}{tokens['vp_start']}{tokens['img_context'] * int(m.sum())}{tokens['vp_end']}"
                        for i, m in enumerate(region_masks)
                    )
                    + ".\n"
                )
            text = text.replace("<image>", image_str + vp_str)
            visual = visual.reshape(-1, visual.size(-1))
            if region_embeds is not None:
                visual = torch.cat([visual, region_embeds])
        prompt = past_text + self.template.user_turn(text)
        input_ids = torch.tensor([self.tokenizer.encode(prompt)], device=self.device)
        embeds = self.mllm.get_input_embeddings()(input_ids)  # [1, L, D]
        if visual is not None:
            slots = input_ids[0] == self.img_context_token_id
            if int(slots.sum()) != visual.size(0):
                raise ValueError(
                    f"prompt has {int(slots.sum())} <IMG_CONTEXT> slots for {visual.size(0)} features"
                )
            embeds[0, slots] = visual.to(embeds.dtype)
        return embeds

    def _internvl_tile_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[n, 3, s, s]`` tiles -> ``[n, (s/14 * 0.5)², D]`` LLM embeddings (ViT, drop CLS, pixel shuffle, mlp1)."""
        model = self.mllm.model
        layer = self.mllm.config.vision_feature_layer
        pixel_values = pixel_values.to(self.device, model.vision_tower.dtype)
        outputs = model.vision_tower(
            pixel_values=pixel_values, output_hidden_states=layer != -1, return_dict=True
        )
        vit = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
        vit = vit[:, 1:, :]  # drop CLS: [n, g*g, C]
        grid = int(vit.size(1) ** 0.5)
        vit = vit.reshape(vit.size(0), grid, grid, -1)
        shuffled = pixel_shuffle(vit, self.mllm.config.downsample_ratio, self.config.ps_version)
        shuffled = shuffled.reshape(shuffled.size(0), -1, shuffled.size(-1))  # [n, tokens, 4C]
        return model.multi_modal_projector(shuffled)

    def _greedy_decode(self, embeds: torch.Tensor, max_new_tokens: int) -> _Generation:
        """Greedy decoding from prompt embeddings, keeping the last-layer (post-norm) hidden state of each
        generated token when it is fed back as input — where Sa2VA reads ``[SEG]``."""
        lm = self.mllm.model.language_model
        lm_head = self.mllm.lm_head
        cache = DynamicCache(config=self.mllm.config.get_text_config())
        hidden = lm(inputs_embeds=embeds, cache=cache, use_cache=True).last_hidden_state
        next_id = int(lm_head(hidden[:, -1]).argmax(-1))
        generated: list[int] = []
        seg_hidden: list[torch.Tensor] = []
        stop_ids = self._stop_token_ids()
        while True:
            generated.append(next_id)
            if (
                next_id in stop_ids
                or len(generated) >= max_new_tokens
                or self._ends_with_stop_word(generated)
            ):
                break
            step = torch.tensor([[next_id]], device=embeds.device)
            hidden = lm(input_ids=step, cache=cache, use_cache=True).last_hidden_state  # [1, 1, D]
            if next_id == self.seg_token_id:
                seg_hidden.append(hidden[0, -1])
            next_id = int(lm_head(hidden[:, -1]).argmax(-1))
        width = embeds.size(-1)
        seg = torch.stack(seg_hidden) if seg_hidden else embeds.new_zeros((0, width))
        return _Generation(generated, seg)

    def _generate_qwen(
        self,
        text: str,
        image: Image.Image | None,
        video: list[Image.Image] | None,
        past_text: str,
        max_new_tokens: int,
    ) -> _Generation:
        """Qwen-VL path: the checkpoint's processor and chat template, ``generate`` on token ids (official)."""
        from .preprocess import qwen_fetch_image

        text = text.replace("<image>", "")
        images = [] if image is None else [image]
        if video is not None:
            images = list(video)
        content = [{"type": "image"} for _ in images] + [
            {"type": "text", "text": (past_text + text) if not images else text}
        ]
        prompt = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        fetched = [qwen_fetch_image(img) for img in images] or None
        inputs = self.processor(
            text=[prompt],
            images=fetched,
            return_tensors="pt",
            padding=True,
            size={"shortest_edge": self.config.qwen_min_pixels, "longest_edge": self.config.qwen_max_pixels},
        ).to(self.device)
        out = self.mllm.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
        sequence = out.sequences[0]
        prompt_len = inputs["input_ids"].size(1)
        hidden = torch.cat([step[-1][0] for step in out.hidden_states], dim=0)  # [L + n_gen - 1, D]
        inputs_seen = sequence[:-1]  # the official reads [SEG] over the whole fed sequence
        seg_mask = inputs_seen == self.seg_token_id
        seg_hidden = hidden[-len(inputs_seen) :][seg_mask] if len(inputs_seen) else hidden[:0]
        return _Generation(sequence[prompt_len:].tolist(), seg_hidden)

    def _stop_token_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[w] for w in self.template.stop_words if w in vocab)
        return ids

    def _ends_with_stop_word(self, generated: list[int]) -> bool:
        if not self.template.stop_words:
            return False
        text = self.tokenizer.decode(generated, skip_special_tokens=False).replace("\r", "").replace("\n", "")
        return any(text.endswith(word) for word in self.template.stop_words)

    def _decode(self, token_ids: list[int], strip_stop: bool = False) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False).strip()
        if strip_stop:
            for word in (*self.template.stop_words, self.tokenizer.eos_token or ""):
                if word and text.endswith(word):
                    text = text[: -len(word)].rstrip()
        return text


class _LazyPixels(Sequence):
    """Frames preprocessed for SAM-2 one at a time, so a long video never sits in memory at 1024²."""

    def __init__(
        self, sam: Sa2VASam2, frames: list[Image.Image], device: torch.device, dtype: torch.dtype
    ) -> None:
        self.sam, self.frames, self.device, self.dtype = sam, frames, device, dtype

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        array = np.asarray(self.frames[index])
        return self.sam.preprocess([array])[0].to(self.device, self.dtype)


def seg_phrases(answer: str) -> list[str | None]:
    """For each ``[SEG]`` in an answer, the ``<p>phrase</p>`` just before it (grounded captions), else None."""
    phrases: list[str | None] = []
    last: str | None = None
    cursor = 0
    for match in re.finditer(r"\[SEG\]", answer):
        found = _PHRASE.findall(answer[cursor : match.start()])
        last = found[-1].strip() if found else None
        phrases.append(last)
        cursor = match.end()
    return phrases


def _keyframe_indices(count: int, limit: int) -> list[int]:
    """Up to ``limit`` indices spread uniformly over ``count`` frames, the last frame always included."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)}) if limit > 1 else [count - 1]


def _region_cells(mask_prompts: Any, grid: int) -> list[torch.Tensor]:
    """Region masks (``[R, H, W]`` or a list of H×W, or the official list-of-arrays) -> nearest ``grid²`` cells."""
    if isinstance(mask_prompts, (list, tuple)) and mask_prompts and np.asarray(mask_prompts[0]).ndim == 3:
        mask_prompts = mask_prompts[0]  # the official form: one [R, H, W] array per image
    masks = torch.as_tensor(np.asarray(mask_prompts, dtype=np.float32))
    if masks.ndim != 3 or masks.size(0) == 0:
        raise ValueError(f"mask_prompts must be R region masks of H×W, got shape {tuple(masks.shape)}")
    cells = torch.nn.functional.interpolate(masks[None], size=(grid, grid), mode="nearest")[0]
    return [cell.bool() for cell in cells]


def load_processor(path: Path, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The Qwen-VL processor (image processor + chat template) saved beside a checkpoint."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(path), tokenizer=tokenizer, trust_remote_code=False)


BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "sa2va_tiny"


def bundled_model_available() -> bool:
    return (BUNDLED_MODEL_DIR / "config.json").is_file()


def default_model_path() -> Path:
    """The bundled tiny demo checkpoint (package data)."""
    path = BUNDLED_MODEL_DIR
    if not bundled_model_available():
        raise CheckpointError(f"{path}: the bundled demo model is missing; pass a checkpoint path")
    return path
