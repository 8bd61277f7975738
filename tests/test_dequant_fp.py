"""MLX's float modes (mxfp4, mxfp8, nvfp4) against `mx.dequantize`: every element code with every scale code, real
`mx.quantize` output from three source dtypes into three output dtypes, nvfp4's global scale; refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import to_torch

from vllm_mlx_loader.dequant_fp import FP_MODES, dequantize_fp, e4m3_values, non_finite_codes
from vllm_mlx_loader.op_audit import OpAudit

mx = pytest.importorskip("mlx.core")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """LSB-first uint32 words of `[rows, n]` codes, as MLX packs them."""
    per = 32 // bits
    c = codes.reshape(codes.shape[0], -1, per).astype(np.uint64)
    words = np.zeros(c.shape[:2], dtype=np.uint64)
    for k in range(per):
        words |= c[:, :, k] << np.uint64(bits * k)
    return words.astype(np.uint32)


def every_code_with_every_scale(mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Row i: every element code, under scale code i (the NaN/Inf scale codes replaced by 1)."""
    group_size, bits = FP_MODES[mode]
    columns = max(group_size, 1 << bits)
    codes = np.tile(np.arange(columns) % (1 << bits), (256, 1)).astype(np.uint32)
    if mode == "mxfp8":
        codes[(codes & 0x7F) == 0x7F] = 0  # E4M3's NaN codes: refused (test below)
    scales = np.repeat(np.arange(256, dtype=np.uint8)[:, None], columns // group_size, axis=1)
    scales[(scales & 0x7F) == 0x7F if mode == "nvfp4" else scales == 255] = 1
    return pack(codes, bits), scales


@pytest.mark.parametrize("mode", FP_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_element_code_with_every_scale_code_is_bit_exact(mode, dtype) -> None:
    group_size, bits = FP_MODES[mode]
    words, scales = every_code_with_every_scale(mode)
    want = to_torch(mx.dequantize(mx.array(words), mx.array(scales), group_size=group_size, bits=bits, mode=mode,
                                  dtype=getattr(mx, dtype)))
    with OpAudit():  # the ops torch_npu runs: table lookups with int32 codes, no float8, no uint32 arithmetic
        got = dequantize_fp(torch.from_numpy(words.view(np.int32)), torch.from_numpy(scales), mode=mode,
                            dtype=DTYPES[dtype], block_bytes=1 << 14)
    finite = torch.isfinite(want)  # float16 overflows at large scales, as MLX's own result does
    assert torch.equal(got[finite], want[finite])
    assert torch.equal(torch.isfinite(got), finite)


@pytest.mark.parametrize("mode", FP_MODES)
@pytest.mark.parametrize("source", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantized_tensors_match_mx_dequantize(mode, source, dtype) -> None:
    rng = np.random.default_rng(len(mode) * 7 + len(source))
    w = mx.array((rng.standard_normal((3, 8, 256)) * 3).astype(np.float32)).astype(getattr(mx, source))
    q, s = mx.quantize(w, mode=mode)[:2]
    want = to_torch(mx.dequantize(q, s, mode=mode, dtype=getattr(mx, dtype)))
    # 5 rows per block: 24 rows in 5 blocks, the last one short, through the reused buffers
    got = dequantize_fp(to_torch(q), to_torch(s), mode=mode, dtype=DTYPES[dtype], block_bytes=5 << 10)
    assert torch.equal(got, want)


@pytest.mark.parametrize("value", [1.0, 0.37, 2688.0, 123456.0, 1e-30])
def test_nvfp4_global_scale_matches_mx_dequantize(value) -> None:
    rng = np.random.default_rng(3)
    w = mx.array(rng.standard_normal((64, 128)).astype(np.float32))
    scale = mx.array(np.float32(value))
    q, s = mx.quantize(w, mode="nvfp4", global_scale=scale)[:2]
    want = to_torch(mx.dequantize(q, s, mode="nvfp4", global_scale=scale))  # MLX returns float32 here
    got = dequantize_fp(to_torch(q), to_torch(s), mode="nvfp4", dtype=torch.float32,
                        global_scale=torch.tensor(value, dtype=torch.float32))
    assert torch.equal(got, want)


def test_the_e4m3_table_is_mlx_s() -> None:
    codes = mx.array(np.arange(256, dtype=np.uint8))
    want = np.array(mx.from_fp8(codes).astype(mx.float32))
    assert np.array_equal(np.array(e4m3_values(), dtype=np.float32), want, equal_nan=True)


def test_codes_mlx_decodes_to_nan_or_inf_are_found() -> None:
    words, scales = every_code_with_every_scale("mxfp8")
    w, s = torch.from_numpy(words.view(np.int32)), torch.from_numpy(scales)
    assert non_finite_codes("mxfp8", w, s) == ("", 0)
    s255 = s.clone()
    s255[3, 0] = 255
    assert non_finite_codes("mxfp8", w, s255) == ("scales", 1)
    nan = w.clone()
    nan[0, 0] = 0x7F  # the first code of the row: E4M3's NaN
    assert non_finite_codes("mxfp8", nan, s) == ("weight", 1)
    e4m3 = torch.full((2, 1), 0xFF, dtype=torch.uint8)
    assert non_finite_codes("nvfp4", None, e4m3) == ("scales", 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mode="int4"), r"mode must be one of"),
        (dict(mode="mxfp4", scales=torch.zeros(4, 8, dtype=torch.bfloat16)), r"mxfp4 scales are uint8 codes"),
        (dict(mode="mxfp4", weight=torch.zeros(4, 16, dtype=torch.int32)), r"weight has 16 packed columns"),
        (dict(mode="nvfp4"), r"weight has 32 packed columns, but 8 groups of 16"),
        (dict(mode="mxfp4", global_scale=torch.tensor(1.0)), r"only nvfp4 has a global scale"),
        (dict(mode="mxfp4", dtype=torch.int8), r"dtype must be one of"),
        (dict(mode="mxfp4", out=torch.empty(4, 256)), r"out must be a contiguous torch.bfloat16 tensor"),
    ],
)
def test_inconsistent_arguments_raise_before_any_work(kwargs, message) -> None:
    args = dict(weight=torch.zeros(4, 32, dtype=torch.int32), scales=torch.zeros(4, 8, dtype=torch.uint8))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        dequantize_fp(**args)


def test_nvfp4_global_scale_per_matrix_of_a_stack_matches_mx_dequantize_of_each_matrix() -> None:
    """mlx-lm's `global_scale=True` on expert stacks: one value per expert (`[experts]`), each matrix dequantized
    with its own; and one value for a whole stack, as `mx.quantize` gives a stack in one call."""
    rng = np.random.default_rng(5)
    stack = mx.array((rng.standard_normal((3, 16, 64)) * [[[1.0]], [[40.0]], [[0.01]]]).astype(np.float32))
    per_expert = mx.max(mx.abs(stack), axis=(-2, -1)).astype(mx.float32)
    quantized = [mx.quantize(stack[e], mode="nvfp4", global_scale=per_expert[e])[:2] for e in range(3)]
    q, s = mx.stack([x[0] for x in quantized]), mx.stack([x[1] for x in quantized])
    want = torch.stack([to_torch(mx.dequantize(q[e], s[e], mode="nvfp4", global_scale=per_expert[e]))
                        for e in range(3)])
    for shape in ((3,), (3, 1)):
        got = dequantize_fp(to_torch(q), to_torch(s), mode="nvfp4", dtype=torch.float32, block_bytes=3 << 10,
                            global_scale=to_torch(per_expert).reshape(shape))
        assert torch.equal(got, want)
    one = mx.array(np.float32(7.5))
    q1, s1 = mx.quantize(stack, mode="nvfp4", global_scale=one)[:2]
    got = dequantize_fp(to_torch(q1), to_torch(s1), mode="nvfp4", dtype=torch.float32,
                        global_scale=torch.tensor(7.5))
    assert torch.equal(got, to_torch(mx.dequantize(q1, s1, mode="nvfp4", global_scale=one)))
    with pytest.raises(ValueError, match=r"global_scale must be float32 of shape \[\] \(one value\) or \[3\]"):
        dequantize_fp(to_torch(q), to_torch(s), mode="nvfp4", global_scale=torch.ones(2))
