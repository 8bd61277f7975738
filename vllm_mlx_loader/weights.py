"""Stream a described MLX checkpoint as dense `(name, tensor)` pairs, dequantized on the target device.

One module at a time: its packed codes, scales and biases are read from their shards (memory-mapped),
moved to the device as packed data (~4.5 bits per weight for 4-bit), and dequantized there. Host memory
holds one module's tensors at a time, never a dense copy of the model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .dequant import Rounding, dequantize_affine
from .errors import MLXCheckpointError
from .format import MLXCheckpoint, QuantizedModule, TensorRef


@dataclass
class LoadStats:
    tensors: int = 0
    bytes_read: int = 0
    read_s: float = 0.0
    dequant_s: float = 0.0


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


class ShardReader:
    """Reads tensors from a checkpoint's shards (each opened once, memory-mapped) onto a device."""

    def __init__(self, device: torch.device, stats: LoadStats) -> None:
        self.device = device
        self.stats = stats
        self._stack = ExitStack()
        self._files: dict[Path, Any] = {}

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def read(self, ref: TensorRef) -> torch.Tensor:
        if ref.file not in self._files:
            self._files[ref.file] = self._stack.enter_context(safe_open(ref.file, framework="pt"))
        try:
            tensor = self._files[ref.file].get_tensor(ref.name)
        except Exception as e:
            raise MLXCheckpointError(
                ref.where(), f"could not be read ({type(e).__name__}: {e}).",
                "The shard is damaged or truncated: re-download or re-convert it.",
            ) from None
        if tensor.dtype == torch.uint32:
            tensor = tensor.view(torch.int32)  # torch has almost no uint32 ops, torch_npu none
        elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise MLXCheckpointError(
                ref.where(), f"holds {bad} non-finite values (NaN or Inf) among {tensor.numel()}.",
                "The checkpoint is damaged: re-download or re-convert it.",
            )
        self.stats.bytes_read += ref.nbytes
        return tensor.to(self.device)


def iter_dense_weights(
    ckpt: MLXCheckpoint,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    rounding: Rounding = "fused",
    stats: LoadStats | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, dense tensor)` for every weight of `ckpt`, dequantized on `device`.

    Unquantized tensors (norms) come back in their stored dtype on `device`; the model's weight
    loader casts them as it copies.
    """
    device = torch.device(device)
    stats = stats if stats is not None else LoadStats()
    with ShardReader(device, stats) as reader:
        for entry in ckpt.entries:
            start = time.perf_counter()
            if isinstance(entry, TensorRef):
                tensor = reader.read(entry)
                _synchronize(device)
                stats.read_s += time.perf_counter() - start
            else:
                tensor = _dequantize(entry, reader, dtype, rounding)
            stats.tensors += 1
            yield entry.name, tensor


def _dequantize(module: QuantizedModule, reader: ShardReader, dtype: torch.dtype, rounding: Rounding) -> torch.Tensor:
    stats, device = reader.stats, reader.device
    start = time.perf_counter()
    weight, scales, biases = (reader.read(t) for t in (module.weight, module.scales, module.biases))
    _synchronize(device)
    read_end = time.perf_counter()
    stats.read_s += read_end - start
    p = module.params
    dense = dequantize_affine(
        weight, scales, biases, bits=p.bits, group_size=p.group_size, dtype=dtype, rounding=rounding
    )
    _synchronize(device)
    stats.dequant_s += time.perf_counter() - read_end
    return dense
