"""Write a safetensors file one tensor at a time, so a converter holds one tensor, not one shard.

`safetensors.torch.save_file` needs every tensor of a file in memory at once (a 5 GB shard). The format
allows streaming when the names, dtypes and shapes are known up front: the header (8-byte length, then
JSON with each tensor's byte range) comes first, and the data follows in header order.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


class ShardWriter:
    """`with ShardWriter(path, [(name, shape), ...], dtype) as w: w.write(name, tensor)` in that order."""

    def __init__(self, path: Path, layout: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype,
                 metadata: dict[str, str] | None = None) -> None:
        self.path, self.dtype = path, dtype
        self._order = [name for name, _ in layout]
        self._shapes = dict(layout)
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset, kind = 0, SAFETENSORS_DTYPES[dtype]
        for name, shape in layout:
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": kind, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._file.write(struct.pack("<Q", len(text)) + text)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order) or name != self._order[self._next]:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing more"
            raise ValueError(f"{self.path.name}: got {name!r}, expected {expected!r}")
        if tensor.dtype != self.dtype or tuple(tensor.shape) != tuple(self._shapes[name]):
            raise ValueError(f"{self.path.name}: {name!r} is {tensor.dtype} {tuple(tensor.shape)}, "
                             f"expected {self.dtype} {tuple(self._shapes[name])}")
        self._file.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().data)
        self._next += 1

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        if self._next != len(self._order):
            raise ValueError(f"{self.path.name}: {len(self._order) - self._next} tensors were never written")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
