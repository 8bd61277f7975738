"""Audit device code on the CPU: which aten ops it runs, with which dtypes, and how much memory it holds.

No Ascend NPU is at hand, so the accelerator path is run on CPU tensors under `OpAudit`, a
`TorchDispatchMode` that records every aten op and refuses the ones torch_npu cannot run
(docs/compatibility.md, "torch_npu"):

- arithmetic or logic on uint32/uint64 tensors (views and copies are storage, and allowed);
- `bitwise_right_shift` / `bitwise_left_shift` (not implemented on the NPU: a silent, slow CPU fallback);
- shifts by a tensor (`x >> t`: no broadcasting on the NPU; a 0-d device tensor crashes its AICPU kernel);
- any float8 dtype.

It also tracks the bytes of tensor storage that the audited code allocates and still holds, so a test or
benchmark can read the peak extra memory of a path on the CPU through the same code that runs on a device.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_UNSIGNED_WIDE = (torch.uint32, torch.uint64)
_FLOAT8 = tuple(getattr(torch, n) for n in dir(torch) if n.startswith("float8_"))
# Ops that only reinterpret or move storage: fine on uint32 tensors.
_STORAGE_OPS = {
    "aten.view.dtype", "aten.view.default", "aten._unsafe_view.default", "aten.detach.default",
    "aten.alias.default", "aten.slice.Tensor", "aten.select.int", "aten.lift_fresh.default",
    "aten._to_copy.default", "aten.copy_.default", "aten.clone.default", "aten.reshape.default",
}
_SHIFTS = ("aten.bitwise_right_shift", "aten.bitwise_left_shift")
_TENSOR_SHIFTS = ("aten.__rshift__.Tensor", "aten.__lshift__.Tensor", "aten.__irshift__.Tensor",
                  "aten.__ilshift__.Tensor")


class NpuOpError(AssertionError):
    """An op that torch_npu does not run (or runs on the CPU behind the caller's back)."""


@dataclass(frozen=True)
class OpRecord:
    op: str
    dtypes: tuple[str, ...]


class OpAudit(TorchDispatchMode):
    """`with OpAudit() as audit: ...` records `audit.ops` and `audit.peak_bytes`; raises `NpuOpError`."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpRecord] = []
        self.live_bytes = 0
        self.peak_bytes = 0
        self._storages: dict[int, list[int]] = {}  # storage pointer -> [live tensors, bytes]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        name = str(func)
        self.ops.append(OpRecord(name, tuple(str(t.dtype) for t in tensors)))
        _refuse(name, tensors)
        result = func(*args, **kwargs)
        outputs = [r for r in tree_flatten(result)[0] if isinstance(r, torch.Tensor)]
        _refuse(name, outputs)
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        for t in outputs:
            self._track(t, inputs)
        return result

    def op_names(self) -> set[str]:
        return {r.op for r in self.ops}

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        entry = self._storages.get(key)
        if entry is None:
            if key == 0 or key in inputs:  # empty, or a view of memory allocated before the audit
                return
            entry = self._storages[key] = [0, storage.nbytes()]
            self.live_bytes += entry[1]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live_bytes -= entry[1]
            del self._storages[key]


def _refuse(op: str, tensors: list[torch.Tensor]) -> None:
    if op.startswith(_SHIFTS):
        raise NpuOpError(f"{op}: torch_npu has no bitwise_*_shift (it falls back to the CPU); use `x >> k`")
    if op in _TENSOR_SHIFTS:
        raise NpuOpError(f"{op}: shift by a tensor (no broadcasting on the NPU; a 0-d one crashes it): shift by an int")
    for t in tensors:
        if t.dtype in _FLOAT8:
            raise NpuOpError(f"{op}: {t.dtype} tensor (no float8 on the device path)")
        if t.dtype in _UNSIGNED_WIDE and op not in _STORAGE_OPS:
            raise NpuOpError(f"{op} on a {t.dtype} tensor: torch_npu has no {t.dtype} arithmetic; view it as int32")
