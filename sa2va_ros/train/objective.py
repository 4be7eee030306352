"""The Sa2VA training objective: next-token CE + BCE + Dice on the best mask candidate (+ object score, IoU head)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sa2va_ros.model import Sa2VA
from sa2va_ros.model.preprocess import dynamic_tiles, tile_grid, tiles_to_tensor, to_pil
from sa2va_ros.synthetic.language import Description, absent_answer, join_phrases, segmentation_answer
from sa2va_ros.synthetic.vocabulary import CLASSES, COLOURS

from .config import TrainConfig
from .data import TrainSample

MIN_OBJECT_PIXELS = 64  # identifiable objects exclude slivers (an object almost hidden by another)


def prototype_indices(names: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> tuple[np.ndarray, np.ndarray]:
    """(colour, class) pairs -> their colour and class prototype indices (0 is the background prototype)."""
    colours = list(COLOURS)
    return (np.array([1 + colours.index(colour) for colour, _ in names], dtype=np.int64),
            np.array([1 + CLASSES.index(cls) for _, cls in names], dtype=np.int64))


def label_shares(sample: TrainSample, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame 0's share of each colour and of each class (prototype order, index 0 the table) per cell of a
    ``size`` grid over the image: ``[1 + colours, h, w]`` and ``[1 + classes, h, w]``."""
    labels = torch.from_numpy(sample.labels.astype(np.int64))
    shares = []
    for ids, count in zip(prototype_indices(sample.names), (1 + len(COLOURS), 1 + len(CLASSES)), strict=True):
        lookup = torch.from_numpy(np.concatenate([[0], ids]))  # label -> prototype; label 0 (the table) -> 0
        onehot = F.one_hot(lookup[labels], count).permute(2, 0, 1)[None].float()  # [1, P, H, W]
        shares.append(F.interpolate(onehot, size=size, mode="area")[0])
    return shares[0], shares[1]


def soft_cross_entropy(logits: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the cross-entropy of ``[N, P]`` logits against ``[N, P]`` target distributions."""
    return -(shares * F.log_softmax(logits, dim=-1)).sum(-1).mean()


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


def identifiable_objects(sample: TrainSample) -> list[int]:
    """Labels of frame 0's objects that show at least ``MIN_OBJECT_PIXELS`` and whose colour + class no other object
    of the scene shares (so "the red ball" names exactly one)."""
    counts = Counter(sample.names)
    visible, pixels = np.unique(sample.labels, return_counts=True)
    return [int(i) for i, n in zip(visible, pixels, strict=True)
            if 0 < i <= len(sample.names) and n >= MIN_OBJECT_PIXELS and counts[sample.names[i - 1]] == 1]


def present_subject(sample: TrainSample) -> Description | None:
    """An object of frame 0 that one phrase names (torch's RNG, as ``absent_subject``): in the same proportions as
    there, 75 % by colour + class, else by class alone when no other object has its class ("the ball"), so that
    neither form of the phrase gives the answer away. None when no object is identifiable."""
    objects = [sample.names[i - 1] for i in identifiable_objects(sample)]
    if not objects:
        return None
    classes = Counter(cls for _, cls in sample.names)
    alone = [cls for _, cls in objects if classes[cls] == 1]
    if alone and torch.rand(()) >= 0.75:
        return Description(alone[int(torch.randint(len(alone), ()))])
    colour, cls = objects[int(torch.randint(len(objects), ()))]
    return Description(cls, colour)


def absent_subject(names: tuple[tuple[str, str], ...]) -> Description:
    """Something the scene lacks (drawn with torch's RNG, so a resumed run repeats it): 75 % a class of the scene
    in a colour none of its objects of that class has (the hard case), else a class with no object at all."""
    classes = {cls for _, cls in names}
    recoloured = [(colour, cls) for cls in sorted(classes) for colour in COLOURS if (colour, cls) not in names]
    missing = [cls for cls in CLASSES if cls not in classes]
    if recoloured and (not missing or torch.rand(()) < 0.75):
        colour, cls = recoloured[int(torch.randint(len(recoloured), ()))]
        return Description(cls, colour)
    return Description(missing[int(torch.randint(len(missing), ()))])


class SemanticPrototypes(nn.Module):
    """Training-only from-scratch aid, never saved with the model: one prototype per colour and per class (index 0:
    background) shared by SAM-2's image embedding (per location) and the projected ``[SEG]`` vectors, read out as
    ``temperature x cosine``. It gives SAM-2's features colour and class, and ``[SEG]`` the phrase, so the two can
    meet; without it both start from a constant ``[SEG]`` that only ever asks for "an object"."""

    def __init__(self, channels: int, temperature: float) -> None:
        super().__init__()
        self.colour = nn.Parameter(torch.randn(len(COLOURS) + 1, channels) / channels**0.5)
        self.cls = nn.Parameter(torch.randn(len(CLASSES) + 1, channels) / channels**0.5)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[..., C]`` -> colour logits ``[..., 1 + colours]``, class logits ``[..., 1 + classes]``."""
        x = F.normalize(x.float(), dim=-1)
        return (self.temperature * x @ F.normalize(self.colour, dim=-1).T,
                self.temperature * x @ F.normalize(self.cls, dim=-1).T)


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
        aids = {}  # training-only heads: saved with the optimizer state, never with the model
        if config.semantic_weight:
            aids["semantic"] = SemanticPrototypes(model.text_hidden_fcs[-2].out_features, config.align_temperature)
        if config.image_token_semantic_weight:
            hidden = model.mllm.config.get_text_config().hidden_size
            aids["image_tokens"] = SemanticPrototypes(hidden, config.align_temperature)
        self.aids = nn.ModuleDict(aids)

    def forward(self, sample: TrainSample, language: bool = True) -> dict[str, torch.Tensor]:
        """The losses of one sample; ``language=False`` is the SAM-2 warm-up (point prompts only, no LLM)."""
        model, cfg = self.model, self.config
        sam = model.grounding_encoder
        zero = torch.zeros((), device=next(sam.parameters()).device)
        frame0 = None  # frame 0 encoded once for the point- and object-prompt aids and the semantic map
        if cfg.point_prompts or cfg.semantic_weight or (language and cfg.object_prompts):
            frame0 = sam.encode_frame(sam.preprocess(sample.frames[:1]).to(zero.device))
        points = self._point_prompt_losses(sample, frame0) if cfg.point_prompts else zero
        losses = dict.fromkeys(("ce", "bce", "dice", "object_score", "iou", "align", "objects", "presence"), zero)
        losses["points"] = points
        losses["semantic"] = self._semantic_map_loss(sample, frame0) if cfg.semantic_weight else zero
        losses["image_tokens"] = self._image_token_loss(sample) if cfg.image_token_semantic_weight else zero
        aids = cfg.semantic_weight * losses["semantic"] + cfg.image_token_semantic_weight * losses["image_tokens"]
        if not language:
            losses["total"] = points + aids if cfg.semantic_weight or cfg.image_token_semantic_weight else points
            return losses
        losses["ce"], seg_hidden = self._answer_pass(sample.prompt, sample.frames, sample.answer)
        if seg_hidden.size(0) != len(sample.masks):
            raise ValueError(f"answer has {seg_hidden.size(0)} [SEG] but the sample has {len(sample.masks)} masks")
        if seg_hidden.size(0):
            losses.update(self._mask_losses(sample, model.text_hidden_fcs(seg_hidden), frame0))
        if cfg.object_prompts:
            losses["objects"] = self._object_prompt_losses(sample, frame0)
        if cfg.presence_prompts:
            losses["presence"] = self._presence_prompt_losses(sample)
        losses["total"] = (
            cfg.ce_weight * losses["ce"]
            + cfg.bce_weight * losses["bce"]
            + cfg.dice_weight * losses["dice"]
            + cfg.object_score_weight * (losses["object_score"] + losses["iou"])
            + cfg.point_prompt_weight * points
            + cfg.align_weight * losses["align"]
            + cfg.object_prompt_weight * losses["objects"]
            + cfg.presence_prompt_weight * losses["presence"]
            + aids
        )
        return losses

    def _answer_pass(self, prompt_text: str, frames: list[np.ndarray], answer_text: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced LLM pass: next-token CE of the answer and the hidden states of its ``[SEG]`` tokens
        (fed as input, as the official model reads them) ``[N, D]``."""
        model = self.model
        images = [to_pil(frame) for frame in frames]
        if len(images) == 1:
            prompt = model._internvl_prompt_embeds(prompt_text, images[0], None)
        else:
            prompt = model._internvl_prompt_embeds(prompt_text, None, images[: model.config.max_llm_frames])
        answer_ids = model.tokenizer.encode(answer_text + self.answer_suffix, add_special_tokens=False)
        answer = torch.tensor(answer_ids, device=prompt.device)  # [A]
        embeds = torch.cat([prompt, model.mllm.get_input_embeddings()(answer)[None]], dim=1)  # [1, L + A, D]
        hidden = model.mllm.model.language_model(inputs_embeds=embeds).last_hidden_state[0]  # [L + A, D]
        start = prompt.size(1)
        logits = model.mllm.lm_head(hidden[start - 1 : start - 1 + answer.numel()])  # predicts each answer token
        return F.cross_entropy(logits.float(), answer), hidden[start:][answer == model.seg_token_id]

    def _point_prompt_losses(self, sample: TrainSample, frame0: tuple) -> torch.Tensor:
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
        out = sam.decode_point_prompts(*frame0, points)
        return self._prompted_mask_loss(out, sample.labels, chosen)

    def _object_prompt_losses(self, sample: TrainSample, frame0: tuple) -> torch.Tensor:
        """From-scratch aid: one multi-target phrase naming up to ``object_prompts`` visible objects of frame 0 that
        colour + class identify ("Please segment the red ball and the blue mug"): its CE, and each ``[SEG]``'s
        mask (+ alignment) on the shared frame-0 encoding — every object of the scene becomes a target, and the
        others in the same image its negatives."""
        model, cfg = self.model, self.config
        candidates = identifiable_objects(sample)
        if not candidates:
            return torch.zeros((), device=frame0[0][0].device)
        chosen = [candidates[j] for j in torch.randperm(len(candidates))[: cfg.object_prompts].tolist()]
        phrases = [f"the {colour} {cls}" for colour, cls in (sample.names[i - 1] for i in chosen)]
        prompt = f"<image>\nPlease segment {join_phrases(phrases)} in this image."
        ce, seg_hidden = self._answer_pass(prompt, sample.frames[:1], segmentation_answer(phrases, bare=False))
        embeddings = model.text_hidden_fcs(seg_hidden)  # [K, C]
        out = model.grounding_encoder.decode_conditioning_frame(*frame0, embeddings[:, None])
        loss = ce + self._prompted_mask_loss(out, sample.labels, chosen)
        if "semantic" in self.aids:  # each [SEG] reads out its object's colour and class
            colour_logits, class_logits = self.aids["semantic"](embeddings)  # [K, 1 + colours], [K, 1 + classes]
            colour_ids, class_ids = prototype_indices([sample.names[i - 1] for i in chosen])
            loss = loss + cfg.semantic_weight * (
                F.cross_entropy(colour_logits, torch.from_numpy(colour_ids).to(ce.device))
                + F.cross_entropy(class_logits, torch.from_numpy(class_ids).to(ce.device))
            )
        if cfg.align_weight:
            masks = torch.from_numpy(np.stack([sample.labels == i for i in chosen])).float()[:, None]
            loss = loss + cfg.align_weight * self._alignment_loss(out["pix_feat"], embeddings, masks.to(ce.device))
        return loss

    def _presence_prompt_losses(self, sample: TrainSample) -> torch.Tensor:
        """From-scratch aid: ``presence_prompts`` requests on frame 0, each for an object that is there ("Sure,
        [SEG].") or, as often, for one that is not ("There is no purple mug."): mostly a present class in a colour
        it does not have here, else a class absent from the scene. Balanced, unlike the world's few absent
        phrases, and in both cases a quarter named by class alone, so the answer has to come from the image (with
        only absent ones so named, the model learnt to refuse "the ball"): the next-token CE of each answer."""
        losses = []
        for _ in range(self.config.presence_prompts):
            subject = present_subject(sample) if torch.rand(()) < 0.5 else None
            if subject is not None:
                answer = segmentation_answer([f"the {subject.noun}"], bare=False)
            else:
                subject = absent_subject(sample.names)
                answer = absent_answer(subject)
            prompt = f"<image>\nPlease segment the {subject.noun} in this image."
            losses.append(self._answer_pass(prompt, sample.frames[:1], answer)[0])
        return torch.stack(losses).mean()

    def _semantic_map_loss(self, sample: TrainSample, frame0: tuple) -> torch.Tensor:
        """Soft cross-entropy of SAM-2's frame-0 image embedding, per location, against the share of each colour and
        class (background included) in that cell of the instance label map."""
        feats, _, sizes = frame0
        features = feats[-1][:, 0]  # [h*w, C]
        shares = label_shares(sample, tuple(sizes[-1]))  # [P, h, w] each
        logits = self.aids["semantic"](features)  # [h*w, P] each
        return sum(soft_cross_entropy(lg, sh.to(lg.device).flatten(1).T) for lg, sh in zip(logits, shares, strict=True))

    def _image_token_loss(self, sample: TrainSample) -> torch.Tensor:
        """From-scratch aid: the LLM's image tokens of frame 0 (each tile's and the thumbnail's) read out the share
        of each colour and class in their cell, as SAM-2's features do, so that the vision tower shows the LLM what
        the phrases name (whether "the purple mug" is there at all is the LLM's call)."""
        cfg = self.model.config
        image = to_pil(sample.frames[0])
        tile = cfg.force_image_size
        tiles = dynamic_tiles(image, cfg.min_dynamic_patch, cfg.max_dynamic_patch, tile, cfg.use_thumbnail)
        tokens = self.model._internvl_tile_features(tiles_to_tensor(tiles, tile))  # [n, g*g, D]
        side = round(tokens.size(1) ** 0.5)
        cols, rows = tile_grid(image.width, image.height, cfg.min_dynamic_patch, cfg.max_dynamic_patch, tile)
        losses = []
        grid_shares = label_shares(sample, (rows * side, cols * side))  # [P, rows*g, cols*g] each
        whole_shares = label_shares(sample, (side, side)) if len(tiles) > rows * cols else None  # the thumbnail
        for which, logits in enumerate(self.aids["image_tokens"](tokens)):  # [n, g*g, P]
            share = grid_shares[which].unflatten(1, (rows, side)).unflatten(3, (cols, side))  # [P, r, g, c, g]
            per_tile = share.permute(1, 3, 2, 4, 0).reshape(rows * cols, side * side, -1)  # [r*c, g*g, P]
            if whole_shares is not None:
                per_tile = torch.cat([per_tile, whole_shares[which].flatten(1).T[None]])
            losses.append(soft_cross_entropy(logits.flatten(0, 1), per_tile.to(logits.device).flatten(0, 1)))
        return sum(losses)

    def _prompted_mask_loss(self, out: dict[str, torch.Tensor], labels: np.ndarray, ids) -> torch.Tensor:
        """Best-candidate BCE + Dice, IoU head and object score of prompted frame-0 masks of objects ``ids``."""
        cfg = self.config
        multi = out["multimask_logits"].float()  # [K, M, h, w]
        target = torch.from_numpy(np.stack([labels == i for i in ids])).float()[:, None].to(multi.device)
        target = F.interpolate(target, size=multi.shape[-2:], mode="area")[:, 0]  # [K, h, w]
        bce, dice = best_candidate_losses(multi, target, cfg.bce_weight, cfg.dice_weight)  # [K] each
        mask_loss = (cfg.bce_weight * bce + cfg.dice_weight * dice).mean()
        iou = F.mse_loss(out["iou_predictions"].float(), soft_iou(multi.detach(), target))
        score = F.binary_cross_entropy_with_logits(
            out["object_score_logits"].float()[:, 0], torch.ones(len(ids), device=multi.device)
        )
        return mask_loss + cfg.object_score_weight * (iou + score)

    def _mask_losses(
        self, sample: TrainSample, embeddings: torch.Tensor, frame0: tuple | None
    ) -> dict[str, torch.Tensor]:
        """Frame by frame: language-conditioned frames (official), or frame 0 conditioned + memory after it.
        ``frame0`` (frame 0 already encoded for the aids, or None) is reused, not encoded again."""
        sam = self.model.grounding_encoder
        pixels = sam.preprocess(sample.frames).to(embeddings.device)  # [T, 3, S, S]
        num_cond = 1 if self.config.train_memory else len(sample.frames)
        bce, dice, score, iou, align = [], [], [], [], []
        encoded = {0: frame0} if frame0 else None
        for t, out in enumerate(sam.language_video_inference(pixels, embeddings, num_cond, encoded)):
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
