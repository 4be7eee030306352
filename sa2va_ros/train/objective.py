"""The Sa2VA training objective: next-token CE + BCE + Dice on the best mask candidate (+ object score, IoU head)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sa2va_ros.model import Sa2VA
from sa2va_ros.model.preprocess import to_pil

from .config import TrainConfig
from .data import TrainSample


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-mask soft Dice loss, ``[N, h, w]`` logits vs ``[N, h, w]`` targets in [0, 1] -> ``[N]``."""
    prob = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    return 1 - (2 * (prob * target).sum(-1) + eps) / (prob.sum(-1) + target.sum(-1) + eps)


def best_candidate_losses(
    multi: torch.Tensor, target: torch.Tensor, bce_weight: float, dice_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE and Dice ``[N]`` of the candidate with the lowest weighted loss among ``[N, M, h, w]`` logits against
    ``[N, h, w]`` targets: as SAM trains multimask outputs, only the best candidate learns, and the IoU head learns
    to pick it (choosing by the IoU head instead supervises a random candidate while that head is untrained)."""
    expanded = target[:, None].expand_as(multi)
    bce = F.binary_cross_entropy_with_logits(multi, expanded, reduction="none").flatten(2).mean(-1)  # [N, M]
    dice = dice_loss(multi.flatten(0, 1), expanded.flatten(0, 1)).view_as(bce)  # [N, M]
    best = (bce_weight * bce + dice_weight * dice).argmin(dim=1, keepdim=True)  # [N, 1]
    return bce.gather(1, best)[:, 0], dice.gather(1, best)[:, 0]


def soft_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of thresholded ``[N, M, h, w]`` logits with ``[N, h, w]`` targets -> ``[N, M]`` (the IoU head target)."""
    pred = (logits > 0).float().flatten(2)
    gt = (target > 0.5).float().flatten(1)[:, None]
    inter = (pred * gt).sum(-1)
    union = pred.sum(-1) + gt.sum(-1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class Sa2VAObjective(nn.Module):
    """Wraps a Sa2VA model so one ``forward(sample)`` returns its losses (what DDP/accelerate wrap)."""

    def __init__(self, model: Sa2VA, config: TrainConfig) -> None:
        super().__init__()
        if model.family != "internvl":
            raise NotImplementedError("the training recipe supports InternVL-based Sa2VA models")
        self.model = model
        self.config = config
        stop = model.template.stop_words[0] if model.template.stop_words else model.tokenizer.eos_token
        self.answer_suffix = stop

    def forward(self, sample: TrainSample, language: bool = True) -> dict[str, torch.Tensor]:
        """The losses of one sample; ``language=False`` is the SAM-2 warm-up (point prompts only, no LLM)."""
        model, cfg = self.model, self.config
        if not language:
            points = self._point_prompt_losses(sample)
            zero = points.new_zeros(())
            return {"ce": zero, "bce": zero, "dice": zero, "object_score": zero, "iou": zero, "align": zero,
                    "points": points, "total": points}
        images = [to_pil(frame) for frame in sample.frames]
        if len(images) == 1:
            prompt = model._internvl_prompt_embeds(sample.prompt, images[0], None)
        else:
            prompt = model._internvl_prompt_embeds(sample.prompt, None, images[: model.config.max_llm_frames])
        answer_ids = model.tokenizer.encode(sample.answer + self.answer_suffix, add_special_tokens=False)
        answer = torch.tensor(answer_ids, device=prompt.device)  # [A]
        embeds = torch.cat([prompt, model.mllm.get_input_embeddings()(answer)[None]], dim=1)  # [1, L + A, D]
        hidden = model.mllm.model.language_model(inputs_embeds=embeds).last_hidden_state[0]  # [L + A, D]
        start = prompt.size(1)
        logits = model.mllm.lm_head(hidden[start - 1 : start - 1 + answer.numel()])  # predicts each answer token
        losses = {"ce": F.cross_entropy(logits.float(), answer)}
        seg_hidden = hidden[start:][answer == model.seg_token_id]  # [SEG] fed as input -> [N, D]
        if seg_hidden.size(0) != len(sample.masks):
            raise ValueError(f"answer has {seg_hidden.size(0)} [SEG] but the sample has {len(sample.masks)} masks")
        zero = hidden.new_zeros(())
        losses.update(bce=zero, dice=zero, object_score=zero, iou=zero, align=zero)
        if seg_hidden.size(0):
            losses.update(self._mask_losses(sample, model.text_hidden_fcs(seg_hidden)))
        losses["points"] = self._point_prompt_losses(sample) if cfg.point_prompts else zero
        losses["total"] = (
            cfg.ce_weight * losses["ce"]
            + cfg.bce_weight * losses["bce"]
            + cfg.dice_weight * losses["dice"]
            + cfg.object_score_weight * (losses["object_score"] + losses["iou"])
            + cfg.point_prompt_weight * losses["points"]
            + cfg.align_weight * losses["align"]
        )
        return losses

    def _point_prompt_losses(self, sample: TrainSample) -> torch.Tensor:
        """SAM-2 prompted by one random point inside each of up to ``point_prompts`` visible objects of frame 0:
        mask loss on the best of the multimask candidates (as SAM trains), IoU head and object score."""
        sam, cfg = self.model.grounding_encoder, self.config
        device = next(sam.parameters()).device
        ids = np.unique(sample.labels)
        ids = ids[ids > 0]
        if ids.size == 0:
            return torch.zeros((), device=device)
        chosen = ids[torch.randperm(ids.size)[: cfg.point_prompts].numpy()]
        height, width = sample.labels.shape
        coords = []
        for object_id in chosen:
            ys, xs = np.nonzero(sample.labels == object_id)
            j = int(torch.randint(ys.size, ()))
            coords.append([(xs[j] + 0.5) / width * sam.image_size, (ys[j] + 0.5) / height * sam.image_size])
        points = {
            "point_coords": torch.tensor(coords, dtype=torch.float32, device=device)[:, None],  # [K, 1, 2]
            "point_labels": torch.ones(len(chosen), 1, dtype=torch.int32, device=device),  # [K, 1]
        }
        feats, pos, sizes = sam.encode_frame(sam.preprocess(sample.frames[:1]).to(device))
        out = sam.decode_point_prompts(feats, pos, sizes, points)
        multi = out["multimask_logits"].float()  # [K, M, h, w]
        target = torch.from_numpy(np.stack([sample.labels == i for i in chosen])).float()[:, None].to(device)
        target = F.interpolate(target, size=multi.shape[-2:], mode="area")[:, 0]  # [K, h, w]
        bce, dice = best_candidate_losses(multi, target, cfg.bce_weight, cfg.dice_weight)  # [K] each
        mask_loss = (cfg.bce_weight * bce + cfg.dice_weight * dice).mean()
        iou = F.mse_loss(out["iou_predictions"].float(), soft_iou(multi.detach(), target))
        score = F.binary_cross_entropy_with_logits(
            out["object_score_logits"].float()[:, 0], torch.ones(len(chosen), device=device)
        )
        return mask_loss + cfg.object_score_weight * (iou + score)

    def _mask_losses(self, sample: TrainSample, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frame by frame: language-conditioned frames (official), or frame 0 conditioned + memory after it."""
        sam = self.model.grounding_encoder
        pixels = sam.preprocess(sample.frames).to(embeddings.device)  # [T, 3, S, S]
        num_cond = 1 if self.config.train_memory else len(sample.frames)
        bce, dice, score, iou, align = [], [], [], [], []
        for t, out in enumerate(sam.language_video_inference(pixels, embeddings, num_cond)):
            size = out["pred_masks"].shape[-2:]
            full = torch.stack([torch.from_numpy(masks[t]).float() for masks in sample.masks])[:, None]
            target = F.interpolate(full.to(embeddings.device), size=size, mode="area")[:, 0]  # [N, h, w]
            if t < num_cond and self.config.align_weight:
                align.append(self._alignment_loss(out["pix_feat"], embeddings, full.to(embeddings.device)))
            frame_bce, frame_dice = best_candidate_losses(  # M = 3 on conditioning frames, 1 when tracked
                out["multimask_logits"].float(), target, self.config.bce_weight, self.config.dice_weight
            )
            bce.append(frame_bce)
            dice.append(frame_dice)
            present = (target.flatten(1).amax(-1) > 0.5).float()
            score.append(F.binary_cross_entropy_with_logits(out["object_score_logits"].float()[:, 0], present))
            actual = soft_iou(out["multimask_logits"].detach().float(), target)
            iou.append(F.mse_loss(out["iou_predictions"].float(), actual))
        return {
            "bce": torch.cat(bce).mean(),
            "dice": torch.cat(dice).mean(),
            "object_score": torch.stack(score).mean(),
            "iou": torch.stack(iou).mean(),
            "align": torch.stack(align).mean() if align else embeddings.new_zeros(()),
        }

    def _alignment_loss(self, pix_feat: torch.Tensor, embeddings: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Cross-entropy between each target's share of the image-embedding grid and a softmax over locations of
        ``temperature x cos([SEG] vector, embedding + positional encoding)``; targets absent on the frame skip it.
        ``pix_feat`` ``[N, C, h, w]``, ``embeddings`` ``[N, C]``, ``masks`` ``[N, 1, H, W]``."""
        sam = self.model.grounding_encoder
        keys = pix_feat + sam.sam_prompt_encoder.get_dense_pe()  # [N, C, h, w], as the decoder's keys
        cos = torch.einsum("nc,nchw->nhw", F.normalize(embeddings, dim=-1), F.normalize(keys, dim=1))
        target = F.interpolate(masks, size=cos.shape[-2:], mode="area")[:, 0].flatten(1)  # [N, hw]
        present = target.sum(-1) > 0
        if not present.any():
            return cos.new_zeros(())
        log_p = F.log_softmax(self.config.align_temperature * cos.flatten(1).float(), dim=-1)
        share = target[present] / target[present].sum(-1, keepdim=True)
        return -(share * log_p[present]).sum(-1).mean()
