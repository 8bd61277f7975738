"""Which architectures the loader maps, and the dense shape each of their weights must have.

MLX names are the Hugging Face names for the dense architectures listed here (mlx-lm's `sanitize` only
drops a tied `lm_head`), so the mapping is a shape table: it lets the reader check bits and group size
against the model's own sizes before a byte is dequantized.
"""

from __future__ import annotations

from typing import Any

from .errors import MLXCheckpointError

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM",)

def architecture(config: dict[str, Any], where: str) -> str:
    """Return the checkpoint's architecture, or raise if the loader has no mapping for it."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise MLXCheckpointError(
            where,
            f"architecture {arch!r} has no MLX-to-vLLM mapping in vllm-mlx-loader "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}).",
            "Dequantize it with `mlx_lm.convert -d` and serve the BF16 copy, or open an issue.",
        )
    return arch


def expected_weights(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every dense weight a Qwen3 checkpoint must hold, with its shape, from config.json's sizes."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    weights = {"model.embed_tokens.weight": (config["vocab_size"], hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        weights["lm_head.weight"] = (config["vocab_size"], hidden)
    layer = {
        "self_attn.q_proj.weight": (heads * head_dim, hidden),
        "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.o_proj.weight": (hidden, heads * head_dim),
        "self_attn.q_norm.weight": (head_dim,),
        "self_attn.k_norm.weight": (head_dim,),
        "mlp.gate_proj.weight": (inter, hidden),
        "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }
    for i in range(config["num_hidden_layers"]):
        weights.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    return weights
