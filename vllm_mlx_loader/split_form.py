"""MLX 4-bit affine weights in the form int4 kernels take: signed codes, their scales, and a small correction.

MLX stores w = s·q + b per group of G input columns, q in [0, 16), s and b floats. The int4 kernels vLLM and
torch_npu have (Marlin's uint4b8, the CPU's `cpu_gemm_wna16`, `npu_weight_quant_batchmatmul`) compute s·(q - z)
with an integer z or none, and MLX's float b is z·s for an integer z in only part of the groups. Written with z = 8:

    w = s·(q - 8) + (b + 8·s)                  per group, the second term constant over the group
    x·wᵀ = x·(s·(q - 8))ᵀ + groupsum(x)·(b + 8·s)ᵀ

where groupsum(x) `[M, K/G]` sums x over each group: a symmetric int4 product plus a product K/G times smaller
than the layer's. The algebra is exact; what differs from exact math is the kernel's own rounding. This module is
the backend-free half of opt-in W4A16 (issue 21): the split itself and a torch reference of what a kernel plus the
correction compute, against which each backend's kernel class is tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dequant import check_affine_args, unpack_codes

BITS = 4
ZERO = 8  # the integer zero point every int4 kernel can take: q - 8 is signed int4


@dataclass(frozen=True)
class SplitForm:
    """One MLX 4-bit affine weight `[N, K]` split for a symmetric int4 kernel."""

    codes: torch.Tensor  # [N, K] int8, q - 8 in [-8, 8)
    scales: torch.Tensor  # [N, K/G], the checkpoint's dtype
    offsets: torch.Tensor  # [N, K/G] float32: b + 8·s, the correction's weights
    group_size: int


def split(weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int) -> SplitForm:
    """Split MLX's packed 4-bit `weight` `[N, K/8]` (uint32 words) with its `scales` and `biases` `[N, K/G]`;
    `ValueError` on arguments that do not describe one 4-bit affine tensor."""
    check_affine_args(weight, scales, biases, BITS, group_size, torch.float32, "fused")
    if weight.dim() != 2:
        raise ValueError(f"split: a linear layer's weight is 2-D, got {list(weight.shape)}")
    codes = unpack_codes(weight, BITS, torch.int8).sub_(ZERO)
    offsets = biases.float() + ZERO * scales.float()
    return SplitForm(codes, scales, offsets, group_size)


def groupsum(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """`[..., K]` -> `[..., K/G]`: x summed over each group of `group_size` columns, in float32 at least."""
    return x.unflatten(-1, (-1, group_size)).sum(-1, dtype=torch.promote_types(x.dtype, torch.float32))


def correction(x: torch.Tensor, form: SplitForm) -> torch.Tensor:
    """groupsum(x)·(b + 8·s)ᵀ, `[..., N]` in float32 (float64 for float64 x)."""
    sums = groupsum(x, form.group_size)
    return sums @ form.offsets.to(sums.dtype).T


def symmetric_product(x: torch.Tensor, form: SplitForm, dtype: torch.dtype) -> torch.Tensor:
    """A torch reference of a symmetric int4 kernel computing in `dtype`: x·(s·(q - 8))ᵀ, the weight made in `dtype`
    (BF16 for the kernels above: their dequantized tile is BF16)."""
    dense = (form.codes.to(dtype).unflatten(-1, (-1, form.group_size)) * form.scales.to(dtype)[..., None]).flatten(-2)
    return x.to(dtype) @ dense.T


def split_matmul(x: torch.Tensor, form: SplitForm, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x·wᵀ as a kernel computing in `dtype` plus the float32 correction compute it, `[..., N]` in float32 (float64
    for `dtype` float64)."""
    out = correction(x, form)
    return symmetric_product(x, form, dtype).to(out.dtype) + out
