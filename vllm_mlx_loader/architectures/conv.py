"""Depthwise convolutions (Mamba, gated DeltaNet, short convolutions): mlx-lm moves their weight from PyTorch's
`[channels, 1, kernel]` to MLX's `[channels, kernel, 1]` when it converts; the inverse moves it back. mlx-lm decides
by the layout it finds (a weight already in MLX's layout is left alone), and so do we."""

from __future__ import annotations

import dataclasses

from ..stored import Inverse, Weight

CONV1D_TO_TORCH = Inverse(
    "conv1d [C, K, 1] -> [C, 1, K]", lambda t: t.movedim(1, 2).contiguous(), lambda s: (s[0], s[2], s[1])
)


def in_mlx_layout(weight: Weight, suffix: str = "conv1d.weight") -> bool:
    return weight.name.endswith(suffix) and len(weight.stored_shape) == 3 and weight.stored_shape[-1] == 1


def restore_conv(weights: list[Weight], suffix: str = "conv1d.weight") -> list[Weight]:
    """`weights` with every convolution in MLX's layout moved back to PyTorch's."""
    return [dataclasses.replace(w, inverse=CONV1D_TO_TORCH) if in_mlx_layout(w, suffix) else w for w in weights]
