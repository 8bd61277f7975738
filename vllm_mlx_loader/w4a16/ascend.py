"""The Ascend int4 kernel: `torch_npu.npu_weight_quant_batchmatmul` on signed int4 codes, plus the correction.

torch_npu documents `npu_weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset=None, ...,
antiquant_group_size=G)` as x @ ((weight + offset) · scale) with `weight` `[K, N]` int4 (packed from int32 values
in [-8, 7] by `npu_convert_weight_to_int4pack`, eight per int32 along N) and `antiquant_scale` `[K/G, N]` in x's
dtype; G a multiple of 32 (64 or 128 in the NZ format), K and N at most 65,535. With weight = q - 8 and no offset
it is the split form's symmetric product; the correction groupsum(x)·(b + 8·s)ᵀ is added in float32 (an offset
8 + b/s per group would fold it in, but in FP16 it overflows where s is tiny, and it rounds b/s).

No Ascend hardware ran this: `ops` is the seam where tests put a reference of the two ops' documented semantics.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from ..dequant import unpack_codes
from ..split_form import ZERO
from .kernel import SplitKernel, Tensors, half_scales

LARGEST_DIM = 65535


def torch_npu_ops() -> Any:
    import torch_npu

    return SimpleNamespace(
        pack=torch_npu.npu_convert_weight_to_int4pack, matmul=torch_npu.npu_weight_quant_batchmatmul
    )


class AscendInt4(SplitKernel):
    name = "npu_weight_quant_batchmatmul"
    has_rows = False  # the int4pack layout is the op's own: embeddings stay BF16 on Ascend
    self_check = True  # no NPU has run it: every layer is compared with its dequantized weight at load time

    def __init__(self, ops: Any = None) -> None:
        self.ops = ops if ops is not None else torch_npu_ops()

    @classmethod
    def refusal(cls, n: int, k: int, group_size: int, dtype: torch.dtype) -> str | None:
        if dtype not in (torch.bfloat16, torch.float16):
            return f"npu_weight_quant_batchmatmul computes in bfloat16 or float16, the model's dtype is {dtype}"
        if group_size % 32:
            return f"npu_weight_quant_batchmatmul takes group sizes that are multiples of 32, not {group_size}"
        if n % 8 or n > LARGEST_DIM or k > LARGEST_DIM:
            return f"npu_weight_quant_batchmatmul takes N a multiple of 8 and N, K <= {LARGEST_DIM}, not {n} x {k}"
        return None

    def prepare(self, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int) -> Tensors:
        signed = unpack_codes(weight, 4).sub_(ZERO).T.contiguous()  # [K, N] int32 in [-8, 8)
        return {"weight": self.ops.pack(signed), "scales": half_scales(scales.T.contiguous(), group_size),
                "biases": biases.T.contiguous()}

    def product(self, tensors: Tensors, x: torch.Tensor, group_size: int) -> torch.Tensor:
        return self.ops.matmul(x, tensors["weight"], tensors["scales"], antiquant_group_size=group_size)
