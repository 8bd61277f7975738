"""MLX affine dequantization as plain torch math: packed codes + scales + biases in, dense weights out.

Only ops that torch_npu runs on the device are used (../shared/vllm-notes.md §5): int32 tensors
(never uint32), right shifts by Python ints, `&`, integer multiply/add, float math. No device-specific
code: the tensors' device decides where it runs.

Codes are an LSB-first bit stream per row (../shared/mlx-format.md §1.4). For 1/2/4/8 bits a code never
crosses a 32-bit word; for 3/5/6 bits codes straddle bytes and words, so they are rebuilt from byte pairs.
"""

from __future__ import annotations

from typing import Literal

import torch

Rounding = Literal["fused", "mlx_cpu"]
ROUNDINGS: tuple[Rounding, ...] = ("fused", "mlx_cpu")

# bytes in one pack of codes for the bit widths that do not divide 32 (3 bytes = 8 x 3-bit or 4 x 6-bit).
_PACK_BYTES = {3: 3, 5: 5, 6: 3}


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Unpack `[..., words]` uint32/int32 codes into `[..., words * 32 // bits]` int32 codes."""
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        words = packed.view(torch.int32)
        # Arithmetic shift sign-extends, and the mask removes it again.
        codes = [(words >> (bits * k)) & mask for k in range(32 // bits)]
        return torch.stack(codes, dim=-1).flatten(-2)
    pack = _PACK_BYTES[bits]
    data = packed.view(torch.uint8)
    data = data.reshape(*data.shape[:-1], -1, pack).to(torch.int32)
    # Append a zero byte so the last code of a pack can read "the next byte" too.
    data = torch.cat([data, torch.zeros_like(data[..., :1])], dim=-1)
    codes = []
    for k in range(pack * 8 // bits):
        first, shift = divmod(k * bits, 8)
        pair = data[..., first] + data[..., first + 1] * 256
        codes.append((pair >> shift) & mask)
    return torch.stack(codes, dim=-1).flatten(-2)


def dequantize_affine(
    weight: torch.Tensor,
    scales: torch.Tensor,
    biases: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    dtype: torch.dtype = torch.bfloat16,
    rounding: Rounding = "fused",
) -> torch.Tensor:
    """Dequantize `w = scales * q + biases` per group of `group_size` codes along the last axis.

    `rounding="fused"` computes in float32 and rounds once to `dtype` (what MLX's Metal kernels compute).
    `rounding="mlx_cpu"` computes in the scales' dtype with two roundings, `(q * s) + b`, which is what
    `mx.dequantize` on the CPU (and so `mlx_lm.convert -d`) returns, bit for bit.
    """
    codes = unpack_codes(weight, bits)
    shape = codes.shape
    codes = codes.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    if rounding == "fused":
        out = codes.to(torch.float32) * scales.to(torch.float32).unsqueeze(-1)
        out += biases.to(torch.float32).unsqueeze(-1)
    elif rounding == "mlx_cpu":
        out = codes.to(scales.dtype) * scales.unsqueeze(-1)
        out = out + biases.unsqueeze(-1)
    else:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return out.reshape(shape).to(dtype)
