"""Which architectures the loader maps, and the dense shape each of their weights must have.

MLX names are the Hugging Face names for the dense architectures listed here (mlx-lm's `sanitize` only
drops a tied `lm_head`), so the mapping is a shape table: it lets the reader check bits and group size
against the model's own sizes before a byte is dequantized.
"""

from __future__ import annotations

from typing import Any

from .errors import MLXCheckpointError

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM",)
_MAX_SIZE = 1 << 24  # no dimension of a real model comes near; bounds what a hostile config can make us build
_MAX_LAYERS = 4096

def architecture(config: dict[str, Any], where: str) -> str:
    """Return the checkpoint's architecture, or raise if the loader has no mapping for it."""
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else archs
    if not isinstance(arch, str) or arch not in SUPPORTED_ARCHITECTURES:
        raise MLXCheckpointError(
            where,
            f"architecture {arch!r} has no MLX-to-vLLM mapping in vllm-mlx-loader "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}).",
            "Dequantize it with `mlx_lm.convert -d` and serve the BF16 copy, or open an issue.",
        )
    return arch


def _size(config: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = config.get(key)
    if value is None and default is not None:
        return default
    if type(value) is not int or not 0 < value <= _MAX_SIZE:
        raise MLXCheckpointError(where, f"{key} must be a positive integer, found {value!r}.")
    return value


def expected_weights(config: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    """Every dense weight a Qwen3 checkpoint must hold, with its shape, from config.json's sizes."""
    hidden = _size(config, "hidden_size", where)
    heads = _size(config, "num_attention_heads", where)
    kv_heads = _size(config, "num_key_value_heads", where, default=heads)
    head_dim = _size(config, "head_dim", where, default=max(1, hidden // heads))
    inter = _size(config, "intermediate_size", where)
    vocab = _size(config, "vocab_size", where)
    layers = _size(config, "num_hidden_layers", where)
    if layers > _MAX_LAYERS:
        raise MLXCheckpointError(where, f"num_hidden_layers must be at most {_MAX_LAYERS}, found {layers}.")
    tied = config.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise MLXCheckpointError(where, f"tie_word_embeddings must be true or false, found {tied!r}.")
    weights = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tied:
        weights["lm_head.weight"] = (vocab, hidden)
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
    for i in range(layers):
        weights.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    return weights
