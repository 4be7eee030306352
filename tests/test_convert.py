"""Official ByteDance Sa2VA checkpoints -> the project's format: three families end to end, and independent
checks that the official layout (key names, fused q/k/v packing, tokenizers, SAM-2 variant) is the real one."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from model_helpers import random_frames, scripted_answer
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig
from transformers.models.internvl.modeling_internvl import InternVLVisionLayer
from transformers.models.llama.modeling_llama import LlamaMLP

from sa2va_ros.cli.convert import main as convert_main
from sa2va_ros.model import CheckpointError, Sa2VA, Sa2VAConfig
from sa2va_ros.model.checkpoint import INDEX_FILE
from sa2va_ros.model.convert import (
    INTERNLM2_RULES,
    INTERNVIT_RULES,
    ConversionError,
    Fusion,
    convert_official_config,
    convert_official_state_dict,
    infer_sam2_variant,
    load_official,
    load_official_tokenizer,
    project_shapes,
    sam2_shapes,
)
from sa2va_ros.model.official_layout import official_config, to_official_state_dict, write_official_checkpoint
from sa2va_ros.model.presets import reinit_parameters, tiny_config, tiny_model
from sa2va_ros.model.sam2_grounding import SAM2_VARIANTS, bundled_sam2_config, tiny_sam2_config

PROMPT = "<image>\nPlease segment the mug."
# ids of Sa2VA's InternLM2-style tokenizer: spm pieces 3 and 4 are renamed chat tokens, the rest are appended
SPM_RENAMED = {3: "<|im_start|>", 4: "<|im_end|>"}
SPM_APPENDED = ["<img>", "</img>", "<IMG_CONTEXT>", "[SEG]", "<p>", "</p>", "<vp>", "</vp>"]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on 2 shared cores: one thread is several times faster than two under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_sentencepiece() -> bytes:
    corpus = [
        "Please segment the object in this image. Sure, it is the blue mug on the table.",
        "The quick brown fox jumps over the lazy dog 12345. There is no such object here.",
        "red green blue yellow mug ball box bottle can book. What is in the picture?",
    ] * 10
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        user_defined_symbols=["[UNUSED_TOKEN_0]", "[UNUSED_TOKEN_1]"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()


def _internlm2_tokenizer_dir(path: Path, spm_model: bytes) -> dict[int, str]:
    """A tokenizer directory as Sa2VA-8B ships it: tokenizer.model + InternLM2Tokenizer config."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(spm_model)
    size = spm.SentencePieceProcessor(model_proto=spm_model).get_piece_size()
    ids = {0: "<unk>", 1: "<s>", 2: "</s>", **SPM_RENAMED, **{size + i: t for i, t in enumerate(SPM_APPENDED)}}
    token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "added_tokens_decoder": {str(i): {"content": t, **token} for i, t in ids.items()},
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return ids


@pytest.fixture(scope="module")
def spm_model() -> bytes:
    return _train_sentencepiece()


def _internlm2_model(tmp: Path, spm_model: bytes) -> Sa2VA:
    """A tiny InternLM2-family model (Llama layout, attention bias, untied head) with the spm tokenizer."""
    _internlm2_tokenizer_dir(tmp / "spm_tokenizer", spm_model)
    tokenizer = load_official_tokenizer(tmp / "spm_tokenizer")
    config = tiny_config("internvl-llama", vocab_size=len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    config.mllm_config.update(image_token_id=image_token_id, tie_word_embeddings=False)
    config.mllm_config["text_config"]["attention_bias"] = True
    torch.manual_seed(7)
    model = Sa2VA(config, tokenizer)
    reinit_parameters(model, 7)
    return model


FAMILIES = ("internvl-qwen2", "internvl-internlm2", "qwen2_5_vl")


class Converted(NamedTuple):
    family: str
    model: Sa2VA  # the original tiny model
    official: Path  # written in the official layout
    project: Path  # made from ``official`` by ``sa2va-convert``


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, spm_model) -> Callable[[str], Converted]:
    """Builds each family's checkpoints once, on first use."""
    built: dict[str, Converted] = {}

    def get(family: str) -> Converted:
        if family not in built:
            tmp = tmp_path_factory.mktemp(family)
            model = _internlm2_model(tmp, spm_model) if family == "internvl-internlm2" else tiny_model(family, seed=3)
            shard = 3_000_000 if family == "qwen2_5_vl" else None  # one sharded checkpoint, with an index
            write_official_checkpoint(
                model, model.tokenizer, tmp / "official", family, shard_size=shard, sentencepiece_model=spm_model
            )
            assert convert_main([str(tmp / "official"), str(tmp / "project")]) == 0
            built[family] = Converted(family, model, tmp / "official", tmp / "project")
        return built[family]

    return get


@pytest.fixture(params=FAMILIES)
def converted(request, checkpoints) -> Converted:
    return checkpoints(request.param)


def _assert_same_weights(a: Sa2VA, b: Sa2VA) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def _assert_same_outputs(a: Sa2VA, b: Sa2VA) -> None:
    frames = random_frames(1, 45, 70, seed=11)
    prompt = a.template.user_turn(PROMPT)  # the official-layout tokenizer reads it exactly as the model's own
    assert b.tokenizer.encode(prompt) == a.tokenizer.encode(prompt)
    # logits of one forward pass over the same tokens
    ids = torch.tensor([a.tokenizer.encode("Sure, it is the blue mug [SEG].")])
    with torch.inference_mode():
        assert torch.equal(a.mllm(input_ids=ids).logits, b.mllm(input_ids=ids).logits)
    # free greedy generation with random weights, and a scripted answer with a [SEG]
    free = [m.predict_forward(image=frames[0], text=PROMPT, max_new_tokens=6) for m in (a, b)]
    assert free[0]["prediction"] == free[1]["prediction"]
    results = []
    for model in (a, b):
        with scripted_answer(model, "It is [SEG]."):
            results.append(model.ground(frames, PROMPT))
    assert results[0].text == results[1].text and "[SEG]" in results[0].text
    assert torch.equal(results[0].seg_embeddings, results[1].seg_embeddings)
    assert np.array_equal(results[0].masks, results[1].masks)
    assert np.array_equal(results[0].scores, results[1].scores)


# ---------------------------------------------------------------------------------------------- end to end
def test_converted_checkpoint_is_identical(converted):
    _, model, _, project = converted
    assert json.loads((project / "config.json").read_text())["model_type"] == Sa2VAConfig.model_type
    loaded = Sa2VA.from_pretrained(project)
    _assert_same_weights(model, loaded)
    _assert_same_outputs(model, loaded)
    assert loaded.config.template == model.config.template


def test_output_comparison_catches_a_wrong_split(checkpoints):
    """The comparison above is sensitive: swapped KV heads in one LLM layer, or q and k swapped in one ViT
    layer (same shapes, wrong packing), give different outputs."""
    model, project = checkpoints("internvl-internlm2")[1:4:2]
    for key in ("mllm.model.language_model.layers.0.self_attn.k_proj.weight",
                "mllm.model.vision_tower.encoder.layer.0.attention.q_proj.weight"):  # fmt: skip
        wrong = Sa2VA.from_pretrained(project)
        with torch.no_grad():
            param = wrong.get_parameter(key)
            if "k_proj" in key:  # [kv_heads * head_dim, D]: swap the two KV heads
                param.copy_(param.reshape(2, -1, param.size(-1)).flip(0).reshape(param.shape))
            else:  # swap the ViT's q and k projections
                other = wrong.get_parameter(key.replace("q_proj", "k_proj"))
                query = param.clone()
                param.copy_(other)
                other.copy_(query)
        with pytest.raises(AssertionError):
            _assert_same_outputs(model, wrong)


def test_official_directory_loads_directly(converted):
    family, model, official, _ = converted
    loaded = Sa2VA.from_pretrained(official)  # model_type sa2va_chat -> load_official
    _assert_same_weights(model, loaded)
    if family == "qwen2_5_vl":  # written sharded: read through its index
        assert len(set(json.loads((official / INDEX_FILE).read_text())["weight_map"].values())) > 1


def test_official_files_per_family(converted):
    family, model, official, _ = converted
    config = json.loads((official / "config.json").read_text())
    files = {p.name for p in official.iterdir()}
    assert config["model_type"] == "sa2va_chat" and config["template"] == model.config.template
    if family == "qwen2_5_vl":
        assert config["architectures"] == ["Sa2VAChatModelQwen"] and "text_config" not in config
        assert {"tokenizer.json", INDEX_FILE} <= files
    else:
        assert config["architectures"] == ["Sa2VAChatModel"]
        assert config["vision_config"]["architectures"] == ["InternVisionModel"]
        assert "tokenizer.json" not in files  # the official repos ship the slow tokenizer's files
    if family == "internvl-internlm2":
        assert config["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
        tokenizer_config = json.loads((official / "tokenizer_config.json").read_text())
        assert tokenizer_config["tokenizer_class"] == "InternLM2Tokenizer"
        assert "tokenizer.model" in files
    if family == "internvl-qwen2":
        assert config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
        assert {"vocab.json", "merges.txt"} <= files


def test_console_script_entry_point_and_refusal_to_overwrite(checkpoints, capsys):
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "sa2va-convert"]
    assert script.value == "sa2va_ros.cli.convert:main" and script.load() is convert_main
    _, _, official, project = checkpoints("internvl-qwen2")
    before = (project / "model.safetensors").read_bytes()
    assert convert_main([str(official), str(project)]) == 1
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (project / "model.safetensors").read_bytes() == before


def test_dtype_resave_of_a_project_checkpoint(checkpoints, tmp_path, capsys):
    _, _, _, project = checkpoints("internvl-qwen2")
    half = tmp_path / "bf16"
    assert convert_main([str(project), str(half), "--dtype", "bfloat16"]) == 0
    stored = load_file(str(half / "model.safetensors"))
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.bfloat16}
    assert (half / "model.safetensors").stat().st_size < 0.6 * (project / "model.safetensors").stat().st_size
    reference = Sa2VA.from_pretrained(project).state_dict()
    reloaded = Sa2VA.from_pretrained(half).state_dict()  # fp32 on the CPU again
    for key, value in reference.items():
        assert reloaded[key].dtype == value.dtype
        torch.testing.assert_close(reloaded[key], value.to(torch.bfloat16).to(value.dtype))
    assert convert_main([str(project), str(half), "--dtype", "bfloat16"]) == 1
    assert "already holds a checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- key names
VIT_LAYER0 = {
    f"vision_model.encoder.layers.0.{name}"
    for name in (
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "ls1",
        "ls2",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    )
}
INTERNVL_OTHERS = {
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.position_embedding",
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.patch_embedding.bias",
    *(f"mlp1.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")),
}
QWEN2_LAYER_NAMES = (
    *(f"self_attn.{x}_proj.{p}" for x in "qkv" for p in ("weight", "bias")),
    "self_attn.o_proj.weight",
    *(f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")),
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)
QWEN2_LAYER0 = {f"language_model.model.layers.0.{name}" for name in QWEN2_LAYER_NAMES}
INTERNLM2_LAYER0 = {
    f"language_model.model.layers.0.{name}"
    for name in (
        "attention.wqkv.weight",
        "attention.wqkv.bias",
        "attention.wo.weight",
        "attention.wo.bias",
        "feed_forward.w1.weight",
        "feed_forward.w2.weight",
        "feed_forward.w3.weight",
        "attention_norm.weight",
        "ffn_norm.weight",
    )
}
QWEN_VL_LAYER0 = {
    *(f"model.model.visual.blocks.0.{n}" for n in ("norm1.weight", "norm2.weight", "attn.qkv.weight")),
    *(f"model.model.visual.blocks.0.{n}" for n in ("attn.qkv.bias", "attn.proj.weight", "attn.proj.bias")),
    *(f"model.model.visual.blocks.0.mlp.{x}_proj.{p}" for x in ("gate", "up", "down") for p in ("weight", "bias")),
    *(f"model.model.language_model.layers.0.{name}" for name in QWEN2_LAYER_NAMES),
}
SAM_FUSER = {f"grounding_encoder.sam2_model.memory_encoder.fuser.layers.0.{n}" for n in ("g_weight",)}


def _official_keys(official: Path) -> set[str]:
    index = official / INDEX_FILE
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    return set(load_file(str(official / "model.safetensors")))


def test_official_key_names_match_a_hand_written_list(converted):
    """Exact key sets for one layer, so a key renamed consistently in both directions cannot pass."""
    family, _, official, _ = converted
    keys = _official_keys(official)
    layer0 = {k for k in keys if re.search(r"\.(layers|blocks)\.0\.", k) and "grounding_encoder" not in k}
    if family == "qwen2_5_vl":
        assert layer0 == QWEN_VL_LAYER0
        assert "model.lm_head.weight" in keys
    else:
        llm = INTERNLM2_LAYER0 if family == "internvl-internlm2" else QWEN2_LAYER0
        vit = VIT_LAYER0 | (
            {"vision_model.encoder.layers.0.attn.q_norm.weight", "vision_model.encoder.layers.0.attn.k_norm.weight"}
            if family == "internvl-internlm2"
            else set()
        )
        assert layer0 == vit | llm
        assert keys >= INTERNVL_OTHERS
        head = "language_model.output.weight" if family == "internvl-internlm2" else "language_model.lm_head.weight"
        assert (head in keys) == (family == "internvl-internlm2")  # the tiny qwen2 model ties its lm_head
    assert keys >= SAM_FUSER
    assert not any(k.endswith(".gamma") for k in keys)
    assert {"text_hidden_fcs.0.weight", "text_hidden_fcs.0.bias", "text_hidden_fcs.2.weight"} <= keys


def test_legacy_qwen_nesting_is_accepted(checkpoints, tmp_path):
    family, model, _, _ = checkpoints("qwen2_5_vl")
    write_official_checkpoint(model, model.tokenizer, tmp_path, family, legacy_qwen_keys=True)
    keys = _official_keys(tmp_path)
    assert "model.visual.blocks.0.attn.qkv.weight" in keys
    assert "model.model.layers.0.self_attn.q_proj.weight" in keys
    assert not any(k.startswith("model.model.visual.") or k.startswith("model.model.language_model.") for k in keys)
    _, state, _ = load_official(tmp_path)
    reference = model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)


# ---------------------------------------------------------------------------------------------- fused tensors
def _convert_layer(rules, prefix: str, official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official tensors of one layer (names relative to ``prefix``) -> project names, through the key table."""
    converted = {}
    for name, tensor in official.items():
        rule, groups = next((r, g) for r in rules if (g := r.match_official(prefix + name)) is not None)
        parts = Fusion().split(rule.fused, tensor) if rule.fused else [tensor]
        for template, part in zip(rule.project, parts, strict=True):
            converted[template.format(**groups)] = part
    return converted


def test_internlm2_wqkv_unpacks_as_the_official_attention():
    """The official InternLM2Attention: ``wqkv(x)`` viewed as ``[b, q, h, gs, d]`` (gs = groups + 2)."""
    kv_heads, groups, head_dim, hidden = 2, 3, 4, 24
    wqkv = torch.randn(kv_heads * (groups + 2) * head_dim, hidden)
    bias = torch.randn(kv_heads * (groups + 2) * head_dim)
    x = torch.randn(2, 5, hidden)
    states = F.linear(x, wqkv, bias).reshape(2, 5, kv_heads, groups + 2, head_dim)
    official_q = states[..., :groups, :].reshape(2, 5, kv_heads * groups, head_dim)  # 'b q h gs d -> b q (h gs) d'
    official_k, official_v = states[..., -2, :], states[..., -1, :]
    fusion = Fusion(kv_heads, groups, head_dim)
    q, k, v = fusion.split("wqkv", wqkv)
    qb, kb, vb = fusion.split("wqkv", bias)
    torch.testing.assert_close(F.linear(x, q, qb).reshape(2, 5, -1, head_dim), official_q)
    torch.testing.assert_close(F.linear(x, k, kb).reshape(2, 5, -1, head_dim), official_k)
    torch.testing.assert_close(F.linear(x, v, vb).reshape(2, 5, -1, head_dim), official_v)
    # query head j uses KV head j // groups, as repeat_kv expands them in Llama
    packed = wqkv.reshape(kv_heads, groups + 2, head_dim, hidden)
    assert torch.equal(q.reshape(kv_heads, groups, head_dim, hidden)[1, 2], packed[1, 2])
    assert torch.equal(fusion.join("wqkv", [q, k, v]), wqkv)
    with pytest.raises(ValueError, match="does not unpack"):
        fusion.split("wqkv", wqkv[:-1])


def test_internlm2_mlp_names_follow_the_official_feed_forward():
    """Official ``w2(silu(w1(x)) * w3(x))``: w1 -> gate_proj, w3 -> up_proj, w2 -> down_proj."""
    config = LlamaConfig(hidden_size=8, intermediate_size=12, num_attention_heads=2)
    w1, w3, w2 = torch.randn(12, 8), torch.randn(12, 8), torch.randn(8, 12)
    official = {f"feed_forward.{name}.weight": w for name, w in (("w1", w1), ("w2", w2), ("w3", w3))}
    converted = _convert_layer(INTERNLM2_RULES, "language_model.model.layers.0.", official)
    mlp = LlamaMLP(config)
    mlp.load_state_dict({k.removeprefix("mllm.model.language_model.layers.0.mlp."): v for k, v in converted.items()})
    x = torch.randn(3, 8)
    torch.testing.assert_close(mlp(x), F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2))


@pytest.mark.parametrize("norm_type", ["layer_norm", "rms_norm"])
def test_internvit_layer_matches_the_official_block(norm_type):
    """One InternViT block written out from the official code (qkv split in thirds, q/k RMSNorm over all
    heads, ls1/ls2 layer scales, norm1/norm2) equals transformers' InternVLVisionLayer with converted weights."""
    hidden, heads, inter = 16, 2, 24
    official = {
        "attn.qkv.weight": torch.randn(3 * hidden, hidden) / 4,
        "attn.qkv.bias": torch.randn(3 * hidden) / 4,
        "attn.proj.weight": torch.randn(hidden, hidden) / 4,
        "attn.proj.bias": torch.randn(hidden),
        "attn.q_norm.weight": 1 + torch.rand(hidden),
        "attn.k_norm.weight": 1 + torch.rand(hidden),
        "ls1": torch.rand(hidden),
        "ls2": torch.rand(hidden),
        "norm1.weight": 1 + torch.rand(hidden),
        "norm2.weight": 1 + torch.rand(hidden),
        "mlp.fc1.weight": torch.randn(inter, hidden) / 4,
        "mlp.fc1.bias": torch.randn(inter),
        "mlp.fc2.weight": torch.randn(hidden, inter) / 4,
        "mlp.fc2.bias": torch.randn(hidden),
    }
    if norm_type == "layer_norm":
        official.update({"norm1.bias": torch.randn(hidden), "norm2.bias": torch.randn(hidden)})

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def norm(x, name):
        if norm_type == "rms_norm":
            return rms(x, official[f"{name}.weight"])
        return F.layer_norm(x, (hidden,), official[f"{name}.weight"], official[f"{name}.bias"], 1e-6)

    def official_block(x):  # InternVisionEncoderLayer + InternAttention._naive_attn
        b, n, c = x.shape
        h = norm(x, "norm1")
        qkv = F.linear(h, official["attn.qkv.weight"], official["attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        q = rms(q.transpose(1, 2).flatten(-2), official["attn.q_norm.weight"]).view(b, n, heads, -1).transpose(1, 2)
        k = rms(k.transpose(1, 2).flatten(-2), official["attn.k_norm.weight"]).view(b, n, heads, -1).transpose(1, 2)
        attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        out = F.linear(out, official["attn.proj.weight"], official["attn.proj.bias"])
        x = x + out * official["ls1"]
        mlp = F.linear(F.gelu(F.linear(norm(x, "norm2"), official["mlp.fc1.weight"], official["mlp.fc1.bias"])),
                       official["mlp.fc2.weight"], official["mlp.fc2.bias"])  # fmt: skip
        return x + mlp * official["ls2"]

    from transformers import InternVLVisionConfig

    config = InternVLVisionConfig(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter, attention_bias=True,
        use_qk_norm=True, norm_type=norm_type,
    )  # fmt: skip
    config._attn_implementation = "eager"
    layer = InternVLVisionLayer(config).eval()
    converted = _convert_layer(INTERNVIT_RULES, "vision_model.encoder.layers.0.", official)
    prefix = "mllm.model.vision_tower.encoder.layer.0."
    layer.load_state_dict({k.removeprefix(prefix): v for k, v in converted.items()}, strict=True)
    x = torch.randn(2, 5, hidden)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), official_block(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- mismatches
def _official_state(official: Path) -> dict[str, torch.Tensor]:
    return load_file(str(official / "model.safetensors"))


def test_renamed_missing_and_extra_keys_are_listed_exactly(checkpoints):
    _, model, official, _ = checkpoints("internvl-qwen2")
    config = json.loads((official / "config.json").read_text())
    state = _official_state(official)
    renamed_from = "vision_model.encoder.layers.0.mlp.fc1.weight"
    renamed_to = "vision_model.encoder.layers.0.mlp.fc9.weight"
    state[renamed_to] = state.pop(renamed_from)
    del state["mlp1.1.bias"]
    state["language_model.model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    with pytest.raises(ConversionError) as error:
        convert_official_state_dict(config, state, model.img_context_token_id, source=official)
    assert error.value.unmatched == sorted([renamed_to, "language_model.model.layers.0.self_attn.extra.weight"])
    assert error.value.missing == sorted([renamed_from, "mlp1.1.bias"])
    assert error.value.wrong_shapes == []
    message = str(error.value)
    assert "2 unmatched source keys, 2 missing keys, 0 shape mismatches" in message
    assert str(official) in message and renamed_to in message and "mlp1.1.bias" in message


def test_wrong_shapes_are_listed(checkpoints):
    _, model, official, _ = checkpoints("internvl-qwen2")
    config = json.loads((official / "config.json").read_text())
    state = _official_state(official)
    state["mlp1.3.weight"] = state["mlp1.3.weight"][:, :-1]
    state["vision_model.encoder.layers.0.attn.qkv.weight"] = state["vision_model.encoder.layers.0.attn.qkv.weight"][:-1]
    with pytest.raises(ConversionError) as error:
        convert_official_state_dict(config, state, model.img_context_token_id)
    assert [w.split(":")[0] for w in error.value.wrong_shapes] == [
        "mlp1.3.weight",
        "vision_model.encoder.layers.0.attn.qkv.weight",
    ]
    assert error.value.unmatched == [] and error.value.missing == []


def test_truncated_file_and_missing_shard_name_the_file(checkpoints, tmp_path):
    official = checkpoints("qwen2_5_vl").official  # the sharded one
    broken = tmp_path / "broken"
    shutil.copytree(official, broken)
    shards = sorted(broken.glob("model-*.safetensors"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(shards[1].name) + ": corrupted or truncated"):
        load_official(broken)
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=re.escape(shards[1].name) + ": shard named in"):
        load_official(broken)
    assert convert_main([str(broken), str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out" / "config.json").exists()


def test_partial_checkpoint_is_one_clear_error(checkpoints, tmp_path, capsys):
    official = checkpoints("internvl-internlm2").official
    partial = tmp_path / "partial"
    shutil.copytree(official, partial)
    state = _official_state(partial)
    dropped = sorted(k for k in state if k.startswith("language_model.model.layers.1."))
    save_file({k: v for k, v in state.items() if k not in dropped}, str(partial / "model.safetensors"))
    assert convert_main([str(partial), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"0 unmatched source keys, {len(dropped)} missing keys, 0 shape mismatches" in err
    assert all(k in err for k in dropped)


# ---------------------------------------------------------------------------------------------- SAM-2
@pytest.mark.parametrize("variant", SAM2_VARIANTS)
def test_sam2_variant_is_inferred_from_shapes(variant):
    assert infer_sam2_variant(sam2_shapes(bundled_sam2_config(variant))) == variant


def test_mangled_sam2_shapes_fail_clearly():
    shapes = sam2_shapes(bundled_sam2_config("sam2_hiera_l"))
    shapes["image_encoder.trunk.pos_embed"] = (1, 144, 8, 8)
    with pytest.raises(ConversionError, match=r"none of sam2's bundled variants.*closest is sam2_hiera_l") as error:
        infer_sam2_variant(shapes)
    assert "trunk embed_dim 144, 48 blocks in stages [2, 6, 36, 4]" in str(error.value)
    assert "image_encoder.trunk.pos_embed: (1, 144, 8, 8) != (1, 144, 7, 7)" in str(error.value)
    with pytest.raises(ConversionError, match="found: no SAM-2 weights"):
        infer_sam2_variant({})


def _meta_state(config: Sa2VAConfig) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in project_shapes(config).items()}


def test_real_geometry_on_meta_sa2va_8b_style():
    """Sa2VA-8B widths (InternViT-300M + InternLM2.5-7B, GQA 32/8, dynamic NTK rope, SAM 2.0 Hiera-L; two
    layers each to stay quick): project -> official -> project on meta tensors, SAM-2 variant inferred."""
    vision = {
        "hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 16, "intermediate_size": 4096,
        "image_size": [448, 448], "patch_size": [14, 14], "attention_bias": True, "use_qk_norm": False,
        "norm_type": "layer_norm",
    }  # fmt: skip
    text = {
        "model_type": "llama", "vocab_size": 92553, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "rope_theta": 1e6, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
    }  # fmt: skip
    mllm = {"model_type": "internvl", "vision_config": vision, "text_config": text, "image_token_id": 92546}
    config = Sa2VAConfig(
        mllm_config={**mllm, "tie_word_embeddings": False},
        sam2_config=bundled_sam2_config("sam2_hiera_l"),
        sam2_variant="sam2_hiera_l",
        template="internlm2_chat",
    )
    official = official_config(config, "internvl-internlm2")
    assert "sa2va_ros" not in official  # a bundled SAM-2: nothing beyond the official fields
    llm = official["llm_config"]
    assert llm["rope_scaling"] == {"type": "dynamic", "factor": 2.0} and llm["bias"] is False
    state = to_official_state_dict(official, _meta_state(config))  # q/k/v packed on meta tensors
    assert state["language_model.model.layers.0.attention.wqkv.weight"].shape == ((32 + 2 * 8) * 128, 4096)
    assert state["grounding_encoder.sam2_model.memory_encoder.fuser.layers.1.g_weight"].shape == (256,)
    back, converted = convert_official_state_dict(official, state, image_token_id=92546)
    assert back.sam2_variant == "sam2_hiera_l"
    rope = back.build_mllm_config().text_config.rope_parameters
    assert rope["rope_type"] == "dynamic" and rope["factor"] == 2.0 and rope["rope_theta"] == 1e6
    expected = project_shapes(config)
    assert {k: v.shape for k, v in converted.items()} == expected


def test_llm_configs_of_other_official_families():
    """InternLM2 fields (InternLM2Config defaults when absent) -> Llama; Phi-3's ``su`` rope -> longrope."""
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 28, "patch_size": 14, "qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm"}
    internlm2 = {"architectures": ["InternLM2ForCausalLM"], "vocab_size": 100, "hidden_size": 32,
                 "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                 "rope_scaling": {"type": "linear", "factor": 2.0}}
    phi3 = {"architectures": ["Phi3ForCausalLM"], "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4, "pad_token_id": 0,
            "max_position_embeddings": 1024, "original_max_position_embeddings": 256, "rope_theta": 10000.0,
            "rope_scaling": {"type": "su", "long_factor": [2.0] * 4, "short_factor": [1.0] * 4}}  # fmt: skip
    sam = bundled_sam2_config("sam2_hiera_t")
    official = {"model_type": "sa2va_chat", "template": "internlm2_chat", "vision_config": vision}
    config = convert_official_config({**official, "llm_config": internlm2}, "sam2_hiera_t", sam, image_token_id=7)
    mllm = config.build_mllm_config()
    text, vit = mllm.text_config, mllm.vision_config
    assert text.model_type == "llama" and text.num_key_value_heads == 4 and text.attention_bias  # bias=True
    assert text.rope_parameters["rope_type"] == "linear" and text.rope_parameters["factor"] == 2.0
    assert (vit.attention_bias, vit.use_qk_norm, vit.norm_type) == (False, True, "rms_norm")
    assert mllm.image_token_id == 7 and mllm.image_seq_length == 1 and not mllm.tie_word_embeddings
    assert (config.ps_version, config.max_dynamic_patch, config.use_thumbnail) == ("v1", 6, False)  # official
    config = convert_official_config({**official, "llm_config": phi3}, "sam2_hiera_t", sam, image_token_id=7)
    text = config.build_mllm_config().text_config
    assert text.model_type == "phi3" and text.rope_parameters["rope_type"] == "longrope"
    with pytest.raises(ConversionError, match=r"unsupported llm_config\.architectures"):
        convert_official_config({**official, "llm_config": {"architectures": ["MistralForCausalLM"]}}, None, sam, 7)


# ---------------------------------------------------------------------------------------------- tokenizers
def test_sentencepiece_tokenizer_matches_the_official_slow_tokenizer(tmp_path, spm_model):
    """InternLM2Tokenizer: split off added tokens, sentencepiece-encode each chunk, prepend <s>."""
    ids = _internlm2_tokenizer_dir(tmp_path, spm_model)
    tokenizer = load_official_tokenizer(tmp_path)
    sp = spm.SentencePieceProcessor(model_proto=spm_model)
    by_token = {t: i for i, t in ids.items()}
    splitter = re.compile("(" + "|".join(re.escape(t) for t in sorted(by_token, key=len, reverse=True)) + ")")

    def official(text: str) -> list[int]:
        out = [by_token["<s>"]]
        for chunk in splitter.split(text):
            out += [by_token[chunk]] if chunk in by_token else sp.encode(chunk) if chunk else []
        return out

    texts = [
        "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nPlease segment the mug.<|im_end|>\n",
        "<|im_start|>assistant\nSure, it is [SEG].<|im_end|>",
        "  two  spaces, ünïcode ☃ and digits 90210 zzqx",
        "The quick brown fox jumps over the lazy dog",
    ]
    for text in texts:
        assert tokenizer.encode(text) == official(text)
    assert all(tokenizer.convert_tokens_to_ids(t) == i for i, t in ids.items())
    assert tokenizer.decode(tokenizer.encode("Sure, it is the blue mug."), skip_special_tokens=True) == sp.decode(
        sp.encode("Sure, it is the blue mug.")
    )
    # a declared id the files cannot give is an error, not a silent remap
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    decoder = config["added_tokens_decoder"]
    decoder[str(int(max(decoder, key=int)) + 5)] = dict(decoder["3"], content="<gap>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="'<gap>' is declared with id"):
        load_official_tokenizer(tmp_path)


def test_tokenizer_without_image_context_or_with_ids_beyond_the_embeddings(checkpoints, tmp_path):
    official = checkpoints("internvl-qwen2").official
    broken = tmp_path / "no_img_context"
    shutil.copytree(official, broken)
    _edit_json(broken / "vocab.json", lambda vocab: vocab.pop("<IMG_CONTEXT>"))
    _edit_json(broken / "added_tokens.json", lambda added: added.pop("<IMG_CONTEXT>"))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        _edit_json(broken / name, _drop_token("<IMG_CONTEXT>"))
    with pytest.raises(ConversionError, match=r"lacks Sa2VA special tokens \['<IMG_CONTEXT>'\]"):
        load_official(broken)
    extra = tmp_path / "extra_token"
    shutil.copytree(official, extra)
    _edit_json(extra / "added_tokens.json", lambda added: added.update({"<new>": len(added) + 10_000}))
    with pytest.raises(ConversionError, match=r"'<new>': .* != declared"):
        load_official(extra)


def _edit_json(file: Path, edit: Callable[[Any], Any]) -> None:
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def _drop_token(content: str) -> Callable[[dict], None]:
    def drop(config: dict) -> None:
        decoder = config.get("added_tokens_decoder", {})
        for key in [k for k, t in decoder.items() if t["content"] == content]:
            del decoder[key]
        config["additional_special_tokens"].remove(content)

    return drop


def test_qwen3_vl_state_dict_converts(tmp_path):
    """Sa2VA-Qwen3-VL: nested text_config, ``model.model.visual`` / ``model.model.language_model`` keys."""
    from transformers import Qwen3VLConfig

    mllm = Qwen3VLConfig(
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "patch_size": 16, "num_position_embeddings": 16, "deepstack_visual_indexes": [0]},
        text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "intermediate_size": 64, "vocab_size": 100, "head_dim": 8,
                     "rope_scaling": {"rope_type": "default", "mrope_section": [1, 1, 2], "mrope_interleaved": True}},
        image_token_id=5,
    )  # fmt: skip
    sam = {"sam2_variant": "tiny", "sam2_config": tiny_sam2_config()}
    official = {**mllm.to_dict(), "model_type": "sa2va_chat", "template": "qwen_chat", "sa2va_ros": sam}
    config = Sa2VAConfig(mllm_config=mllm.to_dict(), sam2_config=tiny_sam2_config(), template="qwen_chat")
    project = {k: torch.randn(shape) for k, shape in project_shapes(config).items()}
    renames = [
        (r"^mllm\.", "model."),
        (r"^grounding_encoder\.", "grounding_encoder.sam2_model."),
        (r"\.gamma$", ".g_weight"),
    ]
    state = {}
    for key, value in project.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        state[key] = value
    assert "model.model.visual.deepstack_merger_list.0.norm.weight" in state
    back, converted = convert_official_state_dict(official, state)
    assert back.family == "qwen3_vl"
    assert converted.keys() == project.keys()
    assert all(torch.equal(converted[k], project[k]) for k in project)
