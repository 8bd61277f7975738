"""CPU memory for dense weights, reused once the consumer has let go of it.

Every page of a fresh multi-MB tensor is faulted in and zeroed by the OS, which here took longer than the
dequantization itself (8B shape: up to 3.5 s of system time per pass). vLLM copies each yielded weight into
its own parameter and drops it, so a few buffers can serve the whole load. A buffer is handed out again
only when nothing but this pool references its storage (any tensor or view still alive anywhere keeps it
busy), so a consumer that keeps what it was given (a dict of all weights, say) gets fresh memory instead,
never overwritten data.
"""

from __future__ import annotations

import math

import torch

from . import cpu_kernel

_use_count = getattr(torch._C, "_storage_Use_Count", None)  # private; without it, no reuse


class OutputBuffers:
    """Up to `slots` buffers of `capacity` bytes; larger requests get fresh memory."""

    def __init__(self, capacity: int, slots: int = 3) -> None:
        self.capacity, self.slots = capacity, slots
        self._buffers: list[tuple[torch.Tensor, torch.UntypedStorage]] = []
        self.reused = 0

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = dtype.itemsize * math.prod(shape)
        if _use_count is None or nbytes > self.capacity:
            return cpu_kernel.empty_advised(shape, dtype)
        for buf, storage in self._buffers:
            if _use_count(storage._cdata) == 2:  # held only by `buf` and `storage`, both ours
                self.reused += 1
                return buf[:nbytes].view(dtype).view(shape)
        if len(self._buffers) < self.slots:
            buf = cpu_kernel.empty_advised((self.capacity,), torch.uint8)
            self._buffers.append((buf, buf.untyped_storage()))
            return buf[:nbytes].view(dtype).view(shape)
        return cpu_kernel.empty_advised(shape, dtype)

    def release(self) -> None:
        """Drop the pool's references; memory a consumer still holds lives on with it."""
        self._buffers.clear()

