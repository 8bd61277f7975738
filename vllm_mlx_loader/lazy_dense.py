"""A dense weight that is made when it is used, and only as much of it as is used.

vLLM's weight loaders narrow each checkpoint tensor to their tensor-parallel rank's part and copy that into
the parameter (`param.data.copy_(loaded_weight.narrow(dim, rank * size, size))`), whatever the layout:
column-parallel rows, row-parallel input columns, vocab-parallel rows, one expert's shard. A `LazyDense`
records each `narrow` without reading anything; any other use (`copy_` from it, `to`, `t`, indexing, ...) makes
the region it covers through its `make` function and runs the op on the real tensor. An op that would change it
in place (`add_`, `x[i] = ...`, `out=`) raises: it would change a temporary copy, silently lost. So vLLM keeps
deciding the slices, and each rank reads and dequantizes only its own, falling back to more where an op needs it;
a weight it never touches (another pipeline stage's) is never made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map

Region = tuple[tuple[int, int], ...]  # [start, stop) along each dimension

# Answered from shape and dtype alone: no data is made for them.
_METADATA = {
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.nelement, torch.Tensor.element_size,
    torch.Tensor.is_floating_point, torch.Tensor.is_complex, torch.Tensor.__len__,
    torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__, torch.Tensor.ndim.__get__,
    torch.Tensor.itemsize.__get__, torch.Tensor.nbytes.__get__, torch.Tensor.requires_grad.__get__,
    torch.Tensor.is_sparse.__get__, torch.Tensor.layout.__get__,
}


_IN_PLACE_DUNDERS = {
    "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
    "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
}


def _writes_into_lazy(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether `func` would change a `LazyDense` in place (`add_`, `copy_` into it, `x[i] = ...`, `out=`)."""
    if isinstance(kwargs.get("out"), LazyDense):
        return True
    if not args or not isinstance(args[0], LazyDense):
        return False
    name = getattr(func, "__name__", "")
    return name in _IN_PLACE_DUNDERS or (name.endswith("_") and not name.endswith("__") and name != "requires_grad_")


class LazyDense(torch.Tensor):
    """A tensor of `shape` and `dtype` on `device` whose data `make(region)` produces on demand."""

    _make: Callable[[Region], torch.Tensor]
    _region: Region
    _target: torch.device

    @staticmethod
    def __new__(
        cls, make: Callable[[Region], torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype,
        device: torch.device, region: Region | None = None,
    ) -> LazyDense:
        self = torch.Tensor._make_subclass(cls, torch.empty(shape, dtype=dtype, device="meta"))
        self._make = make
        self._region = region if region is not None else tuple((0, n) for n in shape)
        self._target = torch.device(device)
        return self

    @property
    def region(self) -> Region:
        """Where this view lies in the whole weight."""
        return self._region

    def materialize(self) -> torch.Tensor:
        tensor = self._make(self._region)
        want = tuple(b - a for a, b in self._region)
        if tuple(tensor.shape) != want:
            raise RuntimeError(f"LazyDense made a tensor of shape {list(tensor.shape)} for region {self._region}")
        return tensor

    def _narrowed(self, dim: int, start: int | torch.Tensor, length: int) -> LazyDense:
        dim, start, length = dim + len(self._region) if dim < 0 else dim, int(start), int(length)
        lo, hi = self._region[dim] if 0 <= dim < len(self._region) else (0, -1)
        start = start + (hi - lo) if start < 0 else start
        if hi < 0 or start < 0 or length < 0 or lo + start + length > hi:
            raise IndexError(f"narrow({dim}, {start}, {length}) is outside a tensor of shape {list(self.shape)}")
        region = (*self._region[:dim], (lo + start, lo + start + length), *self._region[dim + 1:])
        shape = tuple(b - a for a, b in region)
        return LazyDense(self._make, shape, self.dtype, self._target, region)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.Tensor.narrow, torch.narrow) and isinstance(args[0], LazyDense):
            return args[0]._narrowed(*args[1:], **kwargs)
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if func == torch.Tensor.device.__get__:
            return args[0]._target
        if _writes_into_lazy(func, args, kwargs):
            name = getattr(func, "__name__", repr(func))
            raise RuntimeError(
                f"LazyDense: `{name}` would write into a weight that is made on demand, i.e. into a temporary "
                "copy that is then lost; make it first (`.clone()`) and change the copy."
            )
        args, kwargs = tree_map(lambda a: a.materialize() if isinstance(a, LazyDense) else a, (args, kwargs))
        return func(*args, **kwargs)

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"LazyDense(shape={list(self.shape)}, dtype={self.dtype}, device={self._target}, region={self._region})"
