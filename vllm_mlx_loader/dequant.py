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

from . import cpu_kernel

Rounding = Literal["fused", "mlx_cpu"]
ROUNDINGS: tuple[Rounding, ...] = ("fused", "mlx_cpu")

# bytes in one pack of codes for the bit widths that do not divide 32 (3 bytes = 8 x 3-bit or 4 x 6-bit).
_PACK_BYTES = {3: 3, 5: 5, 6: 3}
_CPU_BLOCK_BYTES = 1 << 22  # 4 MiB of float32 measured fastest on 2 EPYC cores (256 KiB..16 MiB tried)


def unpack_codes(
    packed: torch.Tensor, bits: int, dtype: torch.dtype = torch.int32, *,
    out: torch.Tensor | None = None, scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unpack `[..., words]` uint32/int32 codes into `[..., words * 32 // bits]` codes of `dtype`.

    `out` receives the codes if given; `scratch` (int32, shaped like `packed`) lets 1/2/4/8-bit unpacking
    reuse one buffer instead of allocating two temporaries per code position (on the CPU, fresh memory
    costs a page fault per 4 KiB).
    """
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        words = packed.view(torch.int32)
        per = 32 // bits
        if out is None:
            out = torch.empty(*words.shape, per, dtype=dtype, device=words.device)
        codes = out.view(*words.shape, per)
        for k in range(per):
            if scratch is None:
                # Arithmetic shift sign-extends, and the mask removes it again.
                codes[..., k] = (words >> (bits * k)) & mask
            else:  # CPU only: torch_npu runs `>>`, not bitwise_right_shift
                torch.bitwise_right_shift(words, bits * k, out=scratch)
                codes[..., k] = scratch.bitwise_and_(mask)
        return codes.flatten(-2)
    pack = _PACK_BYTES[bits]
    data = packed.view(torch.uint8)
    data = data.reshape(*data.shape[:-1], -1, pack).to(torch.int32)
    # Append a zero byte so the last code of a pack can read "the next byte" too.
    data = torch.cat([data, torch.zeros_like(data[..., :1])], dim=-1)
    codes = torch.empty(*data.shape[:-1], pack * 8 // bits, dtype=dtype, device=data.device)
    for k in range(pack * 8 // bits):
        first, shift = divmod(k * bits, 8)
        codes[..., k] = ((data[..., first] + data[..., first + 1] * 256) >> shift) & mask
    codes = codes.flatten(-2)
    return codes if out is None else out.copy_(codes)


def dequantize_affine(
    weight: torch.Tensor,
    scales: torch.Tensor,
    biases: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    dtype: torch.dtype = torch.bfloat16,
    rounding: Rounding = "fused",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantize `w = scales * q + biases` per group of `group_size` codes along the last axis.

    `rounding="fused"` computes in float32 and rounds once to `dtype` (what MLX's Metal kernels compute).
    `rounding="mlx_cpu"` computes in the scales' dtype with two roundings, `(q * s) + b`, which is what
    `mx.dequantize` on the CPU (and so `mlx_lm.convert -d`) returns, bit for bit.

    Three paths compute the same bits: the C kernel on the CPU where it is built (`cpu_kernel`), row blocks
    of torch ops on the CPU otherwise, and whole-tensor torch ops on accelerators. `out`: a contiguous
    CPU tensor of the result's shape and `dtype` to write into (the CPU paths write there directly).
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    w = weight.reshape(-1, weight.shape[-1])
    s, b = scales.reshape(-1, scales.shape[-1]), biases.reshape(-1, biases.shape[-1])
    flat_out = None if out is None else out.view(w.shape[0], -1)
    if weight.device.type != "cpu":
        dense = dequantize_whole(w, s, b, bits, group_size, dtype, rounding)
        dense = dense if out is None else flat_out.copy_(dense)
    elif cpu_kernel.supports(s.dtype, b.dtype, dtype, group_size, rounding):
        dense = cpu_kernel.dequantize(w, s, b, bits, group_size, dtype, rounding, flat_out)
    else:
        dense = dequantize_blocks(w, s, b, bits, group_size, dtype, rounding, flat_out)
    return dense.reshape(*weight.shape[:-1], dense.shape[-1])


def dequantize_blocks(
    w: torch.Tensor, s: torch.Tensor, b: torch.Tensor, bits: int, group_size: int, dtype: torch.dtype,
    rounding: Rounding, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The CPU path without the C kernel: blocks of rows, in buffers reused from block to block, keep the
    temporaries in cache and off the page-fault path; the dense output is the only fresh allocation."""
    compute = torch.float32 if rounding == "fused" else s.dtype
    in_features = s.shape[-1] * group_size
    out = torch.empty(w.shape[0], in_features, dtype=dtype) if out is None else out
    step = min(w.shape[0], max(1, _CPU_BLOCK_BYTES // (in_features * 4)))
    codes_buf = torch.empty(step, in_features, dtype=compute)
    scratch = torch.empty(step, w.shape[1], dtype=torch.int32) if 32 % bits == 0 else None
    for r in range(0, w.shape[0], step):
        n = min(step, w.shape[0] - r)
        rows = slice(r, r + n)
        codes = unpack_codes(w[rows], bits, out=codes_buf[:n], scratch=None if scratch is None else scratch[:n])
        _scale(codes, s[rows], b[rows], group_size, rounding)
        out[rows] = codes
    return out


def dequantize_whole(
    w: torch.Tensor, s: torch.Tensor, b: torch.Tensor, bits: int, group_size: int, dtype: torch.dtype,
    rounding: Rounding,
) -> torch.Tensor:
    """The accelerator path: each plain op (the ones torch_npu runs) once over the whole `[rows, words]` tensor."""
    codes = unpack_codes(w, bits, torch.float32 if rounding == "fused" else s.dtype)
    _scale(codes, s, b, group_size, rounding)
    return codes.to(dtype)


def _scale(codes: torch.Tensor, s: torch.Tensor, b: torch.Tensor, group_size: int, rounding: Rounding) -> None:
    """`codes = codes * s + b` in place, per group; codes are float32 (fused) or the scales' dtype."""
    grouped = codes.view(codes.shape[0], -1, group_size)
    if rounding == "fused":
        grouped.mul_(s.to(torch.float32).unsqueeze(-1)).add_(b.to(torch.float32).unsqueeze(-1))
    else:  # one rounding after the product, one after the sum, as mx.dequantize on the CPU
        grouped.mul_(s.unsqueeze(-1))
        grouped.add_(b.unsqueeze(-1))
