"""MLX's floating-point quantization modes as plain torch math: `w = element(q) * scale` per group.

| mode  | group | element (code)          | scale (U8 per group)             |
| mxfp4 | 32    | FP4 E2M1, 4-bit codes   | E8M0: 2^(s - 127)                |
| mxfp8 | 32    | FP8 E4M3, 8-bit codes   | E8M0                             |
| nvfp4 | 16    | FP4 E2M1, 4-bit codes   | FP8 E4M3; times `global_scale / (448 * 6)` when there is one |

Codes are packed LSB-first in uint32 words like affine 4- and 8-bit codes, so each byte holds one 8-bit code
or two 4-bit codes, low nibble first. Both are decoded by table lookup with int32 indices: the packed bytes in a
table of 256 values (E4M3) or pairs (E2M1, E2M1), the scales in a table of 256 scales: no shifts, no float8
dtype, no uint32 arithmetic, only ops torch_npu runs. Bit-exact with `mx.dequantize` (mlx 0.32.4): the scale is rounded
to the output dtype first, then multiplied in float32 and rounded once (all products are exact in BF16 and
float32; in float16 MLX's rounding of the scale matters). With a global scale, MLX computes
`element * (scale * (global_scale / 2688))` in float32 and returns float32; here that is rounded once to `dtype`
(a stack with one global scale per matrix: each matrix's own, as `mx.dequantize` of that matrix computes it).
Encodings MLX decodes to NaN or Inf (E8M0 255, E4M3 0x7F/0xFF in scales or mxfp8 codes) are refused.
"""

from __future__ import annotations

import math

import torch

from .dequant import DEVICE_BLOCK_BYTES, FLOAT_DTYPES
from .stored import MODE_DEFAULTS, describe_global_scale_shapes, global_scale_shapes

FP_MODES = {mode: pair for mode, pair in MODE_DEFAULTS.items() if mode != "affine"}  # (group_size, bits)
_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
NVFP4_GLOBAL_DIVISOR = 448.0 * 6.0  # E4M3's and E2M1's largest values
LARGEST_ELEMENT = {"mxfp4": 6.0, "nvfp4": 6.0, "mxfp8": 448.0}  # E2M1's, E4M3's (0x7E; 0x7F is refused)


def e4m3_values() -> list[float]:
    """The 256 FP8 E4M3 (FN) values by code; 0x7F and 0xFF (NaN) as NaN."""
    values = []
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exponent, mantissa = (code >> 3) & 0xF, code & 0x7
        if code & 0x7F == 0x7F:
            values.append(float("nan"))
        elif exponent == 0:
            values.append(sign * mantissa / 8 * 2.0**-6)
        else:
            values.append(sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    return values


def e8m0_values() -> list[float]:
    """The 256 E8M0 scales by code: 2^(code - 127); 255 (NaN in OCP's spec, Inf in MLX) as Inf."""
    return [2.0 ** (code - 127) if code < 255 else float("inf") for code in range(256)]


def byte_table(mode: str, device: torch.device) -> torch.Tensor:
    """The values one packed byte holds, by byte: `[256, 1]` E4M3 values (mxfp8) or `[256, 2]` pairs of E2M1
    values, the low nibble's first (mxfp4, nvfp4)."""
    if mode == "mxfp8":
        return torch.tensor(e4m3_values(), dtype=torch.float32, device=device).view(256, 1)
    pairs = [[_E2M1[byte & 0xF], _E2M1[byte >> 4]] for byte in range(256)]
    return torch.tensor(pairs, dtype=torch.float32, device=device)


def scale_table(mode: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Float32 scale values by U8 code, rounded to `dtype` as MLX rounds them before multiplying."""
    values = torch.tensor(e4m3_values() if mode == "nvfp4" else e8m0_values(), dtype=torch.float32)
    return values.to(dtype).to(torch.float32).to(device)


def invalid_scale_codes(mode: str) -> tuple[int, ...]:
    return (0x7F, 0xFF) if mode == "nvfp4" else (255,)


def check_fp_args(
    weight: torch.Tensor, scales: torch.Tensor, mode: str, dtype: torch.dtype, global_scale: torch.Tensor | None,
    out: torch.Tensor | None,
) -> None:
    """Raise `ValueError` unless the arguments describe one consistent tensor of `mode`."""

    def fail(what: str) -> None:
        raise ValueError(f"dequantize_fp: {what}")

    if mode not in FP_MODES:
        fail(f"mode must be one of {tuple(FP_MODES)}, got {mode!r}")
    group_size, bits = FP_MODES[mode]
    if dtype not in FLOAT_DTYPES:
        fail(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    if weight.dtype not in (torch.int32, torch.uint32):
        fail(f"weight holds packed codes as int32 or uint32, got {weight.dtype}")
    if scales.dtype != torch.uint8:
        fail(f"{mode} scales are uint8 codes, got {scales.dtype}")
    if scales.device != weight.device:
        fail(f"scales are on {scales.device}, weight on {weight.device}")
    if weight.dim() < 2 or scales.shape[:-1] != weight.shape[:-1]:
        fail(f"shapes do not fit: weight {list(weight.shape)}, scales {list(scales.shape)} (the same leading dims)")
    if scales.shape[-1] * group_size * bits != weight.shape[-1] * 32:
        fail(
            f"weight has {weight.shape[-1]} packed columns, but {scales.shape[-1]} groups of {group_size} at "
            f"bits={bits} need {scales.shape[-1] * group_size * bits / 32:g}"
        )
    if global_scale is not None:
        if mode != "nvfp4":
            fail(f"only nvfp4 has a global scale, not {mode}")
        if global_scale.dtype != torch.float32 or tuple(global_scale.shape) not in global_scale_shapes(scales.shape):
            fail(f"global_scale must be float32 of shape {describe_global_scale_shapes(tuple(scales.shape))}, got "
                 f"{global_scale.dtype} {list(global_scale.shape)}")
        if global_scale.device != weight.device:
            fail(f"global_scale is on {global_scale.device}, weight on {weight.device}")
    if out is not None:
        want = (*weight.shape[:-1], scales.shape[-1] * group_size)
        if tuple(out.shape) != want or out.dtype != dtype or out.device != weight.device or not out.is_contiguous():
            fail(f"out must be a contiguous {dtype} tensor of shape {list(want)} on {weight.device}")


def dequantize_fp(
    weight: torch.Tensor,
    scales: torch.Tensor,
    *,
    mode: str,
    dtype: torch.dtype = torch.bfloat16,
    global_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    block_bytes: int = DEVICE_BLOCK_BYTES,
) -> torch.Tensor:
    """Dequantize packed `weight` codes with their U8 `scales` (and nvfp4's optional float32 `global_scale`: one
    value, or one per matrix of a stack) into `dtype`, in row blocks whose float32 temporary stays under
    `block_bytes`. Codes and scales that MLX decodes to NaN or Inf are not checked here (`non_finite_codes`
    finds them)."""
    check_fp_args(weight, scales, mode, dtype, global_scale, out)
    group_size, bits = FP_MODES[mode]
    rows = math.prod(weight.shape[:-1])  # not -1: a region may have no columns
    w = weight.reshape(rows, weight.shape[-1]).view(torch.int32)
    s = scales.reshape(rows, scales.shape[-1])
    in_features = s.shape[-1] * group_size
    dense = torch.empty(rows, in_features, dtype=dtype, device=w.device) if out is None else out.view(rows, in_features)
    if dense.numel() == 0:
        return dense.reshape(*weight.shape[:-1], in_features)
    per_byte = 8 // bits
    elements = byte_table(mode, w.device)
    table = scale_table(mode, dtype if global_scale is None else torch.float32, w.device)
    row_factor = None  # a global scale per matrix: each row's, applied to its scales as MLX applies it
    if global_scale is not None:
        factor = global_scale.reshape(-1) / NVFP4_GLOBAL_DIVISOR
        if factor.numel() == 1:
            table = table * factor.reshape(())
        else:
            row_factor = factor.repeat_interleave(weight.shape[-2])
    step = min(rows, max(1, block_bytes // (in_features * 4)))
    # one set of block buffers, reused (on the CPU fresh memory costs a page fault per 4 KiB)
    codes_buf = torch.empty(step * in_features // per_byte, dtype=torch.int32, device=w.device)
    values_buf = torch.empty(step * in_features, dtype=torch.float32, device=w.device)
    for r in range(0, rows, step):
        block = slice(r, r + step)
        n = w[block].shape[0]
        # One byte is one 8-bit code or two 4-bit codes (low nibble first, as MLX packs them): looked up whole
        # in a table of 256 values or pairs, with no shifts. index_select, not `table[codes]` (advanced
        # indexing's generic path is ~3.6x slower on the CPU).
        codes = codes_buf[: n * in_features // per_byte]
        codes.copy_(w[block].contiguous().view(torch.uint8).reshape(-1))
        values = values_buf[: n * in_features].view(-1, per_byte)
        torch.index_select(elements, 0, codes, out=values)
        values = values.view(n, -1, group_size)
        block_scales = torch.index_select(table, 0, s[block].reshape(-1).to(torch.int32)).view(n, -1)
        if row_factor is not None:
            block_scales.mul_(row_factor[block].view(n, 1))
        values.mul_(block_scales.view(n, -1, 1))
        dense[block] = values.view(n, in_features)
    return dense.reshape(*weight.shape[:-1], in_features)


def non_finite_codes(mode: str, weight: torch.Tensor | None, scales: torch.Tensor) -> tuple[str, int]:
    """("scales" or "weight", count) of the first tensor holding codes MLX decodes to NaN or Inf, or ("", 0)."""
    bad = torch.zeros_like(scales, dtype=torch.bool)
    for code in invalid_scale_codes(mode):
        bad |= scales == code
    if int(bad.sum()):
        return "scales", int(bad.sum())
    if mode == "mxfp8" and weight is not None:
        nan = (weight.contiguous().view(torch.uint8) & 0x7F) == 0x7F
        if int(nan.sum()):
            return "weight", int(nan.sum())
    return "", 0
