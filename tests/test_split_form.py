"""The split form of MLX 4-bit weights (`split_form.py`): exact algebra, and in BF16 no worse than dequantizing.

Weights are quantized by MLX itself (`mx.quantize`); the oracle is `mx.dequantize`'s tensor in float64 math.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import to_torch

from vllm_mlx_loader import split_form
from vllm_mlx_loader.dequant import unpack_codes

mx = pytest.importorskip("mlx.core")


def quantized(n: int, k: int, group_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A BF16 weight with a checkpoint's spread (and one outlier row), quantized by MLX: codes, scales, biases,
    `mx.dequantize`'s BF16 weight, and the exact weight s·q + b in float64."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    w[3] *= 20.0
    q, s, b = mx.quantize(mx.array(w).astype(mx.bfloat16), group_size=group_size, bits=4)
    codes, scales, biases = to_torch(q), to_torch(s), to_torch(b)
    exact = (unpack_codes(codes, 4).double().unflatten(-1, (-1, group_size)) * scales.double()[..., None]
             + biases.double()[..., None]).flatten(-2)
    return codes, scales, biases, to_torch(mx.dequantize(q, s, b, group_size=group_size, bits=4)), exact


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_the_split_is_exact_algebra(group_size: int) -> None:
    q, s, b, _, exact = quantized(48, 512, group_size)
    form = split_form.split(q, s, b, group_size)
    assert form.codes.dtype == torch.int8 and int(form.codes.min()) >= -8 and int(form.codes.max()) <= 7
    # s·(q - 8) + (b + 8·s) is MLX's weight s·q + b (which mx.dequantize then rounds to BF16)
    rebuilt = (form.codes.double().unflatten(-1, (-1, group_size)) * s.double()[..., None]
               + form.offsets.double()[..., None]).flatten(-2)
    torch.testing.assert_close(rebuilt, exact, rtol=0, atol=1e-12)
    x = torch.randn(5, 512, dtype=torch.float64)
    torch.testing.assert_close(split_form.split_matmul(x, form, torch.float64), x @ exact.T, rtol=1e-10, atol=1e-10)


def test_in_bf16_the_split_errs_less_than_dequantizing_to_bf16() -> None:
    """A BF16 kernel on the signed codes (its tile s·(q - 8) and its output in BF16) plus the float32 correction errs
    less, against exact math, than the path the loader takes today (MLX's weight dequantized to BF16, a BF16
    product): the tile's values are smaller than the weight's. The same with the offset's sign wrong is far off."""
    q, s, b, dense, exact = quantized(256, 2048, 64, seed=1)
    form = split_form.split(q, s, b, 64)
    x = torch.randn(16, 2048).bfloat16().double()
    want = x @ exact.T
    split = (split_form.split_matmul(x, form) - want).abs().mean()
    today = ((x.bfloat16() @ dense.bfloat16().T).double() - want).abs().mean()
    assert split <= 0.6 * today, (float(split), float(today))  # measured 0.43x
    wrong = split_form.SplitForm(form.codes, form.scales, b.float() - 8 * s.float(), 64)
    assert (split_form.split_matmul(x, wrong) - want).abs().mean() > 100 * today


def test_groupsum_sums_each_group_in_float32() -> None:
    x = torch.arange(12, dtype=torch.bfloat16).reshape(2, 6)
    sums = split_form.groupsum(x, 3)
    assert sums.dtype == torch.float32 and sums.tolist() == [[3.0, 12.0], [21.0, 30.0]]


def test_arguments_that_are_not_one_4_bit_tensor_are_refused() -> None:
    q, s, b, _, _ = quantized(8, 256, 64)
    with pytest.raises(ValueError, match="packed columns"):  # codes of another bit width
        split_form.split(q[:, :16], s, b, 64)
    with pytest.raises(ValueError, match="group_size"):
        split_form.split(q, s, b, 0)
    with pytest.raises(ValueError, match="2-D"):
        split_form.split(q[None], s[None], b[None], 64)
