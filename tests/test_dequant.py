"""Dequantization against MLX itself: `mx.dequantize` is the oracle, for synthetic and mlx_lm-written tensors."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO, to_torch

from vllm_mlx_loader import cpu_kernel
from vllm_mlx_loader.dequant import dequantize_affine, dequantize_blocks, dequantize_on_device, unpack_codes
from vllm_mlx_loader.dequant_fp import dequantize_fp
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.weights import LoadStats, ShardReader

mx = pytest.importorskip("mlx.core")


def within_one_ulp(got: torch.Tensor, want: torch.Tensor, packed, bits: int, group_size: int) -> bool:
    """|got - want| <= 1 ulp of max(|q*s|, |b|): the bound between one rounding and MLX's two."""
    if want.dtype == torch.float32:
        return torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    codes = unpack_codes(packed[0], bits).float()
    codes = codes.reshape(*codes.shape[:-1], -1, group_size)
    qs = (codes * packed[1].float().unsqueeze(-1)).abs()
    magnitude = torch.maximum(qs, packed[2].float().abs().unsqueeze(-1)).reshape(want.shape)
    mantissa = 7 if want.dtype == torch.bfloat16 else 10
    ulp = torch.exp2(torch.floor(torch.log2(magnitude.clamp_min(1e-30))) - mantissa)
    return bool(((got.float() - want.float()).abs() <= ulp).all())


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("src", ["bfloat16", "float16", "float32"])
def test_synthetic_tensors_match_mx_dequantize(bits: int, group_size: int, src: str) -> None:
    rng = np.random.default_rng(bits * 1000 + group_size)
    # rows with mixed signs, all-negative (negative scales), constant and outlier groups
    w = rng.standard_normal((2, 6, 512)).astype(np.float32)
    w[0, 1] = -np.abs(w[0, 1])
    w[0, 2] = 0.25
    w[1, 3, 7] = 40.0
    w = mx.array(w).astype(getattr(mx, src))
    q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    want = to_torch(mx.dequantize(q, s, b, group_size=group_size, bits=bits))
    args = (to_torch(q), to_torch(s), to_torch(b))
    exact = dequantize_affine(*args, bits=bits, group_size=group_size, dtype=want.dtype, rounding="mlx_cpu")
    assert torch.equal(exact, want)
    fused = dequantize_affine(*args, bits=bits, group_size=group_size, dtype=want.dtype)
    assert within_one_ulp(fused, want, args, bits, group_size)
    # every path computes the same bits: C kernel (used above where it applies), torch row blocks, and the
    # accelerator path (row blocks of the ops torch_npu runs) run here on the CPU
    flat = [a.reshape(-1, a.shape[-1]) for a in args]
    for rounding, result in (("mlx_cpu", exact), ("fused", fused)):
        for path in (dequantize_blocks, dequantize_on_device):
            got = path(*flat, bits, group_size, want.dtype, rounding)
            assert torch.equal(got.reshape(result.shape), result), path.__name__


def test_the_c_kernel_is_built_here() -> None:
    """CI installs with a C compiler, so the kernel the other tests compare must be there (users without
    a compiler get the torch path)."""
    assert cpu_kernel.available()


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("params", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("out", [torch.bfloat16, torch.float32])
def test_c_kernel_equals_the_torch_path_bit_for_bit(bits: int, params: torch.dtype, out: torch.dtype) -> None:
    """Big enough to be split over threads and to get huge-page advice; odd row counts; wide value ranges."""
    gen = torch.Generator().manual_seed(bits)
    for rows, group_size in ((1031, 64), (7, 128), (1, 32)):
        in_features = group_size * 24
        w = torch.randint(-(2**31), 2**31 - 1, (rows, in_features * bits // 32), dtype=torch.int32, generator=gen)
        s = (torch.randn(rows, in_features // group_size, generator=gen) * 10 ** torch.randint(-4, 3, (1,))).to(params)
        b = (torch.randn(rows, in_features // group_size, generator=gen) * 3).to(params)
        for rounding in ("fused", "mlx_cpu"):
            if not cpu_kernel.supports(params, params, out, group_size, rounding):
                assert params == torch.float16 and rounding == "mlx_cpu"
                continue
            got = cpu_kernel.dequantize(w, s, b, bits, group_size, out, rounding)
            want = dequantize_blocks(w, s, b, bits, group_size, out, rounding)
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), (rows, group_size, rounding)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_codes_are_an_lsb_first_bit_stream(bits: int) -> None:
    codes = torch.arange(64, dtype=torch.int64) % (1 << bits)
    stream = sum(int(c) << (bits * k) for k, c in enumerate(codes))
    words = [(stream >> (32 * j)) & 0xFFFFFFFF for j in range(64 * bits // 32)]
    packed = torch.tensor(np.array(words, dtype=np.uint32).view(np.int32))[None]
    assert unpack_codes(packed, bits)[0].tolist() == codes.tolist()


def test_every_fixture_tensor_matches_mx_dequantize(checkpoints) -> None:
    """All quantized tensors of all mlx_lm.convert variants: bit-exact (mlx_cpu) and within 1 ulp (fused)."""
    checked = 0
    for name, path in checkpoints.items():
        ckpt = read_checkpoint(path)
        weights = mx.load(str(path / "model.safetensors"))
        with ShardReader(torch.device("cpu"), LoadStats()) as reader:
            for module in ckpt.quantized:
                p = module.params
                if p.mode != "affine":  # the float modes: one exact result (test_dequant_fp.py has the rest)
                    want = to_torch(mx.dequantize(weights[module.weight.name], weights[module.scales.name],
                                                  group_size=p.group_size, bits=p.bits, mode=p.mode))
                    got = dequantize_fp(reader.read(module.weight), reader.read(module.scales), mode=p.mode)
                    assert torch.equal(got, want), (name, module.path)
                    checked += 1
                    continue
                want = to_torch(
                    mx.dequantize(
                        weights[module.weight.name], weights[module.scales.name], weights[module.biases.name],
                        group_size=p.group_size, bits=p.bits,
                    )
                )
                packed = [reader.read(t) for t in (module.weight, module.scales, module.biases)]
                exact = dequantize_affine(*packed, bits=p.bits, group_size=p.group_size, rounding="mlx_cpu")
                fused = dequantize_affine(*packed, bits=p.bits, group_size=p.group_size)
                assert torch.equal(exact, want), (name, module.path)
                assert within_one_ulp(fused, want, packed, p.bits, p.group_size), (name, module.path)
                checked += 1
    assert checked == sum(len(read_checkpoint(p).quantized) for p in checkpoints.values()) > 200


@pytest.mark.skipif(
    not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
    reason="needs Debian's gcc-aarch64-linux-gnu and qemu-user",
)
def test_c_kernel_gives_the_same_bytes_on_aarch64() -> None:
    """The reference deployment's hosts are aarch64: the kernel built for them, run under qemu, must write
    what the x86-64 build (checked against the torch path above) writes."""
    run = subprocess.run(["bash", str(REPO / "scripts" / "kernel_crosscheck.sh")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all 192 cases give the same bytes" in run.stdout


def four_bit(rows: int = 8, in_features: int = 128, group_size: int = 64):
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-(2**31), 2**31 - 1, (rows, in_features * 4 // 32), dtype=torch.int32, generator=gen)
    s = torch.randn(rows, in_features // group_size, generator=gen).to(torch.bfloat16)
    return w, s, s.clone()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # a 4-bit tensor read as 2-bit: the C kernel used to write past its output and abort the process
        ({"bits": 2}, r"weight has 16 packed columns, but 2 groups of 64 at bits=2 need 8"),
        ({"bits": 8}, r"weight has 16 packed columns, but 2 groups of 64 at bits=8 need 32"),
        ({"group_size": 32}, r"2 groups of 32 at bits=4 need 8"),
        ({"bits": 7}, r"bits must be one of \(1, 2, 3, 4, 5, 6, 8\), got 7"),
        ({"bits": 4.0}, r"bits must be one of"),
        ({"group_size": 0}, r"group_size must be a positive int, got 0"),
        ({"rounding": "up"}, r"rounding must be one of"),
        ({"dtype": torch.int8}, r"dtype must be one of"),
        # an out of the wrong dtype used to be filled with garbage
        ({"out": torch.empty(8, 128, dtype=torch.float16)}, r"out must be a contiguous torch.bfloat16 tensor of shape "
                                                            r"\[8, 128\] on cpu, got torch.float16 \[8, 128\]"),
        ({"out": torch.empty(8, 64, dtype=torch.bfloat16)}, r"got torch.bfloat16 \[8, 64\]"),
        ({"out": torch.empty(128, 8, dtype=torch.bfloat16).t()}, r"got a non-contiguous torch.bfloat16"),
    ],
)
def test_inconsistent_arguments_raise_before_any_memory_is_touched(change, message) -> None:
    w, s, b = four_bit()
    kwargs = {"bits": 4, "group_size": 64, "dtype": torch.bfloat16, "rounding": "fused", "out": None, **change}
    with pytest.raises(ValueError, match=message):
        dequantize_affine(w, s, b, **kwargs)


def test_uint32_codes_as_stored_give_the_int32_result() -> None:
    w, s, b = four_bit()
    want = dequantize_affine(w, s, b, bits=4, group_size=64)
    assert torch.equal(dequantize_affine(w.view(torch.uint32), s, b, bits=4, group_size=64), want)


@pytest.mark.parametrize(
    "args",
    [
        lambda w, s, b: (w[:, :8], s, b),  # fewer words than the scales need
        lambda w, s, b: (w, s, b[:4]),  # biases for half the rows
        lambda w, s, b: (w.float(), s, b),  # not packed codes
        lambda w, s, b: (w, s.to(torch.int16), b),
    ],
)
def test_inconsistent_tensors_raise(args) -> None:
    with pytest.raises(ValueError, match="dequantize_affine: "):
        dequantize_affine(*args(*four_bit()), bits=4, group_size=64)


@pytest.mark.skipif(not cpu_kernel.available(), reason="the C kernel is not built")
def test_the_kernel_entry_checks_its_own_arguments() -> None:
    w, s, b = four_bit()
    with pytest.raises(ValueError, match=r"got weight torch.int32 \[8, 16\], scales \[8, 2\], biases \[8, 2\] at bits=2"):  # noqa: E501
        cpu_kernel.dequantize(w, s, b, 2, 64, torch.bfloat16, "fused")
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.bfloat16 \[8, 128\], got torch.float32"):
        cpu_kernel.dequantize(w, s, b, 4, 64, torch.bfloat16, "fused", torch.empty(8, 128))
    with pytest.raises(ValueError, match="unsupported case"):
        cpu_kernel.dequantize(w, s, b, 4, 12, torch.bfloat16, "fused")


def test_fuzzed_arguments_give_the_right_tensor_or_a_value_error() -> None:
    """Inconsistent bits, group sizes, shapes, dtypes and outputs: a clear ValueError, never a crash or garbage."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    dtypes = st.sampled_from([torch.bfloat16, torch.float16, torch.float32, torch.int32, torch.uint8])

    @settings(max_examples=300, deadline=None)
    @given(
        true_bits=st.sampled_from([1, 2, 3, 4, 5, 6, 8]), bits=st.integers(0, 9), true_group=st.sampled_from([32, 64]),
        group_size=st.sampled_from([0, 8, 16, 32, 64, 128, 256, 1024]), rows=st.integers(1, 5),
        groups=st.integers(1, 4), scale_rows=st.integers(0, 6), out_dtype=dtypes, out_rows=st.integers(0, 6),
        out_cols=st.integers(0, 2048), transposed=st.booleans(), use_out=st.booleans(), dtype=dtypes,
    )
    def check(true_bits, bits, true_group, group_size, rows, groups, scale_rows, out_dtype, out_rows, out_cols,
              transposed, use_out, dtype):
        in_features = groups * true_group
        w = torch.randint(-(2**31), 2**31 - 1, (rows, in_features * true_bits // 32), dtype=torch.int32)
        s = torch.randn(scale_rows or rows, groups).to(torch.bfloat16)
        out = None
        if use_out:
            out = torch.zeros(out_cols, out_rows, dtype=out_dtype).t() if transposed else \
                torch.zeros(out_rows, out_cols, dtype=out_dtype)
        try:
            got = dequantize_affine(w, s, s, bits=bits, group_size=group_size, dtype=dtype, out=out)
        except ValueError as e:
            assert str(e).startswith("dequantize_affine: ")
            return
        want = dequantize_on_device(w, s, s, bits, group_size, dtype, "fused")
        assert torch.equal(got, want) and (out is None or got.data_ptr() == out.data_ptr())

    check()


@pytest.mark.parametrize(("rows", "groups"), [((0,), 2), ((3,), 0), ((2, 0), 2), ((0,), 0)])
def test_an_empty_region_is_an_empty_tensor_on_every_path(rows, groups) -> None:
    """A region of no rows or no columns (`narrow(dim, start, 0)`): an empty tensor, not a division by zero."""
    words = groups * 64 * 4 // 32
    w = torch.zeros(*rows, words, dtype=torch.int32)
    s = torch.ones(*rows, groups, dtype=torch.bfloat16)
    want = (*rows, groups * 64)
    assert dequantize_affine(w, s, s, bits=4, group_size=64).shape == want
    assert dequantize_affine(w, s, s, bits=4, group_size=64, out=torch.empty(want, dtype=torch.bfloat16)).shape == want
    n = math.prod(rows)
    flat = (w.reshape(n, words), s.reshape(n, groups), s.reshape(n, groups))
    for path in (dequantize_blocks, dequantize_on_device, cpu_kernel.dequantize):
        assert path(*flat, 4, 64, torch.bfloat16, "fused").shape == (n, groups * 64), path.__name__
    codes = torch.zeros(*rows, groups * 2, dtype=torch.uint8)  # mxfp4: groups of 32
    assert dequantize_fp(w, codes, mode="mxfp4").shape == want
