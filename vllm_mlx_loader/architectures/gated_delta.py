"""Qwen3-Next and Qwen3.5 (gated DeltaNet layers beside full attention): mlx-lm's `sanitize` changes values.

On conversion it moves the depthwise `conv1d` weight from PyTorch's `[channels, 1, kernel]` to MLX's
`[channels, kernel, 1]`, and adds 1 to the zero-centred RMSNorm weights (`input_layernorm`,
`post_attention_layernorm`, the final `norm`, `q_norm`, `k_norm`; not the gated `linear_attn.norm`), because
MLX's norm multiplies by `w` where the Hugging Face and vLLM models multiply by `1 + w`. The inverses give the
Hugging Face tensors back exactly: `w + 1` rounded to BF16 lies in [0.5, 2), where subtracting 1 is exact, so
vLLM's `1 + w` equals MLX's stored weight bit for bit.

mlx-lm decides both from the `conv1d` layout (Qwen3.5: `has_unsanitized_conv1d`); so do we: a checkpoint whose
`conv1d` is still in PyTorch's layout was never sanitized and is fed as stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ..stored import Inverse, Weight
from .conv import CONV1D_TO_TORCH, in_mlx_layout

NORM_SUFFIXES = (
    ".input_layernorm.weight", ".post_attention_layernorm.weight", "model.norm.weight", ".q_norm.weight",
    ".k_norm.weight",
)

MINUS_ONE = Inverse("norm weight - 1", lambda t: (t.float() - 1.0).to(t.dtype))


def sanitized_by_mlx(weights: Iterable[Weight]) -> bool:
    """True when the `conv1d` weights are in MLX's layout, i.e. mlx-lm's sanitize ran on these values."""
    return any(in_mlx_layout(w) for w in weights)


def undo_sanitize(weights: list[Weight]) -> list[Weight]:
    """`weights` (named as stored) with the inverse of each value change mlx-lm's sanitize made."""
    if not sanitized_by_mlx(weights):
        return weights
    out = []
    for w in weights:
        if _is_conv1d(w):
            w = dataclasses.replace(w, inverse=CONV1D_TO_TORCH)
        elif w.name.endswith(NORM_SUFFIXES) and len(w.shape) == 1:
            w = dataclasses.replace(w, inverse=MINUS_ONE)
        out.append(w)
    return out


def _is_conv1d(weight: Weight) -> bool:
    return weight.name.endswith("conv1d.weight") and len(weight.source.shape) == 3
