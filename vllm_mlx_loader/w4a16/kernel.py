"""The int4 kernel interface, and the kernel every backend can run: dequantize per call.

A kernel takes one linear layer's MLX tensors as stored (codes `[N, K/8]` int32, eight 4-bit codes per word, low
bits first; scales and biases `[N, K/G]`), lays them out once after loading (`prepare`), and computes x·wᵀ from
that layout on every call (`apply`). Kernels that run a symmetric int4 product add the split form's correction
groupsum(x)·(b + 8·s)ᵀ in float32 (`correction`): exact algebra, so what they differ by from exact math is their
own rounding.
"""

from __future__ import annotations

import torch

from .. import cpu_kernel
from ..dequant import dequantize_affine, dequantize_on_device, unpack_codes
from ..split_form import ZERO, groupsum

Tensors = dict[str, torch.Tensor]


class Int4Kernel:
    """One backend's int4 linear; subclasses name themselves and may refuse shapes or dtypes."""

    name = "int4"
    has_rows = True  # `rows` is implemented: the kernel's layout can serve an embedding's lookups
    self_check = False  # never run on its hardware by this project: each layer is checked once at load time

    @classmethod
    def refusal(cls, n: int, k: int, group_size: int, dtype: torch.dtype) -> str | None:
        """Why this kernel cannot take an `[n, k]` layer (this rank's part) with `group_size` in `dtype`; None
        where it can."""
        return None

    def prepare(self, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int) -> Tensors:
        raise NotImplementedError

    def apply(self, tensors: Tensors, x: torch.Tensor, group_size: int) -> torch.Tensor:
        """x·wᵀ in x's dtype: the model's, or float32 (MoE experts: the kernel's own rounding only)."""
        raise NotImplementedError

    def rows(self, tensors: Tensors, ids: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows `ids` of the weight, dense in `dtype` (an embedding's lookup), computed as the loader's `fused`
        dequantization computes them: bit for bit the rows of the BF16 path's embedding."""
        raise NotImplementedError


def dense_rows(codes: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int,
               dtype: torch.dtype) -> torch.Tensor:
    """`[M, K]` codes with their `[M, K/G]` scales and biases, s·q + b in float32 rounded once to `dtype`."""
    grouped = codes.float().unflatten(-1, (-1, group_size))
    dense = grouped * scales.float().unsqueeze(-1) + biases.float().unsqueeze(-1)
    return dense.flatten(-2).to(dtype)


def check_layer(kernel: Int4Kernel, tensors: Tensors, weight: torch.Tensor, scales: torch.Tensor,
                biases: torch.Tensor, group_size: int, where: str) -> None:
    """Compare `kernel`'s product on a few random rows with the layer's dequantized weight (the BF16 path's), and
    raise naming the layer where they differ by more than 5 % of sum |x·w|: a layout or argument error moves outputs
    by their whole size, a kernel's rounding by ~2^-8 of it."""
    x = torch.randn(4, scales.shape[-1] * group_size, generator=torch.Generator().manual_seed(0)).to(
        scales.dtype).to(scales.device)
    dense = dequantize_on_device(weight, scales, biases, 4, group_size, torch.float32, "fused")
    want = x.float() @ dense.T
    got = kernel.apply(tensors, x, group_size).float()
    bad = (got - want).abs() > 0.05 * (x.float().abs() @ dense.abs().T) + 1e-3
    if bool(bad.any()):
        raise RuntimeError(
            f"{where}: the {kernel.name} int4 kernel's product differs from the checkpoint's weights at "
            f"{int(bad.sum())} of {bad.numel()} outputs. Serve without --quantization mlx, and report this "
            "(vllm-mlx-loader has not run this kernel on this hardware before)."
        )


class SplitKernel(Int4Kernel):
    """A kernel that runs a device op's symmetric int4 product x·(s·(q - 8))ᵀ and adds the correction.

    The product runs in FP16 wherever the layer allows it: the op then rounds its output to FP16's 11 bits instead
    of BF16's 8, so the sum with the correction is rounded (to the model's BF16) about once, and the layer errs less
    than the BF16 path, whose weights are rounded too (mean |error| against exact math 1.05e-3 vs 1.59e-3 on
    `mx.quantize`d layers). FP16's range is kept by construction: each row of x is scaled by a power of two to
    |x| < 1 (exact; undone on the output), and a layer is computed in FP16 only where its scales are FP16 normals
    and no output can exceed `HALF_REACH` at |x| < 1 (`half_scales`, once at load); others compute in BF16."""

    def product(self, tensors: Tensors, x: torch.Tensor, group_size: int) -> torch.Tensor:
        """The op's symmetric product of `x` (in the dtype of `tensors["scales"]`), in x's dtype."""
        raise NotImplementedError

    def apply(self, tensors: Tensors, x: torch.Tensor, group_size: int) -> torch.Tensor:
        scales = tensors["scales"]
        if scales.dtype == torch.float16:
            # a power of two per row, applied in x's own dtype (exact: BF16 has float32's exponent range), so no
            # float32 copy of x is made
            exponent = torch.frexp(x.abs().amax(-1, keepdim=True).float()).exponent
            scaled = (x * torch.ldexp(torch.ones_like(exponent, dtype=x.dtype), -exponent)).half()
            symmetric = torch.ldexp(self.product(tensors, scaled, group_size).float(), exponent)
        else:
            symmetric = self.product(tensors, x.to(scales.dtype), group_size).float()
        return (symmetric + correction(x, scales, tensors["biases"], group_size)).to(x.dtype)


HALF_REACH = 2.0**15  # the largest |output| the FP16 product may reach at |x| < 1 (FP16's largest is 65,504)
HALF_SMALLEST = 2.0**-14  # FP16's smallest normal: smaller scales would lose bits converted


def half_scales(scales_t: torch.Tensor, group_size: int) -> torch.Tensor:
    """`[K/G, N]` scales in FP16 where the layer's symmetric product can run in FP16 (every nonzero scale an FP16
    normal, so the conversion from BF16 is exact, and 8·G·Σ|s| per output under `HALF_REACH`); else as they are."""
    s = scales_t.float().abs()
    too_small = bool(((s > 0) & (s < HALF_SMALLEST)).any())
    reach = 8 * group_size * float(s.sum(0).max()) if s.numel() else 0.0
    return scales_t if too_small or reach >= HALF_REACH else scales_t.half()


def correction(x: torch.Tensor, scales_t: torch.Tensor, biases_t: torch.Tensor, group_size: int) -> torch.Tensor:
    """groupsum(x)·(b + 8·s)ᵀ in float32 `[M, N]`, from scales and biases laid out `[K/G, N]` as stored (b + 8·s is
    exact in float32 for BF16 or FP16 s and b: the offsets are not kept, they would cost 4 bytes per group)."""
    offsets = biases_t.float() + ZERO * scales_t.float()
    return groupsum(x, group_size) @ offsets


BLOCK_BYTES = 32 << 20  # dense rows a CPU call makes at a time, in memory kept from call to call
_blocks: dict[tuple[torch.dtype, int], torch.Tensor] = {}


def _block(dtype: torch.dtype, k: int) -> torch.Tensor:
    """This process's reused `[rows, k]` block (fresh memory would cost page faults on every call: 1.2 s against
    0.07 s for a 151,936 x 2,048 lm_head made whole on a 2-core host)."""
    rows = max(1, BLOCK_BYTES // (k * dtype.itemsize))
    block = _blocks.get((dtype, k))
    if block is None:
        block = _blocks[(dtype, k)] = torch.empty(rows, k, dtype=dtype)
    return block


@torch.library.custom_op("vllm_mlx_loader::dequantized_linear", mutates_args=())
def dequantized_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor,
                       group_size: int) -> torch.Tensor:
    """x·wᵀ on the CPU, the weight made block by block of rows by the C kernel (the loader's `fused` rounding) into
    reused memory. A custom op: vLLM's compiled graphs call it whole (the kernel's threads are not traceable)."""
    n, k = weight.shape[0], scales.shape[-1] * group_size
    out = x.new_empty(x.shape[0], n)
    block = _block(x.dtype, k)
    for r in range(0, n, block.shape[0]):
        rows = slice(r, min(n, r + block.shape[0]))
        dense = dequantize_affine(weight[rows], scales[rows], biases[rows], bits=4, group_size=group_size,
                                  dtype=x.dtype, out=block[: rows.stop - r])
        out[:, rows] = x @ dense.T
    return out


@dequantized_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor,
      group_size: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


class DequantPerCall(Int4Kernel):
    """Keeps the checkpoint's layout and dequantizes the layer on every call (float32 math, one rounding to the
    model's dtype: the loader's `fused` rounding, so the product is bit for bit the BF16 path's): on the CPU block
    by block with the C kernel, elsewhere whole. Any device, any shape: the memory of 4-bit weights at the speed of
    a dequantization per call."""

    name = "dequantize per call"

    def prepare(self, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int) -> Tensors:
        return {"weight": weight, "scales": scales, "biases": biases}

    def apply(self, tensors: Tensors, x: torch.Tensor, group_size: int) -> torch.Tensor:
        weight, scales, biases = tensors["weight"], tensors["scales"], tensors["biases"]
        if x.device.type == "cpu" and cpu_kernel.supports(scales.dtype, biases.dtype, x.dtype, group_size, "fused"):
            return dequantized_linear(x, weight, scales, biases, group_size)
        return x @ dequantize_on_device(weight, scales, biases, 4, group_size, x.dtype, "fused").T

    def rows(self, tensors: Tensors, ids: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
        codes = unpack_codes(tensors["weight"][ids], 4)
        return dense_rows(codes, tensors["scales"][ids], tensors["biases"][ids], group_size, dtype)
