"""MLX affine dequantization as plain torch math: packed codes + scales + biases in, dense weights out.

Only ops that torch_npu runs on the device are used (docs/compatibility.md, "torch_npu"): int32 tensors
(never uint32), right shifts by Python ints, `&`, integer multiply/add, float math. No device-specific
code: the tensors' device decides where it runs.

Codes are an LSB-first bit stream per row (docs/format.md). For 1/2/4/8 bits a code never
crosses a 32-bit word; for 3/5/6 bits codes straddle bytes and words, so they are rebuilt from byte pairs
(each byte column widened to int32 on its own, so no int32 copy of the whole block is made).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from . import cpu_kernel
from .stored import AFFINE_BITS

Rounding = Literal["fused", "mlx_cpu"]
ROUNDINGS: tuple[Rounding, ...] = ("fused", "mlx_cpu")

# bytes in one pack of codes for the bit widths that do not divide 32 (3 bytes = 8 x 3-bit or 4 x 6-bit).
_PACK_BYTES = {3: 3, 5: 5, 6: 3}
_CPU_BLOCK_BYTES = 1 << 22  # 4 MiB of float32 measured fastest on 2 EPYC cores (256 KiB..16 MiB tried)
DEVICE_BLOCK_BYTES = 1 << 26  # 64 MiB: the float32 temporary per block on an accelerator
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


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
    per = pack * 8 // bits
    data = packed.view(torch.uint8)
    data = data.reshape(*data.shape[:-1], -1, pack)
    if out is None:
        out = torch.empty(*data.shape[:-1], per, dtype=dtype, device=data.device)
    codes = out.view(*data.shape[:-1], per)
    for k in range(per):
        first, shift = divmod(k * bits, 8)
        value = data[..., first].to(torch.int32)
        if first + 1 < pack:  # the code may run on into the next byte; the last code of a pack never does
            value += data[..., first + 1].to(torch.int32) * 256
        codes[..., k] = (value >> shift) & mask
    return codes.flatten(-2)


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
    of torch ops on the CPU otherwise, and row blocks of the ops torch_npu runs on accelerators
    (`dequantize_on_device`). `out`: a contiguous tensor of the result's shape, `dtype` and device to write
    into. Inconsistent arguments raise `ValueError` before any memory is touched.
    """
    check_affine_args(weight, scales, biases, bits, group_size, dtype, rounding, out)
    rows = math.prod(weight.shape[:-1])  # not -1: a region may have no columns
    w = weight.reshape(rows, weight.shape[-1]).view(torch.int32)  # uint32 as stored: the same bits, int32 ops
    s, b = scales.reshape(rows, scales.shape[-1]), biases.reshape(rows, biases.shape[-1])
    flat_out = None if out is None else out.view(rows, s.shape[-1] * group_size)
    if w.shape[0] == 0 or s.shape[-1] == 0:  # an empty region: nothing to compute (every path divides by its size)
        dense = torch.empty(w.shape[0], s.shape[-1] * group_size, dtype=dtype, device=w.device)
        dense = dense if flat_out is None else flat_out
    elif weight.device.type != "cpu":
        dense = dequantize_on_device(w, s, b, bits, group_size, dtype, rounding, flat_out)
    elif cpu_kernel.supports(s.dtype, b.dtype, dtype, group_size, rounding):
        dense = cpu_kernel.dequantize(w, s, b, bits, group_size, dtype, rounding, flat_out)
    else:
        dense = dequantize_blocks(w, s, b, bits, group_size, dtype, rounding, flat_out)
    return dense.reshape(*weight.shape[:-1], dense.shape[-1])


def check_affine_args(
    weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, bits: int, group_size: int,
    dtype: torch.dtype, rounding: str, out: torch.Tensor | None = None,
) -> None:
    """Raise `ValueError` unless the arguments describe one consistent affine-quantized tensor."""

    def fail(what: str) -> None:
        raise ValueError(f"dequantize_affine: {what}")

    if rounding not in ROUNDINGS:
        fail(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if type(bits) is not int or bits not in AFFINE_BITS:
        fail(f"bits must be one of {AFFINE_BITS}, got {bits!r}")
    if type(group_size) is not int or group_size <= 0:
        fail(f"group_size must be a positive int, got {group_size!r}")
    if dtype not in FLOAT_DTYPES:
        fail(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    if weight.dtype not in (torch.int32, torch.uint32):
        fail(f"weight holds packed codes as int32 or uint32, got {weight.dtype}")
    for name, t in (("scales", scales), ("biases", biases)):
        if t.dtype not in FLOAT_DTYPES:
            fail(f"{name} must be one of {FLOAT_DTYPES}, got {t.dtype}")
        if t.device != weight.device:
            fail(f"{name} is on {t.device}, weight on {weight.device}")
    if weight.dim() < 2 or scales.shape != biases.shape or scales.shape[:-1] != weight.shape[:-1]:
        fail(
            f"shapes do not fit: weight {list(weight.shape)}, scales {list(scales.shape)}, biases "
            f"{list(biases.shape)} (want weight [..., words], scales and biases [..., groups], the same leading dims)"
        )
    in_features = scales.shape[-1] * group_size
    if in_features * bits != weight.shape[-1] * 32:
        fail(
            f"weight has {weight.shape[-1]} packed columns, but {scales.shape[-1]} groups of {group_size} at "
            f"bits={bits} need {in_features * bits / 32:g}: bits or group_size do not match the tensors"
        )
    if out is not None:
        want = (*weight.shape[:-1], in_features)
        if tuple(out.shape) != want or out.dtype != dtype or out.device != weight.device or not out.is_contiguous():
            fail(
                f"out must be a contiguous {dtype} tensor of shape {list(want)} on {weight.device}, got "
                f"{'a non-contiguous ' if not out.is_contiguous() else ''}{out.dtype} {list(out.shape)} on {out.device}"
            )


def dequantize_blocks(
    w: torch.Tensor, s: torch.Tensor, b: torch.Tensor, bits: int, group_size: int, dtype: torch.dtype,
    rounding: Rounding, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The CPU path without the C kernel: blocks of rows, in buffers reused from block to block, keep the
    temporaries in cache and off the page-fault path; the dense output is the only fresh allocation."""
    return _in_row_blocks(w, s, b, bits, group_size, dtype, rounding, out, _CPU_BLOCK_BYTES, cpu_scratch=True)


def dequantize_on_device(
    w: torch.Tensor, s: torch.Tensor, b: torch.Tensor, bits: int, group_size: int, dtype: torch.dtype,
    rounding: Rounding, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The accelerator path: row blocks of the plain ops torch_npu runs, on whatever device the tensors are.

    Memory on the device: the dense output, the packed inputs, and per block a float32 (or scales-dtype)
    temporary of at most `DEVICE_BLOCK_BYTES` plus its integer unpacking temporaries; never a float32
    copy of a whole embedding or expert stack. No synchronisation: the ops queue on the device's stream.
    """
    return _in_row_blocks(w, s, b, bits, group_size, dtype, rounding, out, DEVICE_BLOCK_BYTES, cpu_scratch=False)


def _in_row_blocks(
    w: torch.Tensor, s: torch.Tensor, b: torch.Tensor, bits: int, group_size: int, dtype: torch.dtype,
    rounding: Rounding, out: torch.Tensor | None, block_bytes: int, cpu_scratch: bool,
) -> torch.Tensor:
    compute = torch.float32 if rounding == "fused" else s.dtype
    in_features = s.shape[-1] * group_size
    out = torch.empty(w.shape[0], in_features, dtype=dtype, device=w.device) if out is None else out
    if out.numel() == 0:
        return out
    step = min(w.shape[0], max(1, block_bytes // (in_features * 4)))
    codes_buf = torch.empty(step, in_features, dtype=compute, device=w.device)
    # CPU only: torch_npu runs `>>`, not the bitwise_right_shift(out=) that saves a temporary per code position
    scratch = torch.empty(step, w.shape[1], dtype=torch.int32) if cpu_scratch and 32 % bits == 0 else None
    for r in range(0, w.shape[0], step):
        n = min(step, w.shape[0] - r)
        rows = slice(r, r + n)
        codes = unpack_codes(w[rows], bits, out=codes_buf[:n], scratch=None if scratch is None else scratch[:n])
        _scale(codes, s[rows], b[rows], group_size, rounding)
        out[rows] = codes
    return out


def _scale(codes: torch.Tensor, s: torch.Tensor, b: torch.Tensor, group_size: int, rounding: Rounding) -> None:
    """`codes = codes * s + b` in place, per group; codes are float32 (fused) or the scales' dtype."""
    grouped = codes.view(codes.shape[0], -1, group_size)
    if rounding == "fused":
        grouped.mul_(s.to(torch.float32).unsqueeze(-1)).add_(b.to(torch.float32).unsqueeze(-1))
    else:  # one rounding after the product, one after the sum, as mx.dequantize on the CPU
        grouped.mul_(s.unsqueeze(-1))
        grouped.add_(b.unsqueeze(-1))
