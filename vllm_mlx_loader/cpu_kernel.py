"""The fused CPU dequantization kernel (`_cdequant.c`), split by rows over torch's CPU threads.

Optional: `setup.py` builds it where a C compiler is found, and `dequant.py` uses the torch path when it is
missing or when a case is outside what it handles (float16 output, two roundings in float16). It computes what
the torch path computes, bit for bit, in one pass over memory instead of about ten.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

try:
    from . import _cdequant
except ImportError:  # no compiler at install time
    _cdequant = None
if os.environ.get("VLLM_MLX_LOADER_NO_C_KERNEL", "0") not in ("", "0"):  # to compare, or to rule it out
    _cdequant = None

_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_OUT_KINDS = (torch.float32, torch.bfloat16)
_HUGE_PAGES_FROM = 1 << 22  # smaller outputs come from malloc's heap, not their own mapping
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool)


def available() -> bool:
    return _cdequant is not None


def supports(
    scales: torch.dtype, biases: torch.dtype, out: torch.dtype, group_size: int, rounding: str
) -> bool:
    """Whether the kernel handles this case (any bits 1-8, group sizes that are multiples of 8 up to 512,
    scales and biases of one dtype; `rounding` as in `dequant.dequantize_affine`)."""
    return (
        _cdequant is not None and scales in _KINDS and biases == scales and out in _OUT_KINDS
        and group_size <= 512 and group_size % 8 == 0
        and (not _two_roundings(rounding, scales) or scales == torch.bfloat16)
    )


def _two_roundings(rounding: str, scales: torch.dtype) -> bool:
    # `mlx_cpu` rounds in the scales' dtype; in float32 that is the same arithmetic as `fused`
    return rounding == "mlx_cpu" and scales != torch.float32


def empty_advised(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """`torch.empty` on the CPU, backed by 2 MiB pages where the OS allows (Linux THP `madvise` mode): one
    page fault per 2 MiB instead of per 4 KiB, 3x faster to fill a fresh output here."""
    out = torch.empty(shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    if _cdequant is not None and nbytes >= _HUGE_PAGES_FROM:
        _cdequant.advise_hugepages(out.data_ptr(), nbytes)
    return out


def dequantize(
    w: torch.Tensor, s: torch.Tensor, b: torch.Tensor, bits: int, group_size: int, dtype: torch.dtype,
    rounding: str, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[rows, words]` int32 codes and `[rows, groups]` scales and biases of one dtype → `[rows, in_features]`
    (into `out`, contiguous, if given). Raises `ValueError` for any argument the kernel cannot take, before
    a pointer reaches it: the kernel itself trusts every size it is given."""
    w, s, b = w.contiguous(), s.contiguous(), b.contiguous()
    rows = w.shape[0]
    _check(w, s, b, bits, group_size, dtype, rounding, out)
    out = empty_advised((rows, s.shape[1] * group_size), dtype) if out is None else out
    nbytes = out.numel() * out.element_size()
    if nbytes == 0:  # no rows or no groups: nothing to split into threads
        return out
    args = (w.shape[1] * 4, bits, group_size, _KINDS[s.dtype], _KINDS[dtype], int(_two_roundings(rounding, s.dtype)))

    def run(first: int, last: int) -> None:
        _cdequant.dequant(w[first].data_ptr(), s[first].data_ptr(), b[first].data_ptr(), out[first].data_ptr(),
                          last - first, *args)

    threads = min(torch.get_num_threads(), rows, max(1, nbytes >> 20))  # ~1 MiB of output per thread at least
    bounds = [rows * i // threads for i in range(threads + 1)]
    if threads == 1:
        run(0, rows)
    else:
        list(_threads(threads).map(run, bounds[:-1], bounds[1:]))
    return out


def _check(
    w: torch.Tensor, s: torch.Tensor, b: torch.Tensor, bits: int, group_size: int, dtype: torch.dtype,
    rounding: str, out: torch.Tensor | None,
) -> None:
    if _cdequant is None:
        raise ValueError("cpu_kernel.dequantize: the C kernel is not built here")
    if not supports(s.dtype, b.dtype, dtype, group_size, rounding):
        raise ValueError(
            f"cpu_kernel.dequantize: unsupported case: scales {s.dtype}, biases {b.dtype}, out {dtype}, "
            f"group_size={group_size}, rounding={rounding!r}"
        )
    tensors = (w, s, b) if out is None else (w, s, b, out)
    if type(bits) is not int or not 1 <= bits <= 8 or any(t.device.type != "cpu" for t in tensors):
        raise ValueError(f"cpu_kernel.dequantize: bits must be 1-8 and every tensor on the CPU, got bits={bits!r}")
    rows, groups = s.shape[0], s.shape[-1]
    if (
        w.dtype != torch.int32 or w.dim() != 2 or s.dim() != 2 or b.shape != s.shape or w.shape[0] != rows
        or w.shape[1] * 32 != groups * group_size * bits
    ):
        raise ValueError(
            f"cpu_kernel.dequantize: want int32 weight [rows, groups * group_size * bits / 32] and scales, biases "
            f"[rows, groups]; got weight {w.dtype} {list(w.shape)}, scales {list(s.shape)}, biases "
            f"{list(b.shape)} at bits={bits}, group_size={group_size}"
        )
    if out is not None and (
        out.dtype != dtype or tuple(out.shape) != (rows, groups * group_size) or not out.is_contiguous()
    ):
        raise ValueError(
            f"cpu_kernel.dequantize: out must be a contiguous {dtype} [{rows}, {groups * group_size}], "
            f"got {out.dtype} {list(out.shape)}{'' if out.is_contiguous() else ', not contiguous'}"
        )


def _threads(n: int) -> ThreadPoolExecutor:
    """A pool of at least `n` threads, made again after a fork (a forked pool has no threads)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] < n:
        _pool = (os.getpid(), n, ThreadPoolExecutor(n, thread_name_prefix="mlx-dequant"))
    return _pool[2]
