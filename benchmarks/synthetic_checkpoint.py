"""Write a synthetic MLX checkpoint of a real Qwen3 shape, for benchmarks at scale.

    python benchmarks/synthetic_checkpoint.py DST --shape qwen3-8b [--bits 4 --group-size 128]

Exact names, shapes and dtypes of an `mlx_lm.convert -q` output (every linear, embed_tokens and, when
untied, lm_head quantized; BF16 scales, biases and norms; MLX's 5 GB shard limit and file names; an
index; `config.json` with `quantization` and `quantization_config`). MoE shapes (`qwen3-30b-a3b-4l`: four of
Qwen3-30B-A3B's 48 layers, its 128 experts each) store their experts as mlx-lm does, stacked
(`mlp.switch_mlp.{gate,up,down}_proj` `[experts, out, in]`), and the router `mlp.gate` at 8 bits, group 64, as
mlx-lm's default recipe quantizes it. The codes are random; scales and
biases are realistic (|scale| ~ 2e-3..1e-2, either sign, bias = -q0 * scale as MLX's quantizer makes them),
so dequantized weights have a real model's range. Not a model that says anything: for speed and memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

SHAPES = {
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, vocab_size=1024, tie_word_embeddings=False),
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
    "qwen3-30b-a3b-4l": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=4, num_attention_heads=32,
                             num_key_value_heads=4, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
                             num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
                             decoder_sparse_step=1, mlp_only_layers=[]),
}
ROUTER = {"group_size": 64, "bits": 8}  # mlx-lm quantizes MoE routers (`mlp.gate`) at 8 bits
MAX_FILE_BYTES = 5 << 30  # mlx_lm.utils.MAX_FILE_SIZE_GB


def config_for(shape: str, bits: int, group_size: int) -> dict:
    quant = {"group_size": group_size, "bits": bits, "mode": "affine"}
    moe = "num_experts" in SHAPES[shape]
    if moe:
        quant.update({f"model.layers.{n}.mlp.gate": dict(ROUTER) for n in range(SHAPES[shape]["num_hidden_layers"])})
    return {
        "architectures": ["Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM"],
        "model_type": "qwen3_moe" if moe else "qwen3", "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000, "rope_scaling": None,
        "torch_dtype": "bfloat16", "use_cache": True, "sliding_window": None, "use_sliding_window": False,
        **SHAPES[shape], "quantization": quant, "quantization_config": dict(quant),
    }


def dense_shapes(config: dict) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, dense shape, quantized) in the order mlx-lm saves them."""
    h, i = config["hidden_size"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    out = [("model.embed_tokens", (config["vocab_size"], h), True)]
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}"
        if "num_experts" in config:
            e, m = config["num_experts"], config["moe_intermediate_size"]
            mlp = [(f"{p}.mlp.gate", (e, h), True), (f"{p}.mlp.switch_mlp.down_proj", (e, h, m), True),
                   (f"{p}.mlp.switch_mlp.gate_proj", (e, m, h), True), (f"{p}.mlp.switch_mlp.up_proj", (e, m, h), True)]
        else:
            mlp = [(f"{p}.mlp.down_proj", (h, i), True), (f"{p}.mlp.gate_proj", (i, h), True),
                   (f"{p}.mlp.up_proj", (i, h), True)]
        out += [
            (f"{p}.input_layernorm.weight", (h,), False), *mlp,
            (f"{p}.post_attention_layernorm.weight", (h,), False),
            (f"{p}.self_attn.k_norm.weight", (config["head_dim"],), False), (f"{p}.self_attn.k_proj", (kv, h), True),
            (f"{p}.self_attn.o_proj", (h, q), True), (f"{p}.self_attn.q_norm.weight", (config["head_dim"],), False),
            (f"{p}.self_attn.q_proj", (q, h), True), (f"{p}.self_attn.v_proj", (kv, h), True),
        ]
    out.append(("model.norm.weight", (h,), False))
    if not config["tie_word_embeddings"]:
        out.append(("lm_head", (config["vocab_size"], h), True))
    return out


def quantized_tensors(prefix: str, shape: tuple[int, ...], bits: int, gs: int, gen: torch.Generator):
    *lead, in_f = shape
    words = torch.randint(-(2**31), 2**31 - 1, (*lead, in_f * bits // 32), dtype=torch.int32, generator=gen)
    groups = (*lead, in_f // gs)
    magnitude = torch.empty(groups).uniform_(2e-3, 1e-2, generator=gen)
    sign = torch.randint(0, 2, groups, generator=gen) * 2 - 1
    scales = (magnitude * sign).to(torch.bfloat16)
    q0 = torch.randint(0, 2**bits, groups, generator=gen)
    biases = (-q0 * scales.float()).to(torch.bfloat16)
    return {f"{prefix}.weight": words.view(torch.uint32), f"{prefix}.scales": scales, f"{prefix}.biases": biases}


def write(dst: Path, shape: str, bits: int = 4, group_size: int = 128, tokenizer: Path | None = None,
          seed: int = 0) -> Path:
    config = config_for(shape, bits, group_size)
    dst.mkdir(parents=True, exist_ok=False)
    gen = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, dense, quantized in dense_shapes(config):
        override = config["quantization"].get(name, {})
        tensors = (quantized_tensors(name, dense, override.get("bits", bits), override.get("group_size", group_size),
                                     gen) if quantized else {name: torch.ones(dense, dtype=torch.bfloat16)})
        nbytes = sum(t.nbytes for t in tensors.values())
        if shards[-1] and size + nbytes > MAX_FILE_BYTES:
            shards.append({})
            size = 0
        shards[-1].update(tensors)
        size += nbytes
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        file = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, dst / file, metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(shard, file))
        total += sum(t.nbytes for t in shard.values())
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=4)
    )
    (dst / "config.json").write_text(json.dumps(config, indent=4, sort_keys=True))
    if tokenizer is not None:
        for path in tokenizer.iterdir():
            if path.name.startswith("tokenizer") or path.name == "chat_template.jinja":
                shutil.copy2(path, dst / path.name)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-8b")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--tokenizer", type=Path, help="copy tokenizer files from this directory")
    args = parser.parse_args(argv)
    write(args.dst, args.shape, args.bits, args.group_size, args.tokenizer)
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
