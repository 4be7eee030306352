"""The training recipe on a tiny configuration: losses, policies, checkpoints and exact resume."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sa2va_ros.model import Sa2VA
from sa2va_ros.model.presets import tiny_model
from sa2va_ros.synthetic.vocabulary import CLASSES, COLOURS, IMAGE_KIND_WEIGHTS
from sa2va_ros.train import LoraSettings, TrainConfig, load_train_config, train
from sa2va_ros.train.data import synthetic_sample
from sa2va_ros.train.loop import build_model
from sa2va_ros.train.objective import Sa2VAObjective, best_candidate_losses, dice_loss, soft_iou
from sa2va_ros.train.policy import apply_policy

TINY = {"hidden": 32, "layers": 1, "tile_size": 28, "sam_image_size": 64, "max_dynamic_patch": 1}


def _config(tmp_path, **fields) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"),
        preset_overrides=TINY,
        image_size=(48, 64),
        video_frames=2,
        steps=3,
        batch_size=2,
        lr=1e-3,
        checkpoint_every=2,
        log_every=1,
        train_memory=True,
    )
    base.update(fields)
    return TrainConfig(**base)


def test_dice_and_iou_hand_cases():
    logits = torch.tensor([[[10.0, 10.0], [-10.0, -10.0]]])  # predicts the top row
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # Dice: 1 - (2·1 + 1) / (2 + 1 + 1) = 0.25 (sigmoid(±10) rounds to 1/0 here)
    torch.testing.assert_close(dice_loss(logits, target), torch.tensor([0.25]), atol=1e-4, rtol=0)
    assert soft_iou(logits[:, None], target).item() == pytest.approx(0.5)
    assert soft_iou(-logits[:, None].abs(), torch.zeros_like(target)).item() == 1.0  # both empty


def test_only_the_best_mask_candidate_is_supervised():
    target = torch.zeros(2, 4, 4)
    target[:, :2] = 1  # the top half
    exact = torch.where(target > 0, 20.0, -20.0)  # [2, 4, 4] logits that match
    wrong = -exact
    multi = torch.stack([torch.stack([wrong[0], exact[0], torch.zeros(4, 4)]),  # best: candidate 1
                         torch.stack([torch.zeros(4, 4), wrong[1], exact[1]])])  # best: candidate 2
    bce, dice = best_candidate_losses(multi, target, bce_weight=2.0, dice_weight=0.5)
    assert bce.shape == dice.shape == (2,)
    assert (bce < 1e-6).all() and (dice < 1e-3).all()
    single_bce, single_dice = best_candidate_losses(wrong[:, None], target, 2.0, 0.5)  # M = 1: that one
    assert (single_bce > 5).all() and (single_dice > 0.9).all()


def test_objective_supervises_answer_tokens_and_every_seg(tmp_path):
    config = _config(tmp_path)
    model = build_model(config)
    objective = Sa2VAObjective(model, config).train()
    sample = synthetic_sample(3, 0, {"video": 1.0}, (48, 64), 2)
    losses = objective(sample)
    assert set(losses) == {"ce", "bce", "dice", "object_score", "iou", "align", "objects", "presence", "points",
                           "semantic", "image_tokens", "total"}
    assert losses["points"].item() == 0.0  # point prompts are off unless configured
    assert losses["align"].item() == 0.0  # so is the alignment loss
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert model.text_hidden_fcs[0].weight.grad is not None
    assert model.grounding_encoder.memory_attention.layers[0].cross_attn_image.q_proj.weight.grad is not None
    broken = type(sample)(sample.frames, sample.prompt, sample.answer, [], sample.kind, sample.labels)
    if "[SEG]" in sample.answer:
        with pytest.raises(ValueError, match=r"\[SEG\]"):
            objective(broken)


def test_mask_losses_reuse_the_frame_0_encoding_of_the_aids(tmp_path, monkeypatch):
    config = _config(tmp_path)
    model = build_model(config)
    objective = Sa2VAObjective(model, config).eval()  # no dropout: both passes see the same network
    sam = model.grounding_encoder
    sample = synthetic_sample(3, 0, {"video": 1.0}, (48, 64), 2)
    embeddings = torch.randn(len(sample.masks), 256)
    trunk = sam.image_encoder.trunk.patch_embed.proj.weight

    def losses_and_grad(frame0):
        model.zero_grad()
        losses = objective._mask_losses(sample, embeddings, frame0)
        (losses["bce"] + losses["dice"] + losses["object_score"]).backward()
        return {k: v.detach() for k, v in losses.items()}, trunk.grad.clone()

    fresh, fresh_grad = losses_and_grad(None)
    encodes = []
    monkeypatch.setattr(sam, "forward_image", lambda image, f=sam.forward_image: encodes.append(1) or f(image))
    frame0 = sam.encode_frame(sam.preprocess(sample.frames[:1]))
    reused, reused_grad = losses_and_grad(frame0)
    assert len(encodes) == len(sample.frames)  # frame 0 once (for the aids), then only the later frames
    for key in fresh:
        torch.testing.assert_close(reused[key], fresh[key])
    torch.testing.assert_close(reused_grad, fresh_grad)


def test_point_prompts_train_sam2_and_the_warm_up_skips_the_llm(tmp_path):
    config = _config(tmp_path, point_prompts=3, point_prompt_weight=0.5)
    model = build_model(config)
    objective = Sa2VAObjective(model, config).train()
    sample = synthetic_sample(1, 0, {"image": 1.0}, (48, 64), 2)
    assert len(set(sample.labels.ravel()) - {0}) >= 1  # frame 0's visible objects are in the sample
    losses = objective(sample)
    assert losses["points"].item() > 0
    expected = (losses["ce"] + 2 * losses["bce"] + 0.5 * losses["dice"] + losses["object_score"] + losses["iou"]
                + 0.5 * losses["points"])
    torch.testing.assert_close(losses["total"], expected)

    model.zero_grad()
    warm_up = objective(sample, language=False)
    assert warm_up["ce"].item() == 0.0 and warm_up["total"] is warm_up["points"]
    warm_up["total"].backward()
    sam = model.grounding_encoder
    assert sam.image_encoder.trunk.patch_embed.proj.weight.grad.abs().sum() > 0
    assert sam.sam_mask_decoder.iou_prediction_head.layers[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.mllm.parameters())  # no LLM in the warm-up


def test_alignment_loss_rewards_the_phrase_s_object_locations(tmp_path):
    config = _config(tmp_path, align_weight=1.0)
    objective = Sa2VAObjective(build_model(config), config)
    pe = objective.model.grounding_encoder.sam_prompt_encoder.get_dense_pe().detach()  # [1, C, h, w]
    _, channels, h, w = pe.shape
    query = torch.randn(1, channels, requires_grad=True)
    masks = torch.zeros(1, 1, 4 * h, 4 * w)
    masks[..., : 2 * h, : 2 * w] = 1  # the object: the top-left quarter of the image
    inside = torch.zeros(1, 1, h, w)
    inside[..., : h // 2, : w // 2] = 1
    direction = query.detach()[:, :, None, None]

    def loss(pix_feat: torch.Tensor) -> torch.Tensor:
        return objective._alignment_loss(pix_feat, query, masks)

    matching = loss(10 * direction * inside - pe)  # keys = the query on the object, 0 elsewhere
    # cos 1 on the h·w/4 object cells, 0 elsewhere: -log(e^10 / (h·w/4 · e^10 + 3·h·w/4)) ≈ log(h·w/4)
    assert matching.item() == pytest.approx(torch.log(torch.tensor(h * w / 4)).item(), abs=0.01)
    opposite = loss(-10 * direction * inside - pe)
    unrelated = loss(torch.randn(1, channels, h, w))
    assert matching < unrelated < opposite
    opposite.backward()
    assert query.grad.abs().sum() > 0  # the [SEG] vector learns from it
    assert loss(torch.randn(1, channels, h, w)).item() > 0
    assert objective._alignment_loss(torch.randn(1, channels, h, w), query, torch.zeros_like(masks)).item() == 0.0

    sample = synthetic_sample(1, 0, {"image": 1.0}, (48, 64), 2)
    losses = objective(sample)
    if "[SEG]" in sample.answer:
        assert losses["align"].item() > 0
    expected = (losses["ce"] + 2 * losses["bce"] + 0.5 * losses["dice"] + losses["object_score"] + losses["iou"]
                + losses["align"])
    torch.testing.assert_close(losses["total"], expected)


def _recording_objective(tmp_path, monkeypatch, **fields):
    """A tiny objective whose LLM passes are recorded as (prompt, answer), and an image sample with 2+ objects."""
    config = _config(tmp_path, **fields)
    model = build_model(config)
    objective = Sa2VAObjective(model, config).train()
    samples = (synthetic_sample(i, 0, {"image": 1.0}, (48, 64), 2) for i in range(40))
    sample = next(s for s in samples if len(set(s.labels.ravel()) - {0}) >= 2)
    passes = []
    answer_pass = objective._answer_pass
    monkeypatch.setattr(objective, "_answer_pass", lambda p, f, a: passes.append((p, a)) or answer_pass(p, f, a))
    return model, objective, sample, passes


def test_object_prompts_name_every_identifiable_object(tmp_path, monkeypatch):
    model, objective, sample, passes = _recording_objective(
        tmp_path, monkeypatch, object_prompts=3, object_prompt_weight=0.5, align_weight=1.0
    )
    losses = objective(sample)
    assert losses["objects"].item() > 0
    phrase_prompt, phrase_answer = passes[1]
    named = [f"the {colour} {cls}" for colour, cls in sample.names]
    assert phrase_prompt.startswith("<image>\nPlease segment the ") and any(n in phrase_prompt for n in named)
    assert 1 <= phrase_answer.count("[SEG]") <= 3
    expected = (losses["ce"] + 2 * losses["bce"] + 0.5 * losses["dice"] + losses["object_score"] + losses["iou"]
                + losses["align"] + 0.5 * losses["objects"])
    torch.testing.assert_close(losses["total"], expected)
    model.zero_grad()
    losses["objects"].backward()
    assert model.text_hidden_fcs[0].weight.grad.abs().sum() > 0
    assert model.grounding_encoder.sam_mask_decoder.iou_prediction_head.layers[0].weight.grad.abs().sum() > 0

    twins = type(sample)(sample.frames, sample.prompt, sample.answer, sample.masks, sample.kind, sample.labels,
                         (("red", "ball"),) * len(sample.names))  # colour + class identify none of them
    assert objective(twins)["objects"].item() == 0.0
    unnamed = type(sample)(sample.frames, sample.prompt, sample.answer, sample.masks, sample.kind, sample.labels)
    assert objective(unnamed)["objects"].item() == 0.0  # samples without object names: nothing to prompt


def test_semantic_prototypes_read_colour_and_class_off_sam_features_and_seg(tmp_path):
    config = _config(tmp_path, semantic_weight=1.0, object_prompts=2, point_prompts=1)
    model = build_model(config)
    objective = Sa2VAObjective(model, config)
    semantic = objective.aids["semantic"]
    channels = semantic.colour.size(1)
    with torch.no_grad():  # orthogonal prototypes: background = e0, colour k = e(1 + k), class k = e(20 + k)
        semantic.colour.copy_(torch.eye(channels)[: semantic.colour.size(0)])
        semantic.cls.copy_(torch.eye(channels)[[0, *range(20, 20 + semantic.cls.size(0) - 1)]])
    sample = synthetic_sample(1, 0, {"image": 1.0}, (48, 64), 2)
    table_only = type(sample)(sample.frames, sample.prompt, sample.answer, sample.masks, sample.kind,
                              sample.labels * 0, sample.names)
    h = w = model.grounding_encoder.image_size // 16

    def map_loss(vector: torch.Tensor, which=table_only) -> float:
        feats = [vector.expand(h * w, 1, channels)]
        return objective._semantic_map_loss(which, (feats, None, [(h, w)])).item()

    # every cell is table; features = the background prototype: -log(e^10 / (e^10 + 8)) - log(e^10 / (e^10 + 7))
    expected = -torch.log(torch.tensor(1 / (1 + 8 * torch.exp(torch.tensor(-10.0)))))
    expected -= torch.log(torch.tensor(1 / (1 + 7 * torch.exp(torch.tensor(-10.0)))))
    assert map_loss(torch.eye(channels)[0]) == pytest.approx(expected.item(), rel=1e-3)
    assert map_loss(torch.eye(channels)[3]) > 10  # "a colour" where there is only table

    losses = objective.train()(sample)
    assert losses["semantic"].item() > 0
    model.zero_grad()
    losses["semantic"].backward()  # the map loss trains SAM-2's image encoder and the prototypes
    assert model.grounding_encoder.image_encoder.trunk.patch_embed.proj.weight.grad.abs().sum() > 0
    assert semantic.colour.grad.abs().sum() > 0
    warm_up = objective(sample, language=False)
    torch.testing.assert_close(warm_up["total"], warm_up["points"] + warm_up["semantic"])
    # training-only: the model (what is saved) has no such weights
    assert not any(p is semantic.colour or p is semantic.cls for p in model.parameters())


def test_image_tokens_read_colour_and_class_of_their_own_cell(tmp_path, monkeypatch):
    overrides = {**TINY, "tile_size": 56, "max_dynamic_patch": 2}  # 2 x 2 tokens per tile
    config = _config(tmp_path, preset_overrides=overrides, image_size=(48, 96), image_token_semantic_weight=0.5)
    model = build_model(config)
    objective = Sa2VAObjective(model, config).train()
    prototypes = objective.aids["image_tokens"]
    sample = synthetic_sample(2, 0, {"image": 1.0}, (48, 96), 2)
    losses = objective(sample)
    assert losses["image_tokens"].item() > 0
    torch.testing.assert_close(losses["total"] - 0.5 * losses["image_tokens"], losses["ce"] + 2 * losses["bce"]
                               + 0.5 * losses["dice"] + losses["object_score"] + losses["iou"])
    model.zero_grad()
    losses["image_tokens"].backward()  # trains the vision tower, the projector and the prototypes, not the LLM
    assert model.mllm.model.vision_tower.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.mllm.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    assert prototypes.colour.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.mllm.model.language_model.parameters())
    assert not any(p is prototypes.colour for p in model.parameters())  # training-only

    # The loss pairs each token with its own cell: recomputed here from block means of the label map.
    # 192 x 96 image -> 2 x 1 tiles of 2 x 2 tokens (+ the thumbnail); cell (i, j) of tile c spans
    # rows 48 i .. 48 (i + 1), columns 96 c + 48 j .. (+ 48); the thumbnail's cells are twice as wide.
    sample = synthetic_sample(2, 0, {"image": 1.0}, (96, 192), 2)
    colour_of = np.concatenate([[0], [1 + list(COLOURS).index(c) for c, _ in sample.names]])
    class_of = np.concatenate([[0], [1 + CLASSES.index(k) for _, k in sample.names]])

    def shares(rows: slice, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
        cell = sample.labels[rows, cols].ravel()
        return tuple(torch.bincount(torch.from_numpy(lookup[cell]), minlength=size).float() / cell.size
                     for lookup, size in ((colour_of, 1 + len(COLOURS)), (class_of, 1 + len(CLASSES))))

    cells = [shares(slice(48 * i, 48 * (i + 1)), slice(96 * c + 48 * j, 96 * c + 48 * (j + 1)))
             for c in range(2) for i in range(2) for j in range(2)]
    cells += [shares(slice(48 * i, 48 * (i + 1)), slice(96 * j, 96 * (j + 1))) for i in range(2) for j in range(2)]
    assert len({tuple(colour.tolist()) for colour, _ in cells}) > 2  # the cells differ
    tokens = torch.randn(3, 4, prototypes.colour.size(1))
    colour_logits, class_logits = prototypes(tokens.flatten(0, 1))
    expected = sum(-(torch.stack([cell[k] for cell in cells]) * F.log_softmax(logits, -1)).sum(-1).mean()
                   for k, logits in enumerate((colour_logits, class_logits)))
    monkeypatch.setattr(model, "_internvl_tile_features", lambda pixels: tokens)
    torch.testing.assert_close(objective._image_token_loss(sample), expected)


def test_kind_weights_steer_the_training_mix(tmp_path):
    only_absent = {kind: 0.0 for kind in IMAGE_KIND_WEIGHTS} | {"absent": 1.0}
    for index in range(3):
        sample = synthetic_sample(index, 0, {"image": 1.0}, (48, 64), 2, kind_weights=only_absent)
        assert sample.kind == "absent" and sample.masks == [] and "[SEG]" not in sample.answer
    default = [synthetic_sample(i, 0, {"image": 1.0}, (48, 64), 2).kind for i in range(3)]
    assert [synthetic_sample(i, 0, {"image": 1.0}, (48, 64), 2, kind_weights={}).kind for i in range(3)] == default
    with pytest.raises(ValueError, match="unknown kinds"):
        _config(tmp_path, kind_weights={"dance": 1.0}).validate()
    with pytest.raises(ValueError, match="align_temperature"):
        _config(tmp_path, align_temperature=0.0).validate()


def test_training_init_keeps_sam2_mask_logits_in_a_trainable_range(tmp_path):
    """``reinit_parameters`` (tests' random weights) puts SAM-2's mask logits far into sigmoid saturation, where
    Dice learns nothing; training from scratch keeps each module's own initialisation."""
    config = _config(tmp_path, point_prompts=4)
    sample = synthetic_sample(1, 0, {"image": 1.0}, (48, 64), 2)

    def logit_spread(model: Sa2VA) -> float:
        sam = model.grounding_encoder
        feats, pos, sizes = sam.encode_frame(sam.preprocess(sample.frames))
        points = {"point_coords": torch.full((1, 1, 2), sam.image_size / 2), "point_labels": torch.ones(1, 1).int()}
        return sam.decode_point_prompts(feats, pos, sizes, points)["multimask_logits"].std().item()

    with torch.no_grad():
        assert logit_spread(tiny_model(config.init_preset, seed=0, **TINY)) > 1.0
        assert logit_spread(build_model(config)) < 1.0  # what sa2va-train starts from


def test_loss_decreases_on_a_repeated_sample(tmp_path):
    config = _config(tmp_path)
    model = build_model(config)
    objective = Sa2VAObjective(model, config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    sample = synthetic_sample(0, 0, {"image": 1.0}, (48, 64), 2)
    first = None
    for _ in range(8):
        loss = objective(sample)["total"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(objective(sample)["total"]) < 0.7 * first


@pytest.mark.parametrize("aids", [{}, {"object_prompts": 2, "semantic_weight": 1.0, "align_weight": 1.0,
                                        "presence_prompts": 1, "image_token_semantic_weight": 1.0}],
                         ids=["recipe", "from-scratch-aids"])
def test_resume_is_exact(tmp_path, aids):
    config = _config(tmp_path, **aids)
    final = train(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").is_file()
    reference = Sa2VA.from_pretrained(final).state_dict()
    shutil.rmtree(final)  # as if the run had died after its step-2 checkpoint
    resumed = Sa2VA.from_pretrained(train(config)).state_dict()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_official_policy_trains_lora_decoder_projector_only(tmp_path):
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    config = _config(tmp_path, policy="official", lora=lora)
    model = build_model(config)
    trainable = {id(p) for p in apply_policy(model, config)}
    names = [n for n, p in model.named_parameters() if id(p) in trainable]
    assert any("lora_" in n for n in names)
    assert all(
        "lora_" in n or n.startswith(("text_hidden_fcs", "grounding_encoder.sam_mask_decoder",
                                      "mllm.model.multi_modal_projector"))
        for n in names
    )
    frozen = dict(model.named_parameters())
    assert not frozen["mllm.model.vision_tower.embeddings.cls_token"].requires_grad
    assert not frozen["grounding_encoder.image_encoder.trunk.pos_embed"].requires_grad


def test_official_policy_checkpoint_has_lora_merged(tmp_path):
    config = _config(tmp_path, policy="official", steps=1)
    config.lora.r, config.lora.alpha = 4, 8
    final = train(config)
    loaded = Sa2VA.from_pretrained(final)  # loads strictly: no adapter keys left
    assert not any("lora" in k for k in loaded.state_dict())


def test_yaml_config_round_trip_and_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: out\ninit_preset: internvl-qwen2\nsteps: 5\nimage_size: [32, 48]\n")
    config = load_train_config(path)
    assert config.steps == 5 and config.image_size == (32, 48)
    path.write_text("output_dir: out\nsteps: 5\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown training config keys \\['learning_rate'\\]"):
        load_train_config(path)
    path.write_text("output_dir: out\npolicy: half\n")
    with pytest.raises(ValueError, match="policy must be"):
        load_train_config(path)
    path.write_text("output_dir: out\nsteps: 10\nsam_warmup_steps: 5\n")
    with pytest.raises(ValueError, match="sam_warmup_steps needs point_prompts"):
        load_train_config(path)
    path.write_text("output_dir: out\nsteps: 10\nsam_warmup_steps: 10\npoint_prompts: 2\n")
    with pytest.raises(ValueError, match="smaller than steps"):
        load_train_config(path)


def test_bundled_training_config_is_valid():
    config = load_train_config("config/train/tiny_synthetic.yaml")
    assert config.init_preset == "internvl-qwen2" and config.train_memory
    assert 0 < config.sam_warmup_steps < config.steps and config.point_prompts > 0


def test_train_cli_overrides_steps_output_and_threads(tmp_path, capsys):
    from sa2va_ros.cli.train import main

    path = tmp_path / "run.yaml"
    path.write_text(
        "output_dir: ignored\ninit_preset: internvl-qwen2\n"
        "preset_overrides: {hidden: 32, layers: 1, tile_size: 28, sam_image_size: 64, max_dynamic_patch: 1}\n"
        "image_size: [48, 64]\nvideo_frames: 2\nsteps: 50\nbatch_size: 1\nthreads: 2\n"
    )
    out = tmp_path / "out"
    assert main([str(path), "--steps", "1", "--output-dir", str(out), "--threads", "1"]) == 0
    recorded = json.loads((out / "train_config.json").read_text())
    assert (recorded["steps"], recorded["threads"]) == (1, 1)
    assert (out / "final" / "config.json").is_file() and not (tmp_path / "ignored").exists()
    assert f"final model: {out / 'final'}" in capsys.readouterr().out


DDP_WORKER = """
import json, sys
import torch
import sa2va_ros.train.loop as loop
from sa2va_ros.train import load_train_config

prepared = {}
original = loop.Accelerator.prepare
def prepare(self, *objects):
    result = original(self, *objects)
    prepared.update(objective=result[0], rank=self.process_index, world=self.num_processes)
    return result
loop.Accelerator.prepare = prepare
loop.train(load_train_config(sys.argv[1]))
checksum = sum(float(p.double().sum()) for p in prepared["objective"].parameters())
print(json.dumps({"rank": prepared["rank"], "world": prepared["world"], "checksum": checksum}), flush=True)
"""


def test_two_process_ddp_on_cpu_trains_one_synchronised_model(tmp_path):
    """torchrun on a CPU machine: two ranks, disjoint data, identical weights after every step, one writer."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    config = _config(tmp_path, steps=3, point_prompts=2, sam_warmup_steps=1, object_prompts=2,
                     semantic_weight=1.0, align_weight=1.0, threads=1).to_dict()
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**config, "image_size": list(config["image_size"])}))
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", "29561",
         str(tmp_path / "worker.py"), str(tmp_path / "run.yaml")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"rank"')]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and {r["world"] for r in ranks} == {2}
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)
    log = [json.loads(line) for line in (tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # rank 0 alone writes
    assert [r["lr"] for r in log] == pytest.approx([1e-3, 5e-4, 0.0])  # one schedule step per optimiser step
    assert Sa2VA.from_pretrained(tmp_path / "run" / "final") is not None


def test_absent_subjects_name_nothing_in_the_scene():
    from sa2va_ros.synthetic.vocabulary import CLASSES, COLOURS
    from sa2va_ros.train.objective import absent_subject

    torch.manual_seed(0)
    scene = (("red", "ball"), ("blue", "mug"), ("red", "mug"))
    drawn = [absent_subject(scene) for _ in range(200)]
    for subject in drawn:
        if subject.colour is None:
            assert subject.cls not in {"ball", "mug"}
        else:
            assert (subject.colour, subject.cls) not in scene and subject.cls in {"ball", "mug"}
    recoloured = sum(s.colour is not None for s in drawn) / len(drawn)
    assert 0.6 < recoloured < 0.9  # mostly the hard case: a class that is there, in a colour it lacks
    every_colour = tuple((colour, "ball") for colour in COLOURS)  # no colour left for a ball
    assert all(absent_subject(every_colour).cls != "ball" for _ in range(20))
    everything = tuple(("red", cls) for cls in CLASSES)  # no class left: recolour one
    assert all(absent_subject(everything).colour not in (None, "red") for _ in range(20))


def test_present_subjects_name_one_visible_object_by_colour_and_class_or_by_a_class_it_alone_has():
    from sa2va_ros.train.objective import MIN_OBJECT_PIXELS, present_subject

    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[:20, :20], labels[:20, 20:], labels[20:, :20] = 1, 2, 3
    labels[-1, -(MIN_OBJECT_PIXELS - 1):] = 4  # object 4 shows too little to be named
    scene = SimpleNamespace(names=(("red", "ball"), ("blue", "mug"), ("green", "mug"), ("white", "can")),
                            labels=labels)
    torch.manual_seed(0)
    drawn = [present_subject(scene) for _ in range(400)]
    nouns = {subject.noun for subject in drawn}
    assert nouns == {"red ball", "blue mug", "green mug", "ball"}  # "mug" would name two; the can is hardly seen
    assert 0.15 < sum(s.colour is None for s in drawn) / len(drawn) < 0.35  # as often as absent_subject's
    twins = SimpleNamespace(names=(("red", "ball"), ("red", "ball")), labels=labels.clip(0, 2))
    assert present_subject(twins) is None  # "the red ball" names two objects, "the ball" too


def test_presence_prompts_ask_for_present_and_absent_objects(tmp_path, monkeypatch):
    model, objective, sample, passes = _recording_objective(
        tmp_path, monkeypatch, presence_prompts=6, presence_prompt_weight=0.5
    )
    torch.manual_seed(3)
    losses = objective(sample)
    asked = passes[1:]
    assert len(asked) == 6 and losses["presence"].item() > 0
    nouns = {f"{colour} {cls}" for colour, cls in sample.names} | {cls for _, cls in sample.names}
    outcomes = set()
    for prompt, answer in asked:
        noun = prompt.removeprefix("<image>\nPlease segment the ").removesuffix(" in this image.")
        if answer == "Sure, [SEG].":
            assert noun in nouns
        else:
            assert answer == f"There is no {noun}." and noun not in nouns
        outcomes.add(answer == "Sure, [SEG].")
    assert outcomes == {True, False}
    expected = (losses["ce"] + 2 * losses["bce"] + 0.5 * losses["dice"] + losses["object_score"] + losses["iou"]
                + 0.5 * losses["presence"])
    torch.testing.assert_close(losses["total"], expected)
    model.zero_grad()
    losses["presence"].backward()
    assert model.mllm.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
