"""The CUDA int4 kernel: vLLM's GPTQ-Marlin on MLX's codes as uint4b8, plus the split form's correction.

MLX packs eight 4-bit codes per uint32 along the input dimension, low bits first, `[N, K/8]`; GPTQ packs them the
same way along K in `[K/8, N]`: the transpose is GPTQ's layout, and MLX's q in [0, 16) are uint4b8 codes (Marlin
computes s·(q - 8)) as they are. Marlin repacks that layout and permutes the `[K/G, N]` scales for its tiles.

No GPU with vLLM's CUDA build ran this (the project's lent GPUs cannot take vLLM's CUDA wheel): `ops` is the seam
where tests put references of the four entry points' documented semantics, and `self_check` makes the first real
run compare every layer with the checkpoint's dequantized weight at load time and refuse a mismatch by name.
"""

from __future__ import annotations

from typing import Any

import torch

from ..w4a16.kernel import Int4Kernel, Tensors, correction
from . import compat


class MarlinInt4(Int4Kernel):
    name = "gptq_marlin"
    has_rows = False  # Marlin's tiles are its own: embeddings stay BF16 on CUDA
    self_check = True

    def __init__(self, ops: Any = None) -> None:
        self.ops = ops if ops is not None else compat.marlin_ops()
        self._workspace: torch.Tensor | None = None

    def refusal(self, n: int, k: int, group_size: int, dtype: torch.dtype) -> str | None:
        if dtype not in (torch.bfloat16, torch.float16):
            return f"Marlin computes in bfloat16 or float16, the model's dtype is {dtype}"
        return self.ops.supports_shape(n, k, group_size)

    def prepare(self, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int) -> Tensors:
        n, k = weight.shape[0], weight.shape[1] * 8
        scales_t = scales.T.contiguous()
        return {
            "weight": self.ops.repack(weight.T.contiguous(), k, n),  # GPTQ's layout is MLX's, transposed
            "marlin_scales": self.ops.permute_scales(scales_t, k, n, group_size),
            "scales": scales_t, "biases": biases.T.contiguous(),
        }

    def apply(self, tensors: Tensors, x: torch.Tensor, group_size: int) -> torch.Tensor:
        if self._workspace is None or self._workspace.device != x.device:
            self._workspace = self.ops.workspace(x.device)
        n, k = tensors["scales"].shape[1], x.shape[-1]
        out = self.ops.linear(x, tensors["weight"], tensors["marlin_scales"], self._workspace, n, k)
        return (out.float() + correction(x, tensors["scales"], tensors["biases"], group_size)).to(x.dtype)
