"""MLX's floating-point quantization modes as plain torch math: `w = element(q) * scale` per group.

| mode  | group | element (code)          | scale (U8 per group)             |
| mxfp4 | 32    | FP4 E2M1, 4-bit codes   | E8M0: 2^(s - 127)                |
| mxfp8 | 32    | FP8 E4M3, 8-bit codes   | E8M0                             |
| nvfp4 | 16    | FP4 E2M1, 4-bit codes   | FP8 E4M3; times `global_scale / (448 * 6)` when there is one |

Codes are packed LSB-first in uint32 words like affine 4- and 8-bit codes. Both the codes and the scales are
decoded by table lookup (a 16- or 256-entry float32 table indexed with int32 codes): no float8 dtype, no
uint32 arithmetic, only ops torch_npu runs. Bit-exact with `mx.dequantize` (mlx 0.32.4): the scale is rounded
to the output dtype first, then multiplied in float32 and rounded once (all products are exact in BF16 and
float32; in float16 MLX's rounding of the scale matters). With a global scale, MLX computes
`element * (scale * (global_scale / 2688))` in float32 and returns float32; here that is rounded once to `dtype`.
Encodings MLX decodes to NaN or Inf (E8M0 255, E4M3 0x7F/0xFF in scales or mxfp8 codes) are refused.
"""

from __future__ import annotations

import torch

from .dequant import DEVICE_BLOCK_BYTES, FLOAT_DTYPES, unpack_codes
from .stored import MODE_DEFAULTS

FP_MODES = {mode: pair for mode, pair in MODE_DEFAULTS.items() if mode != "affine"}  # (group_size, bits)
_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
NVFP4_GLOBAL_DIVISOR = 448.0 * 6.0  # E4M3's and E2M1's largest values


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


def element_table(mode: str, device: torch.device) -> torch.Tensor:
    return torch.tensor(e4m3_values() if mode == "mxfp8" else _E2M1, dtype=torch.float32, device=device)


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
        if global_scale.dtype != torch.float32 or global_scale.numel() != 1:
            fail(f"global_scale must be one float32 value, got {global_scale.dtype} {list(global_scale.shape)}")
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
    """Dequantize packed `weight` codes with their U8 `scales` (and nvfp4's optional `global_scale`, one float32
    value) into `dtype`, in row blocks whose float32 temporary stays under `block_bytes`. Codes and scales that
    MLX decodes to NaN or Inf are not checked here (`non_finite_codes` finds them)."""
    check_fp_args(weight, scales, mode, dtype, global_scale, out)
    group_size, bits = FP_MODES[mode]
    w = weight.reshape(-1, weight.shape[-1]).view(torch.int32)
    s = scales.reshape(-1, scales.shape[-1])
    in_features = s.shape[-1] * group_size
    rows = w.shape[0]
    dense = torch.empty(rows, in_features, dtype=dtype, device=w.device) if out is None else out.view(rows, -1)
    elements = element_table(mode, w.device)
    table = scale_table(mode, dtype if global_scale is None else torch.float32, w.device)
    if global_scale is not None:
        table = table * (global_scale.reshape(()).to(w.device) / NVFP4_GLOBAL_DIVISOR)
    step = min(rows, max(1, block_bytes // (in_features * 4)))
    for r in range(0, rows, step):
        block = slice(r, r + step)
        codes = unpack_codes(w[block], bits)
        values = elements[codes].view(codes.shape[0], -1, group_size)
        values.mul_(table[s[block].to(torch.int32)].unsqueeze(-1))
        dense[block] = values.view(codes.shape[0], in_features)
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
