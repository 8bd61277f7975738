"""The CUDA int4 kernels: vLLM's Machete on SM90 (MLX's biases as its float zero points: no correction), else
GPTQ-Marlin on MLX's codes as uint4b8, plus the split form's correction.

MLX packs eight 4-bit codes per uint32 along the input dimension, low bits first, `[N, K/8]`; GPTQ packs them the
same way along K in `[K/8, N]`: the transpose is GPTQ's layout, and MLX's q in [0, 16) are uint4b8 codes (Marlin
computes s·(q - 8)) as they are. Marlin repacks that layout and permutes the `[K/G, N]` scales for its tiles.

Machete computes x @ (q·s + z) with float group zeros z added after the scale (vLLM's own GPTQ path passes
z = -s·zero_point): with z = b that is MLX's w = s·q + b exactly, codes as uint4 in the same GPTQ layout.

No GPU with vLLM's CUDA build ran these (the project's lent GPUs cannot take vLLM's CUDA wheel): `ops` is the seam
where tests put references of their entry points' documented semantics, and `self_check` makes the first real
run compare every layer with the checkpoint's dequantized weight at load time and refuse a mismatch by name.
"""

from __future__ import annotations

from typing import Any

import torch

from ..w4a16.kernel import Int4Kernel, SplitKernel, Tensors, half_scales
from . import compat


class MarlinInt4(SplitKernel):
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
        scales_t = half_scales(scales.T.contiguous(), group_size)
        return {
            "weight": self.ops.repack(weight.T.contiguous(), k, n),  # GPTQ's layout is MLX's, transposed
            "marlin_scales": self.ops.permute_scales(scales_t, k, n, group_size),
            "scales": scales_t, "biases": biases.T.contiguous(),
        }

    def product(self, tensors: Tensors, x: torch.Tensor, group_size: int) -> torch.Tensor:
        if self._workspace is None or self._workspace.device != x.device:
            self._workspace = self.ops.workspace(x.device)
        n, k = tensors["scales"].shape[1], x.shape[-1]
        return self.ops.linear(x, tensors["weight"], tensors["marlin_scales"], self._workspace, n, k)


class MacheteInt4(Int4Kernel):
    """MLX's affine weight as Machete's uint4 with scales and float zeros (= MLX's biases): w = s·q + b, the tile in
    the model's dtype like the BF16 path's weight, no correction (SM90)."""

    name = "machete"
    has_rows = False  # Machete's prepacked layout is its own: embeddings stay BF16 on CUDA
    self_check = True

    def __init__(self, ops: Any = None) -> None:
        self.ops = ops if ops is not None else compat.machete_ops()

    def refusal(self, n: int, k: int, group_size: int, dtype: torch.dtype) -> str | None:
        if dtype not in (torch.bfloat16, torch.float16):
            return f"Machete computes in bfloat16 or float16, the model's dtype is {dtype}"
        return self.ops.supports(n, k, group_size, dtype)

    def prepare(self, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int) -> Tensors:
        # scales are created in the model's dtype (`MLXLinearMethod`): that is the activations' dtype too
        return {"weight": self.ops.prepack(weight.T, scales.dtype),  # GPTQ's layout: MLX's, transposed (a view)
                "scales": scales.T.contiguous(), "biases": biases.T.contiguous().to(scales.dtype)}

    def apply(self, tensors: Tensors, x: torch.Tensor, group_size: int) -> torch.Tensor:
        # Machete takes activations in its scales' dtype (the model's); a float32 x (MoE experts) is rounded to it
        out = self.ops.linear(x.to(tensors["scales"].dtype), tensors["weight"], tensors["scales"], tensors["biases"],
                              group_size)
        return out.to(x.dtype)
